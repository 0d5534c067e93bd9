"""kernel_shim: the only door to raw Linux calls in ssi (cffi, API mode).

    ssi.jobs / ssi.node / ssi.checkpoint ...
          │  typed calls; errors are OSError(errno, "<strerror>: <call(args)>")
          ▼
    ns.py (NsType, setns, unshare, sethostname)   proc.py (PidFd, prctl)
    spawn.py (clone + namespaces + execve)         protocol.py (Kernel, for fakes)
          │
          ▼
    _kernel_shim (built from _build.py)  →  Linux

Where Python 3.11 has the call (os.pidfd_open, signal.pidfd_send_signal) the shim uses
it and only adds the error message.
"""

from .ns import NsType, sethostname, setns, setns_pid, unshare
from .proc import (
    PidFd,
    get_child_subreaper,
    get_pdeathsig,
    pidfd_open,
    pidfd_send_signal,
    set_child_subreaper,
    set_pdeathsig,
)
from .protocol import Kernel, LinuxKernel, linux
from .spawn import netns_path, spawn

__all__ = [
    "Kernel",
    "LinuxKernel",
    "NsType",
    "PidFd",
    "get_child_subreaper",
    "get_pdeathsig",
    "linux",
    "netns_path",
    "pidfd_open",
    "pidfd_send_signal",
    "set_child_subreaper",
    "set_pdeathsig",
    "sethostname",
    "setns",
    "setns_pid",
    "spawn",
    "unshare",
]
