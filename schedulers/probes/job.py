"""Per job: CPU usage and demand, resident memory, dirty memory and its rate, I/O.

A job is given by the pids of its process tree (or those listed in its cgroup's
cgroup.procs: pids_of_cgroup). From /proc/PID/stat, /proc/PID/task/*/stat,
/proc/PID/smaps_rollup and /proc/PID/io:

- cpu_usage: CPU seconds per second over the job's processes since the last sample
  (2.0 = two cores busy);
- cpu_demand: runnable threads (state R), decayed with time constant tau: MOSIX's
  process load, 1.0 for a CPU-bound thread even when it gets only a third of a core;
- rss, dirty_bytes: summed Rss and Private_Dirty;
- dirty_rate: bytes/s newly dirtied, estimated as the larger of the growth of
  Private_Dirty and the minor-fault rate x page size. This kernel has no soft-dirty
  tracking, so pages rewritten while already dirty are not seen: a lower bound;
- io_bps: storage bytes read + written per second.

Example: a single-threaded loop that allocates and touches 10 MB/s: cpu_usage ~1.0,
cpu_demand -> 1.0, dirty_rate ~10 MB/s. Processes that vanish between samples are
skipped; their CPU time leaves the total, so a delta never goes negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.probes._proc import CLK_TCK, PAGE_SIZE, PROC, kv_file, proc_stat


def pids_of_cgroup(path: str | Path) -> list[int]:
    """Pids in a cgroup directory (v1 or v2): its cgroup.procs and its children's."""
    root = Path(path)
    pids: list[int] = []
    for procs in sorted(root.rglob("cgroup.procs")):
        try:
            pids += [int(x) for x in procs.read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(pids))


@dataclass(frozen=True, slots=True)
class JobSample:
    job: str
    pids: int  # processes seen
    threads: int
    cpu_usage: float
    cpu_demand: float
    rss: int
    dirty_bytes: int
    dirty_rate: float
    io_bps: float


@dataclass
class _JobState:
    at: float
    cpu_ticks: dict[int, int] = field(default_factory=dict)
    minflt: dict[int, int] = field(default_factory=dict)
    io: dict[int, int] = field(default_factory=dict)
    dirty: int = 0
    demand: float | None = None


class JobProbe:
    """CPU usage and demand, RSS, dirty rate and I/O of one job's processes."""

    name: ClassVar[str] = "job"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path = PROC, tau: float = 5.0) -> None:
        self.root = root
        self.tau = tau
        self._state: dict[str, _JobState] = {}

    def forget(self, job: str) -> None:
        self._state.pop(job, None)

    def sample_job(self, job: str, pids: Sequence[int], now: float) -> JobSample:
        prev = self._state.get(job)
        cur = _JobState(at=now)
        seen = threads = running = 0
        rss = dirty = 0
        d_ticks = d_flt = d_io = 0
        for pid in pids:
            st = proc_stat(pid, self.root)
            if st is None:
                continue
            seen += 1
            ticks = int(st[11]) + int(st[12])
            minflt = int(st[7])
            cur.cpu_ticks[pid] = ticks
            cur.minflt[pid] = minflt
            io = kv_file(self.root / str(pid) / "io")
            iob = io.get("read_bytes", 0) + io.get("write_bytes", 0)
            cur.io[pid] = iob
            if prev is not None and pid in prev.cpu_ticks:
                d_ticks += max(0, ticks - prev.cpu_ticks[pid])
                d_flt += max(0, minflt - prev.minflt.get(pid, minflt))
                d_io += max(0, iob - prev.io.get(pid, iob))
            try:
                tids = list((self.root / str(pid) / "task").iterdir())
            except OSError:
                tids = []
            for tid in tids:
                tst = proc_stat(int(tid.name), self.root / str(pid) / "task")
                if tst is None:
                    continue
                threads += 1
                running += tst[0] == "R"
            roll = kv_file(self.root / str(pid) / "smaps_rollup")
            rss += roll.get("Rss", 0)
            dirty += roll.get("Private_Dirty", 0)
        cur.dirty = dirty
        usage = dirty_rate = io_bps = 0.0
        if prev is not None and now > prev.at:
            dt = now - prev.at
            usage = d_ticks / CLK_TCK / dt
            dirty_rate = max(max(0, dirty - prev.dirty), d_flt * PAGE_SIZE) / dt
            io_bps = d_io / dt
            k = math.exp(-dt / self.tau)
            base = prev.demand if prev.demand is not None else float(running)
            cur.demand = base * k + running * (1.0 - k)
        else:
            cur.demand = float(running)
        self._state[job] = cur
        return JobSample(
            job=job,
            pids=seen,
            threads=threads,
            cpu_usage=usage,
            cpu_demand=cur.demand,
            rss=rss,
            dirty_bytes=dirty,
            dirty_rate=dirty_rate,
            io_bps=io_bps,
        )
