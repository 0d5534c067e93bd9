"""The Kernel protocol: what callers need from the shim, so that their unit tests can
inject a fake and run without root."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from . import ns, proc
from . import spawn as _spawn
from .ns import NO_NS, NsType
from .proc import PidFd


class Kernel(Protocol):
    def unshare(self, flags: NsType) -> None: ...

    def setns(
        self, target: int | str | os.PathLike[str], nstype: NsType = NO_NS
    ) -> None: ...

    def setns_pid(self, pid: int, nstype: NsType) -> None: ...

    def sethostname(self, name: str) -> None: ...

    def set_child_subreaper(self, on: bool = True) -> None: ...

    def set_pdeathsig(self, sig: int) -> None: ...

    def pidfd_open(self, pid: int) -> PidFd: ...

    def pidfd_send_signal(self, pidfd: int | PidFd, sig: int) -> None: ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        namespaces: NsType = NO_NS,
        netns: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        groups: Sequence[int] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Sequence[int] = (),
        new_session: bool = True,
        hostname: str | None = None,
        pdeathsig: int | None = None,
    ) -> int: ...


class LinuxKernel:
    """The real thing: each method is the module-level function of the same name."""

    unshare = staticmethod(ns.unshare)
    setns = staticmethod(ns.setns)
    setns_pid = staticmethod(ns.setns_pid)
    sethostname = staticmethod(ns.sethostname)
    set_child_subreaper = staticmethod(proc.set_child_subreaper)
    set_pdeathsig = staticmethod(proc.set_pdeathsig)
    pidfd_open = staticmethod(proc.pidfd_open)
    pidfd_send_signal = staticmethod(proc.pidfd_send_signal)
    spawn = staticmethod(_spawn.spawn)


linux: Kernel = LinuxKernel()
