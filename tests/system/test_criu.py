"""ssi.checkpoint.Criu against the real CRIU, on jobs under ssi-init (root).

    start_counter ─▶ job: ssi-init (PID 1) ─▶ python counter (appends "<pid> <n> <t>")
    Criu.dump(job.pid) ─▶ images ─▶ Criu.restore ─▶ counter continues, same PID inside

Every job a test starts is SIGKILLed and reaped at teardown.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import kernel_shim

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks/

from benchmarks._workloads import (  # noqa: E402
    Job,
    counter_problems,
    python_job,
    read_ticks,
    start_counter,
    start_job,
    wait_for,
    wait_ticks,
)
from ssi import config  # noqa: E402
from ssi.checkpoint import Criu, CriuError, DumpOptions, log_errors  # noqa: E402
from ssi.proto.errors import SsiError  # noqa: E402


@pytest.fixture(scope="module")
def criu() -> Criu:
    kernel_shim.set_child_subreaper()  # restored trees' orphans come to us
    return Criu(config.resolve_criu(config.load()))


def ns_pid_of_job_root(job: Job) -> int:
    """PID of the job's root as seen inside its namespace (1: it is the init)."""
    with open(f"/proc/{job.pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {job.pid}")


def our_children() -> set[int]:
    kids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            kids.update(int(p) for p in f.read().split())
    return kids


def test_version_check_features(criu: Criu) -> None:
    assert criu.version().startswith("4.")
    criu.check()
    assert criu.features().lazy_pages  # post-copy migration relies on it


def test_dump_restore_counter_continues(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    job, out = start_counter(tmp_path)
    jobs.append(job)
    assert ns_pid_of_job_root(job) == 1
    wait_ticks(out, 10)
    images = tmp_path / "images"
    images.mkdir()

    dumped = criu.dump(job.pid, images)

    job.reaped()  # the dump killed the job
    assert not job.alive()
    before = read_ticks(out)
    assert (images / "inventory.img").exists() and dumped.log_path.exists()
    assert dumped.stats.get("pages_written", 0) > 0

    restored = criu.restore(images)
    back = Job(pid=restored.pid, reap=restored.pid)
    jobs.append(back)

    assert restored.pid != job.pid
    assert os.getppid() != restored.pid
    with open(f"/proc/{restored.pid}/stat") as f:
        ppid = int(f.read().rpartition(")")[2].split()[1])
    assert ppid == os.getpid(), "the restored tree must be our child"
    assert ns_pid_of_job_root(back) == 1
    ticks = wait_ticks(out, len(before) + 10)
    assert counter_problems(ticks) == []
    assert ticks[-1].pid == before[-1].pid == 2  # PID inside the namespace unchanged


def test_dump_leave_running(criu: Criu, jobs: list[Job], tmp_path: Path) -> None:
    job, out = start_counter(tmp_path)
    jobs.append(job)
    n = len(wait_ticks(out, 5))
    images = tmp_path / "images"
    images.mkdir()

    criu.dump(job.pid, images, leave_running=True)

    assert job.alive()
    assert (images / "inventory.img").exists()
    ticks = wait_ticks(out, n + 10)
    assert counter_problems(ticks) == []


def test_established_tcp_is_named_as_the_blocker(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket, sys, time\n"
            f"s = socket.create_connection(('127.0.0.1', {port}))\n"
            "open(sys.argv[1], 'w').write('connected')\n"
            "time.sleep(3600)\n"
        )
        flag = tmp_path / "connected"
        job = start_job(python_job(code, str(flag)), tmp_path, name="tcp")
        jobs.append(job)
        conn, _ = server.accept()
        with conn:
            wait_for(flag.exists, 10, "the job is connected")
            images = tmp_path / "images"
            images.mkdir()

            with pytest.raises(CriuError) as info:
                criu.dump(job.pid, images)

    e = info.value
    assert isinstance(e, SsiError)
    assert e.op == "dump"
    assert "TCP" in str(e) and "tcp-established" in str(e), str(e)
    assert e.blocker is not None and "TCP" in e.blocker
    assert e.log_path == images / "dump.log" and str(e.log_path) in str(e)
    assert job.alive(), "a failed dump leaves the job running"


def test_dump_of_missing_process(criu: Criu, tmp_path: Path) -> None:
    with pytest.raises(CriuError) as info:
        criu.dump(2**22 + 1, tmp_path)  # above pid_max's default: never a process
    assert "No such process" in str(info.value) or "ESRCH" in str(info.value)


def test_bad_images_dir(criu: Criu, jobs: list[Job], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CriuError, match="No such file or directory"):
        criu.restore(missing)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CriuError, match="not a directory"):
        criu.restore(a_file)
    with pytest.raises(CriuError, match="holds no CRIU images"):
        criu.restore(tmp_path)
    job, _ = start_counter(tmp_path)
    jobs.append(job)
    with pytest.raises(CriuError, match="No such file or directory"):
        criu.dump(job.pid, missing)
    assert job.alive()


def test_damaged_images_name_the_cause(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    job, out = start_counter(tmp_path)
    jobs.append(job)
    wait_ticks(out, 3)
    images = tmp_path / "images"
    images.mkdir()
    criu.dump(job.pid, images)
    job.reaped()
    damaged = sorted(images.glob("pages-*.img"))[-1]  # the counter's memory
    damaged.unlink()
    children = our_children()

    with pytest.raises(CriuError) as info:
        criu.restore(images)

    assert our_children() <= children, "a failed restore leaves no zombie with us"
    e = info.value
    assert e.op == "restore" and e.errors, str(e)
    # CRIU 4.1.1 fails either way on a missing pages image: "Can't read pages data",
    # or a BUG/segfault in its image reader (seen here under load). Both are named,
    # with the log; ssi's own restores catch this earlier, in verify().
    assert "pages" in str(e) or "BUG" in str(e), str(e)
    assert e.log_path == images / "restore.log"


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(CriuError, match="missing or not executable"):
        Criu(str(tmp_path / "no-criu")).version()


def test_binary_that_is_not_criu(tmp_path: Path) -> None:
    with pytest.raises(
        CriuError, match=r"no answer from /bin/true swrk \(exit status 0"
    ):
        Criu("/bin/true").version()


def test_log_errors_skips_noise(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(
        "(00.040762) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE "
        "for self: Operation not permitted\n"
        "(00.051000) Error (criu/sk-inet.c:199): inet: Connected TCP socket, "
        "consider using --tcp-established option.\n"
        "(00.051100) Error (criu/cr-dump.c:1596): Dump files (pid: 7) failed with -1\n"
        "(00.052000) Error (criu/cr-dump.c:2093): Dumping FAILED.\n"
    )
    assert log_errors(log) == [
        "inet: Connected TCP socket, consider using --tcp-established option.",
        "Dump files (pid: 7) failed with -1",
    ]


def test_options_reach_criu(criu: Criu, jobs: list[Job], tmp_path: Path) -> None:
    """file_locks is on by default: a job holding a lock dumps; off, CRIU says why."""
    code = (
        "import fcntl, sys, time\n"
        "f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "open(sys.argv[1] + '.ok', 'w').close(); time.sleep(3600)\n"
    )
    lock = tmp_path / "lock"
    job = start_job(python_job(code, str(lock)), tmp_path, name="locker")
    jobs.append(job)
    wait_for(Path(f"{lock}.ok").exists, 10, "the job holds its lock")
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(CriuError, match="file locks"):
        criu.dump(job.pid, images, options=DumpOptions(file_locks=False))
    criu.dump(job.pid, images, leave_running=True)
    assert job.alive()
