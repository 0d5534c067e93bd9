"""Process controls: pidfds, the child subreaper flag, the parent-death signal."""

from __future__ import annotations

import os
import signal
from types import TracebackType

from ._errors import _check, reraise
from ._kernel_shim import lib


class PidFd:
    """An owned pidfd (from os.pidfd_open); a context manager that closes it.

    Signals sent through it cannot reach a recycled pid; the fd polls readable once the
    process has exited (asyncio: loop.add_reader(pidfd.fd, ...)).
    """

    __slots__ = ("_fd", "pid")

    def __init__(self, fd: int, pid: int) -> None:
        self._fd: int | None = fd
        self.pid = pid

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"pidfd of {self.pid} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def fileno(self) -> int:
        return self.fd

    def send_signal(self, sig: int) -> None:
        """Signal the process; ProcessLookupError (ESRCH) once it has exited."""
        pidfd_send_signal(self, sig)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> PidFd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PidFd(fd={self._fd}, pid={self.pid})"


def pidfd_open(pid: int) -> PidFd:
    """Open a pidfd (O_CLOEXEC) for `pid`; ProcessLookupError if it does not exist."""
    try:
        return PidFd(os.pidfd_open(pid), pid)
    except OSError as exc:
        reraise(exc, f"pidfd_open({pid})")


def pidfd_send_signal(pidfd: int | PidFd, sig: int) -> None:
    """Send `sig` through a pidfd (an fd number or a PidFd)."""
    fd = pidfd.fd if isinstance(pidfd, PidFd) else pidfd
    who = f"pid {pidfd.pid}" if isinstance(pidfd, PidFd) else f"pidfd {fd}"
    try:
        signal.pidfd_send_signal(fd, sig)
    except OSError as exc:
        reraise(exc, f"pidfd_send_signal({who}, {_signame(sig)})")


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def set_child_subreaper(on: bool = True) -> None:
    """Make orphaned descendants reparent to this process (PR_SET_CHILD_SUBREAPER)."""
    _check(
        lib.ssi_set_child_subreaper(int(on)), f"prctl(PR_SET_CHILD_SUBREAPER, {on:d})"
    )


def get_child_subreaper() -> bool:
    return bool(_check(lib.ssi_get_child_subreaper(), "prctl(PR_GET_CHILD_SUBREAPER)"))


def set_pdeathsig(sig: int) -> None:
    """Receive `sig` when the parent *thread* exits (0 clears). It is cleared on setuid
    and on execve of set-user-ID programs."""
    _check(lib.ssi_set_pdeathsig(sig), f"prctl(PR_SET_PDEATHSIG, {_signame(sig)})")


def get_pdeathsig() -> int:
    return _check(lib.ssi_get_pdeathsig(), "prctl(PR_GET_PDEATHSIG)")
