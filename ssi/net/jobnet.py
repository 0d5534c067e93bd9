"""The network namespaces of one node's `--net private` jobs, through pyroute2.

Each job gets a named namespace, <netns_prefix><job id> (so that it outlives an
ssid restart and a move's two ends never share a name on a shared host), holding
`lo` and `eth0`: a macvlan (bridge mode) on the node's cluster link, with the job's
address at the prefix length of the node's own address on that link, its MAC
derived from the address (addresses.mac_for), and the node's default route.

A macvlan reaches the whole cluster network but not its own parent: the node's
own address is the one place a job cannot be reached from.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

import kernel_shim
from ssi.net import garp, lock
from ssi.net.addresses import mac_for
from ssi.net.enter import rtnl_socket
from ssi.proto.errors import BadRequest

log = logging.getLogger(__name__)
# Every netlink message at debug level would drown an ssid's log.
logging.getLogger("pyroute2").setLevel(logging.INFO)

NETNS_DIR = "/run/netns"
IFNAME = "eth0"
EXTERNAL_KEY = "ssi-job-net"  # how CRIU names the job's namespace in its images


class NetUnavailable(BadRequest):
    """This node cannot give a job the network it asks for (and says why)."""


@contextlib.contextmanager
def _ipr(netns_path: str | None = None) -> Iterator[Any]:
    """pyroute2 on this node's namespace, or on a job's through a netlink socket
    made there (enter.rtnl_socket: pyroute2's own way forks the daemon). Its
    NetlinkError comes out as OSError, as every failure here."""
    if netns_path is None:
        ipr = IPRoute()
    else:
        ipr = IPRoute(fileno=rtnl_socket(netns_path).detach())
    try:
        yield ipr
    except NetlinkError as e:
        raise OSError(e.code, f"netlink: {e}", netns_path or "this node") from None
    finally:
        ipr.close()


class NodeSide(NamedTuple):
    """The node's cluster link as a job address on it sees it."""

    link: str  # its name
    ifindex: int
    prefixlen: int  # of the node's own address there: the job's too
    gateway: str  # the node's default gateway if on that subnet, else ""


def _make_netns(name: str) -> None:
    """A named namespace, made by `ip netns add` (iproute2): pyroute2's
    netns.create forks the daemon; ip does the same bind mount in a process of its
    own, started without a fork (kernel_shim.spawn)."""
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise NetUnavailable("ip (Debian package iproute2) is missing: make setup")
    err = tempfile.TemporaryFile()
    try:
        pid = kernel_shim.spawn(
            [ip, "netns", "add", name], stdout=err.fileno(), stderr=err.fileno(),
            new_session=False,
        )  # fmt: skip
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            why = err.read().decode(errors="replace").strip()
            raise OSError(errno.EIO, f"ip netns add {name}: {why or status}")
    finally:
        err.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


class JobNetworks:
    """The job namespaces of one node. link: its interface on the cluster network
    (the macvlans' parent); "" for the one holding `address`, its advertised
    address, looked up at each use (pyroute2's IPRoute cannot run on an event
    loop's thread: call these from worker threads). netns_prefix: job
    namespaces are /run/netns/<netns_prefix><job id>."""

    def __init__(self, link: str, address: str, netns_prefix: str) -> None:
        self.link = link
        self.address = address
        self.netns_prefix = netns_prefix
        self._held: dict[str, int] = {}  # job id -> fd on its namespace, for CRIU
        self._held_lock = threading.Lock()

    def _link(self, ipr: Any) -> tuple[str, int]:
        """(name, index) of the node's cluster link; NetUnavailable if none."""
        if self.link:
            index = _index(ipr, self.link)
            if index is None:
                raise NetUnavailable(
                    f"this node has no interface {self.link!r} ([net] link)"
                )
            return self.link, index
        for msg in ipr.addr("dump", family=2):
            if msg.get("address") == self.address:
                index = int(msg["index"])
                return str(ipr.link("get", index=index)[0].get("ifname")), index
        raise NetUnavailable(
            f"no interface of this node holds its cluster address "
            f"{self.address or '(none advertised)'}: set [net] link to the "
            "interface jobs' addresses go on"
        )

    # -- names -------------------------------------------------------------------

    def name(self, job_id: str) -> str:
        return f"{self.netns_prefix}{job_id}"

    def path(self, job_id: str) -> str:
        return os.path.join(NETNS_DIR, self.name(job_id))

    def exists(self, job_id: str) -> bool:
        return os.path.lexists(self.path(job_id))

    @staticmethod
    def external(init_pid: int) -> str:
        """CRIU's --external for the namespace of a job's init: not dumped, only
        named, so that a restore joins the one the target prepared."""
        return f"net[{os.stat(f'/proc/{init_pid}/ns/net').st_ino}]:{EXTERNAL_KEY}"

    def hold(self, job_id: str) -> int:
        """An fd on the job's namespace, for CRIU's inherit_fd, open until
        release() or remove()."""
        fd = os.open(self.path(job_id), os.O_RDONLY | os.O_CLOEXEC)
        with self._held_lock:
            old = self._held.pop(job_id, None)
            self._held[job_id] = fd
        if old is not None:
            os.close(old)
        return fd

    def release(self, job_id: str) -> None:
        with self._held_lock:
            fd = self._held.pop(job_id, None)
        if fd is not None:
            os.close(fd)

    # -- life cycle --------------------------------------------------------------

    def create(self, job_id: str, address: str, *, lock_table: str = "") -> str:
        """Build the job's namespace with its address, link up; returns its path.
        lock_table: lock it (lock.lock) before the link comes up, for a restore.
        A stale namespace of the same name goes first. NetUnavailable when the
        address does not fit this node's cluster network; on any failure nothing
        is left."""
        if self.exists(job_id):
            log.warning(
                "op=net.create job=%s stale %s removed", job_id, self.name(job_id)
            )
            self.remove(job_id)
        side = self._node_side(address)
        name, path = self.name(job_id), self.path(job_id)
        _make_netns(name)
        try:
            with _ipr() as ipr:
                ipr.link(
                    "add",
                    ifname=IFNAME,
                    kind="macvlan",
                    link=side.ifindex,
                    macvlan_mode="bridge",
                    address=mac_for(address),
                    net_ns_fd=path,
                )
            if lock_table:
                lock.lock(path, lock_table)
            with _ipr(path) as ipr:
                ipr.link("set", index=_index(ipr, "lo"), state="up")
                eth0 = _index(ipr, IFNAME)
                ipr.addr("add", index=eth0, address=address, prefixlen=side.prefixlen)
                ipr.link("set", index=eth0, state="up")
                if side.gateway:
                    ipr.route("add", dst="default", gateway=side.gateway)
        except BaseException:
            self.remove(job_id)
            raise
        log.info(
            "op=net.create job=%s netns=%s address=%s/%s via %s locked=%s",
            job_id, name, address, side.prefixlen, side.link, bool(lock_table),
        )  # fmt: skip
        return path

    def _node_side(self, address: str) -> NodeSide:
        """What a job address on this node's link gets from it; the address must
        lie in the link's subnet (NetUnavailable)."""
        want = ipaddress.IPv4Address(address)
        with _ipr() as ipr:
            link, parent = self._link(ipr)
            nets = [
                ipaddress.IPv4Network(
                    f"{m.get('address')}/{m['prefixlen']}", strict=False
                )
                for m in ipr.addr("dump", family=2, index=parent)
            ]
            gateway = ""
            for r in ipr.route("dump", family=2, table=254):
                if r["dst_len"] == 0 and r.get("gateway"):
                    gateway = str(r.get("gateway"))
                    break
        fit = [n for n in nets if want in n]
        if not fit:
            have = ", ".join(map(str, nets)) or "no IPv4 address"
            raise NetUnavailable(
                f"job address {address} is outside the cluster network of this "
                f"node's {link} ({have}): [net] pool must lie in that subnet"
            )
        if gateway and ipaddress.IPv4Address(gateway) not in fit[0]:
            gateway = ""
        return NodeSide(link, parent, fit[0].prefixlen, gateway)

    def cut(self, job_id: str) -> None:
        """Link down: nothing leaves or enters the job's namespace (the source of a
        move, from before its dump until the move is settled), no ARP answered."""
        with _ipr(self.path(job_id)) as ipr:
            ipr.link("set", index=_index(ipr, IFNAME), state="down")

    def reconnect(self, job_id: str, address: str) -> None:
        """Undo cut(): no CRIU lock left, link up, the default route back, and the
        cluster told."""
        side = self._node_side(address)
        try:
            cleared = lock.clear(self.path(job_id))
        except lock.LockError as e:  # the link matters more: go on
            log.error("op=net.reconnect job=%s lock tables: %s", job_id, e)
            cleared = []
        if cleared:
            log.warning("op=net.reconnect job=%s CRIU left %s", job_id, cleared)
        with _ipr(self.path(job_id)) as ipr:
            ipr.link("set", index=_index(ipr, IFNAME), state="up")
            if side.gateway:
                try:
                    ipr.route("add", dst="default", gateway=side.gateway)
                except NetlinkError as e:  # EEXIST: still there
                    if e.code != errno.EEXIST:
                        raise
        self.announce(job_id, address)

    def announce(self, job_id: str, address: str) -> None:
        """A gratuitous ARP: the address lives behind this node now."""
        garp.announce(self.path(job_id), IFNAME, address)

    def remove(self, job_id: str) -> None:
        """Delete the job's namespace (its macvlan goes with it once no process
        holds it). Nothing there is not an error."""
        self.release(job_id)
        if not self.exists(job_id):
            return
        with contextlib.suppress(FileNotFoundError):
            netns.remove(self.name(job_id))
        log.info("op=net.remove job=%s netns=%s", job_id, self.name(job_id))
