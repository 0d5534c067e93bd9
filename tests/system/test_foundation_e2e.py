"""The foundation, end to end (root): a job under ssi-init in its own PID/IPC/UTS
namespaces is dumped on one node and restored on another, and carries on counting.

    node1: ssi-init ─▶ counter                node2: ssi-init ─▶ counter, same PIDs
             │ python -m ssi.checkpoint dump      ▲ python -m ssi.checkpoint restore
             └──────────── images dir ────────────┘

Nodes are network namespaces of a LocalCluster. The CRIU helpers run in a child that
entered only the node's network namespace (LocalCluster.spawn → kernel_shim.spawn), as
a node's ssid would; never `ip netns exec`, whose private mount namespace CRIU cannot
dump. We are a child subreaper, so the restored job comes to us when the helper exits.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kernel_shim
from kernel_shim import NsType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks/

from benchmarks._workloads import (  # noqa: E402
    COUNTER,
    Job,
    Tick,
    counter_problems,
    init_binary,
    longest_pause,
    read_ticks,
    wait_ticks,
)
from ssi import config  # noqa: E402
from ssi.checkpoint import Criu  # noqa: E402
from ssi.local import LocalCluster  # noqa: E402
from ssi.local.testing import leftovers, make_cluster, namespace_ids  # noqa: E402

JOB_NS = NsType.PID | NsType.IPC | NsType.UTS


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Two nodes with a unique prefix and subnet; torn down, and checked for leaks."""
    kernel_shim.set_child_subreaper()
    c = make_cluster(2)
    ids = namespace_ids(c)
    try:
        yield c
    finally:
        c.down()
        assert leftovers(c.prefix, ids) == []


def ino(path: str) -> int:
    return os.stat(path).st_ino


def ns_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def criu_helper(
    cluster: LocalCluster, node: str, args: list[str], workdir: Path
) -> dict[str, Any]:
    """Run `python -m ssi.checkpoint ARGS` inside `node`'s network namespace only."""
    out = workdir / f"{args[0]}-{node}.json"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        pid = cluster.spawn(
            node,
            [sys.executable, "-m", "ssi.checkpoint", *args],
            namespaces=NsType(0),  # host PID namespace: it reports host PIDs
            stdout=fd,
            stderr=fd,
        )
    finally:
        os.close(fd)
    code = cluster.wait(pid, timeout=60)
    text = out.read_text()
    assert code == 0, f"{args[0]} on {node} failed ({code}): {text}"
    result: dict[str, Any] = json.loads(text.splitlines()[-1])
    return result


def start_counter_on(
    cluster: LocalCluster, node: str, workdir: Path
) -> tuple[Job, Path]:
    """The counter job under ssi-init, in new PID/IPC/UTS namespaces, on `node`."""
    counter = workdir / "counter.txt"
    log = os.open(workdir / "job.out", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        init_pid = cluster.spawn(
            node,
            [str(init_binary()), "--", sys.executable, "-c", COUNTER, str(counter)],
            namespaces=JOB_NS,
            hostname="e2e-job",
            stdin=null,
            stdout=log,
            stderr=log,
            cwd=str(workdir),
        )
    finally:
        os.close(log)
        os.close(null)
    return Job(pid=init_pid, reap=init_pid), counter


def check_moved(
    job: Job, counter: Path, before: list[Tick], netns_path: str
) -> list[Tick]:
    """The restored job is our child, in `netns_path`, and counts on from `before`."""
    assert job.alive()
    assert parent_of(job.pid) == os.getpid(), "the job came to us"
    (main,) = ns_children(job.pid)
    for pid in (job.pid, main):
        assert ino(f"/proc/{pid}/ns/net") == ino(netns_path)
    ticks = wait_ticks(counter, len(before) + 25)
    assert counter_problems(ticks) == []  # no gap, no repeat, same PID inside
    assert ticks[-1].pid == before[-1].pid == 2
    return ticks


def test_job_continues_in_another_network_namespace(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """As ssid will do it: a CRIU helper process in each node's netns."""
    node1, node2 = cluster.nodes
    job, counter = start_counter_on(cluster, node1.name, tmp_path)
    restored: Job | None = None
    try:
        wait_ticks(counter, 10)
        (main,) = ns_children(job.pid)  # the counter, PID 2 under the init
        assert ino(f"/proc/{main}/ns/net") == ino(node1.netns_path)
        assert ino(f"/proc/{job.pid}/ns/pid") != ino("/proc/self/ns/pid")
        images = tmp_path / "images"
        images.mkdir()

        dumped = criu_helper(
            cluster,
            node1.name,
            ["dump", "--pid", str(job.pid), "--images", str(images)],
            tmp_path,
        )

        assert cluster.wait(job.pid, timeout=10) != 0  # the dump killed the job
        before = read_ticks(counter)

        back = criu_helper(
            cluster, node2.name, ["restore", "--images", str(images)], tmp_path
        )

        restored = Job(pid=back["pid"], reap=back["pid"])
        ticks = check_moved(restored, counter, before, node2.netns_path)
        print(
            f"helpers: dump {dumped['seconds'] * 1e3:.0f} ms, restore "
            f"{back['seconds'] * 1e3:.0f} ms, "
            f"counter's longest pause {longest_pause(ticks) * 1e3:.0f} ms"
        )
    finally:
        if restored is not None:
            restored.kill()
        job.kill()


def test_criu_runs_in_the_node_netns(cluster: LocalCluster, tmp_path: Path) -> None:
    """Criu(netns=...): CRIU itself enters the node's netns, no helper process."""
    node1, node2 = cluster.nodes
    binary = config.resolve_criu(config.load())
    job, counter = start_counter_on(cluster, node1.name, tmp_path)
    restored: Job | None = None
    try:
        wait_ticks(counter, 10)
        images = tmp_path / "images"
        images.mkdir()

        dumped = Criu(binary, netns=node1.netns_path).dump(job.pid, images)
        job.reaped()
        before = read_ticks(counter)
        back = Criu(binary, netns=node2.netns_path).restore(images)

        restored = Job(pid=back.pid, reap=back.pid)
        ticks = check_moved(restored, counter, before, node2.netns_path)
        print(
            f"in-netns CRIU: dump {dumped.seconds * 1e3:.0f} ms, restore "
            f"{back.seconds * 1e3:.0f} ms, "
            f"counter's longest pause {longest_pause(ticks) * 1e3:.0f} ms"
        )
    finally:
        if restored is not None:
            restored.kill()
        job.kill()
