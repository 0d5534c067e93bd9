"""Migration between two network namespaces without ssids: raw CRIU, and ssi's
node-level live mechanics (ssi.migration) without the cluster around them. Used by
benchmarks/bench_migration.py and tests/system/test_live_migration.py.

    job holding N bytes, ticking its realtime clock every 10 ms, optionally
    rewriting `write_pages` of its pages per tick (node1 → node2)
      node live: LiveSource.begin ─ copy images ─ LiveTarget.begin ─ wait_pages ─ commit
      raw lazy:  criu dump --lazy-pages + page server ─ criu lazy-pages ─ restore
      raw cold:  criu dump ─ copy images ─ criu restore
    freeze = the longest gap between two ticks (realtime, inside the job); total =
    freeze to the last page arrived; bytes = images copied + pages fetched.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kernel_shim
from benchmarks._criu_baseline import format_size
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
from ssi.migration.driver import page_bytes

T = TypeVar("T")

# Holds N written bytes and ticks "<pid> <n> <realtime>" every 10 ms; with a third
# argument W > 0 it also rewrites W pages per tick, sweeping its memory round and round
# (a job that keeps writing: post-copy's hard case).
MEMORY_COUNTER = r"""
import os, sys, time
size = int(sys.argv[2])
per_tick = int(sys.argv[3]) if len(sys.argv) > 3 else 0
block = bytearray(b"\xa5") * size
pages, pos, n = size // 4096, 0, 0
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(f"{os.getpid()} {n} {time.time():.6f}\n")
        n += 1
        if per_tick and pages:
            end = min(pos + per_tick, pages)
            block[pos * 4096 : end * 4096 : 4096] = bytes([n & 255]) * (end - pos)
            pos = end % pages
        time.sleep(0.01)
"""
WRITE_PAGES = 256  # per 10 ms tick: 1 MiB, about 100 MB/s of rewritten memory


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


def start_counter_job(
    side: Side, work: Path, job_id: str, size: int, write_pages: int = 0
) -> Path:
    """A MEMORY_COUNTER job on `side`; returns its tick file once it ticks."""
    out = work / f"{job_id}.ticks"
    spec = JobSpec(
        argv=python_job(MEMORY_COUNTER, str(out), str(size), str(write_pages)),
        cwd=str(work),
        stdout=str(work / f"{job_id}.out"),
    )
    side.thread.run(side.rt.start, job_id, spec)
    wait_ticks(out, 3, timeout=120)
    return out


@dataclass(frozen=True)
class Result:
    """One migration of a job holding `size` bytes. Seconds; bytes."""

    size: int
    freeze_s: float  # longest gap the job saw (realtime clock)
    total_s: float  # start of the move to the last page arrived
    restore_s: float  # start of the move to the job running on the target
    image_bytes: int  # images moved (all of memory for a cold move)
    page_bytes: int  # pages fetched after the restore (live)


LiveResult = Result  # the name the system tests know


def pause_during(ticks: Path, before: int) -> float:
    """The longest gap from the last tick before the move on (after 30 more ticks)."""
    wait_ticks(ticks, len(read_ticks(ticks)) + 30, timeout=120)
    return longest_pause(read_ticks(ticks)[max(before - 1, 0) :])


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
        restore_s = time.perf_counter() - t0
        report = target.wait_pages()
    except BaseException:
        source.abort()
        shutil.rmtree(dst_dir, ignore_errors=True)
        raise
    source.commit()
    total = time.perf_counter() - t0
    return total, source.manifest.total_bytes, report.page_bytes, restore_s


def _kill_daemon_before_restore(dst: Side) -> None:
    """Fault injection: the target's lazy-pages daemon dies right after it starts."""
    real = dst.rt.criu.start_lazy_pages

    def dying(*a: Any, **kw: Any) -> Any:
        d = real(*a, **kw)
        d.wait_started(dst.rt.criu.SWRK_EXIT_TIMEOUT)
        d.kill()
        return d

    dst.rt.criu.start_lazy_pages = dying  # type: ignore[method-assign]


def measure_live(
    size: int, work: Path, src: Side, dst: Side, write_pages: int = 0
) -> Result:
    """ssi's live mechanics node to node (LiveSource/LiveTarget), no cluster."""
    job_id = f"live-{format_size(size)}-{secrets.token_hex(2)}"
    ticks = start_counter_job(src, work, job_id, size, write_pages)
    before = len(read_ticks(ticks))
    total, img, pages, restore_s = live_migrate(src, dst, job_id, work)
    gap = pause_during(ticks, before)
    dst.rt.forget(job_id, kill=True)
    src.rt.forget(job_id)
    return Result(size, gap, total, restore_s, img, pages)


# -- raw CRIU, same job, same nodes ------------------------------------------------

RAW_PORT = 27199  # the raw lazy dump's page server (in the source node's netns)


def _raw_job(side: Side, work: Path, size: int, write_pages: int) -> tuple[Job, Path]:
    out = work / f"raw-{secrets.token_hex(2)}.ticks"
    argv = python_job(MEMORY_COUNTER, str(out), str(size), str(write_pages))
    job = side.thread.run(start_job, argv, work)
    wait_ticks(out, 3, timeout=120)
    return job, out


@dataclass
class _RawRun:
    """One raw CRIU move's job, its ticks, and its two image directories: where
    CRIU dumps, and the copy the target restores from."""

    job: Job
    out: Path
    images: Path
    moved: Path
    restored: Job | None = None


@contextlib.contextmanager
def _raw_run(size: int, work: Path, src: Side, write_pages: int) -> Iterator[_RawRun]:
    """A job started on `src`; on the way out both copies killed, images removed."""
    job, out = _raw_job(src, work, size, write_pages)
    run = _RawRun(
        job,
        out,
        Path(tempfile.mkdtemp(dir=work)),
        Path(tempfile.mkdtemp(dir=work)) / "img",
    )
    try:
        yield run
    finally:
        job.kill()
        if run.restored is not None:
            run.restored.kill()
        shutil.rmtree(run.images, ignore_errors=True)
        shutil.rmtree(run.moved.parent, ignore_errors=True)


def measure_raw_lazy(
    size: int, work: Path, src: Side, dst: Side, write_pages: int = 0
) -> Result:
    """criu dump --lazy-pages (its page server) + criu lazy-pages + criu restore
    --lazy-pages, the images copied between the two."""
    with _raw_run(size, work, src, write_pages) as r:
        before = len(read_ticks(r.out))
        t0 = time.perf_counter()
        dump = src.rt.criu.dump_lazy(r.job.pid, r.images, RAW_PORT)
        dump.wait_ready(60)
        shutil.copytree(r.images, r.moved)
        daemon = dst.rt.criu.start_lazy_pages(r.moved, src.address, RAW_PORT)
        daemon.wait_started(dst.rt.criu.SWRK_EXIT_TIMEOUT)
        res = dst.thread.run(
            lambda: dst.rt.criu.restore(
                r.moved, options=RestoreOptions(lazy_pages=True)
            )
        )
        r.restored = Job(res.pid, res.pid)
        restore_s = time.perf_counter() - t0
        daemon.wait(600)
        total = time.perf_counter() - t0  # the last page arrived
        dump.wait(60)
        r.job.kill()
        img = sum(p.stat().st_size for p in r.images.iterdir())
        pages = page_bytes(daemon.log_path)
        return Result(size, pause_during(r.out, before), total, restore_s, img, pages)


def measure_raw_cold(
    size: int, work: Path, src: Side, dst: Side, write_pages: int = 0
) -> Result:
    """criu dump + criu restore, the images copied between the two."""
    with _raw_run(size, work, src, write_pages) as r:
        before = len(read_ticks(r.out))
        t0 = time.perf_counter()
        src.rt.criu.dump(r.job.pid, r.images)
        r.job.reaped()
        shutil.copytree(r.images, r.moved)
        res = dst.thread.run(lambda: dst.rt.criu.restore(r.moved))
        r.restored = Job(res.pid, res.pid)
        total = time.perf_counter() - t0
        img = sum(p.stat().st_size for p in r.images.iterdir())
        return Result(size, pause_during(r.out, before), total, total, img, 0)
