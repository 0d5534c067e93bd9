"""The links and namespaces of a local cluster, through pyroute2.

pyroute2 does its namespace work in a child process, so the caller's own network
namespace never changes. Every function here is safe to call on a half-built or
half-removed topology: what is already there (or already gone) is not an error.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from .naming import NETNS_RUN_DIR, Naming, owns_link, owns_netns

log = logging.getLogger(__name__)


@contextmanager
def _ipr(ns: str | None = None) -> Iterator[Any]:
    # flags=0: never let pyroute2 create a namespace we meant only to enter.
    ipr = IPRoute() if ns is None else IPRoute(netns=ns, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def host_addresses() -> list[tuple[str, str, int]]:
    """(interface, address, prefixlen) of every IPv4 address of the host."""
    out = []
    with _ipr() as ipr:
        names = {int(m["index"]): m.get("ifname") for m in ipr.link("dump")}
        for msg in ipr.addr("dump", family=2):
            out.append(
                (
                    names.get(int(msg["index"]), "?"),
                    msg.get("address"),
                    msg["prefixlen"],
                )
            )
    return out


def make_bridge(naming: Naming) -> None:
    """Create the bridge, give it the host's address on the subnet, bring it up."""
    with _ipr() as ipr:
        if _index(ipr, naming.bridge) is None:
            ipr.link("add", ifname=naming.bridge, kind="bridge")
        idx = _index(ipr, naming.bridge)
        try:
            ipr.addr(
                "add",
                index=idx,
                address=naming.host_address,
                prefixlen=naming.prefixlen,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.link("set", index=idx, state="up")


def make_node(naming: Naming, index: int) -> None:
    """Create node `index`: namespace, veth pair on the bridge, eth0 and routes.

    The node end of the veth is created directly inside the namespace under its
    final name, eth0, so no half-named interface ever appears on the host.
    """
    ns = naming.netns(index)
    if ns not in netns.listnetns():
        netns.create(ns)
    veth = naming.veth(index)
    with _ipr() as ipr:
        bridge = _index(ipr, naming.bridge)
        if bridge is None:
            raise OSError(errno.ENODEV, "bridge missing", naming.bridge)
        if _index(ipr, veth) is None:
            ipr.link(
                "add",
                ifname=veth,
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": ns},
            )
        ipr.link("set", index=_index(ipr, veth), master=bridge, state="up")
    with _ipr(ns) as ipr:
        lo = _index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        eth0 = _index(ipr, "eth0")
        if eth0 is None:
            raise OSError(errno.ENODEV, "eth0 missing in namespace", ns)
        try:
            ipr.addr(
                "add",
                index=eth0,
                address=naming.address(index),
                prefixlen=naming.prefixlen,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.link("set", index=eth0, state="up")
        try:
            ipr.route("add", dst="default", gateway=naming.host_address)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise


def remove_link(name: str) -> bool:
    """Delete a host interface (a veth takes its peer with it); False if absent."""
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            return False
    log.debug("local.cleanup: removed link %s", name)
    return True


def remove_netns(name: str) -> bool:
    """Unmount and unlink a named namespace; False if absent."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.lexists(path):
        return False
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    log.debug("local.cleanup: removed netns %s", name)
    return True


def owned_links(prefix: str) -> list[str]:
    """Host interfaces a cluster with this prefix made, bridge last."""
    with _ipr() as ipr:
        names = [m.get("ifname") for m in ipr.link("dump")]
    mine = [n for n in names if isinstance(n, str) and owns_link(prefix, n)]
    return sorted(mine, key=lambda n: (n.endswith("-br"), n))


def all_netns() -> list[str]:
    """Every named network namespace on the host."""
    return sorted(netns.listnetns())


def owned_netns(prefix: str) -> list[str]:
    """Named namespaces a cluster with this prefix made."""
    return sorted(n for n in netns.listnetns() if owns_netns(prefix, n))
