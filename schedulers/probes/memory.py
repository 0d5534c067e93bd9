"""Memory: total, available (MemAvailable), swap, and PSI memory pressure.

Pressure is /proc/pressure/memory "some avg10": the share of the last 10 s in which at
least one task stalled waiting for memory (reclaim, swap-in, thrashing); None-safe:
where the kernel lacks PSI, pressure is estimated from swap activity (pages swapped
in per second over 1000 counts as 100%). Example: a node at 12% "some" is thrashing
noticeably; memory_aware stops placing there at 20% by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from schedulers.api import API_VERSION
from schedulers.probes._proc import PROC, kv_file, read_psi


@dataclass(frozen=True, slots=True)
class MemorySample:
    total: int
    available: int
    swap_used: int
    pressure_some: float  # percent, avg10
    pressure_full: float  # percent, avg10
    psi: bool  # whether pressure comes from PSI


class MemoryProbe:
    """Memory size, availability and PSI pressure."""

    name: ClassVar[str] = "memory"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path = PROC) -> None:
        self.root = root
        self._swapin: tuple[float, int] | None = None

    def sample(self, now: float) -> MemorySample:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        psi = read_psi("memory", self.root)
        if psi is not None:
            some, full = psi.some10, psi.full10
        else:
            pswpin = kv_file(self.root / "vmstat").get("pswpin", 0)
            some = 0.0
            if self._swapin is not None and now > self._swapin[0]:
                rate = (pswpin - self._swapin[1]) / (now - self._swapin[0])
                some = min(100.0, rate / 10.0)
            self._swapin = (now, pswpin)
            full = some
        return MemorySample(
            total=int(vm.total),
            available=int(vm.available),
            swap_used=int(sw.used),
            pressure_some=some,
            pressure_full=full,
            psi=psi is not None,
        )
