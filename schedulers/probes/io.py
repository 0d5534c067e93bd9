"""Disk I/O: read and write rates, how busy the busiest disk is, PSI io pressure.

Rates are deltas of psutil's /proc/diskstats counters between two samples, over
whole disks and partitions alike but without loop, ram and zram devices (a partition
counts towards its disk, so the disks alone are summed). Busy = the largest share of
wall time any one disk spent with I/O in flight. Example: two samples 2 s apart, sda
read 200 MB in between and was busy 1.5 s: read_bps = 100 MB/s, busy = 0.75.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from schedulers.api import API_VERSION
from schedulers.probes._proc import PROC, read_psi

_SKIP = re.compile(r"^(loop|ram|zram|fd|sr)\d")


def _is_whole_disk(name: str) -> bool:
    return Path(f"/sys/block/{name}").exists()


@dataclass(frozen=True, slots=True)
class IoSample:
    read_bps: float
    write_bps: float
    busy: float  # 0..1, busiest disk
    pressure_some: float  # percent, avg10 (0 without PSI)
    disks: int


class IoProbe:
    """Disk throughput, busy fraction and PSI io pressure."""

    name: ClassVar[str] = "io"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path = PROC) -> None:
        self.root = root
        self._prev: tuple[float, dict[str, tuple[int, int, int]]] | None = None

    def _counters(self) -> dict[str, tuple[int, int, int]]:
        per = psutil.disk_io_counters(perdisk=True) or {}
        out = {}
        for name, c in per.items():
            if _SKIP.match(name) or not _is_whole_disk(name):
                continue
            out[name] = (c.read_bytes, c.write_bytes, getattr(c, "busy_time", 0))
        return out

    def sample(self, now: float) -> IoSample:
        cur = self._counters()
        psi = read_psi("io", self.root)
        read = write = busy = 0.0
        if self._prev is not None and now > self._prev[0]:
            dt = now - self._prev[0]
            for name, (r, w, b) in cur.items():
                old = self._prev[1].get(name)
                if old is None:
                    continue
                read += max(0, r - old[0]) / dt
                write += max(0, w - old[1]) / dt
                busy = max(busy, min(1.0, max(0, b - old[2]) / 1000.0 / dt))
        self._prev = (now, cur)
        return IoSample(
            read_bps=read,
            write_bps=write,
            busy=busy,
            pressure_some=psi.some10 if psi else 0.0,
            disks=len(cur),
        )
