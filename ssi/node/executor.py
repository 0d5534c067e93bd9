"""The agent's hands on its jobs: start, signal, freeze, checkpoint (dump + copies to
other nodes), restore (fetching images if they are elsewhere), and the report of every
job's end to the coordinator, including the ends that happened while ssid was down.

    coordinator ─agent.start/signal/freeze/dump/restore/forget─▶ Executor ─▶ JobRuntime
    Executor ─job.ended / job.here─▶ coordinator          BulkServer ◀─▶ other nodes
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from schedulers.probes.job import JobProbe
from ssi.checkpoint import Criu
from ssi.config import Config, resolve_criu
from ssi.jobs import JobRuntime, JobSpec, LocalJob, verify
from ssi.migration.guard import RestoreGuard
from ssi.net.jobnet import JobNetworks
from ssi.node.copying import (
    BULK_PORT_OFFSET,
    SpoolDirs,
    bulk_endpoint,
    checkpoint_copied,
)
from ssi.node.held import held, resume_held, unmount_cgroup_yards
from ssi.node.moves import Moves
from ssi.node.service import Service
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Conflict, NotFound, SsiError, Unavailable
from ssi.rpc.keys import KeyPair
from ssi.transfer import BulkServer, fetch_dir, send_dir

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable[Any]]


class Executor:
    def __init__(
        self,
        cfg: Config,
        keypair: KeyPair,
        call_coordinator: Call,
        key_allowed: Callable[[bytes], bool],
        job_env: Callable[[Mapping[str, Any]], dict[str, str]] = lambda spec: {},
        address: str = "",
    ) -> None:
        self.cfg = cfg
        self.node = cfg.node.name
        self.keypair = keypair
        self.call_coordinator = call_coordinator
        self.job_env = job_env  # what node services add to a job's environment
        self.address = address  # where this node's page servers listen (live moves)
        self.dump_hooks: Sequence[Service] = ()  # told before and after each dump
        state = Path(cfg.node.state_dir)
        self.spool = state / "checkpoints"
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool_dirs = SpoolDirs(self.spool)
        # Storage every node mounts at this path: a checkpoint there needs no copy.
        self.shared = Path(cfg.node.shared_spool) if cfg.node.shared_spool else None
        if self.shared is not None:
            self.shared.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runtime = JobRuntime(
            state / "jobs",
            Criu(resolve_criu(cfg)),
            self.node,
            cgroup_base=cfg.node.cgroup_base,
            networks=JobNetworks(cfg.net.link, address, cfg.net.netns_prefix),
        )
        self.moves = Moves(self.runtime, self.spool, address)
        self.bulk = BulkServer(
            None,
            f"tcp://{cfg.node.listen}:{cfg.node.port + BULK_PORT_OFFSET}",
            keypair,
            key_allowed,
            self.spool_dirs,
        )
        self._ended: dict[str, dict[str, Any]] = {}  # job id -> status, not yet acked
        self._stopping: set[str] = set()  # dumped to stop: their end is no job's end
        self._wake = asyncio.Event()
        self.job_probe = JobProbe()  # CPU demand, dirty rate: what balancing weighs
        self._tasks: list[asyncio.Task[None]] = []
        self._asides: set[asyncio.Task[None]] = set()  # run without being waited for
        self._reconciling = asyncio.Lock()
        self._reconciled = 0  # how many reconciliations began
        self.guard: RestoreGuard | None = None  # set by start()

    def handlers(self) -> dict[str, Any]:
        return {
            m.AgentStart.op: self.on_start,
            m.AgentSignal.op: self.on_signal,
            m.AgentFreeze.op: self.on_freeze,
            m.AgentDump.op: self.on_dump,
            m.AgentRestore.op: self.on_restore,
            m.AgentForget.op: self.on_forget,
            m.AgentMigrateOut.op: self.on_migrate_out,
            m.AgentMovePrepare.op: self.on_move_prepare,
            m.AgentSettle.op: self.on_settle,
            m.AgentKeep.op: self.on_keep,
        }

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.guard = await asyncio.to_thread(RestoreGuard)
        # Images of moves cut short by our restart (no move survives it); no new
        # one can reach us before bulk.start.
        for stale in [*self.spool.glob("mig-*"), *self.spool.glob(".mig-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        await asyncio.to_thread(unmount_cgroup_yards, self.runtime.root)
        # A CRIU started ahead of each dump or restore: its kernel probe (20-70 ms
        # here) out of jobs' freezes.
        await asyncio.to_thread(self.runtime.criu.keep_spare)
        await self.bulk.start()
        for job in await asyncio.to_thread(self.runtime.adopt):
            self._watch(job)
        self._tasks.append(asyncio.get_running_loop().create_task(self._report_ends()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self.runtime.jobs():
            self._unwatch(job)
        await self.bulk.close()
        await asyncio.to_thread(self.runtime.criu.close)
        if self.guard is not None:
            await asyncio.to_thread(self.guard.close)

    async def reconcile(self) -> None:
        """After the coordinator welcomed us, or a new run of it: jobs it moved away
        while we were out of touch, or whose move it forgot, must not run twice."""
        async with self._reconciling:
            self._reconciled += 1
            running = [int(j.job_id) for j in self.runtime.jobs() if j.running]
            answer = await self.call_coordinator(
                m.JobsHere(node=self.node, running=running)
            )
            for job_id in answer.get("kill", []):
                log.warning("job %s runs elsewhere now: killing this copy", job_id)
                with contextlib.suppress(NotFound):  # gone meanwhile
                    await self._kill_and_forget(str(job_id))
            for job_id in answer.get("resume", []):
                await self._resume_here(str(job_id))

    async def _reconcile_aside(self) -> None:
        try:
            await self.reconcile()
        except SsiError as e:  # out of touch: the next welcome reconciles
            log.warning("could not reconcile with the coordinator: %s", e)

    async def _kill_and_forget(self, job_id: str) -> None:
        """Kill this node's copy of the job and forget it; NotFound if none."""
        try:
            self._ended.pop(job_id, None)
            self._unwatch(self.runtime.job(job_id))  # on the loop: it owns the readers
            await asyncio.to_thread(self.runtime.forget, job_id, kill=True)
        finally:  # nothing of it is left to guard
            await self._disarm(job_id)

    # --- exits ---------------------------------------------------------------------

    def _watch(self, job: LocalJob) -> None:
        if job.running:
            asyncio.get_running_loop().add_reader(job.fileno(), self._exited, job)
        else:  # ended while ssid was down, or never got going
            self._ended_now(job.job_id)

    def _unwatch(self, job: LocalJob) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(job.fileno())

    def _exited(self, job: LocalJob) -> None:
        self._unwatch(job)
        if job.job_id not in self._stopping:  # a stopping dump reaps it itself
            self._ended_now(job.job_id)

    def _ended_now(self, job_id: str) -> None:
        status = self.runtime.reap(job_id)
        if status.checkpointed:  # stopped by a checkpoint: not the job's end
            self.runtime.forget(job_id)
            return
        report = dict(msgspec.to_builtins(status))
        if status.setup_error or status.exec_errno:
            report["aborted"] = True
        self._ended[job_id] = report
        self._wake.set()

    async def _report_ends(self) -> None:
        """Tell the coordinator of every end until it acknowledges; only then forget
        the job here (its status file is the durable copy meanwhile)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for job_id, status in list(self._ended.items()):
                try:
                    await self.call_coordinator(
                        m.JobEnded(job=int(job_id), node=self.node, status=status)
                    )
                except SsiError as e:
                    log.warning("could not report the end of job %s yet: %s", job_id, e)
                    continue
                self._ended.pop(job_id, None)
                await asyncio.to_thread(self.runtime.forget, job_id)
            if self._ended:
                await asyncio.sleep(1.0)
                self._wake.set()

    def live_stats(self) -> dict[str, dict[str, Any]]:
        """Per-job figures for the heartbeat."""
        out = {}
        for job in self.runtime.jobs():
            if job.running:
                with contextlib.suppress(SsiError, OSError):
                    figures = dict(msgspec.to_builtins(self.runtime.stats(job.job_id)))
                    pids = self.runtime.cgroups.pids(job.job_id)
                    sample = self.job_probe.sample_job(job.job_id, pids, time.time())
                    figures["probe"] = dataclasses.asdict(sample)
                    out[job.job_id] = figures
        return out

    # --- requests from the coordinator ------------------------------------------------

    async def on_start(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentStart)
        fields = {k: v for k, v in body.spec.items() if k in JobSpec.__struct_fields__}
        fields["env"] = {**fields.get("env", {}), **self.job_env(body.spec)}
        spec = msgspec.convert(fields, JobSpec)
        job = await asyncio.to_thread(self.runtime.start, str(body.job), spec)
        self._watch(job)
        limit = float(body.spec.get("wall_limit") or 0)
        if limit > 0:
            asyncio.get_running_loop().call_later(limit, self._over_time, job, 15)
        return {"pid": job.pid, "started_at": time.time()}

    def _over_time(self, job: LocalJob, sig: int) -> None:
        """A job past its wall-clock limit gets TERM, then KILL 5 s later."""
        if not job.running:
            return
        log.info("job %s reached its wall-clock limit: signal %d", job.job_id, sig)
        with contextlib.suppress(SsiError, OSError):
            self.runtime.signal(job.job_id, sig, every_process=True)
        if sig != 9:
            asyncio.get_running_loop().call_later(5.0, self._over_time, job, 9)

    async def on_signal(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentSignal)
        await asyncio.to_thread(self.runtime.signal, str(body.job), body.signal)
        return {}

    async def on_freeze(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentFreeze)
        act = self.runtime.suspend if body.frozen else self.runtime.resume
        await asyncio.to_thread(act, str(body.job))
        return {}

    async def on_dump(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        """Checkpoint, copied as it is written to the first replica that takes it
        (the next ones are tried, after the dump, only if that copy failed); or
        written once into the shared spool, which every node sees."""
        body = env.body
        assert isinstance(body, m.AgentDump)
        job_id = str(body.job)
        dest = (self.shared or self.spool) / body.checkpoint
        replicas = body.replicas if self.shared is None else []
        started = time.monotonic()
        if body.stop:
            self._stopping.add(job_id)
        self._before_dump(job_id)
        stopped = False
        first = replicas[0] if replicas else None
        try:
            manifest, copied = await checkpoint_copied(
                self.runtime,
                self.keypair,
                job_id,
                dest,
                first,
                body.checkpoint,
                leave_running=not body.stop,
            )
            stopped = body.stop
            if body.stop:  # its processes are gone: drop it here, the images stay
                self._unwatch(self.runtime.job(job_id))
                await asyncio.to_thread(self.runtime.forget, job_id, kill=True)
        finally:
            self._stopping.discard(job_id)
            self._after_dump(job_id, stopped)
        replicated: list[str] = []
        errors: list[str] = []
        if first is not None and not isinstance(copied, SsiError):
            replicated.append(first["name"])
        elif first is not None:
            errors.append(f"{first['name']}: {copied}")
            for replica in replicas[1:]:
                try:
                    await send_dir(
                        bulk_endpoint(replica),
                        replica["key"],
                        self.keypair,
                        dest,
                        body.checkpoint,
                        checksums=manifest.checksums(),
                    )
                    replicated.append(replica["name"])
                    break
                except SsiError as e:
                    errors.append(f"{replica['name']}: {e}")
        if replicas and not replicated and not body.stop:
            shutil.rmtree(dest, ignore_errors=True)
            raise Unavailable(
                f"checkpoint of job {body.job} could not be copied to another node "
                f"({'; '.join(errors)}); it does not count, the job keeps running"
            )
        return {
            "size": manifest.size,
            "seconds": time.monotonic() - started,
            "dump_seconds": manifest.dump_seconds,  # CRIU's part of "seconds"
            "replicated_to": replicated,
            "shared": self.shared is not None,
            "errors": errors,
            "criu_version": manifest.criu_version,
        }

    def _before_dump(self, job_id: str) -> None:
        for hook in self.dump_hooks:
            hook.before_dump(job_id)

    def _after_dump(self, job_id: str, stopped: bool) -> None:
        for hook in self.dump_hooks:
            hook.after_dump(job_id, stopped=stopped)

    async def on_restore(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentRestore)
        reconciled = self._reconciled
        answer = await self._restore(body)
        if body.cleanup and self._reconciled != reconciled:
            # A new coordinator run reconciled while this move's copy was being
            # made, so without it: the run that asked for the copy may be gone,
            # and with it the move. Ask again (job.here) now that it is here.
            self._aside(self._reconcile_aside())
        return answer

    async def _restore(self, body: m.AgentRestore) -> dict[str, Any]:
        started = time.monotonic()
        local = self.spool / body.checkpoint
        job_id = str(body.job)
        if body.cleanup:  # a move: its copy here must not outlive us unconfirmed
            await asyncio.to_thread(self._guard().arm, self._freezer(job_id))
        try:
            if body.live:
                return await self._restore_live(body, local, started)
            problems: list[str] = []
            if body.channel_sums is not None:  # a cold move's, checked on arrival
                images = await self.moves.arrived(body.checkpoint, body.channel_sums)
                fetched_from = "channel"
            else:
                images, fetched_from, problems = await self._usable_copy(local, body)
            # A move's copy waits frozen until the coordinator recorded it (keep).
            job = await asyncio.to_thread(
                functools.partial(
                    self.runtime.restore,
                    job_id,
                    images,
                    checked=True,
                    frozen=body.cleanup,
                )
            )
        except BaseException:
            await self._disarm(job_id)  # nothing of it is left here
            raise
        self._watch(job)
        if body.cleanup and images == local:
            shutil.rmtree(local, ignore_errors=True)
        return {
            "pid": job.pid,
            "seconds": time.monotonic() - started,
            "fetched_from": fetched_from,
            "problems": problems,
        }

    async def _restore_live(
        self, body: m.AgentRestore, local: Path, started: float
    ) -> dict[str, Any]:
        """Resume the job here at once; confirm only when its last page arrived."""
        if body.channel_sums is None:
            raise BadRequest("a live restore needs its images' digests")
        target, waited = await self.moves.restore(
            str(body.job), body.checkpoint, local, body.channel_sums
        )
        self._watch(self.runtime.job(str(body.job)))
        self._report_phase(body.job, body.checkpoint, "fetching-pages")
        report = await asyncio.to_thread(target.wait_pages)
        return {
            "pid": report.pid,
            "seconds": time.monotonic() - started,
            "restore_seconds": report.restore_seconds,
            "images_wait_seconds": waited,
            "pages_seconds": report.pages_seconds,
            "page_bytes": report.page_bytes,
        }

    def _guard(self) -> RestoreGuard:
        if self.guard is None:
            raise Unavailable(f"node {self.node}: the executor has not started")
        return self.guard

    def _freezer(self, job_id: str) -> Path:
        return self.runtime.cgroups.freezer_dir(job_id)

    async def _resume_held(self, job_id: str) -> None:
        await asyncio.to_thread(resume_held, self.runtime, job_id)

    async def _disarm(self, job_id: str) -> None:
        await asyncio.to_thread(self._guard().disarm, self._freezer(job_id))

    def _report_phase(self, job: int, migration: str, phase: str) -> None:
        """Tell the coordinator, aside: the move never waits for its history."""

        async def report() -> None:
            with contextlib.suppress(SsiError):
                await self.call_coordinator(
                    m.MigrationPhase(
                        job=job, migration=migration, node=self.node, phase=phase
                    )
                )

        self._aside(report())

    def _aside(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the loop without waiting for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._asides.add(task)
        task.add_done_callback(self._asides.discard)

    async def _usable_copy(
        self, local: Path, body: m.AgentRestore
    ) -> tuple[Path, str, list[str]]:
        """A verified copy of the checkpoint: the shared spool's, ours, else the
        first holder's that verifies (fetched to `local`). Returns where it is, the
        holder it came from ("" here, "shared") and what was wrong with others."""
        problems: list[str] = []
        shared = self.shared / body.checkpoint if self.shared is not None else None
        if shared is not None and shared.is_dir():
            try:
                await asyncio.to_thread(verify, shared)
                return shared, "shared", problems
            except SsiError as e:  # left there: it is every node's, not ours to drop
                problems.append(f"shared copy: {e}")
        if local.is_dir():
            try:
                await asyncio.to_thread(self.spool_dirs.verify, body.checkpoint, local)
                return local, "", problems
            except SsiError as e:
                problems.append(f"local copy: {e}")
                shutil.rmtree(local, ignore_errors=True)
        for holder in body.holders:
            if holder["name"] == self.node:
                continue
            try:
                got = await fetch_dir(
                    bulk_endpoint(holder),
                    holder["key"],
                    self.keypair,
                    body.checkpoint,
                    local,
                )
                await asyncio.to_thread(
                    self.spool_dirs.arrived, body.checkpoint, local, got.digests
                )
                await asyncio.to_thread(self.spool_dirs.verify, body.checkpoint, local)
                return local, holder["name"], problems
            except SsiError as e:
                problems.append(f"copy on {holder['name']}: {e}")
                shutil.rmtree(local, ignore_errors=True)
        raise NotFound(
            f"no sound copy of checkpoint {body.checkpoint}: "
            + "; ".join(problems or ["no holder reachable"])
        )

    # --- migration: the source's half -------------------------------------------------

    async def on_migrate_out(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        """Dump, keep the job frozen here, send the images to the target on the
        move's channel (ssi.node.moves). On any failure the job runs on here, as it
        was."""
        body = env.body
        assert isinstance(body, m.AgentMigrateOut)
        job_id, dest = str(body.job), self.spool / body.migration
        t0 = time.monotonic()
        self._before_dump(job_id)  # until on_settle
        try:
            if body.live:  # pages stay here, served to the target on demand
                source, sums = await self.moves.dump_live(job_id, dest, body.channel)
                manifest = source.manifest
            else:  # every page goes to the target as CRIU dumps it
                self._report_phase(body.job, body.migration, "sending")
                try:
                    manifest, sums = await self.moves.dump_cold(
                        job_id, dest, body.channel
                    )
                finally:  # the source keeps no images (live: until commit)
                    shutil.rmtree(dest, ignore_errors=True)
        except BaseException:
            self._after_dump(job_id, False)
            raise
        if body.live:
            self._report_phase(body.job, body.migration, "sending")
        # Cold: the pages went during the dump; what the rest took is transfer.
        dump_seconds = (time.monotonic() - t0) if body.live else manifest.dump_seconds
        return {
            "bytes": manifest.size + manifest.pages_sent,
            "dump_seconds": dump_seconds,
            "transfer_seconds": time.monotonic() - t0 - dump_seconds,
            "checksums": sums,
        }

    async def _settle(self, job_id: str, *, moved: bool) -> None:
        if not moved:
            await self._resume_here(job_id)
            return
        if await self.moves.settle(job_id, moved=True):
            return
        with contextlib.suppress(Conflict):  # held by the ssid before us: it dies
            await asyncio.to_thread(self.runtime.settle, job_id, moved=True)

    async def _resume_here(self, job_id: str) -> None:
        """The store says the job runs here: end any hold of a move on it. Ours
        (a dump kept frozen, a live page server), or one the ssid before us left
        (a move cut short by its death, or by the coordinator's restart)."""
        if await self.moves.settle(job_id, moved=False):
            return
        try:
            await asyncio.to_thread(self.runtime.settle, job_id, moved=False)
        except Conflict:  # no hold of ours
            if await asyncio.to_thread(held, self.runtime, job_id):
                log.warning("job %s runs here but was held: resuming it", job_id)
                await self._resume_held(job_id)

    async def on_move_prepare(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentMovePrepare)
        return await self.moves.prepare(body)

    async def on_settle(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentSettle)
        job_id = str(body.job)
        self._after_dump(job_id, body.moved)
        if not body.moved:
            await self._settle(job_id, moved=False)
            return {}
        self._stopping.add(job_id)  # its end here is no end of the job
        try:
            job = self.runtime.job(job_id)
            await self._settle(job_id, moved=True)
            self._unwatch(job)
            await asyncio.to_thread(self.runtime.forget, job_id, kill=True)
        finally:
            self._stopping.discard(job_id)
        return {}

    async def on_keep(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        """The coordinator recorded that the job moved here: it runs here for good
        (a cold move's copy waited frozen for this)."""
        body = env.body
        assert isinstance(body, m.AgentKeep)
        job_id = str(body.job)
        if self.runtime.cgroups.frozen(job_id):
            await self._resume_held(job_id)
        await self._disarm(job_id)
        return {}

    async def on_forget(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.AgentForget)
        job_id = str(body.job)
        if body.kill:
            with contextlib.suppress(NotFound):  # never got here; images may have
                await self._kill_and_forget(job_id)
        for ckpt in body.checkpoints:
            if "/" in ckpt or ckpt.startswith("."):
                raise Conflict(f"bad checkpoint id {ckpt!r}")
            self.moves.drop(ckpt)  # a live move's invitation, if any
            for root in (self.spool, self.shared):
                if root is not None:
                    shutil.rmtree(root / ckpt, ignore_errors=True)
        return {}
