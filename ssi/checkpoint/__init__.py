"""Checkpoint and restore of jobs with CRIU.

    ssid agent ──▶ checkpoint.criu.Criu ──RPC (pycriu, swrk)──▶ criu ──▶ images dir
                        │                                          ▲
                        └── restore: tree becomes the caller's child┘

A job is dumped as a whole: its init is PID 1 of the job's PID/IPC/UTS namespaces.
"""

from ssi.checkpoint.criu import Criu
from ssi.checkpoint.errors import CriuError
from ssi.checkpoint.lazy import CriuDaemon, LazyDump
from ssi.checkpoint.options import (
    CgroupMode,
    DumpOptions,
    Features,
    NetworkLock,
    PageServer,
    RestoreOptions,
)
from ssi.checkpoint.outcome import PAGE_SIZE, DumpResult, RestoreResult, log_errors

__all__ = [
    "CgroupMode",
    "Criu",
    "CriuError",
    "DumpOptions",
    "DumpResult",
    "Features",
    "LazyDump",
    "CriuDaemon",
    "NetworkLock",
    "PAGE_SIZE",
    "PageServer",
    "RestoreOptions",
    "RestoreResult",
    "log_errors",
]
