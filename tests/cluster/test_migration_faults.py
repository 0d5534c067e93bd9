"""Faults during a migration on a real 3-node cluster, at each of its phases, cold
and live. The target's ssid (or its whole node: every process of its namespace) is
killed while the source dumps, while the images travel, while the target restores,
while the pages are fetched (live, before the target confirmed); the job then runs
exactly once, on its source, resumed with its memory intact, and the move is
reported failed with its cause. The source killed once the target confirmed: the
job stays on the target only, and the source's returning ssid does not resurrect
its frozen copy.

Phases are observed, not guessed: the coordinator records each on the job's history
(migration-phase events: dumping, sending, restoring, fetching-pages), and the
restore is narrowed to CRIU's part by the job's directory appearing on the target.
The job holds 300 MB so that each phase lasts long enough to be hit.

    node1: coordinator     node2 (source) ── move ──▶ node3 (target)
                                                       ▲ killed once the phase shows
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks._workloads import Tick, counter_problems, read_ticks
from ssi.jobs.cgroups import detect
from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import SsiError

from .conftest import wait_for

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
    out = cwd / "counter.txt"
    j = c.call(
        "node1",
        m.JobSubmit(
            argv=[sys.executable, "-c", BIG_COUNTER, str(out), str(SIZE)],
            cwd=str(cwd),
            env={"PATH": os.environ["PATH"]},
            node=SOURCE,
        ),
    )
    wait_for("the counter to count", lambda: len(read_ticks(out)) >= 5, 30)
    wait_for("it to run", lambda: show(c, j["id"])["state"] == "running", 10)
    return j["id"], out


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
        self.error: SsiError | None = None
        body = m.JobMigrate(job=job_id, node=TARGET, live=live)
        self._thread = threading.Thread(target=self._run, args=(c, body), daemon=True)
        self._thread.start()

    def _run(self, c: LocalSsiCluster, body: m.JobMigrate) -> None:
        try:
            self.result = c.call("node1", body, timeout=180)
        except SsiError as e:
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
    if what == "ssid":
        c.stop(node, signal.SIGKILL)
    else:
        c.kill_node(node)


def copies(c: LocalSsiCluster, node: str, job_id: int) -> tuple[list[int], bool]:
    """Processes of the job in `node`'s cgroup, and whether they are frozen."""
    cg = detect(f"ssi-{c.prefix}-{node}")
    return cg.pids(str(job_id)), cg.frozen(str(job_id))


def progress(out: Path, more: int = 10, timeout: float = 15.0) -> list[Tick]:
    n = len(read_ticks(out))
    wait_for("the job counting", lambda: len(read_ticks(out)) > n + more, timeout)
    return read_ticks(out)


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
QUICK = {("cold", "criu-restore", "ssid"), ("live", "fetching-pages", "ssid")}


def _cases() -> Iterator[Any]:
    for mode, steps in (("cold", COLD), ("live", LIVE)):
        for phase in steps:
            for what in ("ssid", "node"):
                marks = [] if (mode, phase, what) in QUICK else [pytest.mark.slow]
                yield pytest.param(mode, phase, what, marks=marks)


@pytest.mark.parametrize(("mode", "phase", "what"), list(_cases()))
def test_target_killed_at_a_phase_leaves_the_job_once_on_its_source(
    cluster: LocalSsiCluster, workdir: Path, mode: str, phase: str, what: str
) -> None:
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
