"""Real workloads through JobRuntime (root): each runs as an ordinary user, is
checkpointed, loses its original, is restored on this node, and finishes with its
state intact.

    start (uid nobody) ─▶ steady state ─▶ checkpoint ─▶ original gone ─▶ restore
                                                        ─▶ trigger file ─▶ check the end

Workloads: a Python loop with in-memory state; seq | gzip (a pipe between two
processes, and the file they write); a multithreaded program; SysV message queue and
semaphore in the job's IPC namespace; a file appended to; a 200 MB numpy array; a
double-forking daemon; runs of pages with holes between (SPARSE_PAGES). A test ends
its job through a trigger file it creates in the job's directory, so nothing waits on
a bare sleep.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import kernel_shim
from benchmarks._workloads import SPARSE_PAGES
from ssi.checkpoint import Criu
from ssi.jobs import JobRuntime, JobSpec, JobState, Manifest
from ssi.jobs.testing import (
    NOBODY,
    criu,
    job_comms,
    job_ns_view,
    other_users_blocker,
    scratch_runtime,
    user_dir,
    wait_for,
)

PY = sys.executable
SYSTEM_PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def the_criu() -> Criu:
    kernel_shim.set_child_subreaper()  # restored inits are our children to reap
    return criu()


@pytest.fixture
def rt(tmp_path: Path, the_criu: Criu) -> Iterator[JobRuntime]:
    with scratch_runtime(tmp_path, the_criu) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def uid(the_criu: Criu) -> int:
    """The jobs' user: nobody, unless CRIU cannot dump another user's job here (then
    root; test_jobs_runtime reports why)."""
    return NOBODY if other_users_blocker(the_criu) is None else 0


@pytest.fixture
def work(uid: int) -> Iterator[Path]:
    """The job's directory, owned by the user the jobs run as."""
    with user_dir(uid, uid) as d:
        yield d


def start(rt: JobRuntime, job_id: str, work: Path, *argv: str) -> None:
    uid = work.stat().st_uid
    rt.start(
        job_id, JobSpec(argv=list(argv), cwd=str(work), uid=uid, gid=uid, name=job_id)
    )


def python(work: Path, *args: str) -> tuple[str, ...]:
    """A Python command line for the job's user: for one but root, the system's
    interpreter (ours may live where nobody else can reach, e.g. under /root)."""
    if work.stat().st_uid == 0:
        return (PY, *args)
    if not os.access(SYSTEM_PY, os.X_OK) or not os.stat(SYSTEM_PY).st_mode & 0o001:
        pytest.skip(f"no {SYSTEM_PY} that every user may run")
    return (SYSTEM_PY, *args)


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, n: int, timeout: float = 20.0) -> list[str]:
    return wait_for(
        lambda: len(got := lines(path)) >= n and got, f"{n} lines in {path}", timeout
    )


def stop_and_restore(rt: JobRuntime, job_id: str, dest: Path) -> Manifest:
    """Checkpoint and stop the job, check the original is gone, restore it."""
    before = job_ns_view(rt, job_id)
    m = rt.checkpoint(job_id, dest, leave_running=False)
    assert rt.wait(job_id, 10).checkpointed
    assert rt.cgroups.pids(job_id) == []  # the original is gone, every process of it
    job = rt.restore(job_id, dest)
    assert job.running and job.state is JobState.RUNNING
    assert job_ns_view(rt, job_id) == before  # same processes, same PIDs inside
    return m


def finish(rt: JobRuntime, job_id: str, work: Path, timeout: float = 30.0) -> None:
    (work / "stop").touch()
    status = rt.wait(job_id, timeout)
    assert status.exited == 0, (
        status.describe() + (work / f"ssi-{job_id}.err").read_text()
    )


# --- workloads ----------------------------------------------------------------------

LOOP = textwrap.dedent(
    """
    import os, time
    state = {}
    n = 0
    while not os.path.exists("stop"):
        state[n] = n * n
        print(n, len(state), sum(state.values()), flush=True)
        n += 1
        time.sleep(0.01)
    """
)


def test_python_loop_with_in_memory_state(
    rt: JobRuntime, work: Path, tmp_path: Path
) -> None:
    start(rt, "loop", work, *python(work, "-c", LOOP))
    out = work / "ssi-loop.out"
    wait_lines(out, 20)
    # A checkpoint the job runs on from, then a crash: it comes back as it was then.
    rt.checkpoint("loop", tmp_path / "ck", leave_running=True)
    at_ckpt = len(lines(out))
    wait_lines(out, at_ckpt + 20)
    rt.signal("loop", 9)
    assert rt.wait("loop", 10).signaled == 9
    crashed_at = len(lines(out))
    job = rt.restore("loop", tmp_path / "ck")
    assert job.running
    wait_lines(out, crashed_at + 20)
    finish(rt, "loop", work)
    rows = [tuple(map(int, line.split())) for line in lines(out)]
    for n, size, total in rows:  # the dict in memory is whole at every step
        assert size == n + 1 and total == sum(i * i for i in range(n + 1))
    resumed = rows[crashed_at][0]
    assert at_ckpt - 2 <= resumed <= at_ckpt + 2  # from where the checkpoint was taken
    assert [r[0] for r in rows[crashed_at:]] == list(
        range(resumed, resumed + len(rows) - crashed_at)
    )


SEQ_N = 6_000_000


def test_pipeline_seq_into_gzip(rt: JobRuntime, work: Path, tmp_path: Path) -> None:
    start(rt, "gz", work, "sh", "-c", f"seq 1 {SEQ_N} | gzip > numbers.gz")
    gz = work / "numbers.gz"
    wait_for(lambda: gz.exists() and gz.stat().st_size > 256 << 10, "gzip to write")
    assert sorted(job_comms(rt, "gz")) == ["gzip", "seq", "sh", "ssi-init"]
    stop_and_restore(rt, "gz", tmp_path / "ck")
    size = gz.stat().st_size
    wait_for(lambda: gz.stat().st_size > size, "the output to grow after the restore")
    status = rt.wait("gz", 60)
    assert status.exited == 0, status.describe()
    subprocess.run(["gzip", "-t", str(gz)], check=True)
    assert _sha256_of(f"gzip -dc {gz}") == _sha256_of(f"seq 1 {SEQ_N}")


THREADS = textwrap.dedent(
    """
    import os, threading, time
    counts = [0] * 4
    lock = threading.Lock()
    total = 0
    def work(i):
        global total
        while not os.path.exists("stop"):
            with lock:
                counts[i] += 1
                total += 1
            time.sleep(0.001)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while not os.path.exists("stop"):
        with lock:
            print(threading.active_count(), total, *counts, flush=True)
        time.sleep(0.02)
    for t in threads:
        t.join()
    with lock:
        print(threading.active_count(), total, *counts, flush=True)
    """
)


def test_multithreaded_program(rt: JobRuntime, work: Path, tmp_path: Path) -> None:
    start(rt, "mt", work, *python(work, "-c", THREADS))
    out = work / "ssi-mt.out"
    wait_lines(out, 10)
    main_host = rt.stats("mt").main_host_pid
    assert main_host and len(os.listdir(f"/proc/{main_host}/task")) == 5
    stop_and_restore(rt, "mt", tmp_path / "ck")
    main_host = rt.stats("mt").main_host_pid
    assert main_host and len(os.listdir(f"/proc/{main_host}/task")) == 5
    n = len(lines(out))
    wait_lines(out, n + 10)
    after = [list(map(int, line.split())) for line in lines(out)[n:]]
    before = list(map(int, lines(out)[n - 1].split()))
    finish(rt, "mt", work)
    for row in after:
        assert row[0] == 5 and row[1] == sum(row[2:])  # every thread, consistent
    assert all(a > b for a, b in zip(after[-1][2:], before[2:], strict=True))


SYSV = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

struct msg { long type; char text[64]; };

int main(void)
{
    int q = msgget(0x5510, IPC_CREAT | 0600), s = semget(0x5511, 1, IPC_CREAT | 0600);
    if (q < 0 || s < 0) { perror("get"); return 1; }
    for (int i = 0; i < 5; i++) {
        struct msg m = { 1 };
        snprintf(m.text, sizeof m.text, "message %d", i);
        if (msgsnd(q, &m, sizeof m.text, 0) < 0) { perror("msgsnd"); return 1; }
    }
    if (semctl(s, 0, SETVAL, 3) < 0) { perror("semctl"); return 1; }
    struct sembuf down = { 0, -1, 0 };
    if (semop(s, &down, 1) < 0) { perror("semop"); return 1; }
    printf("ready\n");
    fflush(stdout);
    while (access("stop", F_OK) != 0)
        usleep(10000);
    for (int i = 0; i < 5; i++) {
        struct msg m;
        if (msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) < 0) {
            perror("msgrcv");
            return 1;
        }
        printf("%s\n", m.text);
    }
    printf("sem %d\n", semctl(s, 0, GETVAL));
    msgctl(q, IPC_RMID, NULL);
    semctl(s, 0, IPC_RMID);
    return 0;
}
"""


def test_sysv_message_queue_and_semaphore(
    rt: JobRuntime, work: Path, tmp_path: Path
) -> None:
    src = tmp_path / "sysv.c"
    src.write_text(SYSV)
    prog = work / "sysv"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(prog), str(src)], check=True)
    start(rt, "ipc", work, str(prog))
    out = work / "ssi-ipc.out"
    wait_lines(out, 1)
    assert "5510" not in Path("/proc/sysvipc/msg").read_text()  # the job's own IPC ns
    stop_and_restore(rt, "ipc", tmp_path / "ck")
    finish(rt, "ipc", work)
    assert lines(out) == ["ready", *(f"message {i}" for i in range(5)), "sem 2"]


APPENDER = textwrap.dedent(
    """
    import os, time
    n = 0
    with open("appended.txt", "a") as f:
        while not os.path.exists("stop"):
            f.write(f"line {n}\\n")
            f.flush()
            n += 1
            time.sleep(0.005)
    """
)


def test_program_appending_to_an_open_file(
    rt: JobRuntime, work: Path, tmp_path: Path
) -> None:
    start(rt, "app", work, *python(work, "-c", APPENDER))
    log = work / "appended.txt"
    wait_lines(log, 50)
    stop_and_restore(rt, "app", tmp_path / "ck")
    n = len(lines(log))
    wait_lines(log, n + 50)
    finish(rt, "app", work)
    got = lines(log)
    assert got == [f"line {i}" for i in range(len(got))]  # none lost, none repeated


NUMPY = textwrap.dedent(
    """
    import hashlib, os, time
    import numpy as np
    a = np.random.default_rng(7).random(25_000_000)  # 200 MB of float64
    print(a.nbytes, hashlib.sha256(a.tobytes()).hexdigest(), flush=True)
    while not os.path.exists("stop"):
        time.sleep(0.01)
    print(a.nbytes, hashlib.sha256(a.tobytes()).hexdigest(), flush=True)
    """
)


def test_numpy_array_of_200_mb(rt: JobRuntime, work: Path, tmp_path: Path) -> None:
    if work.stat().st_uid != 0:  # numpy lives in our venv, which nobody may not reach
        os.chown(work, 0, 0)
    start(rt, "np", work, PY, "-c", NUMPY)
    out = work / "ssi-np.out"
    (first,) = wait_lines(out, 1, timeout=60)
    assert first.split()[0] == str(200_000_000)
    m = stop_and_restore(rt, "np", tmp_path / "ck")
    assert m.total_bytes > 200_000_000
    finish(rt, "np", work, timeout=60)
    assert lines(out) == [first, first]  # the array's checksum survived


def test_sparse_memory_comes_back_page_for_page(
    rt: JobRuntime, work: Path, tmp_path: Path
) -> None:
    start(rt, "sp", work, *python(work, "-c", SPARSE_PAGES))
    out = work / "ssi-sp.out"
    (first,) = wait_lines(out, 1)
    present, stamped, verdict, _ = first.split()
    assert verdict == "ok" and present == stamped
    stop_and_restore(rt, "sp", tmp_path / "ck")
    finish(rt, "sp", work)
    assert lines(out) == [first, first]  # every stamped page back, no hole filled


DAEMON = textwrap.dedent(
    """
    import os, sys, time
    if os.fork():
        sys.exit(0)  # the main process leaves at once
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    n = 0
    with open("daemon.txt", "a", buffering=1) as f:
        while not os.path.exists("stop"):
            f.write(f"{os.getpid()} {n}\\n")
            n += 1
            time.sleep(0.01)
    """
)


def test_daemonizing_job(rt: JobRuntime, work: Path, tmp_path: Path) -> None:
    start(rt, "dmn", work, *python(work, "-c", DAEMON))
    log = work / "daemon.txt"
    wait_lines(log, 10)
    wait_for(lambda: rt.stats("dmn").main_pid is None, "the main process to be gone")
    assert rt.stats("dmn").nprocs == 2 and rt.exit_status("dmn") is None  # alive
    stop_and_restore(rt, "dmn", tmp_path / "ck")
    n = len(lines(log))
    wait_lines(log, n + 10)
    finish(rt, "dmn", work)  # the job's status is its main's: exit 0
    rows = [line.split() for line in lines(log)]
    assert {r[0] for r in rows} == {rows[0][0]}  # same PID inside throughout
    assert [int(r[1]) for r in rows] == list(range(len(rows)))


# --- helpers -------------------------------------------------------------------------


def _sha256_of(shell: str) -> str:
    proc = subprocess.Popen(["sh", "-c", shell], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
    assert proc.wait() == 0
    return h.hexdigest()
