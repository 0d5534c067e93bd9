"""Checkpoint and restore of jobs with CRIU.

    ssid agent ──▶ checkpoint.criu.Criu ──RPC (pycriu, swrk)──▶ criu ──▶ images dir
                        │                                          ▲
                        └── restore: tree becomes the caller's child┘

A job is dumped as a whole: its init is PID 1 of the job's PID/IPC/UTS namespaces.
"""

from ssi.checkpoint.criu import (
    CgroupMode,
    Criu,
    DumpOptions,
    DumpResult,
    Features,
    LazyDump,
    LazyPagesDaemon,
    NetworkLock,
    PageServer,
    RestoreOptions,
    RestoreResult,
    log_errors,
)
from ssi.checkpoint.errors import CriuError

__all__ = [
    "CgroupMode",
    "Criu",
    "CriuError",
    "DumpOptions",
    "DumpResult",
    "Features",
    "LazyDump",
    "LazyPagesDaemon",
    "NetworkLock",
    "PageServer",
    "RestoreOptions",
    "RestoreResult",
    "log_errors",
]
