"""Migration on a real 3-node cluster: a moved counter keeps counting with no gap or
repeat; 20 moves round the ring; eviction empties a node of its jobs; a move that
fails at any point leaves the job running exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._workloads import counter_problems, longest_pause, read_ticks
from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import SsiError

from .conftest import start_counter, wait_for


@pytest.fixture
def cluster(ssi_cluster: Callable[..., LocalSsiCluster]) -> LocalSsiCluster:
    return ssi_cluster(3)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def counter(c: LocalSsiCluster, cwd: Path, node: str) -> tuple[int, Path]:
    return start_counter(c, cwd, node)


def job(c: LocalSsiCluster, job_id: int) -> dict[str, Any]:
    return c.call("node1", m.JobShow(job=job_id))


def images_left(c: LocalSsiCluster) -> list[Path]:
    return [
        p
        for n in c.node_names
        for p in (c.node_dir(n) / "state" / "checkpoints").glob("*")
    ]


def test_cold_migration_keeps_counting_without_gap_or_repeat(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, "node1")
    moved = cluster.call("node2", m.JobMigrate(job=job_id, node="node3"), timeout=120)
    assert (moved["from"], moved["to"], moved["mode"]) == ("node1", "node3", "cold")
    for k in (
        "prepare_seconds",
        "freeze_seconds",
        "dump_seconds",
        "transfer_seconds",
        "restore_seconds",
        "total_seconds",
    ):
        assert moved[k] > 0, k
    assert moved["bytes"] > 1_000_000
    n = len(read_ticks(out))
    wait_for("counting on node3", lambda: len(read_ticks(out)) > n + 10, 10)
    assert counter_problems(read_ticks(out)) == []
    j = job(cluster, job_id)
    assert j["node"] == "node3" and j["state"] == "running"
    assert [e for e in j["events"] if e["kind"] == "migrated"][-1]["to"] == "node3"
    assert images_left(cluster) == []  # cold: nothing left behind on either side


def test_live_migration_resumes_before_the_pages_arrive(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, "node1")
    moved = cluster.call(
        "node1", m.JobMigrate(job=job_id, node="node2", live=True), timeout=120
    )
    assert (moved["from"], moved["to"], moved["mode"]) == ("node1", "node2", "live")
    assert moved["pages_seconds"] >= moved["restore_seconds"] > 0
    n = len(read_ticks(out))
    wait_for("counting on node2", lambda: len(read_ticks(out)) > n + 10, 10)
    ticks = read_ticks(out)
    assert counter_problems(ticks) == []
    assert longest_pause(ticks) < 5.0
    assert job(cluster, job_id)["node"] == "node2"
    assert images_left(cluster) == []


def test_twenty_moves_round_the_ring(cluster: LocalSsiCluster, workdir: Path) -> None:
    job_id, out = counter(cluster, workdir, "node1")
    ring = ["node2", "node3", "node1"]
    for i in range(20):
        cluster.call("node1", m.JobMigrate(job=job_id, node=ring[i % 3]), timeout=120)
    n = len(read_ticks(out))
    wait_for("still counting", lambda: len(read_ticks(out)) > n + 5, 10)
    assert counter_problems(read_ticks(out)) == []
    moves = [e for e in job(cluster, job_id)["events"] if e["kind"] == "migrated"]
    assert len(moves) == 20 and moves[-1]["to"] == "node3"


def test_evict_moves_five_jobs_away_and_removes_the_node(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    jobs = [counter(cluster, workdir, "node2") for _ in range(5)]
    result = cluster.call("node1", m.NodeEvict(name="node2"), timeout=300)
    assert result["evicted"] == "node2"
    assert sorted(mv["job"] for mv in result["moved"]) == sorted(j for j, _ in jobs)
    assert all(
        mv["how"] == "migrated" and mv["to"] in ("node1", "node3")
        for mv in result["moved"]
    )
    names = [n["name"] for n in cluster.call("node1", m.NodeList())]
    assert "node2" not in names
    for job_id, out in jobs:
        assert job(cluster, job_id)["state"] == "running"
        n = len(read_ticks(out))
        wait_for(
            f"job {job_id} counting",
            lambda out=out, n=n: len(read_ticks(out)) > n + 3,  # type: ignore[misc]
            10,
        )
        assert counter_problems(read_ticks(out)) == []


def test_a_failed_restore_leaves_the_job_running_once_on_its_source(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, "node1")
    # the target cannot restore: its job directory for this job is taken by a file
    blocker = cluster.node_dir("node2") / "state" / "jobs" / str(job_id)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    try:
        with pytest.raises(SsiError, match="migration to node2 failed"):
            cluster.call("node1", m.JobMigrate(job=job_id, node="node2"), timeout=120)
    finally:
        blocker.unlink()
    j = job(cluster, job_id)
    assert j["state"] == "running" and j["node"] == "node1"
    n = len(read_ticks(out))
    wait_for("counting again on node1", lambda: len(read_ticks(out)) > n + 10, 10)
    ticks = read_ticks(out)
    assert counter_problems(ticks) == []  # one copy: no repeat, same pid, no gap


def test_target_killed_during_the_move_leaves_one_copy(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, "node1")
    pid = cluster.pids["node2"]

    def kill_target_soon() -> None:
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    import threading

    threading.Thread(target=kill_target_soon, daemon=True).start()
    try:
        cluster.call("node1", m.JobMigrate(job=job_id, node="node2"), timeout=120)
        moved = True
    except SsiError:
        moved = False
    cluster.pids.pop("node2", None)
    cluster.start("node2")  # comes back: kills any copy it should not run
    time.sleep(1.0)
    j = job(cluster, job_id)
    assert j["state"] == "running"
    assert j["node"] == ("node2" if moved else "node1")
    n = len(read_ticks(out))
    wait_for("counting", lambda: len(read_ticks(out)) > n + 10, 15)
    recent = read_ticks(out)[n:]
    problems = [p for p in counter_problems(recent) if not p.startswith("starts at")]
    assert problems == [], "two copies, or a gap"
