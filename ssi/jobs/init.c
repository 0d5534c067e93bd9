/* ssi-init: PID 1 of every job's PID namespace.
 *
 *   ssi-init [--status-file PATH] [--stdin PATH] [--stdout PATH] [--stderr PATH]
 *            [--sync-fd N] [--] CMD [ARGS...]
 *
 * --stdin/--stdout/--stderr: files opened by the init itself, as whoever it runs as (the
 * job's user: never a path opened by root on the user's behalf), before anything else;
 * output files are created 0644 (less the umask) and appended to. They become fds 0-2
 * of the init and of CMD. If one cannot be opened, the init exits 125 and its status
 * file says why ("setup_error").
 *
 * --sync-fd N: the runtime's end of a socket (or pipe pair) inherited as fd N. Once its
 * stdio is open the init writes "ok\n" (or "error: WHY\n") there, then waits for one
 * byte "G" before it starts CMD, so that the runtime can first put it in the job's
 * cgroup: every process of the job is then born there. EOF instead of "G" (the runtime
 * died or gave up) ends the init with 125 and CMD never runs. N is closed before CMD
 * starts, so the job holds no fd of the runtime.
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
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define VERSION "1"

static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 };
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

static void usage(FILE *f)
{
    fputs("usage: ssi-init [--status-file PATH] [--stdin PATH] [--stdout PATH]\n"
          "                [--stderr PATH] [--sync-fd N] [--] CMD [ARGS...]\n"
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
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0 || write_all(fd, line, (size_t)n) < 0 || fsync(fd) < 0 ||
        close(fd) < 0 || rename(tmp, path) < 0) {
        fprintf(stderr, "ssi-init: writing %s: %s\n", path, strerror(errno));
        unlink(tmp);
    }
}

/* Exec CMD in a child; returns its pid, and its execvp errno through *exec_errno. */
static pid_t start_main(char **cmd, const sigset_t *orig_mask, int *exec_errno)
{
    int pipefd[2], err = 0;
    ssize_t n;
    pid_t pid;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        sigprocmask(SIG_SETMASK, orig_mask, NULL);
        execvp(cmd[0], cmd);
        err = errno;
        fprintf(stderr, "ssi-init: %s: %s\n", cmd[0], strerror(err));
        while (write(pipefd[1], &err, sizeof err) < 0 && errno == EINTR)
            ;
        _exit(err == ENOENT ? 127 : 126);
    }
    close(pipefd[1]);
    if (pid > 0) {
        /* EOF (exec succeeded, pipe closed on exec) or the child's errno. */
        do
            n = read(pipefd[0], &err, sizeof err);
        while (n < 0 && errno == EINTR);
        *exec_errno = n == (ssize_t)sizeof err ? err : 0;
    }
    close(pipefd[0]);
    return pid;
}

/* Open the job's stdio files as ourselves and make them fds 0-2; on failure, fill
   setup_error and return -1. Same path for stdout and stderr: one open file. */
static int open_stdio(const char *paths[3])
{
    static const char *names[3] = { "--stdin", "--stdout", "--stderr" };
    int fds[3] = { -1, -1, -1 };

    for (int k = 0; k < 3; k++) {
        if (!paths[k])
            continue;
        if (k == 2 && paths[1] && !strcmp(paths[1], paths[2])) {
            fds[2] = fds[1];
            continue;
        }
        int flags = k == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND;
        do
            fds[k] = open(paths[k], flags | O_CLOEXEC | O_NOCTTY, 0644);
        while (fds[k] < 0 && errno == EINTR);
        if (fds[k] < 0) {
            snprintf(setup_error, sizeof setup_error, "%s %s: %s", names[k], paths[k],
                     strerror(errno));
            return -1;
        }
    }
    for (int k = 0; k < 3; k++) {
        if (fds[k] < 0)
            continue;
        if (dup2(fds[k], k) < 0) {
            snprintf(setup_error, sizeof setup_error, "dup2(%s): %s", names[k],
                     strerror(errno));
            return -1;
        }
    }
    for (int k = 0; k < 3; k++)
        if (fds[k] > 2 && (k < 2 || fds[k] != fds[1]))
            close(fds[k]);
    return 0;
}

/* Tell the runtime how the setup went, then wait for its "G" (it has put us in the
   job's cgroup). Returns 0 to go on, -1 if the runtime refused or went away. */
static int sync_with_runtime(int fd, int setup_ok)
{
    char msg[1100], go = 0;
    int n;
    ssize_t r;

    if (setup_ok)
        n = snprintf(msg, sizeof msg, "ok\n");
    else
        n = snprintf(msg, sizeof msg, "error: %s\n", setup_error);
    if (n >= (int)sizeof msg)
        n = sizeof msg - 1;
    write_all(fd, msg, (size_t)n);
    if (!setup_ok) {
        close(fd);
        return -1;
    }
    do
        r = read(fd, &go, 1);
    while (r < 0 && errno == EINTR);
    close(fd);
    if (r == 1 && go == 'G')
        return 0;
    snprintf(setup_error, sizeof setup_error,
             "the runtime went away before the job was placed in its cgroup");
    return -1;
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
    const char *stdio_paths[3] = { NULL, NULL, NULL };
    int sync_fd = -1;
    sigset_t set, orig;
    siginfo_t si;
    int i, exec_errno = 0;
    double started = now();

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        } else if (!strcmp(a, "--status-file") || !strcmp(a, "-s")) {
            if (++i == argc) {
                usage(stderr);
                return 125;
            }
            status_file = argv[i];
        } else if (!strncmp(a, "--status-file=", 14)) {
            status_file = a + 14;
        } else if (!strcmp(a, "--stdin") || !strcmp(a, "--stdout") ||
                   !strcmp(a, "--stderr") || !strcmp(a, "--sync-fd")) {
            if (++i == argc) {
                usage(stderr);
                return 125;
            }
            if (!strcmp(a, "--sync-fd")) {
                char *end;
                long v = strtol(argv[i], &end, 10);
                if (*argv[i] == '\0' || *end != '\0' || v < 3 || v > 65535) {
                    fprintf(stderr, "ssi-init: bad --sync-fd %s\n", argv[i]);
                    return 125;
                }
                sync_fd = (int)v;
            } else {
                stdio_paths[!strcmp(a, "--stdin") ? 0 : !strcmp(a, "--stdout") ? 1 : 2] = argv[i];
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            puts("ssi-init " VERSION);
            return 0;
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

    if (sync_fd >= 0)
        fcntl(sync_fd, F_SETFD, FD_CLOEXEC);
    {
        int setup_ok = open_stdio(stdio_paths) == 0;
        if (!setup_ok)
            fprintf(stderr, "ssi-init: %s\n", setup_error);
        if ((sync_fd >= 0 && sync_with_runtime(sync_fd, setup_ok) < 0) || !setup_ok) {
            if (status_file)
                write_status(status_file, 125 << 8, 0, started);
            return 125;
        }
    }

    /* Block before the fork so no signal meant for the job can slip past us. */
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (size_t k = 0; k < NFORWARDED; k++)
        sigaddset(&set, forwarded[k]);
    sigprocmask(SIG_BLOCK, &set, &orig);
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    main_pid = start_main(argv + i, &orig, &exec_errno);
    if (main_pid < 0) {
        fprintf(stderr, "ssi-init: cannot start %s: %s\n", argv[i], strerror(errno));
        if (status_file)
            write_status(status_file, 125 << 8, 0, started);
        return 125;
    }
    main_alive = 1;

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
