"""The interposer end to end on one node: small C programs run on the kernel's System V
IPC (in a fresh IPC namespace) and through LD_PRELOAD=ssi_ipc_preload.so against a
preload server over an in-process table; their outputs must be the same.

    fixtures: interposer (.so, built once) ── programs (compiled once)
              server (PreloadServer + LocalHub on a loop thread; uid 65534 can connect)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssi.ipc.interposer import build_interposer
from ssi.ipc.local import LocalHub
from ssi.ipc.preload_server import PreloadServer, serve_local

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or shutil.which("unshare") is None,
    reason="needs cc and unshare",
)


ERRNOS_C = r"""
/* Exercises System V IPC error paths and rules; prints one line per check. The
 * output must be identical on the kernel and through the ssi interposer. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

union semun { int val; struct semid_ds *buf; unsigned short *array; };

static const char *ename(int e)
{
    switch (e) {
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case E2BIG: return "E2BIG";
    case ENOMSG: return "ENOMSG";
    case EAGAIN: return "EAGAIN";
    case EIDRM: return "EIDRM";
    case EINTR: return "EINTR";
    case ERANGE: return "ERANGE";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    default: return "other";
    }
}

#define SHOW(label, expr)                                                          \
    do {                                                                         \
        errno = 0;                                                           \
        long r_ = (long)(expr);                                              \
        if (r_ < 0)                                                          \
            printf("%-26s -1 %s\n", label, ename(errno));                \
        else                                                                 \
            printf("%-26s ok\n", label);                                 \
        fflush(stdout);                                                      \
    } while (0)

#define VALUE(label, expr)                                                         \
    do {                                                                         \
        printf("%-26s = %ld\n", label, (long)(expr));                        \
        fflush(stdout);                                                      \
    } while (0)

struct big { long mtype; char text[9000]; };
static struct big b;

static void on_alarm(int sig) { (void)sig; }

static void arm_alarm(int ms)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART; /* SysV calls are interrupted anyway */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void as_nobody(void)
{
    if (setgid(65534) < 0 || setuid(65534) < 0) {
        perror("setuid");
        _exit(3);
    }
}

static void rcv_show(int q, long type, int flags)
{
    memset(&b, 0, sizeof(b));
    ssize_t n = msgrcv(q, &b, 100, type, flags);
    if (n < 0)
        printf("msgrcv %4ld %06o       -1 %s\n", type, flags, ename(errno));
    else
        printf("msgrcv %4ld %06o       type %ld %.*s\n", type, flags, b.mtype,
               (int)n, b.text);
    fflush(stdout);
}

static void snd(int q, long type, const char *text)
{
    b.mtype = type;
    strcpy(b.text, text);
    if (msgsnd(q, &b, strlen(text), 0) < 0)
        perror("msgsnd");
}

int main(void)
{
    key_t key = 0x5a000000 | (getpid() & 0xffff);
    union semun arg;

    /* ---- message queues ---- */
    SHOW("msgget missing", msgget(key, 0));
    int q = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
    SHOW("msgget create", q);
    SHOW("msgget excl again", msgget(key, IPC_CREAT | IPC_EXCL | 0600));
    VALUE("msgget same id", msgget(key, 0600) == q);
    b.mtype = 0;
    SHOW("msgsnd type 0", msgsnd(q, &b, 10, 0));
    b.mtype = 1;
    SHOW("msgsnd over msgmax", msgsnd(q, &b, 8193, 0));
    SHOW("msgsnd msgmax", msgsnd(q, &b, 8192, 0));
    SHOW("msgsnd fill", msgsnd(q, &b, 8192, 0));
    SHOW("msgsnd full nowait", msgsnd(q, &b, 1, IPC_NOWAIT));
    SHOW("msgrcv small", msgrcv(q, &b, 100, 0, 0));
    VALUE("msgrcv noerror", msgrcv(q, &b, 100, 0, MSG_NOERROR));
    VALUE("msgrcv whole", msgrcv(q, &b, 9000, 0, 0));
    SHOW("msgrcv empty nowait", msgrcv(q, &b, 100, 0, IPC_NOWAIT));
    SHOW("msgrcv bad size", msgrcv(q, &b, (size_t)-1, 0, IPC_NOWAIT));
    snd(q, 2, "A");
    snd(q, 1, "B");
    snd(q, 3, "C");
    snd(q, 1, "D");
    snd(q, 7, "E");
    rcv_show(q, 2, MSG_COPY | IPC_NOWAIT);
    rcv_show(q, 0, MSG_COPY);
    rcv_show(q, 9, MSG_COPY | IPC_NOWAIT);
    rcv_show(q, -2, 0);
    rcv_show(q, 1, MSG_EXCEPT);
    rcv_show(q, 1, 0);
    rcv_show(q, -100, MSG_EXCEPT);
    rcv_show(q, 4, IPC_NOWAIT);
    rcv_show(q, 0, 0);
    rcv_show(q, 0, IPC_NOWAIT);
    snd(q, 4, "0123456789");
    rcv_show(q, 0, MSG_COPY | IPC_NOWAIT | MSG_NOERROR);
    rcv_show(q, 4, MSG_COPY | IPC_NOWAIT | MSG_NOERROR);
    struct msqid_ds ds;
    SHOW("msgctl stat", msgctl(q, IPC_STAT, &ds));
    VALUE("msg mode", ds.msg_perm.mode);
    VALUE("msg qbytes", ds.msg_qbytes);
    VALUE("msg qnum", ds.msg_qnum);
    VALUE("msg cbytes", ds.__msg_cbytes);
    VALUE("msg lspid is me", ds.msg_lspid == getpid());
    VALUE("msg uid", ds.msg_perm.uid);
    ds.msg_qbytes = 12;
    ds.msg_perm.mode = 0640;
    SHOW("msgctl set", msgctl(q, IPC_SET, &ds));
    snd(q, 1, "x");
    b.mtype = 1;
    SHOW("msgsnd over qbytes", msgsnd(q, &b, 5, IPC_NOWAIT));
    msgctl(q, IPC_STAT, &ds);
    VALUE("msg mode after set", ds.msg_perm.mode);
    VALUE("msg qbytes after set", ds.msg_qbytes);
    ds.msg_qbytes = 16384;
    msgctl(q, IPC_SET, &ds);
    SHOW("msgctl bad cmd", msgctl(q, 77, &ds));
    SHOW("msgctl bad id", msgctl(-1, IPC_STAT, &ds));
    struct msginfo mi;
    SHOW("msgctl info", msgctl(0, IPC_INFO, (struct msqid_ds *)&mi));
    VALUE("msginfo msgmax", mi.msgmax);
    VALUE("msginfo msgmnb", mi.msgmnb);

    pid_t pid = fork();
    if (pid == 0) {
        as_nobody();
        SHOW("nobody msgget 0400", msgget(key, 0400));
        SHOW("nobody msgget 0", msgget(key, 0));
        b.mtype = 1;
        SHOW("nobody msgsnd", msgsnd(q, &b, 1, IPC_NOWAIT));
        SHOW("nobody msgrcv", msgrcv(q, &b, 1, 0, IPC_NOWAIT));
        SHOW("nobody msgctl stat", msgctl(q, IPC_STAT, &ds));
        SHOW("nobody msgctl rmid", msgctl(q, IPC_RMID, NULL));
        _exit(0);
    }
    waitpid(pid, NULL, 0);

    int q2 = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    pid = fork();
    if (pid == 0) {
        SHOW("msgrcv on removed", msgrcv(q2, &b, 100, 0, 0));
        _exit(0);
    }
    usleep(300000);
    msgctl(q2, IPC_RMID, NULL);
    waitpid(pid, NULL, 0);

    arm_alarm(100);
    SHOW("msgrcv interrupted", msgrcv(q, &b, 100, 99, 0));
    SHOW("msgctl rmid", msgctl(q, IPC_RMID, NULL));
    SHOW("msgsnd removed", msgsnd(q, &b, 1, 0));
    SHOW("msgget after rmid", msgget(key, 0));

    /* ---- semaphores ---- */
    int s = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
    SHOW("semget create", s);
    SHOW("semget more", semget(key, 3, 0));
    VALUE("semget fewer same", semget(key, 1, 0) == s);
    SHOW("semget zero private", semget(IPC_PRIVATE, 0, IPC_CREAT));
    SHOW("semget too many", semget(IPC_PRIVATE, 40000, IPC_CREAT));
    struct sembuf op[501];
    memset(op, 0, sizeof(op));
    op[0] = (struct sembuf){2, 1, 0};
    SHOW("semop efbig", semop(s, op, 1));
    SHOW("semop e2big", semop(s, op, 501));
    SHOW("semop none", semop(s, op, 0));
    op[0] = (struct sembuf){0, -1, IPC_NOWAIT};
    SHOW("semop nowait", semop(s, op, 1));
    arg.val = 40000;
    SHOW("setval erange", semctl(s, 0, SETVAL, arg));
    arg.val = 32767;
    SHOW("setval max", semctl(s, 0, SETVAL, arg));
    op[0] = (struct sembuf){0, 1, 0};
    SHOW("semop overflow", semop(s, op, 1));
    struct timespec ts = {0, 50 * 1000 * 1000};
    op[0] = (struct sembuf){1, -1, 0};
    SHOW("semtimedop timeout", semtimedop(s, op, 1, &ts));
    ts.tv_nsec = 2000000000L;
    SHOW("semtimedop bad timeout", semtimedop(s, op, 1, &ts));
    arg.val = 1;
    semctl(s, 0, SETVAL, arg);
    arg.val = 0;
    semctl(s, 1, SETVAL, arg);
    op[0] = (struct sembuf){0, -1, IPC_NOWAIT};
    op[1] = (struct sembuf){1, -1, IPC_NOWAIT};
    SHOW("semop not atomic?", semop(s, op, 2));
    VALUE("sem0 untouched", semctl(s, 0, GETVAL));
    op[0] = (struct sembuf){0, 2, 0};
    op[1] = (struct sembuf){0, -3, 0};
    SHOW("semop sequential", semop(s, op, 2));
    VALUE("sem0 after", semctl(s, 0, GETVAL));
    pid = fork();
    if (pid == 0) {
        struct sembuf up = {1, 5, SEM_UNDO};
        semop(s, &up, 1);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    VALUE("sem1 after undo", semctl(s, 1, GETVAL));
    pid = fork();
    if (pid == 0) {
        struct sembuf down = {1, -2, 0};
        SHOW("child semop woken", semop(s, &down, 1));
        _exit(0);
    }
    usleep(300000);
    VALUE("getncnt", semctl(s, 1, GETNCNT));
    VALUE("getzcnt", semctl(s, 1, GETZCNT));
    arg.val = 3;
    semctl(s, 1, SETVAL, arg);
    waitpid(pid, NULL, 0);
    VALUE("sem1 after wake", semctl(s, 1, GETVAL));
    VALUE("getpid is child", semctl(s, 1, GETPID) == pid);
    unsigned short vals[2] = {3, 4};
    arg.array = vals;
    SHOW("setall", semctl(s, 0, SETALL, arg));
    vals[0] = vals[1] = 0;
    SHOW("getall", semctl(s, 0, GETALL, arg));
    VALUE("getall 0", vals[0]);
    VALUE("getall 1", vals[1]);
    vals[1] = 40000;
    SHOW("setall erange", semctl(s, 0, SETALL, arg));
    SHOW("getval bad num", semctl(s, 5, GETVAL));
    SHOW("semctl bad cmd", semctl(s, 0, 1234));
    struct semid_ds sds;
    arg.buf = &sds;
    SHOW("semctl stat", semctl(s, 0, IPC_STAT, arg));
    VALUE("sem nsems", sds.sem_nsems);
    VALUE("sem mode", sds.sem_perm.mode);
    op[0] = (struct sembuf){0, 0, 0};
    arm_alarm(100);
    SHOW("semop interrupted", semop(s, op, 1));
    pid = fork();
    if (pid == 0) {
        as_nobody();
        op[0] = (struct sembuf){0, 0, IPC_NOWAIT};
        SHOW("nobody semop", semop(s, op, 1));
        SHOW("nobody getval", semctl(s, 0, GETVAL));
        SHOW("nobody semctl rmid", semctl(s, 0, IPC_RMID));
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    pid = fork();
    if (pid == 0) {
        struct sembuf w = {0, 0, 0};
        SHOW("semop on removed", semop(s, &w, 1));
        _exit(0);
    }
    usleep(300000);
    int rmid_rc = semctl(s, 0, IPC_RMID);
    waitpid(pid, NULL, 0); /* the child's line first, whoever is faster */
    VALUE("semctl rmid", rmid_rc);
    SHOW("getval removed", semctl(s, 0, GETVAL));

    /* ---- shared memory ---- */
    int m = shmget(key, 10000, IPC_CREAT | IPC_EXCL | 0600);
    SHOW("shmget create", m);
    SHOW("shmget bigger", shmget(key, 20000, 0));
    SHOW("shmget missing", shmget(key + 1, 10, 0));
    SHOW("shmget zero private", shmget(IPC_PRIVATE, 0, IPC_CREAT));
    SHOW("shmat bad id", shmat(-1, NULL, 0));
    SHOW("shmat unaligned", shmat(m, (void *)0x10001, 0));
    SHOW("shmat remap no addr", shmat(m, NULL, SHM_REMAP));
    SHOW("shmdt not attached", shmdt((void *)0x1000));
    char *p = shmat(m, NULL, 0);
    SHOW("shmat", p);
    strcpy(p + 9000, "tail");
    struct shmid_ds mds;
    SHOW("shmctl stat", shmctl(m, IPC_STAT, &mds));
    VALUE("shm nattch", mds.shm_nattch);
    VALUE("shm segsz", mds.shm_segsz);
    VALUE("shm cpid is me", mds.shm_cpid == getpid());
    pid = fork();
    if (pid == 0) {
        as_nobody();
        SHOW("nobody shmat", shmat(m, NULL, SHM_RDONLY));
        SHOW("nobody shmctl rmid", shmctl(m, IPC_RMID, NULL));
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    SHOW("shmctl rmid", shmctl(m, IPC_RMID, NULL));
    SHOW("shmctl stat removed", shmctl(m, IPC_STAT, &mds));
    VALUE("shm dest", (mds.shm_perm.mode & SHM_DEST) != 0);
    VALUE("shm key private", mds.shm_perm.__key == IPC_PRIVATE);
    SHOW("shmget key freed", shmget(key, 10, 0));
    char *p2 = shmat(m, NULL, SHM_RDONLY);
    SHOW("shmat removed", p2);
    printf("%-26s %s\n", "shm content", p2 + 9000);
    shmdt(p2);
    SHOW("shmdt", shmdt(p));
    SHOW("shmctl stat destroyed", shmctl(m, IPC_STAT, &mds));
    return 0;
}
"""


PRODCONS_C = r"""
/* A producer and one consumer per message type, through one queue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/msg.h>
#include <sys/wait.h>
#include <unistd.h>

#define TYPES 3
struct msg { long mtype; char text[32]; };

int main(int argc, char **argv)
{
    int per = argc > 1 ? atoi(argv[1]) : 1000;
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (q < 0) {
        perror("msgget");
        return 1;
    }
    for (int t = 1; t <= TYPES; t++) {
        if (fork() == 0) {
            long sum = 0;
            int bad = 0;
            for (int i = 0; i < per; i++) {
                struct msg m;
                ssize_t n = msgrcv(q, &m, sizeof m.text, t, 0);
                if (n < 0) {
                    perror("msgrcv");
                    _exit(2);
                }
                int gt = -1, gi = -1;
                sscanf(m.text, "%d:%d", &gt, &gi);
                if (gt != t || gi != i || m.mtype != t)
                    bad++;
                sum += gi;
            }
            printf("consumer %d: %d messages, %d out of order, sum %ld\n", t, per,
                   bad, sum);
            fflush(stdout);
            _exit(0);
        }
    }
    for (int i = 0; i < per; i++)
        for (int t = 1; t <= TYPES; t++) {
            struct msg m = {t, {0}};
            int len = snprintf(m.text, sizeof m.text, "%d:%d", t, i) + 1;
            if (msgsnd(q, &m, (size_t)len, 0) < 0) {
                perror("msgsnd");
                return 1;
            }
        }
    int ok = 0;
    for (int t = 0; t < TYPES; t++) {
        int st;
        wait(&st);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            ok++;
    }
    struct msqid_ds ds;
    msgctl(q, IPC_STAT, &ds);
    printf("producer: %d consumers ok, %lu left\n", ok, (unsigned long)ds.msg_qnum);
    msgctl(q, IPC_RMID, NULL);
    return 0;
}
"""


SEMCOUNTER_C = r"""
/* A counter in a shared memory segment, incremented by several processes under a
 * semaphore (SEM_UNDO). argv: workers rounds inherit|attach */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

union semun { int val; struct semid_ds *buf; unsigned short *array; };

static void P(int s)
{
    struct sembuf op = {0, -1, SEM_UNDO};
    if (semop(s, &op, 1) < 0)
        perror("P");
}

static void V(int s)
{
    struct sembuf op = {0, 1, SEM_UNDO};
    if (semop(s, &op, 1) < 0)
        perror("V");
}

int main(int argc, char **argv)
{
    int workers = atoi(argv[1]), rounds = atoi(argv[2]);
    int inherit = strcmp(argv[3], "inherit") == 0;
    int s = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    int m = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
    union semun arg = {.val = 1};
    semctl(s, 0, SETVAL, arg);
    volatile int *shared = inherit ? shmat(m, NULL, 0) : NULL;
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            volatile int *c = inherit ? shared : shmat(m, NULL, 0);
            for (int r = 0; r < rounds; r++) {
                P(s);
                int v = c[100];
                sched_yield();
                c[100] = v + 1;
                c[1500 + w] += 1; /* a second page, each worker its own slot */
                V(s);
            }
            if (!inherit)
                shmdt((const void *)c);
            _exit(0);
        }
    }
    for (int w = 0; w < workers; w++)
        wait(NULL);
    volatile int *c = inherit ? shared : shmat(m, NULL, 0);
    P(s);
    int total = 0;
    for (int w = 0; w < workers; w++)
        total += c[1500 + w];
    printf("counter %d of %d, slots %d\n", c[100], workers * rounds, total);
    V(s);
    printf("semval %d\n", semctl(s, 0, GETVAL));
    struct shmid_ds ds;
    shmctl(m, IPC_STAT, &ds);
    printf("nattch %lu\n", (unsigned long)ds.shm_nattch);
    shmdt((const void *)c);
    semctl(s, 0, IPC_RMID);
    shmctl(m, IPC_RMID, NULL);
    return 0;
}
"""


SHMSYNC_C = r"""
/* Parent and child share a segment and hand over through a message queue.
 * EXPLICIT=1 also calls ssi_shm_sync() where a writer publishes / a reader takes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/msg.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#pragma weak ssi_shm_sync
int ssi_shm_sync(const void *addr);

static void sync_if(const void *p)
{
    if (ssi_shm_sync && getenv("EXPLICIT"))
        ssi_shm_sync(p);
}

struct msg { long mtype; char text[8]; };

int main(void)
{
    size_t size = 3 * 4096 + 100;
    int m = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    char *p = shmat(m, NULL, 0);
    strcpy(p, "parent was here");
    sync_if(p);
    struct msg msg = {1, "go"};
    pid_t pid = fork();
    if (pid == 0) {
        printf("child sees: %s\n", p);
        strcpy(p + 5000, "hello from child");
        strcpy(p + 3 * 4096 + 50, "tail");
        sync_if(NULL);
        struct shmid_ds ds;
        shmctl(m, IPC_STAT, &ds);
        printf("child nattch %lu\n", (unsigned long)ds.shm_nattch);
        fflush(stdout);
        msgsnd(q, &msg, 3, 0);
        msgrcv(q, &msg, sizeof msg.text, 2, 0);
        sync_if(p);
        printf("child sees: %s\n", p + 200);
        fflush(stdout);
        _exit(0);
    }
    msgrcv(q, &msg, sizeof msg.text, 1, 0);
    sync_if(p);
    printf("parent sees: %s | %s\n", p + 5000, p + 3 * 4096 + 50);
    fflush(stdout);
    strcpy(p + 200, "parent again");
    sync_if(p);
    msg.mtype = 2;
    msgsnd(q, &msg, 3, 0);
    waitpid(pid, NULL, 0);
    struct shmid_ds ds;
    shmctl(m, IPC_STAT, &ds);
    printf("parent nattch %lu\n", (unsigned long)ds.shm_nattch);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        strcpy(p + 7000, "written before exit"); /* and no IPC call at all */
        exit(0);
    }
    waitpid(pid, NULL, 0);
    shmdt(p);
    p = shmat(m, NULL, 0);
    printf("after a child's exit: %s\n", p + 7000);
    shmdt(p);
    shmctl(m, IPC_RMID, NULL);
    msgctl(q, IPC_RMID, NULL);
    return 0;
}
"""


THREADS_C = r"""
/* Threads of one process blocked in msgrcv at once, woken by the main thread. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/msg.h>

#define N 4
static int q;
static char got[N + 1][16];

struct msg { long mtype; char text[16]; };

static void *worker(void *arg)
{
    long t = (long)arg;
    struct msg m;
    ssize_t n = msgrcv(q, &m, sizeof m.text, t, 0);
    snprintf(got[t], sizeof got[t], "%.*s", n < 0 ? 0 : (int)n, m.text);
    return NULL;
}

int main(void)
{
    q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    pthread_t th[N + 1];
    for (long t = 1; t <= N; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    struct timespec ts = {0, 100000000}; /* let them block first (not required) */
    nanosleep(&ts, NULL);
    for (long t = N; t >= 1; t--) {
        struct msg m = {t, {0}};
        int len = snprintf(m.text, sizeof m.text, "for %ld", t);
        msgsnd(q, &m, (size_t)len, 0);
    }
    for (long t = 1; t <= N; t++) {
        pthread_join(th[t], NULL);
        printf("thread %ld got \"%s\"\n", t, got[t]);
    }
    msgctl(q, IPC_RMID, NULL);
    return 0;
}
"""

PROGRAMS = {
    "errnos": ERRNOS_C,
    "prodcons": PRODCONS_C,
    "semcounter": SEMCOUNTER_C,
    "shmsync": SHMSYNC_C,
    "threads": THREADS_C,
}


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # /tmp/pytest-of-root is 0700: processes that drop to nobody need a way in
    d = Path(tempfile.mkdtemp(prefix="ssi-ipc-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def interposer(workdir: Path) -> Path:
    return build_interposer(workdir)


@pytest.fixture(scope="module")
def programs(workdir: Path) -> dict[str, Path]:
    out = {}
    for name, source in PROGRAMS.items():
        src = workdir / f"{name}.c"
        src.write_text(source)
        exe = workdir / name
        cmd = ["cc", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(exe), str(src)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[name] = exe
    return out


class Server:
    """A PreloadServer over a LocalHub, on its own event loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hub = LocalHub()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: PreloadServer = serve_local(path, self.hub)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def idle(self) -> bool:
        """No process connected, nothing parked, no object left behind."""
        table = self.hub.table
        return not self.server.clients() and not table.waiters() and not table.refs()


@pytest.fixture
def server(workdir: Path) -> Iterator[Server]:
    s = Server(workdir / f"ipc-{os.getpid()}-{time.monotonic_ns()}.sock")
    yield s
    s.close()


def run_kernel(exe: Path, *args: str) -> str:
    """On the kernel's System V IPC, in a fresh IPC namespace (nothing leaks)."""
    out = subprocess.run(
        ["unshare", "--ipc", str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_ssi(exe: Path, interposer: Path, server: Server, *args: str, **env: str) -> str:
    """Through the interposer, also in a fresh IPC namespace: a call that slipped
    past the interposer would show in /proc/sysvipc of that namespace."""
    script = (
        '"$@" && test "$(cat /proc/sysvipc/msg /proc/sysvipc/sem /proc/sysvipc/shm'
        ' | wc -l)" = 3 || { echo "kernel IPC objects were used" >&2; exit 9; }'
    )
    environ = {
        **os.environ,
        "LD_PRELOAD": str(interposer),
        "SSI_IPC_SOCKET": str(server.path),
        **env,
    }
    out = subprocess.run(
        ["unshare", "--ipc", "sh", "-c", script, "sh", str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_errnos_and_rules_match_the_kernel(
    programs: dict[str, Path], interposer: Path, server: Server
) -> None:
    kernel = run_kernel(programs["errnos"])
    assert "nobody msgctl rmid         -1 EPERM" in kernel  # the program ran fully
    ssi = run_ssi(programs["errnos"], interposer, server)
    assert ssi.splitlines() == kernel.splitlines()
    wait_for(server.idle, "the server to be left clean")


def test_producer_consumers_match_the_kernel(
    programs: dict[str, Path], interposer: Path, server: Server
) -> None:
    kernel = sorted(run_kernel(programs["prodcons"], "3000").splitlines())
    ssi = sorted(run_ssi(programs["prodcons"], interposer, server, "3000").splitlines())
    assert ssi == kernel
    assert "consumer 2: 3000 messages, 0 out of order, sum 4498500" in ssi
    wait_for(server.idle, "the server to be left clean")


@pytest.mark.parametrize("mode", ["attach", "inherit"])
def test_semaphore_protected_counter_matches_the_kernel(
    programs: dict[str, Path], interposer: Path, server: Server, mode: str
) -> None:
    args = ("4", "150", mode)
    kernel = run_kernel(programs["semcounter"], *args)
    assert kernel.startswith("counter 600 of 600, slots 600\n")
    assert run_ssi(programs["semcounter"], interposer, server, *args) == kernel
    wait_for(server.idle, "the server to be left clean")


@pytest.mark.parametrize(
    "env",
    [{}, {"SSI_IPC_SHM_AUTOSYNC": "0", "EXPLICIT": "1"}],
    ids=["autosync", "explicit-sync"],
)
def test_shared_memory_with_sync_matches_the_kernel(
    programs: dict[str, Path], interposer: Path, server: Server, env: dict[str, str]
) -> None:
    kernel = run_kernel(programs["shmsync"])
    assert "parent sees: hello from child | tail" in kernel
    assert "after a child's exit: written before exit" in kernel
    assert run_ssi(programs["shmsync"], interposer, server, **env) == kernel
    wait_for(server.idle, "the server to be left clean")


def test_without_sync_a_copy_is_stale_not_torn(
    programs: dict[str, Path], interposer: Path, server: Server
) -> None:
    """The documented limit: with autosync off and no ssi_shm_sync(), a process keeps
    its own copy; it sees nothing of the others' writes (never part of them)."""
    out = run_ssi(programs["shmsync"], interposer, server, SSI_IPC_SHM_AUTOSYNC="0")
    lines = out.splitlines()
    assert "parent sees:  | " in lines and "child sees: " in lines
    assert "child nattch 2" in lines  # the bookkeeping is exact regardless


def test_threads_blocked_at_once_match_the_kernel(
    programs: dict[str, Path], interposer: Path, server: Server
) -> None:
    kernel = run_kernel(programs["threads"])
    assert run_ssi(programs["threads"], interposer, server) == kernel


def test_without_the_socket_variable_calls_reach_the_kernel(
    programs: dict[str, Path], interposer: Path
) -> None:
    kernel = run_kernel(programs["semcounter"], "2", "50", "attach")
    env = {k: v for k, v in os.environ.items() if k != "SSI_IPC_SOCKET"}
    env["LD_PRELOAD"] = str(interposer)
    out = subprocess.run(
        ["unshare", "--ipc", str(programs["semcounter"]), "2", "50", "attach"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == kernel


def test_unreachable_service_fails_with_eio(
    programs: dict[str, Path], interposer: Path, workdir: Path
) -> None:
    env = {
        **os.environ,
        "LD_PRELOAD": str(interposer),
        "SSI_IPC_SOCKET": str(workdir / "nobody-listens.sock"),
        "SSI_IPC_RETRY_MS": "100",
    }
    t0 = time.monotonic()
    out = subprocess.run(
        [str(programs["errnos"])], capture_output=True, text=True, timeout=60, env=env
    )
    assert time.monotonic() - t0 < 30
    assert out.stdout.splitlines()[0].split()[-1] == "other"  # EIO, not a kernel errno
