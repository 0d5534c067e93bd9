"""Find and kill the processes that live in a set of network namespaces.

A namespace is identified by the (device, inode) pair of its nsfs file, so the same
test works for a bind mount in /run/netns and for /proc/PID/ns/net. Zombies have no
namespace file any more and are not counted: they hold nothing, and only their parent
can reap them.

The victims are the processes in the namespaces plus all their descendants, wherever
those live (a job with its own network namespace started by an ssid in a node).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import time
from collections.abc import Collection, Iterable

log = logging.getLogger(__name__)

NsId = tuple[int, int]
"""(st_dev, st_ino) of a namespace file."""


def ns_id(path: str | os.PathLike[str]) -> NsId:
    """Identity of the namespace a nsfs file refers to; OSError if it is gone."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _proc_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[1])


def pids_in(namespaces: Collection[NsId]) -> set[int]:
    """Live processes whose network namespace is one of `namespaces`."""
    found: set[int] = set()
    if not namespaces:
        return found
    for pid in _proc_pids():
        try:
            if ns_id(f"/proc/{pid}/ns/net") in namespaces:
                found.add(pid)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                raise
    return found


def with_descendants(roots: set[int]) -> set[int]:
    """`roots` and every live process below them in the process tree."""
    children: dict[int, list[int]] = {}
    for pid in _proc_pids():
        ppid = _parent(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(children.get(pid, ()))
    return out


def victims(namespaces: Collection[NsId], roots: Collection[int] = ()) -> set[int]:
    """Processes to kill so that nothing is left running in or under `namespaces`,
    nor under the live processes `roots` (those we started, wherever they went)."""
    me = os.getpid()
    live_roots = {p for p in roots if _parent(p) is not None}
    return {p for p in with_descendants(pids_in(namespaces) | live_roots) if p != me}


def kill_all(
    namespaces: Collection[NsId],
    *,
    roots: Collection[int] = (),
    timeout: float = 10.0,
) -> set[int]:
    """Kill every victim (see `victims`) and wait for it to die; returns the pids.

    Each victim is first pinned by a pidfd (so a recycled pid is never hit) and
    stopped, and the scan repeats until it finds no one new: a stopped process
    cannot fork, so no child escapes by being reparented while its parent dies.
    Then all are SIGKILLed at once, and those that are our children are reaped.
    TimeoutError naming the survivors after `timeout` seconds.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pinned: dict[int, int] = {}
        try:
            while True:
                found = victims(namespaces, roots) - pinned.keys()
                if not found:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"processes still alive in our namespaces after {timeout}s: "
                        f"{sorted(found | pinned.keys())}"
                    )
                group = found | pinned.keys()
                for pid in found:
                    fd = _pin(pid, namespaces, group, roots)
                    if fd is not None:
                        pinned[pid] = fd
                        _signal(fd, signal.SIGSTOP)
            if not pinned:
                break
            for pid, fd in pinned.items():
                log.debug("local.cleanup: kill pid %s", pid)
                _signal(fd, signal.SIGKILL)
            _wait_readable(list(pinned.values()), deadline)
            killed |= pinned.keys()
        finally:
            for fd in pinned.values():
                os.close(fd)
    _reap_children(killed)
    return killed


def _signal(pidfd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass


def _pin(
    pid: int, namespaces: Collection[NsId], group: set[int], roots: Collection[int]
) -> int | None:
    """A pidfd for `pid` if, once pinned, it is still a victim: in our namespaces,
    one of `roots`, or a child of one of `group`. None when it has gone (or its
    pid now names someone else)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        still = ns_id(f"/proc/{pid}/ns/net") in namespaces
    except OSError:
        still = False
    if not still and pid not in roots and _parent(pid) not in group:
        os.close(fd)
        return None
    return fd


def _wait_readable(fds: list[int], deadline: float) -> None:
    """Wait until every pidfd reports its process gone, or until `deadline`."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = len(fds)
    while pending:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return
        for fd, _ in poller.poll(left_ms):
            poller.unregister(fd)
            pending -= 1


def _reap_children(pids: Iterable[int]) -> None:
    """Reap those of `pids` that are our own children, so they stay no zombies.

    They were all SIGKILLed and seen dead through their pidfd, so a blocking wait
    returns at once.
    """
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
