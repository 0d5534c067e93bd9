"""Boot time: where the node's current up interval began, as the machine knows it.

The coordinator's availability history (schedulers.availability) is built from node
events (added, lost, returned, evicted); this probe adds the machine's own view, so
a node that rebooted between two heartbeats is seen to have restarted its interval.
Example: boot_time 1700000000.0 and now 1700003600.0 -> uptime 3600 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.probes._proc import PROC


@dataclass(frozen=True, slots=True)
class BootSample:
    boot_time: float  # seconds since the epoch
    uptime: float  # seconds


class BootProbe:
    """Boot time and uptime of this machine."""

    name: ClassVar[str] = "boot"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, root: Path = PROC) -> None:
        self.root = root

    def sample(self, now: float) -> BootSample:
        uptime = float((self.root / "uptime").read_text().split()[0])
        return BootSample(boot_time=now - uptime, uptime=uptime)
