"""CPU load: run-queue length decayed over time, normalised by capacity.

Each sample reads procs_running from /proc/stat (minus the reader itself) and
folds it into an exponentially decayed average with time constant `tau` (MOSIX's
load is such an average), plus the CPU utilisation since the previous sample. Speed
is BogoMIPS / `reference_bogomips` (immune to frequency scaling; MHz as a fallback),
so a node twice as fast counts twice. Example: 2 CPUs at speed 1.3 with 3 CPU-bound
processes for a long while: load -> 3.0, norm_load = 3 / 2.6 = 1.15. The first
sample starts the average at the kernel's 1-minute load average.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from schedulers.api import API_VERSION
from schedulers.params import param, parse_params
from schedulers.probes._proc import PROC, bogomips, read_stat_fields


@dataclass(frozen=True, slots=True)
class CpuSample:
    cpus: int
    speed: float  # relative to the reference
    runnable: int  # instantaneous, without the reader
    load: float  # decayed run-queue length
    norm_load: float  # load / (cpus * speed)
    utilization: float  # 0..1 of all CPUs since the previous sample
    loadavg1: float


@dataclass(frozen=True)
class CpuParams:
    tau: float = param(10.0, "time constant of the decayed load", unit="s", min=0.1)
    reference_bogomips: float = param(4000.0, "BogoMIPS of a speed-1.0 core", min=1.0)
    reference_mhz: float = param(2000.0, "MHz of a speed-1.0 core (fallback)", min=1.0)


class CpuLoadProbe:
    """Decayed run-queue length and utilisation, normalised by CPU speed."""

    name: ClassVar[str] = "cpu_load"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path = PROC) -> None:
        self.root = root
        self.p = CpuParams()
        self._load: float | None = None
        self._last: float | None = None
        self._busy_total: tuple[int, int] | None = None
        self._speed: float | None = None

    def configure(self, **params: object) -> None:
        self.p = parse_params(CpuParams, params, base=self.p)
        self._speed = None

    def speed(self) -> float:
        if self._speed is None:
            bm = bogomips(self.root)
            if bm:
                self._speed = bm / self.p.reference_bogomips
            else:
                freq = psutil.cpu_freq()
                mhz = (freq.max or freq.current) if freq else 0.0
                self._speed = mhz / self.p.reference_mhz if mhz else 1.0
        return self._speed

    def sample(self, now: float) -> CpuSample:
        stat = read_stat_fields(self.root)
        runnable = max(0, stat.get("procs_running", [1])[0] - 1)
        cpus = len(os.sched_getaffinity(0)) or 1  # what a cpuset leaves us
        loadavg1 = float((self.root / "loadavg").read_text().split()[0])
        if self._load is None or self._last is None:
            self._load = loadavg1
        else:
            dt = max(0.0, now - self._last)
            k = math.exp(-dt / self.p.tau)
            self._load = self._load * k + runnable * (1.0 - k)
        self._last = now
        cpu = stat.get("cpu", [0] * 8)
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
        total = sum(cpu[:8])
        util = 0.0
        if self._busy_total is not None:
            d_total = total - self._busy_total[1]
            d_busy = (total - idle) - self._busy_total[0]
            util = min(1.0, max(0.0, d_busy / d_total)) if d_total > 0 else 0.0
        self._busy_total = (total - idle, total)
        speed = self.speed()
        return CpuSample(
            cpus=cpus,
            speed=speed,
            runnable=runnable,
            load=self._load,
            norm_load=self._load / (cpus * speed),
            utilization=util,
            loadavg1=loadavg1,
        )
