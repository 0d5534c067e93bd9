"""Faults during a migration on a real 3-node cluster, at each of its phases, cold
and live. The target's ssid (or its whole node: every process of its namespace; or
its ssid, restarted at once, before it can be declared lost) is killed while the
source dumps, while the images travel, while the target restores, while the pages
are fetched (live, before the target confirmed); the job then runs exactly once, on
its source, resumed with its memory intact, and the move is reported failed with
its cause. Around the commit point (the target restored, about to answer) and with
the source's ssid restarted mid-move, the job runs once, where the record says.
The source killed once the target confirmed: the job stays on the target only, and
the source's returning ssid does not resurrect its frozen copy.

Phases are observed, not guessed: the coordinator records each on the job's history
(migration-phase events: dumping, sending, restoring, fetching-pages), and the
restore is narrowed to CRIU's part by the job's directory appearing on the target.
The job holds 300 MB so that each phase lasts long enough to be hit.

    node1: coordinator     node2 (source) ── move ──▶ node3 (target)
                                                       ▲ killed once the phase shows
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks._workloads import Tick, counter_problems, read_ticks
from ssi.jobs.cgroups import detect
from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import SsiError

from .conftest import start_counter, wait_for

SIZE = 300 << 20
SOURCE, TARGET = "node2", "node3"  # node1, the coordinator, stays up

# COUNTER of benchmarks/_workloads.py, holding SIZE bytes it checks a page of per
# tick: a page that did not arrive (live) reads as zeros.
BIG_COUNTER = r"""
import os, sys, time
block = bytearray(b"\xa5") * int(sys.argv[2])
pages = len(block) // 4096
n = 0
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        if block[(n * 7919 % pages) * 4096] != 0xA5:
            out.write("corrupt\n")
        out.write(f"{os.getpid()} {n} {time.time():.6f}\n")
        n += 1
        time.sleep(0.02)
"""


@pytest.fixture
def cluster(ssi_cluster: Callable[..., LocalSsiCluster]) -> LocalSsiCluster:
    return ssi_cluster(3)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def big_counter(c: LocalSsiCluster, cwd: Path) -> tuple[int, Path]:
    return start_counter(
        c, cwd, SOURCE, script=BIG_COUNTER, args=[str(SIZE)], timeout=30
    )


def show(c: LocalSsiCluster, job_id: int) -> dict[str, Any]:
    return c.call("node1", m.JobShow(job=job_id))


def phases(c: LocalSsiCluster, job_id: int) -> list[str]:
    return [
        e["phase"] for e in show(c, job_id)["events"] if e["kind"] == "migration-phase"
    ]


class Move:
    """`ssi migrate` run aside, so that the test can act while it is under way."""

    def __init__(self, c: LocalSsiCluster, job_id: int, live: bool) -> None:
        self.result: dict[str, Any] | None = None
        self.error: Exception | None = None
        body = m.JobMigrate(job=job_id, node=TARGET, live=live)
        self._thread = threading.Thread(target=self._run, args=(c, body), daemon=True)
        self._thread.start()

    def _run(self, c: LocalSsiCluster, body: m.JobMigrate) -> None:
        try:
            self.result = c.call("node1", body, timeout=180)
        except (SsiError, OSError) as e:  # OSError: node1's ssid died under the call
            self.error = e

    def join(self, timeout: float = 60.0) -> Move:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the migration did not end"
        return self


def reach(c: LocalSsiCluster, job_id: int, phase: str) -> None:
    """Until the move reaches `phase`; "criu-restore": the target's CRIU restore."""
    if phase == "criu-restore":
        reach(c, job_id, "restoring")
        job_dir = c.node_dir(TARGET) / "state" / "jobs" / str(job_id)
        wait_for("CRIU restoring on the target", (job_dir / "job.json").exists, 30)
        return
    wait_for(f"the move to reach {phase}", lambda: phase in phases(c, job_id), 30)


def kill(c: LocalSsiCluster, node: str, what: str) -> None:
    """ssid: its ssid SIGKILLed; node: every process of its namespace; ssid-back:
    its ssid SIGKILLed and started again at once, before it could be declared lost
    (the coordinator learns of the restart from its hello)."""
    if what == "node":
        c.kill_node(node)
        return
    c.stop(node, signal.SIGKILL)
    if what == "ssid-back":
        c.start(node)


def cluster_for(make: Callable[..., LocalSsiCluster], what: str) -> LocalSsiCluster:
    """ssid-back: no node is declared lost during the test."""
    return make(3, heartbeat_timeout=60.0) if what == "ssid-back" else make(3)


def copies(c: LocalSsiCluster, node: str, job_id: int) -> tuple[list[int], bool]:
    """Processes of the job in `node`'s cgroup, and whether they are frozen."""
    cg = detect(f"ssi-{c.prefix}-{node}")
    return cg.pids(str(job_id)), cg.frozen(str(job_id))


def progress(out: Path, more: int = 10, timeout: float = 15.0) -> list[Tick]:
    n = len(read_ticks(out))
    wait_for("the job counting", lambda: len(read_ticks(out)) > n + more, timeout)
    return read_ticks(out)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def one_copy_at_a_time(ticks: list[Tick], rollbacks: int) -> None:
    """No gap, one pid, and no two copies interleaving. `rollbacks`: how many times
    the count may go back to where the source froze (live: the target's copy ran
    on its pages before the move failed; its steps are done again by the source)."""
    problems = counter_problems(ticks)
    back = [(a.n, b.n) for a, b in zip(ticks, ticks[1:], strict=False) if b.n <= a.n]
    assert len(back) <= rollbacks, f"the count went back {back}: {problems}"
    assert len(problems) == len(back), problems


def runs_once_on_the_source(
    c: LocalSsiCluster, job_id: int, out: Path, rollbacks: int
) -> None:
    j = show(c, job_id)
    assert (j["state"], j["node"]) == ("running", SOURCE)
    failed = [e for e in j["events"] if e["kind"] == "migration-failed"]
    assert failed and failed[-1]["to"] == TARGET and failed[-1]["error"]
    one_copy_at_a_time(progress(out), rollbacks)
    assert "corrupt" not in out.read_text()


COLD = ["dumping", "sending", "criu-restore"]
LIVE = ["dumping", "criu-restore", "fetching-pages"]
QUICK = {
    ("cold", "criu-restore", "ssid"),
    ("cold", "criu-restore", "ssid-back"),
    ("live", "fetching-pages", "ssid"),
}


def _cases() -> Iterator[Any]:
    for mode, steps in (("cold", COLD), ("live", LIVE)):
        for phase in steps:
            for what in ("ssid", "node", "ssid-back"):
                if what == "ssid-back" and phase in ("dumping", "sending"):
                    continue  # back in time, it may well take the images: no fault
                marks = [] if (mode, phase, what) in QUICK else [pytest.mark.slow]
                yield pytest.param(mode, phase, what, marks=marks)


@pytest.mark.parametrize(("mode", "phase", "what"), list(_cases()))
def test_target_killed_at_a_phase_leaves_the_job_once_on_its_source(
    ssi_cluster: Callable[..., LocalSsiCluster],
    workdir: Path,
    mode: str,
    phase: str,
    what: str,
) -> None:
    cluster = cluster_for(ssi_cluster, what)
    job_id, out = big_counter(cluster, workdir)
    move = Move(cluster, job_id, live=mode == "live")
    reach(cluster, job_id, phase)
    kill(cluster, TARGET, what)
    move.join()
    assert move.error is not None, f"moved all the same: {move.result}"
    stage = "restore" if phase in ("criu-restore", "fetching-pages") else "dump"
    assert f"migration to {TARGET} failed at {stage}" in str(move.error)
    # Cold, the target's copy waits frozen for the record: it never ran.
    rollbacks = 1 if mode == "live" else 0
    runs_once_on_the_source(cluster, job_id, out, rollbacks)
    if what != "ssid-back":
        pids, frozen = copies(cluster, TARGET, job_id)
        assert not pids or frozen, f"a copy runs on the target: {pids}"
        cluster.start(TARGET)  # back: kills what it must not run
    wait_for(
        "no copy left on the target",
        lambda: copies(cluster, TARGET, job_id)[0] == [],
        15,
    )
    runs_once_on_the_source(cluster, job_id, out, rollbacks)


@pytest.mark.parametrize("mode", ["cold", "live"])
def test_source_killed_after_the_target_confirmed_leaves_the_job_on_the_target(
    cluster: LocalSsiCluster, workdir: Path, mode: str
) -> None:
    job_id, out = big_counter(cluster, workdir)
    source_pid = cluster.pids[SOURCE]
    move = Move(cluster, job_id, live=mode == "live")
    # Stopped, the source cannot hear the settle: its frozen copy outlives the move.
    reach(cluster, job_id, "restoring")
    os.kill(source_pid, signal.SIGSTOP)
    wait_for("the coordinator's record", lambda: move.result or move.error, 60)
    cluster.stop(SOURCE, signal.SIGKILL)
    move.join()
    assert move.result is not None, f"not moved: {move.error}"
    pids, frozen = copies(cluster, SOURCE, job_id)
    assert pids and frozen, "the source's copy should wait frozen for its ssid"
    cluster.start(SOURCE)
    wait_for(
        "the source's copy gone",
        lambda: copies(cluster, SOURCE, job_id)[0] == [],
        15,
    )
    j = show(cluster, job_id)
    assert (j["state"], j["node"]) == ("running", TARGET)
    assert copies(cluster, TARGET, job_id)[0]
    one_copy_at_a_time(progress(out), rollbacks=0)
    assert "corrupt" not in out.read_text()


def test_target_killed_at_the_commit_point_runs_the_job_once_where_recorded(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    """Cold: the target has restored the job (left stopped by CRIU, frozen until
    agent.keep) and is about to answer; its ssid stops there, dies and comes back
    at once. Whether the coordinator recorded the move (then the keep was lost: the
    returning target resumes the job) or not (the move is undone), the job runs
    once, where the record says, from the state it was frozen in: not one tick
    twice."""
    cluster = cluster_for(ssi_cluster, "ssid-back")
    job_id, out = big_counter(cluster, workdir)
    record = cluster.node_dir(TARGET) / "state" / "jobs" / str(job_id) / "job.json"
    move = Move(cluster, job_id, live=False)
    deadline = time.monotonic() + 30
    while '"state":"suspended"' not in read(record):  # a window of milliseconds
        assert time.monotonic() < deadline, "the target's copy never seen frozen"
        time.sleep(0.001)
    os.kill(cluster.pids[TARGET], signal.SIGSTOP)  # hears no keep
    with contextlib.suppress(TimeoutError):
        wait_for("the record", lambda: show(cluster, job_id)["node"] == TARGET, 2)
    kill(cluster, TARGET, "ssid-back")
    move.join()
    j = show(cluster, job_id)
    where = TARGET if move.result is not None else SOURCE
    assert (j["state"], j["node"]) == ("running", where), move.error
    print(f"the move was {'recorded' if where == TARGET else 'undone'}")
    other = SOURCE if where == TARGET else TARGET
    wait_for("no copy elsewhere", lambda: copies(cluster, other, job_id)[0] == [], 15)
    wait_for("it runs, thawed", lambda: copies(cluster, where, job_id)[1] is False, 15)
    one_copy_at_a_time(progress(out), rollbacks=0)
    assert "corrupt" not in out.read_text()


@pytest.mark.parametrize("mode", ["cold", "live"])
def test_source_restarted_before_the_target_confirmed_resumes_the_job_there(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path, mode: str
) -> None:
    """The source's ssid dies while it holds the job frozen (sending its images)
    and comes back at once. Cold, the move fails, and the job, still frozen by the
    dead ssid's dump, resumes on the source from where it froze. Live, the pages
    may still come from the dead ssid's CRIU, and the move succeed; else the job
    resumes on the source, freed from that CRIU. Either way it runs once."""
    cluster = cluster_for(ssi_cluster, "ssid-back")
    job_id, out = big_counter(cluster, workdir)
    move = Move(cluster, job_id, live=mode == "live")
    reach(cluster, job_id, "sending")
    kill(cluster, SOURCE, "ssid-back")
    move.join()
    if mode == "cold":
        assert move.error is not None, f"moved all the same: {move.result}"
    where = SOURCE if move.error is not None else TARGET
    wait_for("the job thawed", lambda: copies(cluster, where, job_id)[1] is False, 15)
    other = TARGET if where == SOURCE else SOURCE
    wait_for("no copy elsewhere", lambda: copies(cluster, other, job_id)[0] == [], 15)
    j = show(cluster, job_id)
    assert (j["state"], j["node"]) == ("running", where), move.error
    one_copy_at_a_time(progress(out), rollbacks=0)
    assert "corrupt" not in out.read_text()


def test_coordinator_restarted_mid_move_resumes_the_job_on_its_source(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    """The coordinator's ssid dies while the target restores (cold: both copies
    exist, both frozen) and comes back: the move it drove is over, never recorded;
    the agents reconcile, the source resumes the job, the target kills its copy
    (made after its agent reconciled). Heartbeats 3 s apart: the agents hear the
    new run from their first heartbeat's answer, none having come before it."""
    cluster = ssi_cluster(3, heartbeat_interval=3.0, heartbeat_timeout=60.0)
    job_id, out = big_counter(cluster, workdir)
    move = Move(cluster, job_id, live=False)
    reach(cluster, job_id, "criu-restore")
    kill(cluster, "node1", "ssid-back")
    move.join()
    assert move.result is None
    wait_for(
        "the job thawed on its source",
        lambda: copies(cluster, SOURCE, job_id)[1] is False,
        20,
    )
    wait_for(
        "no copy on the target", lambda: not copies(cluster, TARGET, job_id)[0], 20
    )
    runs_once_on_the_source(cluster, job_id, out, rollbacks=0)
    # Members knocked as soon as it listened, before its coordinator had started.
    assert "refused key" not in cluster.log_path("node1").read_text()
