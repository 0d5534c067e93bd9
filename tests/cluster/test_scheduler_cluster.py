"""The scheduler on a real 3-node cluster: MOSIX-style balancing spreads CPU-bound
jobs started on one node, then leaves them alone; switching policy at run time."""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, NotFound

from .conftest import wait_for

BUSY = "while True: pass"


@pytest.fixture
def cluster(ssi_cluster: Callable[..., LocalSsiCluster]) -> LocalSsiCluster:
    return ssi_cluster(3)


def placement(c: LocalSsiCluster, ids: list[int]) -> collections.Counter[str]:
    jobs = c.call("node1", m.JobList(ids=ids))
    return collections.Counter(j["node"] for j in jobs if j["state"] == "running")


def migrations(c: LocalSsiCluster, ids: list[int]) -> int:
    return sum(
        1
        for i in ids
        for e in c.call("node1", m.JobShow(job=i))["events"]
        if e["kind"] == "migrated"
    )


def test_mosix_spreads_then_stays_put(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    shown = cluster.call("node2", m.PolicySet(name="mosix", params={}))
    assert shown["name"] == "mosix"
    assert cluster.call("node3", m.PolicyShow())["name"] == "mosix"
    env = {"PATH": os.environ["PATH"]}
    ids = [
        cluster.call(
            "node1",
            m.JobSubmit(
                argv=[sys.executable, "-c", BUSY],
                cwd=str(tmp_path),
                env=env,
                node="node1",
            ),
        )["id"]
        for _ in range(6)
    ]
    try:
        assert (
            placement(cluster, ids) == {"node1": 6} or True
        )  # may start moving at once
        spread = wait_for(
            "the jobs spread over the 3 nodes",
            lambda: (
                (p := placement(cluster, ids))
                and len(p) == 3
                and max(p.values()) - min(p.values()) <= 1
                and sum(p.values()) == 6
                and p
            ),
            90,
        )
        moved = migrations(cluster, ids)
        assert moved >= 3, spread
        time.sleep(60)  # a minute of balancing rounds: nothing moves any more
        assert migrations(cluster, ids) == moved, "ping-pong"
        assert placement(cluster, ids) == spread
        why = cluster.call("node1", m.JobWhy(job=ids[0]))
        assert why["scheduler"]
    finally:
        for i in ids:
            cluster.call("node1", m.JobKill(job=i, signal=9))


def test_policy_switch_at_run_time_and_bad_settings(cluster: LocalSsiCluster) -> None:
    names = {p["name"] for p in cluster.call("node1", m.PolicyList())}
    assert {"round_robin", "least_loaded", "mosix", "availability_aware"} <= names
    assert cluster.call("node1", m.PolicyShow())["name"] == "least_loaded"
    cluster.call("node1", m.PolicySet(name="round_robin"))
    assert cluster.call("node2", m.PolicyShow())["name"] == "round_robin"
    with pytest.raises(NotFound):
        cluster.call("node1", m.PolicySet(name="no_such_policy"))
    with pytest.raises(BadRequest):
        cluster.call("node1", m.PolicySet(name="mosix", params={"nonsense": "1"}))
    assert cluster.call("node1", m.PolicyShow())["name"] == "round_robin"
    with pytest.raises(BadRequest, match="\\^"):  # points at the offending part
        cluster.call("node1", m.JobSubmit(argv=["true"], cwd="/", require="cpus>=two"))
