"""Small readers of /proc shared by the probes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Psi:
    """One /proc/pressure/<resource> file: percent of time stalled (avg10/60/300)."""

    some10: float
    some60: float
    some300: float
    full10: float
    some_total_us: int


def read_psi(resource: str, root: Path = PROC) -> Psi | None:
    """PSI for cpu, memory or io; None where the kernel has no PSI."""
    try:
        text = (root / "pressure" / resource).read_text()
    except OSError:
        return None
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        rows[kind] = dict(f.split("=", 1) for f in fields)
    some = rows.get("some", {})
    full = rows.get("full", {})
    return Psi(
        some10=float(some.get("avg10", 0.0)),
        some60=float(some.get("avg60", 0.0)),
        some300=float(some.get("avg300", 0.0)),
        full10=float(full.get("avg10", 0.0)),
        some_total_us=int(some.get("total", 0)),
    )


def read_stat_fields(root: Path = PROC) -> dict[str, list[int]]:
    """/proc/stat as {first word: integers}."""
    out: dict[str, list[int]] = {}
    for line in (root / "stat").read_text().splitlines():
        parts = line.split()
        if parts and all(p.isdigit() for p in parts[1:]):
            out[parts[0]] = [int(p) for p in parts[1:]]
    return out


def bogomips(root: Path = PROC) -> float | None:
    """Mean BogoMIPS over CPUs: a frequency-scaling-proof speed figure."""
    try:
        text = (root / "cpuinfo").read_text()
    except OSError:
        return None
    vals = [
        float(line.split(":", 1)[1])
        for line in text.splitlines()
        if line.lower().startswith("bogomips") and ":" in line
    ]
    return sum(vals) / len(vals) if vals else None


def proc_stat(pid: int, root: Path = PROC) -> list[str] | None:
    """Fields of /proc/PID/stat after the command (field 3 = state first)."""
    try:
        text = (root / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def kv_file(path: Path) -> dict[str, int]:
    """'Key:   123 kB' lines as {Key: bytes or count}; {} if unreadable."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, rest = line.split(":", 1)
        parts = rest.split()
        if parts and parts[0].isdigit():
            n = int(parts[0])
            out[key.strip()] = n * 1024 if len(parts) > 1 and parts[1] == "kB" else n
    return out
