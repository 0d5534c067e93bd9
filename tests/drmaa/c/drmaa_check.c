/* drmaa_check: drives libdrmaa as a C program does, one scenario per command.
 *
 *   drmaa_check SCENARIO [ARGS]     exit 0 and "ok SCENARIO" when every check held;
 *                                   exit 1 with the failed check on stderr otherwise
 *
 * Built by tests/drmaa/test_c_programs.py (-ldrmaa -lpthread) and run against a local
 * cluster (SSI_SOCKET), often under `env -i`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drmaa.h"

static char diag[DRMAA_ERROR_STRING_BUFFER];

#define CHECK(call, want)                                                         \
    do {                                                                          \
        int rc_ = (call);                                                         \
        if (rc_ != (want)) {                                                      \
            fprintf(stderr, "%s:%d: %s = %d (%s), want %d (%s); diagnosis: %s\n",  \
                    __FILE__, __LINE__, #call, rc_, drmaa_strerror(rc_), (want),  \
                    drmaa_strerror(want), diag);                                  \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

#define OK(call) CHECK(call, DRMAA_ERRNO_SUCCESS)

#define EXPECT(cond)                                                              \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);   \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static drmaa_job_template_t *template_of(const char *cmd, const char *const *args)
{
    drmaa_job_template_t *jt = NULL;
    OK(drmaa_allocate_job_template(&jt, diag, sizeof diag));
    OK(drmaa_set_attribute(jt, DRMAA_REMOTE_COMMAND, cmd, diag, sizeof diag));
    if (args)
        OK(drmaa_set_vector_attribute(jt, DRMAA_V_ARGV, (const char **)args, diag,
                                      sizeof diag));
    return jt;
}

/* A shell job; its PATH is set, whatever the caller's environment (the job's starts
   as a copy of it). */
static drmaa_job_template_t *shell(const char *script)
{
    const char *args[] = {"-c", script, NULL};
    const char *env[] = {"PATH=/usr/bin:/bin", NULL};
    drmaa_job_template_t *jt = template_of("/bin/sh", args);
    OK(drmaa_set_vector_attribute(jt, DRMAA_V_ENV, env, diag, sizeof diag));
    return jt;
}

static void run(drmaa_job_template_t *jt, char *id, size_t len)
{
    OK(drmaa_run_job(id, len, jt, diag, sizeof diag));
}

/* Waits for `id`; returns its stat. */
static int wait_for(const char *id, long timeout)
{
    char out[DRMAA_JOBNAME_BUFFER];
    int stat = 0;
    drmaa_attr_values_t *rusage = NULL;
    OK(drmaa_wait(id, out, sizeof out, &stat, timeout, &rusage, diag, sizeof diag));
    if (strcmp(id, DRMAA_JOB_IDS_SESSION_ANY) != 0)
        EXPECT(strcmp(out, id) == 0);
    drmaa_release_attr_values(rusage);
    return stat;
}

static int exited_with(int stat)
{
    int exited = 0, code = -1;
    OK(drmaa_wifexited(&exited, stat, diag, sizeof diag));
    if (!exited)
        return -1;
    OK(drmaa_wexitstatus(&code, stat, diag, sizeof diag));
    return code;
}

static int ps(const char *id)
{
    int state = -1;
    OK(drmaa_job_ps(id, &state, diag, sizeof diag));
    return state;
}

/* Polls drmaa_job_ps until `id` is in `state` (10 s at most). */
static void wait_state(const char *id, int state)
{
    double until = now() + 10;
    while (ps(id) != state) {
        if (now() > until) {
            fprintf(stderr, "job %s: state 0x%x, want 0x%x\n", id, ps(id), state);
            exit(1);
        }
        usleep(20000);
    }
}

static void init(const char *contact)
{
    OK(drmaa_init(contact, diag, sizeof diag));
}

static void finish(const char *name)
{
    OK(drmaa_exit(diag, sizeof diag));
    printf("ok %s\n", name);
}

/* --- scenarios ----------------------------------------------------------------- */

static int basic(void)
{
    char id[64], contact[DRMAA_CONTACT_BUFFER], value[DRMAA_ATTR_BUFFER];
    const char *env[] = {"GREETING=hello", NULL};
    drmaa_job_template_t *jt;
    drmaa_attr_values_t *rusage = NULL;
    int stat = 0, seen = 0;
    char out[64];

    init(NULL);
    OK(drmaa_get_contact(contact, sizeof contact, diag, sizeof diag));
    EXPECT(strncmp(contact, "drmaa-", 6) == 0);
    jt = shell("echo $GREETING from $(pwd); exit 7");
    OK(drmaa_set_vector_attribute(jt, DRMAA_V_ENV, env, diag, sizeof diag));
    OK(drmaa_set_attribute(jt, DRMAA_JOB_NAME, "basic", diag, sizeof diag));
    OK(drmaa_get_attribute(jt, DRMAA_JOB_NAME, value, sizeof value, diag, sizeof diag));
    EXPECT(strcmp(value, "basic") == 0);
    OK(drmaa_get_attribute(jt, DRMAA_JS_STATE, value, sizeof value, diag, sizeof diag));
    EXPECT(strcmp(value, DRMAA_SUBMISSION_STATE_ACTIVE) == 0);
    run(jt, id, sizeof id);
    OK(drmaa_wait(id, out, sizeof out, &stat, DRMAA_TIMEOUT_WAIT_FOREVER, &rusage, diag,
                  sizeof diag));
    EXPECT(strcmp(out, id) == 0);
    EXPECT(exited_with(stat) == 7);
    while (drmaa_get_next_attr_value(rusage, value, sizeof value) == DRMAA_ERRNO_SUCCESS) {
        EXPECT(strchr(value, '=') != NULL);
        if (strncmp(value, "cpu=", 4) == 0 || strncmp(value, "hostname=", 9) == 0)
            seen++;
        printf("rusage %s\n", value);
    }
    EXPECT(seen == 2);
    CHECK(drmaa_get_next_attr_value(rusage, value, sizeof value),
          DRMAA_ERRNO_NO_MORE_ELEMENTS);
    drmaa_release_attr_values(rusage);
    /* reaped: a second wait does not find it */
    CHECK(drmaa_wait(id, out, sizeof out, &stat, 0, NULL, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    OK(drmaa_delete_job_template(jt, diag, sizeof diag));
    printf("job %s\n", id);
    finish("basic");
    return 0;
}

static int exit_codes(void)
{
    drmaa_job_template_t *jt = shell("exit $(($SSI_TASK_ID - 1))");
    drmaa_job_ids_t *ids = NULL;
    char id[64];
    size_t n = 0;
    int seen[256] = {0}, total = 0;

    OK(drmaa_run_bulk_jobs(&ids, jt, 1, 256, 1, diag, sizeof diag));
    OK(drmaa_get_num_job_ids(ids, &n));
    EXPECT(n == 256);
    while (drmaa_get_next_job_id(ids, id, sizeof id) == DRMAA_ERRNO_SUCCESS)
        total++;
    EXPECT(total == 256);
    drmaa_release_job_ids(ids);
    for (int i = 0; i < 256; i++) {
        int code = exited_with(wait_for(DRMAA_JOB_IDS_SESSION_ANY, 120));
        EXPECT(code >= 0 && code <= 255);
        seen[code]++;
    }
    for (int c = 0; c < 256; c++)
        EXPECT(seen[c] == 1);
    /* nothing left to wait for */
    CHECK(drmaa_wait(DRMAA_JOB_IDS_SESSION_ANY, NULL, 0, NULL, 0, NULL, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    return 0;
}

/* argv[2]: a directory shared by the test; outputs land there. */
static int bulk(const char *dir)
{
    char path[4096], id[64], wd[4096];
    drmaa_job_template_t *jt = shell("echo task $SSI_TASK_ID in $(pwd)");
    drmaa_job_ids_t *ids = NULL;
    const char *all[] = {DRMAA_JOB_IDS_SESSION_ALL, NULL};
    size_t n = 0;

    snprintf(wd, sizeof wd, "%s/wd.$drmaa_incr_ph$", dir);
    OK(drmaa_set_attribute(jt, DRMAA_WD, wd, diag, sizeof diag));
    OK(drmaa_set_attribute(jt, DRMAA_OUTPUT_PATH, ":$drmaa_wd_ph$/out.$drmaa_incr_ph$",
                           diag, sizeof diag));
    snprintf(path, sizeof path, "%s/err.$drmaa_incr_ph$", dir);
    OK(drmaa_set_attribute(jt, DRMAA_ERROR_PATH, path, diag, sizeof diag));
    OK(drmaa_run_bulk_jobs(&ids, jt, 2, 10, 3, diag, sizeof diag)); /* 2, 5, 8 */
    OK(drmaa_get_num_job_ids(ids, &n));
    EXPECT(n == 3);
    while (drmaa_get_next_job_id(ids, id, sizeof id) == DRMAA_ERRNO_SUCCESS)
        printf("bulk %s\n", id);
    drmaa_release_job_ids(ids);
    /* bad index ranges */
    CHECK(drmaa_run_bulk_jobs(&ids, jt, 0, 3, 1, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_run_bulk_jobs(&ids, jt, 5, 3, 1, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_run_bulk_jobs(&ids, jt, 1, 3, 0, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    /* $drmaa_hd_ph$: the home directory */
    drmaa_job_template_t *home = shell("pwd");
    OK(drmaa_set_attribute(home, DRMAA_WD, "$drmaa_hd_ph$", diag, sizeof diag));
    snprintf(path, sizeof path, "%s/home.out", dir);
    OK(drmaa_set_attribute(home, DRMAA_OUTPUT_PATH, path, diag, sizeof diag));
    OK(drmaa_set_attribute(home, DRMAA_JOIN_FILES, "y", diag, sizeof diag));
    run(home, id, sizeof id);
    OK(drmaa_synchronize(all, DRMAA_TIMEOUT_WAIT_FOREVER, 0, diag, sizeof diag));
    /* not disposed: each can still be waited for, exactly once */
    for (int i = 0; i < 4; i++)
        EXPECT(exited_with(wait_for(DRMAA_JOB_IDS_SESSION_ANY, 0)) == 0);
    CHECK(drmaa_wait(DRMAA_JOB_IDS_SESSION_ANY, NULL, 0, NULL, 0, NULL, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    return 0;
}

static int timeouts(void)
{
    char id[64], short_id[64];
    const char *ids[] = {NULL, NULL};
    double t;
    int stat = 0, sig = 0;
    char name[DRMAA_SIGNAL_BUFFER];
    drmaa_job_template_t *jt = shell("sleep 30");

    run(jt, id, sizeof id);
    ids[0] = id;
    t = now();
    CHECK(drmaa_wait(id, NULL, 0, &stat, DRMAA_TIMEOUT_NO_WAIT, NULL, diag, sizeof diag),
          DRMAA_ERRNO_EXIT_TIMEOUT);
    EXPECT(now() - t < 1.0);
    t = now();
    CHECK(drmaa_wait(DRMAA_JOB_IDS_SESSION_ANY, NULL, 0, &stat, DRMAA_TIMEOUT_NO_WAIT, NULL,
                     diag, sizeof diag),
          DRMAA_ERRNO_EXIT_TIMEOUT);
    EXPECT(now() - t < 1.0);
    t = now();
    CHECK(drmaa_wait(id, NULL, 0, &stat, 1, NULL, diag, sizeof diag),
          DRMAA_ERRNO_EXIT_TIMEOUT);
    EXPECT(now() - t >= 0.9 && now() - t < 5.0);
    t = now();
    CHECK(drmaa_synchronize(ids, 1, 1, diag, sizeof diag), DRMAA_ERRNO_EXIT_TIMEOUT);
    EXPECT(now() - t >= 0.9 && now() - t < 5.0);
    CHECK(drmaa_synchronize(ids, DRMAA_TIMEOUT_NO_WAIT, 1, diag, sizeof diag),
          DRMAA_ERRNO_EXIT_TIMEOUT);
    CHECK(drmaa_wait(id, NULL, 0, &stat, -5, NULL, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    /* a job that ends within the timeout */
    run(shell("sleep 0.3"), short_id, sizeof short_id);
    t = now();
    EXPECT(exited_with(wait_for(short_id, 20)) == 0);
    EXPECT(now() - t < 10.0);
    /* forever, on a job ended by TERMINATE */
    OK(drmaa_control(id, DRMAA_CONTROL_TERMINATE, diag, sizeof diag));
    stat = wait_for(id, DRMAA_TIMEOUT_WAIT_FOREVER);
    OK(drmaa_wifsignaled(&sig, stat, diag, sizeof diag));
    EXPECT(sig == 1);
    OK(drmaa_wtermsig(name, sizeof name, stat, diag, sizeof diag));
    EXPECT(strcmp(name, "SIGTERM") == 0);
    return 0;
}

static int control(void)
{
    char id[64], held[64], queued[64], a[64], b[64];
    int stat, sig, aborted = 0;
    const char *all[] = {DRMAA_JOB_IDS_SESSION_ALL, NULL};
    drmaa_job_template_t *sleeper = shell("sleep 30");

    run(sleeper, id, sizeof id);
    wait_state(id, DRMAA_PS_RUNNING);
    OK(drmaa_control(id, DRMAA_CONTROL_SUSPEND, diag, sizeof diag));
    EXPECT(ps(id) == DRMAA_PS_USER_SUSPENDED);
    CHECK(drmaa_control(id, DRMAA_CONTROL_SUSPEND, diag, sizeof diag),
          DRMAA_ERRNO_SUSPEND_INCONSISTENT_STATE);
    OK(drmaa_control(id, DRMAA_CONTROL_RESUME, diag, sizeof diag));
    EXPECT(ps(id) == DRMAA_PS_RUNNING);
    CHECK(drmaa_control(id, DRMAA_CONTROL_RESUME, diag, sizeof diag),
          DRMAA_ERRNO_RESUME_INCONSISTENT_STATE);
    CHECK(drmaa_control(id, DRMAA_CONTROL_HOLD, diag, sizeof diag),
          DRMAA_ERRNO_HOLD_INCONSISTENT_STATE);
    CHECK(drmaa_control(id, DRMAA_CONTROL_RELEASE, diag, sizeof diag),
          DRMAA_ERRNO_RELEASE_INCONSISTENT_STATE);
    CHECK(drmaa_control(id, 99, diag, sizeof diag), DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_control("999999999", DRMAA_CONTROL_SUSPEND, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    CHECK(drmaa_control("not-a-job", DRMAA_CONTROL_SUSPEND, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    OK(drmaa_control(id, DRMAA_CONTROL_TERMINATE, diag, sizeof diag));
    stat = wait_for(id, 30);
    OK(drmaa_wifsignaled(&sig, stat, diag, sizeof diag));
    EXPECT(sig == 1);

    /* submitted on hold, then released */
    drmaa_job_template_t *quick = shell("exit 0");
    OK(drmaa_set_attribute(quick, DRMAA_JS_STATE, DRMAA_SUBMISSION_STATE_HOLD, diag,
                           sizeof diag));
    run(quick, held, sizeof held);
    EXPECT(ps(held) == DRMAA_PS_USER_ON_HOLD);
    OK(drmaa_control(held, DRMAA_CONTROL_RELEASE, diag, sizeof diag));
    EXPECT(exited_with(wait_for(held, 30)) == 0);

    /* queued (no node has 64 CPUs): hold, release, terminate = cancel */
    OK(drmaa_set_attribute(sleeper, DRMAA_NATIVE_SPECIFICATION, "cpus>=64", diag,
                           sizeof diag));
    run(sleeper, queued, sizeof queued);
    EXPECT(ps(queued) == DRMAA_PS_QUEUED_ACTIVE);
    OK(drmaa_control(queued, DRMAA_CONTROL_HOLD, diag, sizeof diag));
    EXPECT(ps(queued) == DRMAA_PS_USER_ON_HOLD);
    OK(drmaa_control(queued, DRMAA_CONTROL_RELEASE, diag, sizeof diag));
    EXPECT(ps(queued) == DRMAA_PS_QUEUED_ACTIVE);
    OK(drmaa_control(queued, DRMAA_CONTROL_TERMINATE, diag, sizeof diag));
    EXPECT(ps(queued) == DRMAA_PS_FAILED);
    stat = wait_for(queued, 10);
    OK(drmaa_wifaborted(&aborted, stat, diag, sizeof diag));
    EXPECT(aborted == 1);

    /* the whole session */
    OK(drmaa_set_attribute(sleeper, DRMAA_NATIVE_SPECIFICATION, "", diag, sizeof diag));
    run(sleeper, a, sizeof a);
    run(sleeper, b, sizeof b);
    wait_state(a, DRMAA_PS_RUNNING);
    wait_state(b, DRMAA_PS_RUNNING);
    OK(drmaa_control(DRMAA_JOB_IDS_SESSION_ALL, DRMAA_CONTROL_SUSPEND, diag, sizeof diag));
    EXPECT(ps(a) == DRMAA_PS_USER_SUSPENDED && ps(b) == DRMAA_PS_USER_SUSPENDED);
    OK(drmaa_control(DRMAA_JOB_IDS_SESSION_ALL, DRMAA_CONTROL_RESUME, diag, sizeof diag));
    EXPECT(ps(a) == DRMAA_PS_RUNNING && ps(b) == DRMAA_PS_RUNNING);
    OK(drmaa_control(DRMAA_JOB_IDS_SESSION_ALL, DRMAA_CONTROL_TERMINATE, diag,
                     sizeof diag));
    OK(drmaa_synchronize(all, 30, 0, diag, sizeof diag));
    EXPECT(ps(a) == DRMAA_PS_FAILED && ps(b) == DRMAA_PS_FAILED);
    OK(drmaa_synchronize(all, 30, 1, diag, sizeof diag)); /* dispose */
    CHECK(drmaa_wait(a, NULL, 0, NULL, 0, NULL, diag, sizeof diag), DRMAA_ERRNO_INVALID_JOB);
    return 0;
}

static int signals(void)
{
    static const struct {
        const char *script, *name;
    } cases[] = {
        {"kill -TERM $$", "SIGTERM"},
        {"kill -KILL $$", "SIGKILL"},
        {"kill -USR1 $$", "SIGUSR1"},
        {"ulimit -c 0; kill -SEGV $$", "SIGSEGV"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char id[64], name[DRMAA_SIGNAL_BUFFER];
        int stat, flag = -1, core = -1;
        run(shell(cases[i].script), id, sizeof id);
        stat = wait_for(id, 30);
        OK(drmaa_wifexited(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 0);
        OK(drmaa_wifsignaled(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 1);
        OK(drmaa_wifaborted(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 0);
        OK(drmaa_wtermsig(name, sizeof name, stat, diag, sizeof diag));
        EXPECT(strcmp(name, cases[i].name) == 0);
        OK(drmaa_wcoredump(&core, stat, diag, sizeof diag));
        EXPECT(core == 0);
        EXPECT(ps(id) == DRMAA_PS_FAILED);
        /* a short buffer is cut, never overrun */
        OK(drmaa_wtermsig(name, 4, stat, diag, sizeof diag));
        EXPECT(strlen(name) == 3);
    }
    return 0;
}

/* argv[2]: a directory. Jobs that cannot start end FAILED and aborted; the session
   goes on. */
static int aborted(const char *dir)
{
    char path[4096];
    const char *what[] = {DRMAA_WD, DRMAA_INPUT_PATH, DRMAA_OUTPUT_PATH, DRMAA_ERROR_PATH};
    const char *value[] = {"/nonexistent/wd", "/nonexistent/input", ":/nonexistent/dir/out",
                           "nohost:/nonexistent/dir/err"};
    for (int i = 0; i < 4; i++) {
        char id[64];
        const char *ids[] = {id, NULL};
        int stat, flag = -1;
        drmaa_job_template_t *jt = shell("echo should not run");
        OK(drmaa_set_attribute(jt, what[i], value[i], diag, sizeof diag));
        run(jt, id, sizeof id);
        OK(drmaa_synchronize(ids, 30, 0, diag, sizeof diag));
        EXPECT(ps(id) == DRMAA_PS_FAILED);
        stat = wait_for(id, 0);
        OK(drmaa_wifaborted(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 1);
        OK(drmaa_wifexited(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 0);
        OK(drmaa_wifsignaled(&flag, stat, diag, sizeof diag));
        EXPECT(flag == 0);
        OK(drmaa_delete_job_template(jt, diag, sizeof diag));
    }
    char id[64];
    drmaa_job_template_t *good = shell("echo fine");
    snprintf(path, sizeof path, "%s/fine.out", dir);
    OK(drmaa_set_attribute(good, DRMAA_OUTPUT_PATH, path, diag, sizeof diag));
    run(good, id, sizeof id);
    EXPECT(exited_with(wait_for(id, 30)) == 0);
    EXPECT(ps(id) == DRMAA_PS_DONE);
    return 0;
}

static int attrs(void)
{
    drmaa_job_template_t *jt = NULL;
    drmaa_attr_names_t *names = NULL;
    drmaa_attr_values_t *values = NULL;
    char value[DRMAA_ATTR_BUFFER], id[64];
    const char *argv[] = {"a", "b", NULL};
    const char *bad_env[] = {"NOEQUALS", NULL};
    size_t n = 0;
    int found = 0, stat, flag;

    OK(drmaa_allocate_job_template(&jt, NULL, 0));
    CHECK(drmaa_set_attribute(jt, "drmaa_no_such_thing", "x", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_attribute(jt, "drmaa_no_such_thing", "x", NULL, 0),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_get_attribute(jt, "drmaa_no_such_thing", value, sizeof value, diag,
                              sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_attribute(jt, DRMAA_V_ARGV, "x", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_vector_attribute(jt, DRMAA_REMOTE_COMMAND, argv, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_attribute(jt, DRMAA_WCT_SLIMIT, "10", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_attribute(jt, DRMAA_TRANSFER_FILES, "i", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_set_attribute(jt, DRMAA_JS_STATE, "drmaa_sleeping", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_VALUE);
    CHECK(drmaa_set_attribute(jt, DRMAA_JOIN_FILES, "maybe", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_VALUE);
    CHECK(drmaa_set_attribute(jt, DRMAA_WCT_HLIMIT, "ten", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_FORMAT);
    CHECK(drmaa_set_attribute(jt, DRMAA_START_TIME, "tomorrow", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_FORMAT);
    CHECK(drmaa_set_vector_attribute(jt, DRMAA_V_ENV, bad_env, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_FORMAT);
    /* no command yet */
    CHECK(drmaa_run_job(id, sizeof id, jt, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_VALUE);
    EXPECT(strstr(diag, "drmaa_remote_command") != NULL);
    /* names */
    OK(drmaa_get_attribute_names(&names, diag, sizeof diag));
    OK(drmaa_get_num_attr_names(names, &n));
    EXPECT(n >= 12);
    while (drmaa_get_next_attr_name(names, value, sizeof value) == DRMAA_ERRNO_SUCCESS)
        found += strcmp(value, DRMAA_WCT_HLIMIT) == 0 || strcmp(value, DRMAA_WD) == 0;
    EXPECT(found == 2);
    drmaa_release_attr_names(names);
    OK(drmaa_get_vector_attribute_names(&names, diag, sizeof diag));
    OK(drmaa_get_num_attr_names(names, &n));
    EXPECT(n == 3);
    drmaa_release_attr_names(names);
    /* vectors round trip; values are cut to the buffer */
    OK(drmaa_set_vector_attribute(jt, DRMAA_V_ARGV, argv, diag, sizeof diag));
    OK(drmaa_get_vector_attribute(jt, DRMAA_V_ARGV, &values, diag, sizeof diag));
    OK(drmaa_get_num_attr_values(values, &n));
    EXPECT(n == 2);
    OK(drmaa_get_next_attr_value(values, value, sizeof value));
    EXPECT(strcmp(value, "a") == 0);
    drmaa_release_attr_values(values);
    OK(drmaa_set_attribute(jt, DRMAA_JOB_NAME, "a-rather-long-name", NULL, 0));
    OK(drmaa_get_attribute(jt, DRMAA_JOB_NAME, value, 5, NULL, 0));
    EXPECT(strcmp(value, "a-ra") == 0);
    /* a bad native specification is refused at submission, with where */
    OK(drmaa_set_attribute(jt, DRMAA_REMOTE_COMMAND, "/bin/true", diag, sizeof diag));
    OK(drmaa_set_attribute(jt, DRMAA_NATIVE_SPECIFICATION, "cpu>=2", diag, sizeof diag));
    CHECK(drmaa_run_job(id, sizeof id, jt, diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ATTRIBUTE_VALUE);
    EXPECT(strstr(diag, "cpus") != NULL);
    CHECK(drmaa_run_job(id, sizeof id, jt, NULL, 0), DRMAA_ERRNO_INVALID_ATTRIBUTE_VALUE);
    OK(drmaa_set_attribute(jt, DRMAA_NATIVE_SPECIFICATION, "cpus>=1 mem>=1M", diag,
                           sizeof diag));
    OK(drmaa_run_job(id, sizeof id, jt, NULL, 0));
    EXPECT(exited_with(wait_for(id, 30)) == 0);
    /* wall-clock limit: a 30 s sleep is stopped after 1 s */
    drmaa_job_template_t *slow = shell("sleep 30");
    OK(drmaa_set_attribute(slow, DRMAA_WCT_HLIMIT, "0:0:1", diag, sizeof diag));
    double t = now();
    run(slow, id, sizeof id);
    stat = wait_for(id, 60);
    EXPECT(now() - t < 20.0);
    OK(drmaa_wifsignaled(&flag, stat, diag, sizeof diag));
    EXPECT(flag == 1);
    /* a start time in the past: runs now */
    drmaa_job_template_t *start = shell("exit 4");
    OK(drmaa_set_attribute(start, DRMAA_START_TIME, "2001/01/01 00:00", diag, sizeof diag));
    run(start, id, sizeof id);
    EXPECT(exited_with(wait_for(id, 30)) == 4);
    /* handles we never gave out */
    drmaa_job_template_t *bogus = (drmaa_job_template_t *)value;
    CHECK(drmaa_set_attribute(bogus, DRMAA_JOB_NAME, "x", diag, sizeof diag),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    CHECK(drmaa_get_next_attr_value((drmaa_attr_values_t *)value, value, sizeof value),
          DRMAA_ERRNO_INVALID_ARGUMENT);
    OK(drmaa_delete_job_template(jt, diag, sizeof diag));
    CHECK(drmaa_delete_job_template(jt, diag, sizeof diag), DRMAA_ERRNO_INVALID_ARGUMENT);
    return 0;
}

/* --- threads --------------------------------------------------------------------- */

static volatile int blocker_done;

static void *blocker(void *arg)
{
    EXPECT(exited_with(wait_for((const char *)arg, DRMAA_TIMEOUT_WAIT_FOREVER)) == 0);
    blocker_done = 1;
    return NULL;
}

static void *worker(void *arg)
{
    char id[64], script[64];
    char err[DRMAA_ERROR_STRING_BUFFER];
    int n = (int)(long)arg;
    for (int i = 0; i < 5; i++) {
        drmaa_job_template_t *jt = NULL;
        int stat = 0, exited = 0, code = -1;
        const char *args[] = {"-c", script, NULL};
        snprintf(script, sizeof script, "exit %d", (n * 5 + i) % 256);
        if (drmaa_allocate_job_template(&jt, err, sizeof err) ||
            drmaa_set_attribute(jt, DRMAA_REMOTE_COMMAND, "/bin/sh", err, sizeof err) ||
            drmaa_set_vector_attribute(jt, DRMAA_V_ARGV, args, err, sizeof err) ||
            drmaa_run_job(id, sizeof id, jt, err, sizeof err) ||
            drmaa_wait(id, NULL, 0, &stat, 60, NULL, err, sizeof err) ||
            drmaa_wifexited(&exited, stat, err, sizeof err) ||
            drmaa_wexitstatus(&code, stat, err, sizeof err) ||
            drmaa_delete_job_template(jt, err, sizeof err)) {
            fprintf(stderr, "thread %d: %s\n", n, err);
            exit(1);
        }
        if (!exited || code != (n * 5 + i) % 256) {
            fprintf(stderr, "thread %d: job %s exited %d code %d stat 0x%x\n", n, id, exited, code, stat);
            exit(1);
        }
    }
    return NULL;
}

static int threads(void)
{
    pthread_t block, workers[8];
    char id[64];
    int progress = 0;

    run(shell("sleep 3"), id, sizeof id);
    pthread_create(&block, NULL, blocker, id);
    usleep(200000);
    /* while one thread waits, others go on: a blocked wait holds no lock */
    while (!blocker_done && progress < 20) {
        ps(id);
        progress++;
        usleep(10000);
    }
    EXPECT(progress == 20 && !blocker_done);
    for (long i = 0; i < 8; i++)
        pthread_create(&workers[i], NULL, worker, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(workers[i], NULL);
    pthread_join(block, NULL);
    EXPECT(blocker_done);
    return 0;
}

/* --- fork ------------------------------------------------------------------------- */

static int forked(void)
{
    pthread_t block;
    char id[64], child_id[64];
    int status;

    run(shell("sleep 2"), id, sizeof id);
    pthread_create(&block, NULL, blocker, id); /* a thread inside drmaa_wait */
    usleep(200000);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        run(shell("exit 9"), child_id, sizeof child_id);
        EXPECT(exited_with(wait_for(child_id, 60)) == 9);
        printf("child ok\n");
        fflush(stdout);
        _exit(0);
    }
    EXPECT(pid > 0);
    EXPECT(waitpid(pid, &status, 0) == pid);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pthread_join(block, NULL);
    /* the parent goes on too */
    run(shell("exit 3"), id, sizeof id);
    EXPECT(exited_with(wait_for(id, 60)) == 3);
    return 0;
}

/* The first calls of a process, from several threads at once: one of them starts
   Python, the others wait for it, all succeed. */
static void *first_call(void *arg)
{
    char buf[DRMAA_DRM_SYSTEM_BUFFER], err[DRMAA_ERROR_STRING_BUFFER];
    int rc = drmaa_get_DRM_system(buf, sizeof buf, err, sizeof err);
    if (rc != DRMAA_ERRNO_SUCCESS || strncmp(buf, "ssi", 3) != 0) {
        fprintf(stderr, "first call in thread %ld: %d %s\n", (long)arg, rc, err);
        exit(1);
    }
    return NULL;
}

static int first_calls(void)
{
    pthread_t t[16];
    for (long i = 0; i < 16; i++)
        pthread_create(&t[i], NULL, first_call, (void *)i);
    for (int i = 0; i < 16; i++)
        pthread_join(t[i], NULL);
    printf("ok first-calls\n");
    return 0;
}

/* SIGPIPE left at its default (death): ssid goes away between two calls; the next
   call reports a communication failure and the program lives on. */
static int sigpipe(void)
{
    char line[16];
    int state;
    signal(SIGPIPE, SIG_DFL);
    init(NULL);
    printf("ready\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    CHECK(drmaa_job_ps("1", &state, diag, sizeof diag),
          DRMAA_ERRNO_DRM_COMMUNICATION_FAILURE);
    printf("ok sigpipe\n");
    return 0;
}

/* --- sessions --------------------------------------------------------------------- */

static int reattach_submit(void)
{
    char id[64], contact[DRMAA_CONTACT_BUFFER];
    init(NULL);
    OK(drmaa_get_contact(contact, sizeof contact, diag, sizeof diag));
    run(shell("sleep 1; exit 5"), id, sizeof id);
    printf("job %s\n", id);
    run(shell("exit 6"), id, sizeof id);
    printf("job %s\n", id);
    printf("contact %s\n", contact);
    finish("reattach-submit");
    return 0;
}

static int reattach_wait(const char *contact)
{
    char got[DRMAA_CONTACT_BUFFER], id[64];
    int stat, codes = 0;
    init(contact);
    OK(drmaa_get_contact(got, sizeof got, diag, sizeof diag));
    EXPECT(strcmp(got, contact) == 0);
    for (int i = 0; i < 2; i++) {
        OK(drmaa_wait(DRMAA_JOB_IDS_SESSION_ANY, id, sizeof id, &stat, 60, NULL, diag,
                      sizeof diag));
        codes += exited_with(stat);
        printf("waited %s\n", id);
    }
    EXPECT(codes == 11);
    CHECK(drmaa_wait(DRMAA_JOB_IDS_SESSION_ANY, id, sizeof id, &stat, 0, NULL, diag,
                     sizeof diag),
          DRMAA_ERRNO_INVALID_JOB);
    finish("reattach-wait");
    return 0;
}

static int no_session(void)
{
    drmaa_job_template_t *jt = NULL;
    char buf[DRMAA_CONTACT_BUFFER];
    unsigned int major = 0, minor = 9;
    int state;

    /* these work before drmaa_init */
    OK(drmaa_version(&major, &minor, diag, sizeof diag));
    EXPECT(major == 1 && minor == 0);
    OK(drmaa_get_contact(buf, sizeof buf, diag, sizeof diag));
    EXPECT(buf[0] == 0);
    OK(drmaa_get_DRM_system(buf, sizeof buf, diag, sizeof diag));
    EXPECT(strncmp(buf, "ssi", 3) == 0);
    OK(drmaa_get_DRMAA_implementation(buf, sizeof buf, NULL, 0));
    EXPECT(strstr(buf, "libdrmaa") != NULL);
    EXPECT(strcmp(drmaa_strerror(DRMAA_ERRNO_INVALID_JOB), "invalid job") == 0);
    EXPECT(strcmp(drmaa_strerror(1000), "unknown DRMAA error code") == 0);
    /* these need a session */
    CHECK(drmaa_allocate_job_template(&jt, diag, sizeof diag), DRMAA_ERRNO_NO_ACTIVE_SESSION);
    CHECK(drmaa_job_ps("1", &state, diag, sizeof diag), DRMAA_ERRNO_NO_ACTIVE_SESSION);
    CHECK(drmaa_exit(diag, sizeof diag), DRMAA_ERRNO_NO_ACTIVE_SESSION);
    CHECK(drmaa_init("bad contact", diag, sizeof diag), DRMAA_ERRNO_INVALID_CONTACT_STRING);
    init(NULL);
    CHECK(drmaa_init(NULL, diag, sizeof diag), DRMAA_ERRNO_ALREADY_ACTIVE_SESSION);
    CHECK(drmaa_job_ps("999999999", &state, diag, sizeof diag), DRMAA_ERRNO_INVALID_JOB);
    OK(drmaa_exit(NULL, 0));
    CHECK(drmaa_exit(NULL, 0), DRMAA_ERRNO_NO_ACTIVE_SESSION);
    printf("ok no-session\n");
    return 0;
}

/* Every function that returns an int, when the library cannot start: all must say
   DRMAA_ERRNO_DRMS_INIT_FAILED (never 0), with the reason in the diagnosis. */
static int init_failed(void)
{
    char b[256] = "";
    int i = 0, rc[35];
    size_t n;
    unsigned int u;
    long t = 0;
    const char *v[] = {NULL};
    int k = 0;
    rc[k++] = drmaa_get_next_attr_name(NULL, b, sizeof b);
    rc[k++] = drmaa_get_next_attr_value(NULL, b, sizeof b);
    rc[k++] = drmaa_get_next_job_id(NULL, b, sizeof b);
    rc[k++] = drmaa_get_num_attr_names(NULL, &n);
    rc[k++] = drmaa_get_num_attr_values(NULL, &n);
    rc[k++] = drmaa_get_num_job_ids(NULL, &n);
    rc[k++] = drmaa_init(NULL, b, sizeof b);
    printf("diagnosis %s\n", b);
    rc[k++] = drmaa_exit(b, sizeof b);
    rc[k++] = drmaa_allocate_job_template(NULL, b, sizeof b);
    rc[k++] = drmaa_delete_job_template(NULL, b, sizeof b);
    rc[k++] = drmaa_set_attribute(NULL, "x", "y", b, sizeof b);
    rc[k++] = drmaa_get_attribute(NULL, "x", b, sizeof b, NULL, 0);
    rc[k++] = drmaa_set_vector_attribute(NULL, "x", v, b, sizeof b);
    rc[k++] = drmaa_get_vector_attribute(NULL, "x", NULL, b, sizeof b);
    rc[k++] = drmaa_get_attribute_names(NULL, b, sizeof b);
    rc[k++] = drmaa_get_vector_attribute_names(NULL, b, sizeof b);
    rc[k++] = drmaa_run_job(b, sizeof b, NULL, b, sizeof b);
    rc[k++] = drmaa_run_bulk_jobs(NULL, NULL, 1, 2, 1, b, sizeof b);
    rc[k++] = drmaa_control("1", 0, b, sizeof b);
    rc[k++] = drmaa_synchronize(v, t, 0, b, sizeof b);
    rc[k++] = drmaa_wait("1", b, sizeof b, &i, t, NULL, b, sizeof b);
    rc[k++] = drmaa_job_ps("1", &i, b, sizeof b);
    rc[k++] = drmaa_wifexited(&i, 0, b, sizeof b);
    rc[k++] = drmaa_wexitstatus(&i, 0, b, sizeof b);
    rc[k++] = drmaa_wifsignaled(&i, 0, b, sizeof b);
    rc[k++] = drmaa_wtermsig(b, sizeof b, 0, b, sizeof b);
    rc[k++] = drmaa_wcoredump(&i, 0, b, sizeof b);
    rc[k++] = drmaa_wifaborted(&i, 0, b, sizeof b);
    rc[k++] = drmaa_get_contact(b, sizeof b, b, sizeof b);
    rc[k++] = drmaa_version(&u, &u, b, sizeof b);
    rc[k++] = drmaa_get_DRM_system(b, sizeof b, b, sizeof b);
    rc[k++] = drmaa_get_DRMAA_implementation(b, sizeof b, NULL, 0);
    drmaa_release_attr_names(NULL);
    drmaa_release_attr_values(NULL);
    drmaa_release_job_ids(NULL);
    for (int j = 0; j < k; j++)
        printf("rc %d\n", rc[j]);
    printf("calls %d\n", k);
    return 0;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    const char *arg = argc > 2 ? argv[2] : "/tmp";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(what, "basic"))
        return basic();
    if (!strcmp(what, "no-session"))
        return no_session();
    if (!strcmp(what, "init-failed"))
        return init_failed();
    if (!strcmp(what, "first-calls"))
        return first_calls();
    if (!strcmp(what, "sigpipe"))
        return sigpipe();
    if (!strcmp(what, "reattach-submit"))
        return reattach_submit();
    if (!strcmp(what, "reattach-wait"))
        return reattach_wait(arg);
    /* the rest run in a fresh session of their own */
    struct {
        const char *name;
        int (*fn)(void);
    } plain[] = {{"exit-codes", exit_codes}, {"timeouts", timeouts}, {"control", control},
                 {"signals", signals},        {"attrs", attrs},       {"threads", threads},
                 {"fork", forked}};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        if (!strcmp(what, plain[i].name)) {
            init(NULL);
            plain[i].fn();
            finish(what);
            return 0;
        }
    if (!strcmp(what, "bulk") || !strcmp(what, "aborted")) {
        init(NULL);
        if (!strcmp(what, "bulk"))
            bulk(arg);
        else
            aborted(arg);
        finish(what);
        return 0;
    }
    fprintf(stderr, "usage: drmaa_check SCENARIO [ARG]\n");
    return 2;
}
