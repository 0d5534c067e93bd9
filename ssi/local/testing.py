"""Helpers for tests and demos that build local clusters: unique names, free subnets,
polling, and the leak check that every teardown runs.

    unique_prefix() + free_subnet() ─▶ LocalCluster(...).up() ─▶ ... ─▶ down()
                                                    leftovers(prefix, ids) == [] ◀┘
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from . import net, procs
from .cluster import RUN_DIR, LocalCluster, SubnetInUse
from .naming import NETNS_RUN_DIR, owns_netns

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll `check` until it returns something truthy and return that. Exceptions
    count as "not yet". TimeoutError naming `what` (and the last error) after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # any failure of the probe means "not yet"
            last = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last!r})" if last is not None else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def unique_prefix(head: str = "t") -> str:
    """A prefix no namespace, link or record on this host uses yet: `head` plus 4
    hex digits ("t3fa9"), short enough for any subnet's interface names."""
    for _ in range(100):
        prefix = head + secrets.token_hex(2)
        if (
            not net.owned_links(prefix)
            and not net.owned_netns(prefix)
            and not (RUN_DIR / f"{prefix}.json").exists()
        ):
            return prefix
    raise RuntimeError("no free prefix found")


def free_subnet() -> str:
    """A random 10.x.y.0/24 (x in 100..250) overlapping no address of the host."""
    taken = [
        ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
        for _, addr, plen in net.host_addresses()
    ]
    for _ in range(100):
        subnet = ipaddress.IPv4Network(
            f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"
        )
        if not any(subnet.overlaps(t) for t in taken):
            return str(subnet)
    raise RuntimeError("no free subnet found")


def make_cluster(size: int, **kw: Any) -> LocalCluster:
    """An up LocalCluster with a fresh prefix and subnet unless given; retries when
    a concurrent run took the subnet between our check and our build."""
    for _ in range(5):
        args = {"prefix": unique_prefix(), "subnet": free_subnet(), **kw}
        try:
            return LocalCluster(size, **args).up()
        except SubnetInUse:
            if "subnet" in kw:
                raise
    raise RuntimeError("could not find a free subnet for a local cluster")


def namespace_ids(cluster: LocalCluster) -> set[procs.NsId]:
    """Identities of the cluster's namespaces that exist now (for a later leak
    check, when their names may be gone or reused)."""
    ids = set()
    for node in cluster.nodes:
        try:
            ids.add(procs.ns_id(node.netns_path))
        except FileNotFoundError:
            pass
    return ids


def leftovers(prefix: str, ns_ids: Collection[procs.NsId] = ()) -> list[str]:
    """What of a cluster is still there: namespaces and links with its prefix,
    processes in (or under) the namespaces `ns_ids`, and its state files.

    The kernel recycles namespace inodes: one of `ns_ids` that now names another
    cluster's namespace is someone else's, and is not counted.
    """
    found = [f"netns {n}" for n in net.owned_netns(prefix)]
    found += [f"link {n}" for n in net.owned_links(prefix)]
    foreign = set()
    for name in net.all_netns():
        if not owns_netns(prefix, name):
            try:
                foreign.add(procs.ns_id(os.path.join(NETNS_RUN_DIR, name)))
            except OSError:
                pass
    ours = set(ns_ids) - foreign
    found += [f"process {p}" for p in sorted(procs.victims(ours))]
    for path in [
        RUN_DIR / prefix,
        *(RUN_DIR / f"{prefix}.{x}" for x in ("json", "lock")),
    ]:
        if path.exists():
            found.append(f"state {path}")
    return found
