"""Live (post-copy) migration between two nodes of a local cluster, against raw CRIU.

    job holding N bytes, ticking its realtime clock every 10 ms (node1)
      ssi live:  LiveSource.begin ─ copy images ─ LiveTarget.begin ─ wait_pages ─ commit
      raw lazy:  criu dump --lazy-pages + page server ─ criu lazy-pages ─ restore
      raw cold:  criu dump ─ copy images ─ criu restore
    freeze = the longest gap between two ticks (realtime, inside the job); total =
    freeze to the last page arrived; bytes = images copied + pages fetched.

Run as root: python -m benchmarks.bench_migration [--sizes 10M,100M,1G] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import kernel_shim
from benchmarks._criu_baseline import format_size, parse_size
from benchmarks._workloads import (
    Job,
    longest_pause,
    python_job,
    read_ticks,
    start_job,
    wait_ticks,
)
from ssi import config
from ssi.checkpoint import Criu, RestoreOptions
from ssi.jobs.cgroups import detect
from ssi.jobs.model import JobSpec
from ssi.jobs.runtime import JobRuntime
from ssi.local import LocalCluster
from ssi.local.testing import make_cluster
from ssi.migration import LiveSource, LiveTarget

T = TypeVar("T")

# Holds N written bytes and ticks "<pid> <n> <realtime>" every 10 ms.
MEMORY_COUNTER = r"""
import os, sys, time
block = bytearray(b"\xa5") * int(sys.argv[2])
n = 0
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(f"{os.getpid()} {n} {time.time():.6f}\n")
        n += 1
        time.sleep(0.01)
"""


class NodeThread:
    """A long-lived thread inside a node's network namespace (only): jobs it
    starts and trees it restores land there, and stay its children."""

    def __init__(self, netns_path: str) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            initializer=kernel_shim.setns,
            initargs=(netns_path, kernel_shim.NsType.NET),
        )

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class Side:
    node: str
    address: str
    rt: JobRuntime
    thread: NodeThread


@contextlib.contextmanager
def two_nodes(work: Path) -> Iterator[tuple[LocalCluster, Side, Side]]:
    """A 2-node local cluster with a JobRuntime per node (own cgroup base and
    root, CRIU in the node's netns, one status dir) and a thread in each node."""
    kernel_shim.set_child_subreaper()
    binary = config.resolve_criu(config.load())
    cluster = make_cluster(2)
    token = secrets.token_hex(3)
    status = Path(f"/run/ssi-mig-{token}")
    sides: list[Side] = []
    try:
        for n in cluster.nodes:
            rt = JobRuntime(
                work / n.name,
                Criu(binary, netns=n.netns_path),
                n.name,
                cgroups=detect(f"ssi-mig-{token}-{n.name}"),
                status_dir=status,
            )
            sides.append(Side(n.name, n.address, rt, NodeThread(n.netns_path)))
        yield cluster, sides[0], sides[1]
    finally:
        for s in sides:
            for job in s.rt.jobs():
                with contextlib.suppress(Exception):
                    s.rt.forget(job.job_id, kill=True)
            s.thread.close()
            with contextlib.suppress(Exception):
                from ssi.jobs.testing import purge

                purge(s.rt.cgroups)
        cluster.down()
        shutil.rmtree(status, ignore_errors=True)


def start_counter_job(side: Side, work: Path, job_id: str, size: int) -> Path:
    """A MEMORY_COUNTER job on `side`; returns its tick file once it ticks."""
    out = work / f"{job_id}.ticks"
    spec = JobSpec(
        argv=python_job(MEMORY_COUNTER, str(out), str(size)),
        cwd=str(work),
        stdout=str(work / f"{job_id}.out"),
    )
    side.thread.run(side.rt.start, job_id, spec)
    wait_ticks(out, 3, timeout=120)
    return out


@dataclass(frozen=True)
class LiveResult:
    size: int
    freeze_s: float  # longest gap the job saw
    total_s: float  # freeze to last page arrived
    restore_s: float
    image_bytes: int
    page_bytes: int


def live_migrate(
    src: Side, dst: Side, job_id: str, work: Path, *, fail: str | None = None
) -> tuple[float, int, int, float]:
    """Move job_id from src to dst live; (total s, image bytes, page bytes, restore s).
    fail: inject "daemon" (the target's lazy-pages daemon killed before the
    restore) or "restore" (the pushed images spoiled): the source resumes."""
    src_dir = work / f"{job_id}.{src.node}.live"
    dst_dir = dst.rt.root / f".{job_id}.incoming"
    t0 = time.perf_counter()
    source = src.thread.run(LiveSource.begin, src.rt, job_id, src_dir, src.address)
    try:
        shutil.copytree(src_dir, dst_dir)  # the executor: ssi.transfer.send_dir
        if fail == "restore":
            (dst_dir / "pstree.img").write_bytes(b"spoiled")
        if fail == "daemon":
            _kill_daemon_before_restore(dst)
        target = dst.thread.run(
            LiveTarget.begin, dst.rt, job_id, dst_dir, source.page_server
        )
        report = target.wait_pages()
    except BaseException:
        source.abort()
        shutil.rmtree(dst_dir, ignore_errors=True)
        raise
    source.commit()
    total = time.perf_counter() - t0
    return total, source.manifest.total_bytes, report.page_bytes, report.restore_seconds


def _kill_daemon_before_restore(dst: Side) -> None:
    """Fault injection: the target's lazy-pages daemon dies right after it starts."""
    real = dst.rt.criu.lazy_pages

    def dying(*a: Any, **kw: Any) -> Any:
        d = real(*a, **kw)
        d.kill()
        return d

    dst.rt.criu.lazy_pages = dying  # type: ignore[method-assign]


def measure_live(size: int, work: Path, src: Side, dst: Side) -> LiveResult:
    job_id = f"live-{format_size(size)}-{secrets.token_hex(2)}"
    ticks = start_counter_job(src, work, job_id, size)
    before = len(read_ticks(ticks))
    total, img, pages, restore_s = live_migrate(src, dst, job_id, work)
    wait_ticks(ticks, before + 30, timeout=60)
    gap = longest_pause(read_ticks(ticks))
    dst.rt.forget(job_id, kill=True)
    src.rt.forget(job_id)
    return LiveResult(size, gap, total, restore_s, img, pages)


# -- raw CRIU, same job, same nodes ------------------------------------------------


def _raw_job(side: Side, work: Path, size: int) -> tuple[Job, Path]:
    out = work / f"raw-{secrets.token_hex(2)}.ticks"
    job = side.thread.run(
        start_job, python_job(MEMORY_COUNTER, str(out), str(size)), work
    )
    wait_ticks(out, 3, timeout=120)
    return job, out


def measure_raw_lazy(size: int, work: Path, src: Side, dst: Side) -> LiveResult:
    job, out = _raw_job(src, work, size)
    images = Path(tempfile.mkdtemp(dir=work))
    moved = Path(tempfile.mkdtemp(dir=work)) / "img"
    restored: Job | None = None
    try:
        t0 = time.perf_counter()
        dump = src.rt.criu.dump_lazy(job.pid, images, 27199)
        dump.wait_ready(60)
        shutil.copytree(images, moved)
        daemon = dst.rt.criu.lazy_pages(moved, src.address, 27199)
        res = dst.thread.run(
            lambda: dst.rt.criu.restore(moved, options=RestoreOptions(lazy_pages=True))
        )
        restored = Job(res.pid, res.pid)
        restore_s = time.perf_counter() - t0
        daemon.wait(600)
        dump.wait(60)
        total = time.perf_counter() - t0
        job.kill()
        n = len(read_ticks(out))
        wait_ticks(out, n + 30, timeout=60)
        img = sum(p.stat().st_size for p in images.iterdir())
        from ssi.migration.driver import _page_bytes

        pages = _page_bytes(daemon.log_path)
        return LiveResult(
            size, longest_pause(read_ticks(out)), total, restore_s, img, pages
        )
    finally:
        job.kill()
        if restored is not None:
            restored.kill()


def measure_raw_cold(size: int, work: Path, src: Side, dst: Side) -> LiveResult:
    job, out = _raw_job(src, work, size)
    images = Path(tempfile.mkdtemp(dir=work))
    moved = Path(tempfile.mkdtemp(dir=work)) / "img"
    restored: Job | None = None
    try:
        t0 = time.perf_counter()
        src.rt.criu.dump(job.pid, images)
        job.reaped()
        shutil.copytree(images, moved)
        res = dst.thread.run(lambda: dst.rt.criu.restore(moved))
        restored = Job(res.pid, res.pid)
        total = time.perf_counter() - t0
        n = len(read_ticks(out))
        wait_ticks(out, n + 30, timeout=60)
        img = sum(p.stat().st_size for p in images.iterdir())
        return LiveResult(size, longest_pause(read_ticks(out)), total, total, img, 0)
    finally:
        job.kill()
        if restored is not None:
            restored.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", default="/dev/shm")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ssi-bench-mig-", dir=args.work))
    os.chmod(work, 0o755)
    rows: list[dict[str, Any]] = []
    try:
        with two_nodes(work) as (_c, a, b):
            for size in sizes:
                for mode, fn in (
                    ("ssi live", measure_live),
                    ("raw lazy", measure_raw_lazy),
                    ("raw cold", measure_raw_cold),
                ):
                    r = fn(size, work, a, b)
                    rows.append({"mode": mode, **asdict(r)})
                    if not args.json:
                        ms = r.freeze_s * 1e3
                        print(
                            f"{format_size(size):>5} {mode:9} freeze {ms:7.1f} ms"
                            f"  total {r.total_s:6.3f} s"
                            f"  images {r.image_bytes / 1e6:7.2f} MB"
                            f"  pages {r.page_bytes / 1e6:8.2f} MB",
                            flush=True,
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
