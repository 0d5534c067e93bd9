"""Raw CRIU dump and restore of a job holding N bytes: the baseline of every ssi figure.

    start_memory_job(N) ─▶ Criu.dump (kill) ─▶ tmpfs images ─▶ Criu.restore ─▶ kill, rm

Later benchmarks (checkpoint through ssid, migration) report themselves as a ratio to
`measure(size)` taken the same way: same job, same CRIU options as ssi's defaults.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._workloads import Job, start_memory_job
from ssi import config
from ssi.checkpoint import Criu, DumpOptions

TMPFS = Path("/dev/shm")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'10M' -> 10 MiB in bytes; K, M, G are powers of 1024."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text.upper())
    if not m:
        raise ValueError(f"bad size {text!r}: want e.g. 10M, 100M, 1G")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_size(size: int) -> str:
    for unit in ("G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


@dataclass(frozen=True)
class Sample:
    """One dump + restore of a job holding `size` bytes. Seconds; GB = 1e9 bytes."""

    size: int
    image_bytes: int
    dump_s: float
    restore_s: float
    dump_stats: dict[str, int]
    restore_stats: dict[str, int]

    @property
    def dump_gbps(self) -> float:
        return self.size / self.dump_s / 1e9

    @property
    def restore_gbps(self) -> float:
        return self.size / self.restore_s / 1e9

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(dump_gbps=self.dump_gbps, restore_gbps=self.restore_gbps)
        return d


def default_criu() -> Criu:
    return Criu(config.resolve_criu(config.load()))


def measure_once(
    size: int,
    *,
    criu: Criu | None = None,
    base: Path = TMPFS,
    options: DumpOptions | None = None,
) -> Sample:
    """Start a job holding `size` bytes, dump it (killing it) to a tmpfs directory
    under `base`, restore it, check it lives, kill it and remove the images."""
    criu = criu or default_criu()
    work = Path(tempfile.mkdtemp(prefix="ssi-bench-criu-", dir=base))
    job: Job | None = None
    restored: Job | None = None
    try:
        images = work / "images"
        images.mkdir()
        job = start_memory_job(work, size)
        dumped = criu.dump(job.pid, images, options=options)
        job.reaped()
        image_bytes = dumped.image_bytes
        back = criu.restore(images)
        restored = Job(pid=back.pid, reap=back.pid)
        if not restored.alive():
            raise RuntimeError(f"restored job {back.pid} is not running")
        return Sample(
            size=size,
            image_bytes=image_bytes,
            dump_s=dumped.seconds,
            restore_s=back.seconds,
            dump_stats=dumped.stats,
            restore_stats=back.stats,
        )
    finally:
        for j in (restored, job):
            if j is not None:
                j.kill()
        shutil.rmtree(work, ignore_errors=True)


def measure(
    sizes: Iterable[int],
    repeat: int = 3,
    *,
    criu: Criu | None = None,
    base: Path = TMPFS,
    options: DumpOptions | None = None,
) -> list[Sample]:
    """`repeat` samples per size, sizes in the order given."""
    criu = criu or default_criu()
    return [
        measure_once(size, criu=criu, base=base, options=options)
        for size in sizes
        for _ in range(repeat)
    ]
