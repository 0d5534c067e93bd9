"""Fixtures for tests that need real network namespaces (root).

    netns_cluster(size)  ─▶  LocalCluster up, unique prefix and subnet
                             teardown: down() + assert nothing leaked

Fixtures that put an ssid in each node build on `netns_cluster`. The helpers
(wait_for, unique_prefix, free_subnet, leftovers_of, needs_root) are importable from
here (`from .conftest import ...`); their code lives in ssi.local.testing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks._workloads import COUNTER, read_ticks
from ssi.local import LocalCluster
from ssi.local import procs as local_procs
from ssi.local.ssids import LocalSsiCluster
from ssi.local.testing import (
    free_subnet,
    leftovers,
    make_cluster,
    namespace_ids,
    unique_prefix,
    wait_for,
)
from ssi.proto import messages as m

__all__ = [
    "free_subnet",
    "leftovers_of",
    "needs_root",
    "netns_cluster",
    "ssi_cluster",
    "start_counter",
    "unique_prefix",
    "wait_for",
]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")


def leftovers_of(prefix: str, ns_ids: Collection[local_procs.NsId] = ()) -> list[str]:
    """What of the cluster with this prefix is still on the host (namespaces,
    links, state files, and processes in the namespaces `ns_ids`); [] when clean."""
    return leftovers(prefix, ns_ids)


@pytest.fixture
def netns_cluster() -> Iterator[Callable[..., LocalCluster]]:
    """Factory: `netns_cluster(3)` returns an up 3-node LocalCluster with a unique
    prefix and subnet (keywords go to LocalCluster). Every cluster made is torn
    down after the test, and the test fails if anything of it leaked."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    made: list[tuple[LocalCluster, set[local_procs.NsId]]] = []

    def factory(size: int = 3, **kw: Any) -> LocalCluster:
        cluster = make_cluster(size, **kw)
        made.append((cluster, namespace_ids(cluster)))
        return cluster

    yield factory

    problems = []
    for cluster, ids in made:
        # Nodes added during the test have namespaces not seen at creation.
        ids |= namespace_ids(cluster)
        cluster.down()
        left = leftovers(cluster.prefix, ids)
        if left:
            problems.append(f"{cluster.prefix}: {', '.join(left)}")
    assert not problems, f"local clusters leaked: {'; '.join(problems)}"


HB_INTERVAL, HB_TIMEOUT = 0.25, 1.5  # fast failure detection for tests


@pytest.fixture
def ssi_cluster() -> Iterator[Callable[..., LocalSsiCluster]]:
    """Factory: `ssi_cluster(3)` returns a formed cluster of 3 nodes, an ssid in each
    (node1 coordinator), heartbeats every 0.25 s, lost after 1.5 s. Torn down after
    the test, which fails if anything of it leaked."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    made: list[LocalSsiCluster] = []

    def factory(size: int = 3, **kw: Any) -> LocalSsiCluster:
        kw.setdefault("heartbeat_interval", HB_INTERVAL)
        kw.setdefault("heartbeat_timeout", HB_TIMEOUT)
        kw.setdefault("log_level", "debug")
        c = LocalSsiCluster(size, prefix=unique_prefix(), subnet=free_subnet(), **kw)
        made.append(c)
        return c.up()

    yield factory

    problems = []
    for c in made:
        c.down()
        left = leftovers(c.prefix)
        if left:
            problems.append(f"{c.prefix}: {', '.join(left)}")
    assert not problems, f"local clusters leaked: {'; '.join(problems)}"


def start_counter(
    c: LocalSsiCluster,
    cwd: Path,
    node: str,
    *,
    script: str = COUNTER,
    args: Sequence[str] = (),
    timeout: float = 20.0,
) -> tuple[int, Path]:
    """A counter job (`script`: ticks into the file it is given first) pinned to
    `node`; its id and tick file, once it counts and runs."""
    out = cwd / f"counter-{time.monotonic_ns()}.txt"
    j = c.call(
        "node1",
        m.JobSubmit(
            argv=[sys.executable, "-c", script, str(out), *args],
            cwd=str(cwd),
            env={"PATH": os.environ["PATH"]},
            node=node,
        ),
    )
    wait_for("the counter to count", lambda: len(read_ticks(out)) >= 5, timeout)
    wait_for(
        "it to run",
        lambda: c.call("node1", m.JobShow(job=j["id"]))["state"] == "running",
        10,
    )
    return j["id"], out
