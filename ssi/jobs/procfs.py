"""What /proc says about a job's processes: namespace PIDs, parents, memory, CPU time.

Every reader returns None (or an empty list) for a process that is gone: processes
of a job come and go while we look.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R, S, D, Z, T, ...
    ppid: int
    utime: float  # seconds
    stime: float  # seconds
    starttime: int  # clock ticks after boot: with the pid, identifies the process


def stat(pid: int, proc: str = PROC) -> ProcStat | None:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    # Fields after comm, 0-based: state 0, ppid 1, utime 11, stime 12, starttime 19.
    return ProcStat(
        pid,
        comm,
        rest[0],
        int(rest[1]),
        int(rest[11]) / _TICKS,
        int(rest[12]) / _TICKS,
        int(rest[19]),
    )


def nspids(pid: int, proc: str = PROC) -> list[int] | None:
    """The NSpid line: the pid in each nested PID namespace, outermost first."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(p) for p in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def is_ns_init(pid: int, proc: str = PROC) -> bool:
    """True for PID 1 of a PID namespace nested in ours (a job's init)."""
    ns = nspids(pid, proc)
    return ns is not None and len(ns) > 1 and ns[-1] == 1


def children(pid: int, proc: str = PROC) -> list[int]:
    """Host PIDs of the children of `pid` (every thread's)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"{proc}/{pid}/task"):
            with open(f"{proc}/{pid}/task/{task}/children") as f:
                kids.extend(int(p) for p in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        return []
    return sorted(set(kids))


def rss_bytes(pid: int, proc: str = PROC) -> int:
    """Resident memory of `pid` in bytes (0 once gone)."""
    try:
        with open(f"{proc}/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0
