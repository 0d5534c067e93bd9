"""Checkpoint and restore of a job: the JobRuntime's CRIU half.

    checkpoint: freeze ─▶ CRIU dump (leave running) ─▶ digests (overlapping the dump)
                ─▶ manifest.json ─▶ rename .<dest>.partial-XXXX to <dest>
                ─▶ thaw, or kill while still frozen (stop: not one instruction more)
                (a cold move's: the pages go to the target's page server instead)
    restore:    verify ─▶ job cgroup made ─▶ CRIU restore (our child) ─▶ thaw / freeze
    checkpoint_lazy (post-copy source): freeze ─▶ CRIU lazy dump (no pages written)
                ─▶ manifest ─▶ held frozen; CRIU serves the pages until a daemon has
                them all (LazyDump.wait), then settle()
    restore_lazy (post-copy target): verify ─▶ criu lazy-pages (fetches from the
                source's page server) ─▶ CRIU restore --lazy-pages ─▶ thaw

The job stays frozen from the dump until its checkpoint is whole on disk, so that a
failure (CRIU's, a full disk) leaves it running as if nothing happened, and a stopping
checkpoint holds exactly the job's last state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

import kernel_shim
from ssi.checkpoint import (
    CgroupMode,
    CriuDaemon,
    DumpOptions,
    LazyDump,
    PageServer,
    RestoreOptions,
)
from ssi.jobs import manifest as mf
from ssi.jobs import netjobs
from ssi.jobs.cgroups import proc_cgroup
from ssi.jobs.errors import CheckpointFailed
from ssi.jobs.local import LocalJob, wait_readable
from ssi.jobs.manifest import ImageFile, Manifest
from ssi.jobs.model import JobState
from ssi.proto.errors import BadRequest, Conflict, Internal

if TYPE_CHECKING:
    from ssi.jobs.runtime import JobRuntime

log = logging.getLogger(__name__)


def checkpoint(
    rt: JobRuntime,
    job: LocalJob,
    dest: Path,
    leave_running: bool,
    hold: bool = False,
    on_staging: Callable[[Path], None] | None = None,
    ps_fd: int | None = None,
) -> Manifest:
    """JobRuntime.checkpoint's work (see there)."""
    job_id = job.job_id
    with job.lock:
        rt._require_alive(job)
        if dest.exists():
            raise Conflict(f"checkpoint destination {dest} exists")
        if not dest.parent.is_dir():
            raise BadRequest(f"checkpoint destination {dest.parent} is not a directory")
        version = rt.criu.version()
        tmp = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")
        was_suspended = job.state is JobState.SUSPENDED
        t0 = time.perf_counter()
        hasher: mf.TailHasher | None = None
        cut = False
        try:
            tmp.mkdir(mode=0o700)
            if on_staging is not None:
                on_staging(tmp)
            rt.cgroups.freeze(job_id)
            if hold or not leave_running:  # it lives on elsewhere: cut it off here
                cut = netjobs.cut(rt, job)
            hasher = mf.TailHasher(tmp)
            dumped = rt.criu.dump(
                job.init_pid,
                tmp,
                leave_running=True,  # killed by us once the checkpoint is whole
                options=DumpOptions(
                    freeze_cgroup=str(rt.cgroups.freezer_dir(job_id)),
                    manage_cgroups=CgroupMode.SOFT,
                    cgroup_controllers=_job_controllers(rt),
                    # The log outlives a failed dump (its images are removed).
                    work_dir=str(rt.root / job_id),
                    page_server=None if ps_fd is None else PageServer("", 0, ps_fd),
                    **netjobs.dump_extras(job),
                ),
            )
            m = _manifest(
                rt,
                job,
                tmp,
                version,
                leave_running,
                was_suspended,
                dumped.seconds,
                hasher.finish(),
            )
            if ps_fd is not None:
                m = msgspec.structs.replace(m, pages_sent=dumped.pages_written_bytes)
            mf.write(tmp, m, fsync=rt.durable)
            tmp.chmod(0o755)
            if rt.durable:
                _fsync_all(tmp)
            os.rename(tmp, dest)
            if rt.durable:
                _fsync_dir(dest.parent)
        except BaseException as e:
            if hasher is not None:
                hasher.close()
            shutil.rmtree(tmp, ignore_errors=True)
            if cut:
                netjobs.reconnect(rt, job)
            if not was_suspended:
                with contextlib.suppress(OSError):
                    rt.cgroups.thaw(job_id)
            if isinstance(e, OSError):
                raise CheckpointFailed(
                    f"checkpoint of job {job_id} to {dest} failed: {e}",
                    details={"job": job_id, "dest": str(dest), "errno": e.errno},
                ) from None
            raise
        if hold:  # a migration: frozen until settle() says where it lives on
            job.held_suspended = was_suspended
        elif leave_running:
            if not was_suspended:
                rt.cgroups.thaw(job_id)
        else:
            _stop_checkpointed(rt, job)
        log.info(
            "op=job.checkpoint job=%s to=%s bytes=%s dump=%.3fs all=%.3fs stop=%s",
            job_id, dest, m.total_bytes, dumped.seconds,
            time.perf_counter() - t0, not leave_running,
        )  # fmt: skip
        return m


def checkpoint_lazy(
    rt: JobRuntime,
    job: LocalJob,
    dest: Path,
    port: int,
    ready_timeout: float,
    address: str | None = None,
    ps_fd: int | None = None,
) -> tuple[Manifest, LazyDump]:
    """JobRuntime.checkpoint_lazy's work (see there)."""
    job_id = job.job_id
    with job.lock:
        rt._require_alive(job)
        if job.held_suspended is not None:
            raise Conflict(f"job {job_id} is held by another checkpoint")
        if dest.exists():
            raise Conflict(f"checkpoint destination {dest} exists")
        if not dest.parent.is_dir():
            raise BadRequest(f"checkpoint destination {dest.parent} is not a directory")
        version = rt.criu.version()
        was_suspended = job.state is JobState.SUSPENDED
        dump: LazyDump | None = None
        cut = False
        try:
            dest.mkdir(mode=0o700)
            # Not frozen by us first: CRIU freezes and seizes the job itself (through
            # freeze_cgroup) once it has started, which takes a fresh process ~60 ms
            # of probing the kernel here; the freeze that holds the job after CRIU
            # is asked for while CRIU still holds it stopped (on_ready).
            cut = netjobs.cut(rt, job)  # the job's link down: our lock
            dump = rt.criu.dump_lazy(
                job.init_pid,
                dest,
                port,
                address=address,
                ps_fd=ps_fd,
                on_ready=lambda: rt.cgroups.freeze_later(job_id),
                options=DumpOptions(
                    freeze_cgroup=str(rt.cgroups.freezer_dir(job_id)),
                    manage_cgroups=CgroupMode.SOFT,
                    cgroup_controllers=_job_controllers(rt),
                    work_dir=str(rt.root / job_id),
                    **netjobs.dump_extras(job),
                ),
            )
            ready = dump.wait_ready(ready_timeout)
            m = _manifest(rt, job, dest, version, True, was_suspended, ready)
            mf.write(dest, m, fsync=False)
            dest.chmod(0o755)
        except BaseException as e:
            if dump is not None and not dump.done:
                dump.kill()
            shutil.rmtree(dest, ignore_errors=True)
            if cut:
                netjobs.reconnect(rt, job)
            if not was_suspended:
                with contextlib.suppress(OSError):
                    rt.cgroups.thaw(job_id)
            if isinstance(e, OSError | TimeoutError):
                raise CheckpointFailed(
                    f"lazy checkpoint of job {job_id} to {dest} failed: {e}",
                    details={"job": job_id, "dest": str(dest)},
                ) from None
            raise
        job.held_suspended = was_suspended
    log.info(
        "op=job.checkpoint_lazy job=%s to=%s port=%s bytes=%s ready=%.3fs",
        job_id, dest, port, m.total_bytes, ready,
    )  # fmt: skip
    return m, dump


def _manifest(
    rt: JobRuntime,
    job: LocalJob,
    images: Path,
    criu_version: str,
    leave_running: bool,
    suspended: bool,
    dump_seconds: float,
    hashed: Mapping[str, ImageFile] | None = None,
) -> Manifest:
    """The manifest of a dump just written to `images` (hashes the images unless
    `hashed` carries what was hashed while CRIU wrote them)."""
    names = [p.name for p in images.iterdir() if mf.is_covered(p.name)]
    files = mf.digest_files(images, names, hashed)
    return Manifest(
        job_id=job.job_id,
        spec=job.spec,
        node=rt.node,
        created=time.time(),
        criu_version=criu_version,
        leave_running=leave_running,
        suspended=suspended,
        started=job.record.started,
        cgroup=job.record.cgroup,
        cgroup_version=rt.cgroups.version,
        dump_seconds=dump_seconds,
        files=files,
        total_bytes=sum(f.size for f in files.values()),
    )


def _job_controllers(rt: JobRuntime) -> tuple[str, ...]:
    """The hierarchies where the job has a cgroup of its own (v1), for CRIU to dump
    only those; () on cgroup v2 (one hierarchy: CRIU's default)."""
    return tuple(c for c in rt.cgroups.controllers() if c)


def settle(rt: JobRuntime, job: LocalJob, moved: bool) -> None:
    """End a held checkpoint: the job moved (it dies here, still frozen), or it did
    not (it runs on here, as it was)."""
    with job.lock:
        if job.held_suspended is None:
            raise Conflict(f"job {job.job_id} has no held checkpoint to settle")
        was_suspended, job.held_suspended = job.held_suspended, None
        if moved:
            _stop_checkpointed(rt, job)
        else:
            netjobs.reconnect(rt, job)
            if not was_suspended:
                rt.cgroups.thaw(job.job_id)
    log.info("op=job.settle job=%s moved=%s", job.job_id, moved)


def _stop_checkpointed(rt: JobRuntime, job: LocalJob) -> None:
    """Kill a job just dumped, still frozen: no instruction runs after the dump."""
    job.record.state = JobState.CHECKPOINTED
    rt._save(job)
    with contextlib.suppress(OSError):
        rt.cgroups._kill_all(job.job_id)
    rt.cgroups.thaw(job.job_id)
    if job.pidfd is not None:
        wait_readable(job.pidfd, rt.EXIT_TIMEOUT)


def restore(
    rt: JobRuntime,
    job_id: str,
    ckpt: Path,
    lazy: _Lazy | None = None,
    *,
    checked: bool = False,
    frozen: bool = False,
) -> LocalJob:
    """Restore the job from a checkpoint: verify() it first (CorruptCheckpoint
    before CRIU reads anything; only sizes if the caller `checked` the checksums
    just now), then CRIU; the init becomes our child, in the job's cgroup, with the
    PIDs inside unchanged. Conflict if the job runs here. CriuError if CRIU fails
    (nothing of the job is left then)."""
    ckpt = Path(ckpt)
    # A copy checked on arrival just now (by the agent, or for a live move by
    # ssi.migration.channel against the manifest's digests) is not hashed again.
    verified = checked or (lazy is not None and lazy.verified)
    m = mf.verify(ckpt, digests=not verified)
    if m.job_id != job_id:
        raise BadRequest(f"checkpoint {ckpt} is of job {m.job_id}, not {job_id}")
    run_dir = rt.root / job_id
    with rt._lock:
        old = rt._jobs.get(job_id)
        if old is not None and old.state.alive:
            raise Conflict(f"job {job_id} is running on node {rt.node}")
        if old is not None and old.pidfd is not None:
            raise Conflict(
                f"job {job_id} ended here but was not reaped: reap() it first"
            )
        if old is None and (run_dir / "job.json").exists():
            raise Conflict(f"job {job_id} has a record here: adopt() or forget() it")
        rec = rt._new_record(job_id, m.spec, m.started)
        rec.restores = (old.record.restores if old else 0) + 1
        rec.restored_from = str(ckpt)
        job = LocalJob(job_id, rec)
        rt._jobs[job_id] = job
    try:
        with job.lock:
            _restore(rt, job, m, ckpt, lazy, frozen)
    except BaseException:
        if lazy is not None and lazy.daemon is not None:
            lazy.daemon.kill()
        with rt._lock:
            if rt._jobs.get(job_id) is job:
                del rt._jobs[job_id]
            if old is not None:
                rt._jobs[job_id] = old
        if old is None:
            rt._cleanup_failed(job_id)
        else:  # back to the record of the job that ended or left here
            netjobs.remove(rt, job_id)
            with contextlib.suppress(OSError):
                rt.cgroups.remove(job_id)
            run_dir.mkdir(mode=0o700, exist_ok=True)
            rt._save(old)
        raise
    log.info("op=job.restore job=%s from=%s pid=%s", job_id, ckpt, job.init_pid)
    return job


class _Lazy:
    """A lazy restore's source of pages, and the daemon started for it."""

    def __init__(
        self, source: PageServer, verified: bool, daemon: CriuDaemon | None
    ) -> None:
        self.source = source
        self.verified = verified  # images checked on arrival: no hashing again
        self.daemon = daemon  # started early (Criu.start_lazy_pages), or by us


def restore_lazy(
    rt: JobRuntime,
    job_id: str,
    ckpt: Path,
    source: PageServer,
    verified: bool,
    daemon: CriuDaemon | None,
) -> tuple[LocalJob, CriuDaemon]:
    """JobRuntime.restore_lazy's work (see there)."""
    lazy = _Lazy(source, verified, daemon)
    job = restore(rt, job_id, ckpt, lazy)
    assert lazy.daemon is not None
    return job, lazy.daemon


def _restore(
    rt: JobRuntime,
    job: LocalJob,
    m: Manifest,
    ckpt: Path,
    lazy: _Lazy | None = None,
    frozen: bool = False,
) -> None:
    job_id, rec = job.job_id, job.record
    run_dir = rt.root / job_id
    run_dir.mkdir(mode=0o700, exist_ok=True)
    rt._prepare_status(rec)
    # Our own cgroup, made before CRIU: CRIU then only moves the tasks in, and does
    # not restore properties such as the FROZEN state of the dump.
    rt.cgroups.create(job_id)
    deadline = time.monotonic() + 2.0  # a just-stopped incarnation may still be leaving
    while rt.cgroups.pids(job_id):
        if time.monotonic() > deadline:
            raise Conflict(
                f"cgroup {rec.cgroup} of job {job_id} is in use: "
                f"processes {rt.cgroups.pids(job_id)}"
            )
        time.sleep(0.01)
    rt._save(job)
    roots: tuple[tuple[str, str], ...] = ()
    if m.cgroup != rec.cgroup:
        roots = tuple((c, rec.cgroup) for c in _job_controllers(rt))
    net = netjobs.prepare_restore(rt, job, ckpt)  # {}: on the node's network
    if lazy is not None:
        if lazy.daemon is None:
            lazy.daemon = rt.criu.start_lazy_pages(
                ckpt,
                lazy.source.address,
                lazy.source.port,
                ps_fd=lazy.source.fd,
                work_dir=str(run_dir),
            )
        lazy.daemon.wait_started(rt.criu.SWRK_EXIT_TIMEOUT)
    res = rt.criu.restore(
        ckpt,
        options=RestoreOptions(
            work_dir=str(run_dir),
            manage_cgroups=CgroupMode.SOFT,
            cgroup_root=roots,
            lazy_pages=lazy is not None,
            # Held for a commit: CRIU would let the job run before our freeze.
            leave_stopped=frozen,
            **net,
        ),
    )
    netjobs.restored(rt, job)
    rec.init_pid = res.pid
    job.pidfd = kernel_shim.pidfd_open(res.pid)
    if not rt.cgroups.contains(job_id, res.pid):
        where = proc_cgroup(res.pid)
        rt._kill_and_reap(job)
        raise Internal(
            f"restored job {job_id} landed outside its cgroup {rec.cgroup}: {where}"
        )
    if frozen:  # stopped by CRIU: frozen first, then continued into the freezer
        rt.cgroups.freeze(job_id)
        for pid in rt.cgroups.pids(job_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        rec.state = JobState.SUSPENDED
    elif m.suspended:
        rt.cgroups.freeze(job_id)
        rec.state = JobState.SUSPENDED
    else:
        rt.cgroups.thaw(job_id)
        rec.state = JobState.RUNNING
    rt._save(job)


def _fsync_all(directory: Path) -> None:
    """Every file of a checkpoint, then the directory, on disk."""
    for entry in os.scandir(directory):
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
