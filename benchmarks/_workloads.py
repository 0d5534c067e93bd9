"""Jobs to checkpoint, shared by the CRIU benchmarks and the system tests.

    start_job(argv) ──kernel_shim.spawn(PID|IPC|UTS)──▶ ssi-init (PID 1) ──▶ argv

A Job is the host PID of its init, which is what CRIU dumps (the whole namespace), and
the child of ours to reap. Job stdio goes to a file: a unix socket would block the dump
(ext_unix_sk), and a pipe to us would come back as a fresh pipe nobody reads.

Workloads, run as `python -c CODE ARGS`:
- COUNTER: appends "<pid-inside-ns> <n> <realtime>" to a file every 20 ms, n counting up
  in memory from 0, so a restore shows as a continuing count (no gap, no repeat) and the
  same PID; the realtime stamp (time.time) measures the pause across a dump/restore.
- MEMORY: allocates and writes N bytes, says "ready" in a file, then idles.
- SPARSE_PAGES: stamps runs of pages of one mapping, holes between them, and every page
  of another, with threads idling beside; prints what its memory holds (see there) at
  the start and when a file "stop" appears in its directory, then exits.
- WALKER: stamps every page of its memory, then walks it down page after page as fast
  as it can, checking each page's stamp before it stamps it anew; prints its verdict
  when a file "stop" appears in its directory, then exits.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import kernel_shim
from kernel_shim import NsType

T = TypeVar("T")

JOB_NAMESPACES = NsType.PID | NsType.IPC | NsType.UTS

COUNTER = r"""
import os, sys, time
n = 0
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(f"{os.getpid()} {n} {time.time():.6f}\n")
        n += 1
        time.sleep(0.02)
"""

MEMORY = r"""
import signal, sys
block = bytearray(b"\xa5") * int(sys.argv[1])
with open(sys.argv[2], "w") as f:
    f.write(f"ready {len(block)}\n")
while True:
    signal.pause()
"""

# Runs of stamped pages with holes between, in private anonymous memory, of lengths
# around a page pipe's sizes (16 to 1024 pages): a dump must keep every page of a run
# and none of a hole, whichever pipe or chunk a run starts or ends in; and a mapping
# stamped whole. Four idle threads add their stacks. The line printed: pages present
# in the mappings, pages stamped, "ok" when exactly the stamped pages are present
# (/proc/self/pagemap) and each holds its stamp, and a digest. It runs inside the
# job, as its user and on the system's Python, where ssi's kernel_shim is not: ctypes
# there only reads a mapping's address (mmap objects do not tell it).
SPARSE_PAGES = r"""
import ctypes, hashlib, mmap, os, struct, threading, time
PAGE = mmap.PAGESIZE
RUNS = [1, 2, 15, 16, 17, 255, 1023, 1024, 1025, 3000, 1, 7]
HOLES = [1, 3, 1, 40, 2, 1, 500, 1, 9, 1, 2, 1]

def mapping(pages, runs, holes):
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if holes and hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)  # a huge page would fill the holes
    stamped, at = [], 0
    for run, hole in zip(runs, holes):
        for p in range(at, at + run):
            m[p * PAGE : p * PAGE + 16] = struct.pack("<QQ", p, p ^ 0x5A5A5A5A)
            stamped.append(p)
        at += run + hole
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m)), pages, stamped

# One with holes, one with every page stamped (a dump may skip walking its pages).
maps = [mapping(sum(RUNS) + sum(HOLES), RUNS, HOLES), mapping(2500, [2500], [0])]
stop = threading.Event()
for _ in range(4):
    threading.Thread(target=stop.wait, daemon=True).start()

def state():
    npresent, nstamped, good, h = 0, 0, True, hashlib.sha256()
    for m, base, pages, stamped in maps:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(base // PAGE * 8)
            entries = struct.unpack(f"<{pages}Q", f.read(pages * 8))
        present = [p for p, e in enumerate(entries) if e >> 62 & 3]
        stamps = b"".join(m[p * PAGE : p * PAGE + 16] for p in stamped)
        good = good and present == stamped and all(
            stamps[i * 16 : i * 16 + 16] == struct.pack("<QQ", p, p ^ 0x5A5A5A5A)
            for i, p in enumerate(stamped)
        )
        npresent, nstamped = npresent + len(present), nstamped + len(stamped)
        h.update(stamps)
    return f"{npresent} {nstamped} {'ok' if good else 'bad'} {h.hexdigest()[:16]}"

print(state(), flush=True)
while not os.path.exists("stop"):
    time.sleep(0.01)
print(state(), flush=True)
stop.set()
"""

# Step s checks that its page, PAGES - 1 - s % PAGES, holds s - PAGES (its last stamp;
# the first PAGES steps stamp every page), then stamps it s. It walks down, against
# post-copy's background transfer (which goes up), and faults where it gets ahead of
# it. A page that came from the wrong place, came twice or never came shows.
# Once "stop" appears, one more round checks every page, and it prints "ok STEPS" or
# what was wrong.
WALKER = r"""
import os, struct, sys
PAGES = int(sys.argv[1])
mem = bytearray(PAGES * 4096)
for s in range(PAGES):
    struct.pack_into("<Q", mem, (PAGES - 1 - s) * 4096, s)
print("ready", flush=True)
s, bad, last = PAGES, None, None
while bad is None and (last is None or s < last):
    p = PAGES - 1 - s % PAGES
    (got,) = struct.unpack_from("<Q", mem, p * 4096)
    if got != s - PAGES:
        bad = f"bad page {p} at step {s}: holds {got}, not {s - PAGES}"
    struct.pack_into("<Q", mem, p * 4096, s)
    s += 1
    if last is None and s % 4096 == 0 and os.path.exists("stop"):
        last = s + PAGES
print(bad or f"ok {s}", flush=True)
"""


def init_binary() -> Path:
    """The job init, ssi-init, as installed with the ssi package."""
    import ssi.jobs

    return Path(ssi.jobs.__file__).parent / "bin" / "ssi-init"


@dataclass
class Job:
    """A job: `pid` is PID 1 of its namespaces (host view); `reap` is our child."""

    pid: int
    reap: int
    log: Path | None = None

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        return state not in ("Z", "X")

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the namespace's init (the kernel then kills the whole namespace) and
        reap our child. Idempotent."""
        for pid in {self.pid, self.reap}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reaped(timeout)

    def reaped(self, timeout: float = 10.0) -> int | None:
        """Wait for our child to end and reap it; its wait status, None if reaped."""
        return wait_child(self.reap, timeout)


def wait_child(pid: int, timeout: float) -> int | None:
    """Reap child `pid` within `timeout` seconds; None if it was already reaped."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    try:
        if fd >= 0:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"process {pid} still running after {timeout}s")
        _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def start_job(argv: Sequence[str], workdir: Path, *, name: str = "job") -> Job:
    """Start argv as a job under the init in new PID/IPC/UTS namespaces (the init is
    PID 1, argv PID 2), stdio to workdir/<name>.out; hostname `name`."""
    out = workdir / f"{name}.out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = kernel_shim.spawn(
            [str(init_binary()), "--", *argv],
            namespaces=JOB_NAMESPACES,
            stdin=null,
            stdout=fd,
            stderr=fd,
            cwd=str(workdir),
            hostname=name,
        )
    finally:
        os.close(fd)
        os.close(null)
    return Job(pid=pid, reap=pid, log=out)


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.01
) -> T:
    """Poll probe() until it returns something truthy; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(every)


def python_job(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


# -- the counter ------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    pid: int  # PID inside the job's namespace
    n: int
    t: float  # realtime, seconds


def read_ticks(path: Path) -> list[Tick]:
    ticks = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            ticks.append(Tick(int(parts[0]), int(parts[1]), float(parts[2])))
    return ticks


def wait_ticks(path: Path, count: int, timeout: float = 10.0) -> list[Tick]:
    """Wait until the counter file holds at least `count` ticks."""
    return wait_for(
        lambda: t if len(t := read_ticks(path)) >= count else None,
        timeout,
        f"{path} holds {count} ticks",
    )


def counter_problems(ticks: Sequence[Tick]) -> list[str]:
    """What breaks 'n counts 0, 1, 2, … by one, from one PID': empty if nothing."""
    problems = []
    for prev, cur in zip(ticks, ticks[1:], strict=False):
        if cur.n != prev.n + 1:
            problems.append(f"n jumps {prev.n} -> {cur.n}")
        if cur.pid != prev.pid:
            problems.append(f"pid changes {prev.pid} -> {cur.pid} at n={cur.n}")
    if ticks and ticks[0].n != 0:
        problems.append(f"starts at n={ticks[0].n}")
    return problems


def longest_pause(ticks: Sequence[Tick]) -> float:
    """Longest realtime gap between two ticks, seconds."""
    return max((b.t - a.t for a, b in zip(ticks, ticks[1:], strict=False)), default=0.0)


def start_counter(workdir: Path, *, name: str = "counter") -> tuple[Job, Path]:
    out = workdir / f"{name}.txt"
    return start_job(python_job(COUNTER, str(out)), workdir, name=name), out


# -- the memory holder ------------------------------------------------------------


def start_memory_job(workdir: Path, size: int, *, timeout: float = 60.0) -> Job:
    """A job holding `size` bytes of written memory; returns once it is ready."""
    ready = workdir / "ready"
    ready.unlink(missing_ok=True)
    job = start_job(python_job(MEMORY, str(size), str(ready)), workdir, name="memory")
    try:
        wait_for(
            lambda: ready.exists() and ready.read_text().startswith("ready"),
            timeout,
            f"the job holding {size} bytes is ready",
        )
    except BaseException:
        job.kill()
        raise
    return job
