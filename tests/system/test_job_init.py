"""kernel_shim.spawn into real namespaces, and ssi-init as PID 1 of a job (root).

jobs.start(cmd) ─► spawn([ssi-init, --status-file, F, --, cmd], PID|IPC|UTS) ─► Job
Job: wait() reaps, procs() lists its namespace from /proc, status() reads F;
teardown SIGKILLs what a test left running and checks nothing is left behind.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import kernel_shim
from kernel_shim import NsType

INIT_BIN = Path(__file__).resolve().parents[2] / "ssi" / "jobs" / "bin" / "ssi-init"
JOB_NS = NsType.PID | NsType.IPC | NsType.UTS
NOBODY = 65534
T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """Poll `cond` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_exit(pid: int, timeout: float = 10.0) -> int:
    """Reap our child `pid` and return its os.waitstatus_to_exitcode (-N: signal N)."""
    try:
        pidfd = kernel_shim.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None:
        with pidfd:
            ready, _, _ = select.select([pidfd.fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"pid {pid} still running after {timeout}s")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    session: int


def proc_stat(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid, _pgrp, session = raw[raw.rindex(")") + 2 :].split()[:4]
    return Proc(pid, int(ppid), state, comm, int(session))


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def all_procs() -> Iterator[tuple[int, Proc]]:
    """(PID namespace inode, process) for every process, host view."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            inode = ns_inode(entry, "pid")
        except OSError:
            continue
        p = proc_stat(int(entry))
        if p is not None:
            yield inode, p


@dataclass
class Job:
    pid: int
    status_file: Path
    pidns: int
    reaped: bool = False
    stdout: int | None = None

    def wait(self, timeout: float = 10.0) -> int:
        code = wait_exit(self.pid, timeout)
        self.reaped = True
        return code

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.status_file.read_text())
        return data

    def procs(self) -> list[Proc]:
        """The job's processes: its PID namespace's, or without one, its session's."""
        if self.pidns != ns_inode("self", "pid"):
            return [p for inode, p in all_procs() if inode == self.pidns]
        return [p for _, p in all_procs() if p.session == self.pid]

    def others(self) -> list[Proc]:
        """The job's processes except its init."""
        return [p for p in self.procs() if p.pid != self.pid]

    def alive(self) -> bool:
        return not self.reaped and os.waitpid(self.pid, os.WNOHANG) == (0, 0)


@dataclass
class Jobs:
    tmp: Path
    started: list[Job] = field(default_factory=list)

    def start(self, *cmd: str, namespaces: NsType = JOB_NS, **spawn_args: Any) -> Job:
        status_file = self.tmp / f"status-{len(self.started)}.json"
        argv = [str(INIT_BIN), "--status-file", str(status_file), "--", *cmd]
        pid = kernel_shim.spawn(argv, namespaces=namespaces, **spawn_args)
        job = Job(pid, status_file, ns_inode(pid, "pid"))
        self.started.append(job)
        return job

    def cleanup(self) -> None:
        for job in self.started:
            if job.reaped:
                continue
            # SIGKILL to a namespace's init takes the whole namespace down.
            for target in (job.pid, -job.pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            job.wait()


@pytest.fixture
def init_bin() -> Path:
    if not os.access(INIT_BIN, os.X_OK):
        pytest.fail(f"{INIT_BIN} missing: run `bash scripts/setup.sh`")
    return INIT_BIN


@pytest.fixture
def jobs(tmp_path: Path, init_bin: Path) -> Iterator[Jobs]:
    js = Jobs(tmp_path)
    yield js
    js.cleanup()
    leftovers = [p for job in js.started for p in job.procs()]
    assert not leftovers, f"processes left behind: {leftovers}"


@contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def read_lines(fd: int, n: int, timeout: float = 10.0) -> list[str]:
    """Read until `n` lines have come from `fd` (a pipe), within `timeout`."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        os.set_blocking(fd, False)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            break
        if chunk:
            buf += chunk
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {n} lines, got {buf!r}")
        time.sleep(0.01)
    return buf.decode().splitlines()


# --- spawn -------------------------------------------------------------------------


def test_spawn_into_new_pid_ipc_uts_namespaces() -> None:
    script = "echo $$; hostname; id -u; id -g; read x || :"
    with pipe() as (in_r, in_w), pipe() as (out_r, out_w):
        pid = kernel_shim.spawn(
            ["sh", "-c", script],
            namespaces=JOB_NS,
            hostname="job-host",
            uid=NOBODY,
            gid=NOBODY,
            stdin=in_r,
            stdout=out_w,
        )
        try:
            os.close(out_w)
            assert read_lines(out_r, 4) == ["1", "job-host", str(NOBODY), str(NOBODY)]
            for kind in ("pid", "ipc", "uts"):
                assert ns_inode(pid, kind) != ns_inode("self", kind), kind
            for kind in ("mnt", "net"):
                assert ns_inode(pid, kind) == ns_inode("self", kind), kind
            stat = proc_stat(pid)
            assert stat is not None and stat.session == pid  # setsid: a new session
            status = Path(f"/proc/{pid}/status").read_text()
            assert f"NSpid:\t{pid}\t1\n" in status
            assert "Groups:\t\n" in status or "Groups:\t \n" in status  # cleared
        finally:
            os.close(in_w)
            assert wait_exit(pid) == 0
    assert socket.gethostname() != "job-host"


def test_spawn_into_a_named_netns_enters_only_the_network(netns: str) -> None:
    with pipe() as (in_r, in_w):
        pid = kernel_shim.spawn(["sh", "-c", "read x || :"], netns=netns, stdin=in_r)
        try:
            assert ns_inode(pid, "net") == os.stat(f"/run/netns/{netns}").st_ino
            assert ns_inode(pid, "net") != ns_inode("self", "net")
            # A private mount namespace would make the job undumpable by CRIU.
            assert ns_inode(pid, "mnt") == ns_inode("self", "mnt")
        finally:
            os.close(in_w)
            assert wait_exit(pid) == 0


def test_spawn_netns_by_path_with_a_job(netns: str, jobs: Jobs) -> None:
    job = jobs.start("ip", "-o", "link", netns=f"/run/netns/{netns}")
    assert job.wait() == 0


def test_spawn_with_a_missing_netns_names_the_file() -> None:
    with pytest.raises(FileNotFoundError) as err:
        kernel_shim.spawn(["true"], netns="ssi-t-does-not-exist")
    assert "open(/run/netns/ssi-t-does-not-exist)" in str(err.value)


def test_spawn_into_a_new_time_namespace() -> None:
    with pipe() as (in_r, in_w):
        pid = kernel_shim.spawn(
            ["sh", "-c", "read x || :"], namespaces=NsType.TIME, stdin=in_r
        )
        try:
            assert ns_inode(pid, "time") != ns_inode("self", "time")
        finally:
            os.close(in_w)
            assert wait_exit(pid) == 0


def test_pdeathsig_follows_the_spawning_thread() -> None:
    pids: list[int] = []
    t = threading.Thread(
        target=lambda: pids.append(
            kernel_shim.spawn(["sleep", "30"], pdeathsig=signal.SIGTERM)
        )
    )
    t.start()
    t.join()
    assert wait_exit(pids[0]) == -signal.SIGTERM


# --- ssi-init ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 7, 255])
def test_init_passes_the_exit_code_through(jobs: Jobs, code: int) -> None:
    job = jobs.start("sh", "-c", f"exit {code}")
    assert job.wait() == code
    status = job.status()
    assert status["exited"] == code
    assert {"utime", "stime", "maxrss_kb", "started", "ended"} <= status.keys()
    assert not job.status_file.with_name(job.status_file.name + ".tmp").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_init_reports_a_signaled_main(jobs: Jobs, sig: signal.Signals) -> None:
    job = jobs.start("sh", "-c", f"kill -{sig.name[3:]} $$")
    assert job.wait() == 128 + sig
    assert job.status() == job.status() | {"signaled": int(sig), "core_dumped": False}
    assert "exited" not in job.status()


def test_init_reports_a_program_that_cannot_start(jobs: Jobs) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        job = jobs.start("/nonexistent/program", stderr=null)
    finally:
        os.close(null)
    assert job.wait() == 127
    assert job.status()["exited"] == 127
    assert job.status()["exec_errno"] == 2


def test_sigterm_to_init_is_forwarded_and_the_job_ends(jobs: Jobs) -> None:
    job = jobs.start("sleep", "60")
    wait_for(lambda: [p for p in job.others() if p.comm == "sleep"], "sleep to run")
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait() == 128 + signal.SIGTERM
    assert job.status()["signaled"] == signal.SIGTERM


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]
)
def test_init_forwards_each_signal_to_main(jobs: Jobs, sig: signal.Signals) -> None:
    name = sig.name[3:]
    script = f'trap "exit 42" {name}; echo ready; while :; do sleep 0.05; done'
    with pipe() as (out_r, out_w):
        job = jobs.start("sh", "-c", script, stdout=out_w)
        os.close(out_w)
        assert read_lines(out_r, 1) == ["ready"]
        os.kill(job.pid, sig)
        assert job.wait() == 42


def test_init_reaps_orphans(jobs: Jobs) -> None:
    script = "for i in 1 2 3; do (sleep 1 &); done; echo ready; read x || :"
    with pipe() as (in_r, in_w), pipe() as (out_r, out_w):
        job = jobs.start("sh", "-c", script, stdin=in_r, stdout=out_w)
        os.close(out_w)
        assert read_lines(out_r, 1) == ["ready"]
        orphans = [p for p in job.others() if p.comm == "sleep"]
        assert len(orphans) == 3 and all(p.ppid == job.pid for p in orphans)

        def only_main_left() -> bool:
            procs = job.others()
            return len(procs) == 1 and procs[0].comm == "sh" and procs[0].state != "Z"

        wait_for(only_main_left, "orphans to exit and be reaped (no zombie)")
        assert job.alive()
        os.close(in_w)
        assert job.wait() == 0


def test_daemonized_process_keeps_the_job_alive(jobs: Jobs) -> None:
    with pipe() as (keep_r, keep_w):
        # A background job's stdin is /dev/null: hand it the pipe through fd 3.
        script = "exec 3<&0; (cat <&3 >/dev/null &); exit 3"
        job = jobs.start("sh", "-c", script, stdin=keep_r)
        os.close(keep_r)
        wait_for(
            lambda: [p.comm for p in job.others()] == ["cat"], "main gone, daemon left"
        )
        assert job.alive()
        os.close(keep_w)
        assert job.wait() == 3
    assert job.status()["exited"] == 3


def test_sigterm_after_main_exit_reaches_every_process(jobs: Jobs) -> None:
    job = jobs.start("sh", "-c", "(sleep 60 &); (sleep 60 &); exit 5")
    wait_for(lambda: [p.comm for p in job.others()] == ["sleep"] * 2, "two daemons")
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait() == 5


def test_init_without_a_pid_namespace_waits_for_daemons(jobs: Jobs) -> None:
    # Not PID 1: init becomes a subreaper so the double-forked sleep still comes back.
    job = jobs.start("sh", "-c", "(sleep 0.3 &); exit 6", namespaces=NsType(0))
    started = time.monotonic()
    assert job.wait() == 6
    assert time.monotonic() - started >= 0.25


def test_pdeathsig_sigterm_ends_a_job_gracefully(jobs: Jobs) -> None:
    # As a namespace's init, ssi-init only gets signals it blocks or handles: once it
    # has blocked SIGTERM (right after exec), the parent-death SIGTERM is forwarded.
    # Before that instant the kernel would drop it: use SIGKILL where that matters.
    started: list[Job] = []
    running = threading.Event()

    def spawner() -> None:
        started.append(jobs.start("sleep", "60", pdeathsig=signal.SIGTERM))
        running.wait(10)

    t = threading.Thread(target=spawner)
    t.start()
    wait_for(lambda: started, "the job to start")
    job = started[0]
    wait_for(lambda: [p.comm for p in job.others()] == ["sleep"], "sleep to run")
    running.set()
    t.join()
    assert job.wait() == 128 + signal.SIGTERM


def test_init_rss_is_under_2_mib(jobs: Jobs) -> None:
    with pipe() as (in_r, in_w):
        job = jobs.start("sh", "-c", "read x || :", stdin=in_r)
        wait_for(lambda: [p.comm for p in job.others()] == ["sh"], "main to run")
        status = Path(f"/proc/{job.pid}/status").read_text()
        rss_kb = int(status.split("VmRSS:")[1].split()[0])
        assert rss_kb < 2048, f"ssi-init VmRSS {rss_kb} kB"
        os.close(in_w)
        assert job.wait() == 0


def test_init_cli_forms(tmp_path: Path, init_bin: Path) -> None:
    status = tmp_path / "s.json"
    for args in (["-s", str(status)], [f"--status-file={status}"]):
        pid = kernel_shim.spawn([str(init_bin), *args, "sh", "-c", "exit 4"])
        assert wait_exit(pid) == 4
        assert json.loads(status.read_text())["exited"] == 4
        status.unlink()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for bad in (["--bogus", "true"], ["--status-file"], []):
            pid = kernel_shim.spawn([str(init_bin), *bad], stdout=null, stderr=null)
            assert wait_exit(pid) == 125
    finally:
        os.close(null)
