"""Fixtures for tests that need real network namespaces (root).

    netns_cluster(size)  ─▶  LocalCluster up, unique prefix and subnet
                             teardown: down() + assert nothing leaked

Fixtures that put an ssid in each node build on `netns_cluster`. The helpers
(wait_for, unique_prefix, free_subnet, leftovers_of, needs_root) are importable from
here (`from .conftest import ...`); their code lives in ssi.local.testing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pytest

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

__all__ = [
    "free_subnet",
    "leftovers_of",
    "needs_root",
    "netns_cluster",
    "ssi_cluster",
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
