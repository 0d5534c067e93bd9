/* ssi-init: PID 1 of every job's PID namespace.
 *
 *   ssi-init [--status-file PATH] [--uid N] [--gid N] [--groups G,G...] [--cwd DIR]
 *            [--stdin PATH] [--stdout PATH] [--stderr PATH] [--sync-fd N]
 *            [--] CMD [ARGS...]
 *
 * Starts CMD as its child (same session and process group), then loops: reaps every
 * child and orphan, forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the main
 * process while it lives, else to every process of the namespace (kill(-1)), and
 * exits once no process of the job is left, so daemonizing programs stay in the job.
 * Exit status: the main's exit code, or 128+N if signal N killed it. If --status-file
 * is given, writes one JSON line there first (tmp file + rename), e.g.
 *   {"exited": 7, "utime": 0.01, "stime": 0.00, "maxrss_kb": 1532, ...}
 *   {"signaled": 15, "core_dumped": false, ...}
 *
 * The main process's identity and place, applied in the child before CMD runs, in
 * this order: --groups (none if --uid or --gid is given without it), --gid, --uid,
 * then chdir(--cwd). The init itself keeps its own: the job runtime starts it as root,
 * because CRIU needs the root of a PID namespace to mount a /proc there when it dumps
 * the job ("can't dump unprivileged task whose /proc doesn't belong to it").
 *
 * --stdin/--stdout/--stderr: files the main child opens after it has become the user
 * and entered --cwd (relative paths start there), so root never opens a path on the
 * user's behalf. Output files are appended to, created 0644 less the umask; the same
 * path for both is one open file. They become CMD's fds 0-2; the init's own stay as
 * they were. A failure here, or in the identity or chdir steps, ends the job with 125
 * and "setup_error" in its status file.
 *
 * --sync-fd N: the runtime's end of a socket inherited as fd N. The init waits for one
 * byte "G" there before it starts CMD, so that the runtime can first put it in the
 * job's cgroup: every process of the job is then born there. Then it answers "ok\n"
 * once CMD has been exec'd (or failed to exec: that is the job's status, 127 or 126),
 * or "error: WHY\n" if the setup failed, and closes N: the job holds no fd of the
 * runtime. EOF instead of "G" (the runtime died or gave up) ends the init with 125
 * before CMD runs.
 *
 * The loop is a blocked signal mask and sigwaitinfo, with no fd open, so that CRIU can
 * dump and restore the namespace at any point; every call retries on EINTR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define VERSION "1"

static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 };
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

static void usage(FILE *f)
{
    fputs("usage: ssi-init [--status-file PATH] [--uid N] [--gid N] [--groups G,G...]\n"
          "                [--cwd DIR] [--stdin PATH] [--stdout PATH] [--stderr PATH]\n"
          "                [--sync-fd N] [--] CMD [ARGS...]\n"
          "Run CMD as the job's main process; reap, forward signals, exit with its status.\n",
          f);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv_secs(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Append `src` to dst[*n..size) as the inside of a JSON string; truncates quietly. */
static void json_str(char *dst, size_t size, int *n, const char *src)
{
    for (; *src && (size_t)*n + 8 < size; src++) {
        unsigned char c = (unsigned char)*src;
        if (c == '"' || c == '\\')
            *n += snprintf(dst + *n, size - *n, "\\%c", c);
        else if (c < 0x20)
            *n += snprintf(dst + *n, size - *n, "\\u%04x", c);
        else
            dst[(*n)++] = (char)c;
    }
    dst[*n] = '\0';
}

static char setup_error[1024];  /* why the job could not start, for the status file */

/* One JSON line, written to PATH.tmp then renamed, so readers never see half of it. */
static void write_status(const char *path, int status, int exec_errno, double started)
{
    struct rusage ru;
    char line[2048], tmp[4096];
    int n, fd;

    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_CHILDREN, &ru);
    if (WIFSIGNALED(status))
        n = snprintf(line, sizeof line, "{\"signaled\": %d, \"core_dumped\": %s",
                     WTERMSIG(status), WCOREDUMP(status) ? "true" : "false");
    else
        n = snprintf(line, sizeof line, "{\"exited\": %d", WEXITSTATUS(status));
    if (exec_errno)
        n += snprintf(line + n, sizeof line - n, ", \"exec_errno\": %d, \"exec_error\": \"%s\"",
                      exec_errno, strerror(exec_errno));
    if (setup_error[0]) {
        n += snprintf(line + n, sizeof line - n, ", \"setup_error\": \"");
        json_str(line, sizeof line - 256, &n, setup_error);
        n += snprintf(line + n, sizeof line - n, "\"");
    }
    n += snprintf(line + n, sizeof line - n,
                  ", \"utime\": %.3f, \"stime\": %.3f, \"maxrss_kb\": %ld"
                  ", \"started\": %.3f, \"ended\": %.3f}\n",
                  tv_secs(ru.ru_utime), tv_secs(ru.ru_stime), ru.ru_maxrss, started, now());

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "ssi-init: status file path too long\n");
        return;
    }
    do
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    while (fd < 0 && errno == EINTR);
    if (fd < 0 || write_all(fd, line, (size_t)n) < 0 || fsync(fd) < 0 ||
        close(fd) < 0 || rename(tmp, path) < 0) {
        fprintf(stderr, "ssi-init: writing %s: %s\n", path, strerror(errno));
        unlink(tmp);
    }
}

#define MAX_GROUPS 256

/* Who the main process runs as and where: applied in the child before exec. */
struct setup {
    int set_ids;             /* --uid or --gid given: groups are set (maybe to none) */
    uid_t uid;
    gid_t gid;
    int has_uid, has_gid, has_groups;
    gid_t groups[MAX_GROUPS];
    size_t ngroups;
    const char *cwd;
    const char *stdio[3];
};

/* In the main child: become the user, enter the job's directory, open its stdio.
   Returns 0, or -1 with setup_error filled. */
static int setup_child(const struct setup *su)
{
    static const char *names[3] = { "--stdin", "--stdout", "--stderr" };
    int fds[3] = { -1, -1, -1 };

    if ((su->has_groups || su->set_ids) && setgroups(su->ngroups, su->groups) < 0) {
        snprintf(setup_error, sizeof setup_error, "setgroups: %s", strerror(errno));
        return -1;
    }
    if (su->has_gid && setgid(su->gid) < 0) {
        snprintf(setup_error, sizeof setup_error, "setgid(%u): %s", (unsigned)su->gid,
                 strerror(errno));
        return -1;
    }
    if (su->has_uid && setuid(su->uid) < 0) {
        snprintf(setup_error, sizeof setup_error, "setuid(%u): %s", (unsigned)su->uid,
                 strerror(errno));
        return -1;
    }
    if (su->cwd && chdir(su->cwd) < 0) {
        snprintf(setup_error, sizeof setup_error, "chdir(%s): %s", su->cwd,
                 strerror(errno));
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        const char *path = su->stdio[k];
        if (!path)
            continue;
        if (k == 2 && su->stdio[1] && !strcmp(su->stdio[1], path)) {
            fds[2] = fds[1];
            continue;
        }
        int flags = k == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND;
        do
            fds[k] = open(path, flags | O_CLOEXEC | O_NOCTTY, 0644);
        while (fds[k] < 0 && errno == EINTR);
        if (fds[k] < 0) {
            snprintf(setup_error, sizeof setup_error, "%s %s: %s", names[k], path,
                     strerror(errno));
            return -1;
        }
    }
    for (int k = 0; k < 3; k++)
        if (fds[k] >= 0 && dup2(fds[k], k) < 0) {
            snprintf(setup_error, sizeof setup_error, "dup2(%s): %s", names[k],
                     strerror(errno));
            return -1;
        }
    return 0;
}

/* Exec CMD in a child set up by `su`; returns its pid, its execvp errno through
   *exec_errno, and fills setup_error if the setup failed (the child exits 125). */
static pid_t start_main(char **cmd, const sigset_t *orig_mask, const struct setup *su,
                        int *exec_errno)
{
    int pipefd[2], err = 0;
    char msg[sizeof setup_error + 1];
    ssize_t n, got = 0;
    pid_t pid;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        if (setup_child(su) < 0) {
            msg[0] = 'S';
            strcpy(msg + 1, setup_error);
            write_all(pipefd[1], msg, strlen(msg));
            _exit(125);
        }
        execvp(cmd[0], cmd);
        err = errno;
        fprintf(stderr, "ssi-init: %s: %s\n", cmd[0], strerror(err));
        msg[0] = 'E';
        memcpy(msg + 1, &err, sizeof err);
        write_all(pipefd[1], msg, 1 + sizeof err);
        _exit(err == ENOENT ? 127 : 126);
    }
    close(pipefd[1]);
    if (pid > 0) {
        /* EOF at once (exec succeeded: the pipe closed on exec), else the child's
           'E' + errno, or 'S' + the setup error. */
        for (;;) {
            n = read(pipefd[0], msg + got, sizeof msg - 1 - (size_t)got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += n;
        }
        if (got == 1 + (ssize_t)sizeof err && msg[0] == 'E') {
            memcpy(&err, msg + 1, sizeof err);
            *exec_errno = err;
        } else if (got > 1 && msg[0] == 'S') {
            msg[got] = '\0';
            snprintf(setup_error, sizeof setup_error, "%s", msg + 1);
        }
    }
    close(pipefd[0]);
    return pid;
}

/* Wait for the runtime's "G" on fd (it has put us in the job's cgroup).
   Returns 0 to go on, -1 (setup_error filled) if it refused or went away. */
static int wait_for_go(int fd)
{
    char go = 0;
    ssize_t r;

    do
        r = read(fd, &go, 1);
    while (r < 0 && errno == EINTR);
    if (r == 1 && go == 'G')
        return 0;
    snprintf(setup_error, sizeof setup_error,
             "the runtime went away before the job was placed in its cgroup");
    return -1;
}

/* Tell the runtime how the start went, and let go of its socket. */
static void answer_runtime(int fd)
{
    char msg[sizeof setup_error + 16];
    int n;

    if (setup_error[0])
        n = snprintf(msg, sizeof msg, "error: %s\n", setup_error);
    else
        n = snprintf(msg, sizeof msg, "ok\n");
    if (n >= (int)sizeof msg)
        n = sizeof msg - 1;
    write_all(fd, msg, (size_t)n);
    close(fd);
}

static int parse_id(const char *s, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v > 0xFFFFFFFEul || *s == '-')
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_groups(const char *s, struct setup *su)
{
    char buf[4096], *tok, *save = NULL;

    if (strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    su->ngroups = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        unsigned g;
        if (su->ngroups == MAX_GROUPS || parse_id(tok, &g) < 0)
            return -1;
        su->groups[su->ngroups++] = g;
    }
    su->has_groups = 1;
    return 0;
}

static pid_t main_pid;
static int main_alive, main_status;

/* Reap everything that has exited; returns 0 once no child is left (the job is over). */
static int reap(void)
{
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            if (p == main_pid) {
                main_status = st;
                main_alive = 0;
            }
            continue;
        }
        if (p < 0 && errno == EINTR)
            continue;
        return !(p < 0 && errno == ECHILD);
    }
}

static void forward(int sig, const siginfo_t *si)
{
    /* SIGCHLD may be queued behind this signal: a main that just died must not take
       the signal with it to the grave while daemons live on. */
    reap();
    if (main_alive) {
        kill(main_pid, sig);
    } else if (getpid() == 1) {
        kill(-1, sig);          /* every process of our namespace but us */
    } else if (si->si_pid != getpid()) {
        /* Not a namespace init (tests, debugging): kill(-1) would hit the host, so
           settle for our process group; our own copy comes back and is dropped. */
        kill(0, sig);
    }
}

int main(int argc, char **argv)
{
    const char *status_file = NULL;
    static struct setup su;
    int sync_fd = -1;
    sigset_t set, orig;
    siginfo_t si;
    int i, exec_errno = 0;
    double started = now();

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--")) {
            i++;
            break;
        } else if (!strncmp(a, "--status-file=", 14)) {
            status_file = a + 14;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            puts("ssi-init " VERSION);
            return 0;
        } else if (!strcmp(a, "--status-file") || !strcmp(a, "-s") ||
                   !strcmp(a, "--uid") || !strcmp(a, "--gid") ||
                   !strcmp(a, "--groups") || !strcmp(a, "--cwd") ||
                   !strcmp(a, "--stdin") || !strcmp(a, "--stdout") ||
                   !strcmp(a, "--stderr") || !strcmp(a, "--sync-fd")) {
            unsigned id;
            int bad = 0;
            if (++i == argc) {
                usage(stderr);
                return 125;
            }
            v = argv[i];
            if (!strcmp(a, "--status-file") || !strcmp(a, "-s"))
                status_file = v;
            else if (!strcmp(a, "--uid"))
                bad = parse_id(v, &id) < 0, su.uid = id, su.has_uid = su.set_ids = 1;
            else if (!strcmp(a, "--gid"))
                bad = parse_id(v, &id) < 0, su.gid = id, su.has_gid = su.set_ids = 1;
            else if (!strcmp(a, "--groups"))
                bad = parse_groups(v, &su) < 0;
            else if (!strcmp(a, "--cwd"))
                su.cwd = v;
            else if (!strcmp(a, "--stdin"))
                su.stdio[0] = v;
            else if (!strcmp(a, "--stdout"))
                su.stdio[1] = v;
            else if (!strcmp(a, "--stderr"))
                su.stdio[2] = v;
            else
                bad = parse_id(v, &id) < 0 || id < 3 || id > 65535, sync_fd = (int)id;
            if (bad) {
                fprintf(stderr, "ssi-init: bad %s %s\n", a, v);
                return 125;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "ssi-init: unknown option %s\n", a);
            usage(stderr);
            return 125;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 125;
    }

    /* Block before the fork so no signal meant for the job can slip past us. */
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (size_t k = 0; k < NFORWARDED; k++)
        sigaddset(&set, forwarded[k]);
    sigprocmask(SIG_BLOCK, &set, &orig);
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    if (sync_fd >= 0) {
        fcntl(sync_fd, F_SETFD, FD_CLOEXEC);
        if (wait_for_go(sync_fd) < 0) {
            answer_runtime(sync_fd);
            if (status_file)
                write_status(status_file, 125 << 8, 0, started);
            return 125;
        }
    }
    main_pid = start_main(argv + i, &orig, &su, &exec_errno);
    if (main_pid < 0) {
        snprintf(setup_error, sizeof setup_error, "cannot start %s: %s", argv[i],
                 strerror(errno));
        fprintf(stderr, "ssi-init: %s\n", setup_error);
        if (sync_fd >= 0)
            answer_runtime(sync_fd);
        if (status_file)
            write_status(status_file, 125 << 8, 0, started);
        return 125;
    }
    main_alive = 1;
    if (sync_fd >= 0)
        answer_runtime(sync_fd);

    /* A SIGCHLD that comes after reap() stays pending: no lost wakeup. */
    while (reap()) {
        int sig = sigwaitinfo(&set, &si);
        if (sig > 0 && sig != SIGCHLD)
            forward(sig, &si);
    }

    if (status_file)
        write_status(status_file, main_status, exec_errno, started);
    if (WIFSIGNALED(main_status))
        return 128 + WTERMSIG(main_status);
    return WEXITSTATUS(main_status);
}
