"""cffi build script (API mode) for kernel_shim._kernel_shim.

Holds the C side of the shim: thin wrappers where glibc has the call, and ssi_spawn,
which starts a process with clone(CLONE_VM | CLONE_VFORK) so a threaded asyncio
daemon never forks its Python heap. The C source lives here (not in a .c file) so that
scripts/setup.sh, which hashes this file, rebuilds when it changes.
"""

from cffi import FFI  # type: ignore[import-untyped]

CDEF = """
#define CLONE_NEWNS ...
#define CLONE_NEWUTS ...
#define CLONE_NEWIPC ...
#define CLONE_NEWNET ...
#define CLONE_NEWPID ...
#define CLONE_NEWUSER ...
#define CLONE_NEWCGROUP ...
#define CLONE_NEWTIME ...

int setns(int fd, int nstype);
int unshare(int flags);
int sethostname(const char *name, size_t len);
int ssi_set_child_subreaper(int on);
int ssi_get_child_subreaper(void);
int ssi_set_pdeathsig(int sig);
int ssi_get_pdeathsig(void);

enum ssi_step {
    SSI_STEP_NONE, SSI_STEP_CLONE, SSI_STEP_SIGNALS, SSI_STEP_OPEN_NETNS,
    SSI_STEP_SETNS, SSI_STEP_UNSHARE_TIME, SSI_STEP_SETHOSTNAME, SSI_STEP_SETSID,
    SSI_STEP_SETGROUPS, SSI_STEP_SETGID, SSI_STEP_SETUID, SSI_STEP_CHDIR,
    SSI_STEP_DUP2, SSI_STEP_PASS_FD, SSI_STEP_CLOSE_RANGE, SSI_STEP_PDEATHSIG,
    SSI_STEP_EXECVE, SSI_STEP_MMAP
};

struct ssi_spawn_req {
    char **argv;
    char **envp;
    const char *path;
    const char *netns;
    const char *hostname;
    const char *cwd;
    int ns_flags;
    long long uid;
    long long gid;
    int set_groups;
    size_t ngroups;
    unsigned int *groups;
    int stdio[3];
    int *keep_fds;
    size_t nkeep;
    int new_session;
    int pdeathsig;
    int err_step;
    int err_errno;
    int err_arg;
};

int ssi_spawn(struct ssi_spawn_req *req);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

int ssi_set_child_subreaper(int on)
{
    return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0);
}
int ssi_get_child_subreaper(void)
{
    int on = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, &on, 0, 0, 0) < 0)
        return -1;
    return on;
}
int ssi_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
int ssi_get_pdeathsig(void)
{
    int sig = 0;
    if (prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) < 0)
        return -1;
    return sig;
}

enum ssi_step {
    SSI_STEP_NONE, SSI_STEP_CLONE, SSI_STEP_SIGNALS, SSI_STEP_OPEN_NETNS,
    SSI_STEP_SETNS, SSI_STEP_UNSHARE_TIME, SSI_STEP_SETHOSTNAME, SSI_STEP_SETSID,
    SSI_STEP_SETGROUPS, SSI_STEP_SETGID, SSI_STEP_SETUID, SSI_STEP_CHDIR,
    SSI_STEP_DUP2, SSI_STEP_PASS_FD, SSI_STEP_CLOSE_RANGE, SSI_STEP_PDEATHSIG,
    SSI_STEP_EXECVE, SSI_STEP_MMAP
};

struct ssi_spawn_req {
    char **argv;
    char **envp;
    const char *path;      /* PATH for the execvp-like lookup */
    const char *netns;     /* network namespace file, or NULL */
    const char *hostname;
    const char *cwd;
    int ns_flags;          /* CLONE_NEW* flags, CLONE_NEWTIME included */
    long long uid;         /* -1: unchanged */
    long long gid;         /* -1: unchanged */
    int set_groups;
    size_t ngroups;
    unsigned int *groups;
    int stdio[3];          /* -1: inherit */
    int *keep_fds;         /* sorted, all > 2 */
    size_t nkeep;
    int new_session;
    int pdeathsig;
    int err_step;          /* out: the failing step, SSI_STEP_NONE on success */
    int err_errno;
    int err_arg;           /* out: which fd or path index the step was about */
};

/* The child shares the parent's memory (CLONE_VM) until execve, so it must not touch
   anything glibc or Python may hold: raw syscalls only (glibc's setuid would signal the
   parent's threads), results written to *req, which the suspended parent reads. */
static int child_fail(struct ssi_spawn_req *r, int step, int arg)
{
    r->err_step = step;
    r->err_errno = errno;
    r->err_arg = arg;
    syscall(SYS_exit_group, 127);
    return 127;
}

static void child_exec(struct ssi_spawn_req *r)
{
    const char *file = r->argv[0];
    char buf[PATH_MAX];
    int seen_eacces = 0, last = ENOENT;
    size_t flen = strlen(file);

    if (strchr(file, '/') || !r->path) {
        syscall(SYS_execve, file, r->argv, r->envp);
        return;
    }
    for (const char *p = r->path;; ) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        if (dlen == 0) {        /* empty PATH entry: current directory */
            buf[0] = '.';
            dlen = 1;
        } else if (dlen < sizeof buf) {
            memcpy(buf, p, dlen);
        }
        if (dlen + 1 + flen < sizeof buf) {
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, file, flen + 1);
            syscall(SYS_execve, buf, r->argv, r->envp);
            switch (errno) {
            case EACCES:
                seen_eacces = 1;
                /* fall through */
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT:
                last = errno;
                break;
            default:
                return;         /* e.g. ENOEXEC, E2BIG: report it as is */
            }
        }
        if (!*end)
            break;
        p = end + 1;
    }
    errno = seen_eacces ? EACCES : last;
}

static int child_main(void *arg)
{
    struct ssi_spawn_req *r = arg;
    /* The kernel's struct sigaction: all zero is SIG_DFL with an empty mask. */
    struct { void *handler; unsigned long flags; void *restorer; unsigned long mask; }
        dfl = { 0 };
    unsigned long empty = 0;

    /* Default dispositions (Python ignores SIGPIPE, SIGXFSZ) and an empty mask. */
    for (int sig = 1; sig < 65; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8) < 0)
        return child_fail(r, SSI_STEP_SIGNALS, 0);

    if (r->netns) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, r->netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return child_fail(r, SSI_STEP_OPEN_NETNS, 0);
        if (syscall(SYS_setns, fd, CLONE_NEWNET) < 0)
            return child_fail(r, SSI_STEP_SETNS, 0);
        syscall(SYS_close, fd);
    }
    /* A time namespace only takes effect for children and at execve (Linux >= 5.16). */
    if ((r->ns_flags & CLONE_NEWTIME) && syscall(SYS_unshare, CLONE_NEWTIME) < 0)
        return child_fail(r, SSI_STEP_UNSHARE_TIME, 0);
    if (r->hostname && syscall(SYS_sethostname, r->hostname, strlen(r->hostname)) < 0)
        return child_fail(r, SSI_STEP_SETHOSTNAME, 0);
    if (r->new_session && syscall(SYS_setsid) < 0)
        return child_fail(r, SSI_STEP_SETSID, 0);
    if (r->set_groups && syscall(SYS_setgroups, r->ngroups, r->groups) < 0)
        return child_fail(r, SSI_STEP_SETGROUPS, 0);
    if (r->gid >= 0 && syscall(SYS_setresgid, r->gid, r->gid, r->gid) < 0)
        return child_fail(r, SSI_STEP_SETGID, 0);
    if (r->uid >= 0 && syscall(SYS_setresuid, r->uid, r->uid, r->uid) < 0)
        return child_fail(r, SSI_STEP_SETUID, 0);
    if (r->cwd && syscall(SYS_chdir, r->cwd) < 0)
        return child_fail(r, SSI_STEP_CHDIR, 0);

    /* Move sources that sit on 0..2 out of the way so dup2 cannot clobber them. */
    int src[3];
    for (int i = 0; i < 3; i++) {
        src[i] = r->stdio[i];
        if (src[i] >= 0 && src[i] < 3 && src[i] != i) {
            src[i] = (int)syscall(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, 3);
            if (src[i] < 0)
                return child_fail(r, SSI_STEP_DUP2, i);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (src[i] < 0)
            continue;
        if (src[i] == i) {
            if (syscall(SYS_fcntl, i, F_SETFD, 0) < 0)
                return child_fail(r, SSI_STEP_DUP2, i);
        } else if (syscall(SYS_dup2, src[i], i) < 0) {
            return child_fail(r, SSI_STEP_DUP2, i);
        }
    }
    unsigned int next = 3;
    for (size_t i = 0; i < r->nkeep; i++) {
        unsigned int fd = (unsigned int)r->keep_fds[i];
        if (syscall(SYS_fcntl, fd, F_SETFD, 0) < 0)
            return child_fail(r, SSI_STEP_PASS_FD, (int)fd);
        if (fd > next && syscall(SYS_close_range, next, fd - 1, 0) < 0)
            return child_fail(r, SSI_STEP_CLOSE_RANGE, (int)next);
        next = fd + 1;
    }
    if (syscall(SYS_close_range, next, ~0U, 0) < 0)
        return child_fail(r, SSI_STEP_CLOSE_RANGE, (int)next);

    /* After setuid: a credential change clears the parent-death signal. */
    if (r->pdeathsig && syscall(SYS_prctl, PR_SET_PDEATHSIG, r->pdeathsig, 0, 0, 0) < 0)
        return child_fail(r, SSI_STEP_PDEATHSIG, 0);
    child_exec(r);
    return child_fail(r, SSI_STEP_EXECVE, 0);
}

#define SSI_STACK_SIZE (256 * 1024)

int ssi_spawn(struct ssi_spawn_req *r)
{
    sigset_t all, old;
    int dumpable, saved_errno, pid;
    char *stack;

    r->err_step = SSI_STEP_NONE;
    r->err_errno = 0;
    stack = mmap(NULL, SSI_STACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        r->err_step = SSI_STEP_MMAP;
        r->err_errno = errno;
        return -1;
    }
    /* No signal handler may run in the child while it shares our memory. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* setuid in the child marks the shared mm undumpable: restore it afterwards. */
    dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);

    /* clone()'s low byte is the exit signal, so CLONE_NEWTIME is done by unshare. */
    pid = clone(child_main, stack + SSI_STACK_SIZE,
                (r->ns_flags & ~CLONE_NEWTIME) | CLONE_VM | CLONE_VFORK | SIGCHLD, r);
    saved_errno = errno;

    if (dumpable > 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable)
        prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, SSI_STACK_SIZE);

    if (pid < 0) {
        r->err_step = SSI_STEP_CLONE;
        r->err_errno = saved_errno;
        return -1;
    }
    if (r->err_step != SSI_STEP_NONE) {
        /* The child has exited (vfork semantics): reap it, unless someone beat us. */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    return pid;
}
"""

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source("kernel_shim._kernel_shim", SOURCE, py_limited_api=True)

if __name__ == "__main__":
    ffi.compile(verbose=True)
