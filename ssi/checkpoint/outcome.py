"""How a CRIU process ended, in words a caller can act on: its result (images,
log, time, stats), its log's errors, its last line when it logged none, and the
reaping of the process.
Shared by the one-shot operations (ssi.checkpoint.criu) and the long-lived ones
(ssi.checkpoint.lazy)."""

from __future__ import annotations

import os
import re
import select
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pycriu

SWRK_EXIT_TIMEOUT = 30.0  # seconds CRIU may take to exit once it has answered
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # CRIU's unit of page images and counts


@dataclass(frozen=True, slots=True)
class DumpResult:
    images_dir: Path
    log_path: Path
    seconds: float  # wall time of the RPC, CRIU's start included
    stats: dict[str, int] = field(default_factory=dict)  # CRIU's stats-dump, µs/pages

    @property
    def image_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.images_dir.iterdir() if p.is_file())

    @property
    def pages_written_bytes(self) -> int:
        """Bytes of page images the dump wrote, here or to a page server."""
        pages = self.stats.get("pages_written", 0) + self.stats.get(
            "shpages_written", 0
        )
        return pages * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class RestoreResult:
    pid: int  # host PID of the restored root, a child of the caller
    images_dir: Path
    log_path: Path
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)  # CRIU's stats-restore


# Error lines CRIU logs on this machine on every run without failing because of them:
# no CAP_SYS_RESOURCE, so it cannot raise its own RLIMIT_NOFILE.
_BENIGN = ("rlimit: Can't setup RLIMIT_NOFILE",)
# Closing lines that only repeat that the operation failed.
_GENERIC = re.compile(r"^(Dumping|Restoring|Pre-dumping) FAILED\.?$")
_ERROR_LINE = re.compile(r"\bError \(([^)]*)\):\s*(.*\S)")


def log_errors(log_path: Path) -> list[str]:
    """The distinct "Error (...)" messages of a CRIU log, in order, noise left out."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    seen: list[str] = []
    for m in _ERROR_LINE.finditer(text):
        msg = m.group(2)
        if msg in seen or msg.startswith(_BENIGN) or _GENERIC.match(msg):
            continue
        seen.append(msg)
    return seen


def reap(pid: int, timeout: float) -> str:
    """Reap our child `pid`, SIGKILLing it after `timeout` s; how it ended, in words."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    try:
        if fd >= 0 and not select.select([fd], [], [], timeout)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "already reaped"
    finally:
        if fd >= 0:
            os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def last_line(log_path: Path) -> list[str]:
    """When CRIU logged no error: its last words, as the best hint there is."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return [f"no error logged; last log line: {last}"] if last else []


def stats_of(path: Path, kind: str) -> dict[str, int]:
    """CRIU's stats-dump / stats-restore image as a flat dict (µs and page counts)."""
    try:
        with open(path, "rb") as f:
            img = pycriu.images.load(f)
        entry = img["entries"][0][kind]
        return {k: int(v) for k, v in entry.items()}
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return {}
