"""Namespaces: enter (setns), leave (unshare), name the UTS one (sethostname).

All of them act on the calling thread only: in a threaded daemon, do namespace work in a
child (kernel_shim.spawn) rather than here, unless the thread is dedicated to it.
"""

from __future__ import annotations

import enum
import os

from ._errors import _check, reraise
from ._kernel_shim import lib
from .proc import pidfd_open


class NsType(enum.IntFlag):
    """The CLONE_NEW* bits (kernel ABI, checked against <sched.h> by the unit tests)."""

    MNT = 0x00020000
    UTS = 0x04000000
    IPC = 0x08000000
    NET = 0x40000000
    PID = 0x20000000
    USER = 0x10000000
    CGROUP = 0x02000000
    TIME = 0x00000080


NO_NS = NsType(0)


def ns_name(flags: NsType | int) -> str:
    """'NET', 'PID|IPC|UTS', or 'ANY' for 0: how flags appear in error messages."""
    names = [m.name for m in NsType if m.name and int(flags) & m.value]
    return "|".join(names) if names else ("ANY" if int(flags) == 0 else hex(int(flags)))


def unshare(flags: NsType) -> None:
    """Move the calling thread into new namespaces (PID and TIME: its children)."""
    _check(lib.unshare(int(flags)), f"unshare({ns_name(flags)})")


def setns(target: int | str | os.PathLike[str], nstype: NsType = NO_NS) -> None:
    """Enter the namespace behind `target`: an open fd, or a path such as
    /run/netns/NAME or /proc/PID/ns/net. `nstype` 0 accepts any kind; otherwise the
    kernel refuses (EINVAL) a namespace of another kind."""
    if isinstance(target, int):
        _check(lib.setns(target, int(nstype)), f"setns({target}, {ns_name(nstype)})")
        return
    path = os.fspath(target)
    what = f"setns({path}, {ns_name(nstype)})"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        reraise(exc, what)
    try:
        _check(lib.setns(fd, int(nstype)), what)
    finally:
        os.close(fd)


def setns_pid(pid: int, nstype: NsType) -> None:
    """Enter the `nstype` namespaces (one or several bits) of process `pid`, through a
    pidfd so a recycled pid cannot be mistaken for it."""
    if not nstype:
        raise ValueError("setns_pid needs at least one namespace type")
    with pidfd_open(pid) as pidfd:
        what = f"setns(pidfd of {pid}, {ns_name(nstype)})"
        _check(lib.setns(pidfd.fd, int(nstype)), what)


def sethostname(name: str) -> None:
    """Set the hostname of the calling thread's UTS namespace."""
    raw = name.encode()
    _check(lib.sethostname(raw, len(raw)), f"sethostname({name})")
