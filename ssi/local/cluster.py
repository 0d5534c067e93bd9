"""LocalCluster: N nodes on one machine, each a network namespace on a private bridge.

Everything a cluster makes is named from its prefix (see naming.py), so a later run
finds and removes what an earlier one left, even one killed with SIGKILL half-way.
A per-prefix lock file serialises up/down/cleanup of the same prefix across
processes; the kernel drops it when its holder dies.

On-disk state, under RUN_DIR (/run/ssi-local):
    <prefix>.lock    the lock
    <prefix>.json    the record: subnet, state dir, node indices (for attach/cleanup)
    <prefix>/        default state dir: one subdirectory per node, for its daemons
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import net, procs
from .naming import NETNS_RUN_DIR, Naming, node_of_netns

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/ssi-local")
"""Where locks, records and default state dirs of local clusters live."""

_MARKER = ".ssi-local"
"""File that marks a directory as a state dir we made, and so may remove."""


class LocalClusterError(RuntimeError):
    """A local cluster cannot be built as asked."""


class SubnetInUse(LocalClusterError):
    """The host already has an address in the subnet asked for."""


@dataclass(frozen=True)
class LocalNode:
    name: str
    netns: str
    netns_path: str
    address: str


def _lock_path(prefix: str) -> Path:
    return RUN_DIR / f"{prefix}.lock"


def _record_path(prefix: str) -> Path:
    return RUN_DIR / f"{prefix}.json"


@contextmanager
def _locked(prefix: str) -> Iterator[None]:
    """Hold the prefix's lock. On release, the lock file goes too when no cluster
    of that prefix is left (no record), so a torn-down prefix leaves no file.

    A waiter may then hold a lock on the unlinked file, so after taking it we check
    that the file we locked is still the one at the path, and retry otherwise.
    """
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = _lock_path(prefix)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            if not _record_path(prefix).exists():
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _read_record(prefix: str) -> dict[str, Any] | None:
    try:
        with open(_record_path(prefix)) as f:
            rec: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("local.cleanup: unreadable record for %s: %s", prefix, e)
        return None
    return rec


def _remove_state_dir(path: Path) -> bool:
    """Remove a state dir, only if it carries our marker (never a user's directory)."""
    if not (path / _MARKER).exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _cleanup_locked(prefix: str, roots: Collection[int] = ()) -> list[str]:
    removed: list[str] = []
    namespaces = net.owned_netns(prefix)
    ids = set()
    for ns in namespaces:
        try:
            ids.add(procs.ns_id(os.path.join(NETNS_RUN_DIR, ns)))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    removed += [f"process {pid}" for pid in sorted(procs.kill_all(ids, roots=roots))]
    for link in net.owned_links(prefix):
        if net.remove_link(link):
            removed.append(f"link {link}")
    for ns in namespaces:
        if net.remove_netns(ns):
            removed.append(f"netns {ns}")
    rec = _read_record(prefix)
    dirs = {RUN_DIR / prefix}
    if rec is not None and rec.get("state_dir"):
        dirs.add(Path(rec["state_dir"]))
    for d in sorted(dirs):
        if _remove_state_dir(d):
            removed.append(f"state {d}")
    if rec is not None:
        _record_path(prefix).unlink(missing_ok=True)
        removed.append(f"record {_record_path(prefix)}")
    _record_path(prefix).with_suffix(".tmp").unlink(missing_ok=True)
    return removed


def cleanup(prefix: str) -> list[str]:
    """Remove whatever any earlier run with this prefix left: its processes (and
    their descendants), host links, namespaces and state. Returns what was removed,
    as "process 1234", "link ssi-v1", "netns ssi-node1", "state /run/...", ...
    Removing nothing is not an error.
    """
    Naming.make(prefix, "10.0.0.0/24")  # validates the prefix before any matching
    with _locked(prefix):
        removed = _cleanup_locked(prefix)
    if removed:
        log.info("local.cleanup: prefix %s: removed %s", prefix, ", ".join(removed))
    return removed


class LocalCluster:
    """N nodes named node1..nodeN, node k at address .k of `subnet`.

    `up()` builds (after removing any earlier run's leftovers of the same prefix),
    `down()` removes everything, processes included. Use as a context manager to
    be sure of the latter. Processes started with `spawn` are our children: reap
    them with `wait` (down() reaps those still running).
    """

    def __init__(
        self,
        size: int,
        *,
        prefix: str = "ssi",
        subnet: str = "10.87.0.0/24",
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._naming = Naming.make(prefix, subnet)
        if not 0 <= size <= self._naming.max_index:
            raise ValueError(
                f"size {size}: subnet {subnet} holds 0..{self._naming.max_index} nodes"
            )
        self.prefix = prefix
        self.subnet = str(self._naming.subnet)
        self.bridge = self._naming.bridge
        self.host_address = self._naming.host_address
        self.state_dir = Path(state_dir) if state_dir is not None else RUN_DIR / prefix
        self.nodes: list[LocalNode] = [self._plan(i) for i in range(1, size + 1)]
        self._next_index = size + 1
        # pid -> node of what we spawned: down/remove_node kill those too, even
        # if they left the node's namespace (spawned with a new netns, say).
        self._children: dict[int, str] = {}
        self._is_up = False

    # -- building -----------------------------------------------------------------

    def _plan(self, index: int) -> LocalNode:
        n = self._naming
        return LocalNode(
            name=n.node_name(index),
            netns=n.netns(index),
            netns_path=n.netns_path(index),
            address=n.address(index),
        )

    def _index(self, node: LocalNode) -> int:
        return self._naming.node_index(node.name)

    @property
    def is_up(self) -> bool:
        return self._is_up

    def up(self) -> LocalCluster:
        """Build the cluster; returns self. A no-op if this object is already up.

        Raises SubnetInUse if the host has an address in our subnet that is not
        ours; on any failure, removes what it built before raising.
        """
        if self._is_up:
            return self
        started = time.monotonic()
        with _locked(self.prefix):
            stale = _cleanup_locked(self.prefix)
            if stale:
                log.info(
                    "local.up: prefix %s: removed leftovers %s",
                    self.prefix,
                    ", ".join(stale),
                )
            self._check_subnet_free()
            self._check_state_dir()
            try:
                # The record first: it is how a later cleanup finds the state dir.
                self._write_record()
                self._make_state_dir()
                net.make_bridge(self._naming)
                for node in self.nodes:
                    self._build_node(node)
                self._write_record()
            except BaseException:
                _cleanup_locked(self.prefix)
                raise
        self._is_up = True
        log.info(
            "local.up: prefix %s: %d nodes on %s in %.2fs",
            self.prefix,
            len(self.nodes),
            self.subnet,
            time.monotonic() - started,
        )
        return self

    def _check_subnet_free(self) -> None:
        for ifname, address, plen in net.host_addresses():
            theirs = ipaddress.IPv4Network(f"{address}/{plen}", strict=False)
            if theirs.overlaps(self._naming.subnet):
                raise SubnetInUse(
                    f"subnet {self.subnet} overlaps {address}/{plen} on {ifname}"
                )

    def _check_state_dir(self) -> None:
        d = self.state_dir
        if d.exists() and not (d / _MARKER).exists() and any(d.iterdir()):
            # down() removes the state dir: never adopt a directory holding data.
            raise LocalClusterError(f"state dir {d} is not empty and not ours")

    def _make_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / _MARKER).write_text(f"{self.prefix}\n")

    def _build_node(self, node: LocalNode) -> None:
        net.make_node(self._naming, self._index(node))
        self.node_dir(node.name).mkdir(exist_ok=True)

    def _write_record(self) -> None:
        rec = {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "state_dir": str(self.state_dir),
            "nodes": [self._index(n) for n in self.nodes],
            "next_index": self._next_index,
            "pid": os.getpid(),
        }
        path = _record_path(self.prefix)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)

    @classmethod
    def attach(cls, prefix: str) -> LocalCluster:
        """The cluster another process built with this prefix (e.g. for `ssi cluster
        down` or status). Its spawned processes are not our children: `wait` does
        not apply to them. LookupError if there is no such cluster."""
        rec = _read_record(prefix)
        if rec is None or not net.owned_links(prefix):
            raise LookupError(f"no local cluster with prefix {prefix!r}")
        self = cls(0, prefix=prefix, subnet=rec["subnet"], state_dir=rec["state_dir"])
        self.nodes = [self._plan(int(i)) for i in rec["nodes"]]
        self._next_index = int(rec["next_index"])
        self._is_up = True
        return self

    # -- tearing down -------------------------------------------------------------

    def down(self) -> None:
        """Kill every process in (or under) our namespaces, remove the namespaces,
        links and state. Safe to call more than once, and on a cluster never up."""
        with _locked(self.prefix):
            _cleanup_locked(self.prefix, roots=self._live_children())
        self._reap(list(self._children))
        self._is_up = False

    def _live_children(self, node: str | None = None) -> set[int]:
        """Spawned processes (of `node`, or all) that are still our unreaped
        children, so their pids cannot have been recycled."""
        live = set()
        for pid, where in list(self._children.items()):
            if node is not None and where != node:
                continue
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # reaped by someone else
            if done:
                del self._children[pid]
            else:
                live.add(pid)
        return live

    def _reap(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            self._children.pop(pid, None)

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- nodes --------------------------------------------------------------------

    def node(self, name: str) -> LocalNode:
        """The node called `name`; KeyError if there is none."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in local cluster {self.prefix!r}")

    def job_netns_prefix(self, name: str) -> str:
        """How the node's ssid names its jobs' network namespaces (+ job id)."""
        return self._naming.job_netns_prefix(self._index(self.node(name)))

    def node_dir(self, name: str) -> Path:
        """A directory for the node's daemons (sockets, spool), removed by down()."""
        return self.state_dir / self.node(name).name

    def add_node(self) -> LocalNode:
        """Build one more node, with the next index never used by this cluster."""
        self._require_up()
        index = self._next_index
        node = self._plan(index)  # ValueError when the subnet is full
        with _locked(self.prefix):
            self._next_index = index + 1
            self.nodes.append(node)
            try:
                self._build_node(node)
            except BaseException:
                self.nodes.remove(node)
                self._remove_node_locked(node, set())
                raise
            finally:
                self._write_record()
        log.info("local.add_node: %s %s at %s", self.prefix, node.name, node.address)
        return node

    def remove_node(self, name: str) -> None:
        """Kill the node's processes and remove its namespace, veth and directory."""
        node = self.node(name)
        roots = self._live_children(name)
        with _locked(self.prefix):
            self._remove_node_locked(node, roots)
            self.nodes.remove(node)
            self._write_record()
        log.info("local.remove_node: %s %s", self.prefix, name)

    def _netns_of(self, node: LocalNode) -> list[str]:
        """The node's namespace and its `--net private` jobs' (named by its ssid)."""
        index = self._index(node)
        return [
            n for n in net.owned_netns(self.prefix)
            if node_of_netns(self.prefix, n) == index
        ]  # fmt: skip

    def _netns_ids(self, names: list[str]) -> set[procs.NsId]:
        ids = set()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                ids.add(procs.ns_id(os.path.join(NETNS_RUN_DIR, name)))
        return ids

    def _remove_node_locked(self, node: LocalNode, roots: set[int]) -> None:
        # A node removed takes its jobs along, those in namespaces of their own too.
        index = self._index(node)
        names = self._netns_of(node)
        procs.kill_all(self._netns_ids(names), roots=roots)
        self._reap(list(roots))
        net.remove_link(self._naming.veth(index))
        for name in names:
            net.remove_netns(name)
        shutil.rmtree(self.state_dir / node.name, ignore_errors=True)

    def _require_up(self) -> None:
        if not self._is_up:
            raise LocalClusterError(f"local cluster {self.prefix!r} is not up")

    # -- processes ----------------------------------------------------------------

    def spawn(self, node: str, argv: Sequence[str], **kw: Any) -> int:
        """Start `argv` inside the node's network namespace (and only that one: the
        mount namespace stays the host's, so CRIU can dump the process). Keyword
        arguments go to kernel_shim.spawn (env, cwd, stdout, namespaces, ...).
        Returns the host pid, a child of ours: reap it with `wait`."""
        self._require_up()
        import kernel_shim  # late: the shim is only needed by callers that spawn

        n = self.node(node)
        pid: int = kernel_shim.spawn(list(argv), netns=n.netns_path, **kw)
        self._children[pid] = n.name
        return pid

    def wait(self, pid: int, timeout: float | None = None) -> int:
        """Wait for a spawned process to end and reap it; returns its exit code, or
        -N if signal N killed it (as subprocess does). TimeoutError after `timeout`
        seconds (the process is left running)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None
        if fd is not None:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                ms = None if timeout is None else max(0, int(timeout * 1000))
                if not poller.poll(ms):
                    raise TimeoutError(f"pid {pid} still running after {timeout}s")
            finally:
                os.close(fd)
        _, status = os.waitpid(pid, 0)
        self._children.pop(pid, None)
        return os.waitstatus_to_exitcode(status)

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to a process we spawned (through a pidfd, so never to a
        stranger that inherited its pid). No error if it has already ended."""
        if pid not in self._children:
            raise LookupError(f"pid {pid} was not spawned by this cluster")
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def processes(self, node: str | None = None) -> set[int]:
        """Live pids in one node's namespaces (its own and its jobs'), or in all
        of ours."""
        nodes = [self.node(node)] if node is not None else self.nodes
        return procs.pids_in(
            self._netns_ids([n for x in nodes for n in self._netns_of(x)])
        )

    def __repr__(self) -> str:
        state = "up" if self._is_up else "down"
        return (
            f"LocalCluster({self.prefix!r}, {self.subnet}, "
            f"{[n.name for n in self.nodes]}, {state})"
        )
