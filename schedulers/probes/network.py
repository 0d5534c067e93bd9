"""Network: receive and transmit rates over the non-loopback interfaces, and the
link capacity they add up to (where the driver reports a speed).

Example: eth0 at 1000 Mb/s received 25 MB in 2 s: rx_bps = 12.5 MB/s,
capacity_bps = 125 MB/s (bytes per second, like every rate here), so io_aware sees
the link 10% used. Interfaces that are down or virtual without a speed add no
capacity (capacity 0 means unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import psutil

from schedulers.api import API_VERSION


@dataclass(frozen=True, slots=True)
class NetSample:
    rx_bps: float
    tx_bps: float
    capacity_bps: float
    interfaces: int


class NetworkProbe:
    """Network throughput and link capacity."""

    name: ClassVar[str] = "network"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self) -> None:
        self._prev: tuple[float, dict[str, tuple[int, int]]] | None = None

    def sample(self, now: float) -> NetSample:
        counters = psutil.net_io_counters(pernic=True) or {}
        stats = psutil.net_if_stats()
        cur = {
            name: (c.bytes_recv, c.bytes_sent)
            for name, c in counters.items()
            if name != "lo"
        }
        rx = tx = 0.0
        if self._prev is not None and now > self._prev[0]:
            dt = now - self._prev[0]
            for name, (r, t) in cur.items():
                old = self._prev[1].get(name)
                if old is not None:
                    rx += max(0, r - old[0]) / dt
                    tx += max(0, t - old[1]) / dt
        self._prev = (now, cur)
        capacity = sum(
            s.speed * 1e6 / 8
            for name, s in stats.items()
            if name in cur and s.isup and s.speed > 0
        )
        return NetSample(
            rx_bps=rx, tx_bps=tx, capacity_bps=capacity, interfaces=len(cur)
        )
