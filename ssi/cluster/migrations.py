"""Moving running jobs between nodes, as a transaction the coordinator drives:

    target: agent.move_prepare ── listen for the source ──▶ invitation
    source: agent.migrate_out ── freeze, dump, images on that connection ──▶ target
    target: agent.restore(cleanup) ── verify, restore (cold: frozen) ──▶ confirmed
    record: job.node = target (in the store first) ──▶ target: agent.keep
                                                   ──▶ source: agent.settle(moved)
    any failure before the record ──▶ target forgets its copy, source thaws the job

The job never runs twice: the source keeps it frozen until the target has confirmed
and the store says where it lives; the target's copy freezes if its ssid dies before
agent.keep (ssi.migration.guard); a node out of touch during the move learns on its
return (job.here) which copies to kill and which to resume. A node lost during the
move, or whose ssid restarted (a new boot in its hello), ends the call waiting on it
at once. Phases (dumping, sending, restoring, fetching-pages) and every move's
figures are recorded on the job's history.

Live, the job runs on the target while its pages arrive: if the move fails then,
the job goes on from the source's copy, i.e. from its state at the freeze, and
what it did on the target meanwhile outside its memory (lines written) is done
again. One copy runs at a time; post-copy cannot offer more.

Users move jobs with `ssi migrate`; evictions evacuate a node; the policy's
rebalancing rounds (MOSIX) move jobs to less loaded nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ssi.cluster.events import NodeEvent, NodeEventKind, NodeEvents
from ssi.cluster.store import JobRecord, JobState, NodeRecord, NodeState
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Conflict, NodeGone, SsiError

if TYPE_CHECKING:
    from ssi.cluster.jobs import JobManager

log = logging.getLogger(__name__)

MOVE_TIMEOUT = 900.0


class MigrationFailed(Conflict):
    code = "migration_failed"


class Migrations:
    HANDLERS: ClassVar[dict[str, str]] = {
        m.JobMigrate.op: "on_migrate",
        m.MigrationPhase.op: "on_phase",
    }
    OPS = frozenset(HANDLERS)

    def __init__(self, jobs: JobManager, events: NodeEvents) -> None:
        self.jobs = jobs
        self.store = jobs.store
        self.peers = jobs.peers
        self._gone: dict[str, list[asyncio.Future[str]]] = {}  # node -> its callers
        events.subscribe("migrations", self.on_node_event)

    def handlers(self) -> dict[str, Any]:
        return {op: getattr(self, name) for op, name in self.HANDLERS.items()}

    def start(self) -> None:
        """After a coordinator (re)start: a move the last one drove is over, never
        recorded; its source resumes the job when its agent reconciles (job.here)
        and its target kills its copy."""
        for job in self.store.jobs():
            if job.state is JobState.MIGRATING:
                moves = [
                    e for e in self.store.job_events(job.id) if e["kind"] == "migrating"
                ]
                why = "the coordinator restarted during the move"
                self.jobs._save(
                    job.but(state=JobState.RUNNING, reason=why),
                    "migration-failed",
                    to=moves[-1].get("to") if moves else None,
                    phase="unknown",
                    error=why,
                )
        self.jobs.spawn(self._rebalance_rounds())

    # --- requests ---

    async def on_migrate(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobMigrate)
        job = self.jobs._owned(env, body.job)
        return await self.migrate(job, body.node, cause=env.id, live=body.live)

    async def on_phase(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.MigrationPhase)
        job = self.store.job(body.job)
        if job is not None and job.state is JobState.MIGRATING:  # late: dropped
            self._phase(job, body.phase, body.node, body.migration)
        return {}

    def _phase(self, job: JobRecord, phase: str, node: str, name: str) -> None:
        self.store.add_job_event(
            job.id, "migration-phase", {"phase": phase, "node": node, "migration": name}
        )

    async def on_node_event(self, event: NodeEvent) -> None:
        if event.kind in (NodeEventKind.LOST, NodeEventKind.EVICTED):
            self._cut(event.node, f"{event.kind.value} ({event.cause or '-'})")

    def node_restarted(self, node: str) -> None:
        """Its ssid restarted (a new boot in its hello) before it was declared lost:
        the requests the last one had are gone with it."""
        self._cut(node, "restarted")

    def _cut(self, node: str, why: str) -> None:
        for gone in self._gone.pop(node, []):
            if not gone.done():
                gone.set_result(f"node {node} {why}")

    async def _call(
        self, node: NodeRecord, body: m.Request[Any], *, timeout: float, cause: str
    ) -> Any:
        """peers.call, cut short if the node is lost meanwhile: a dead ssid never
        answers, and a move must not hang for MOVE_TIMEOUT on it."""
        now = self.store.node(node.name)
        if now is None or now.state is NodeState.LOST:
            raise NodeGone(f"{body.op} to {node.name}: the node is lost")
        gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._gone.setdefault(node.name, []).append(gone)
        call = asyncio.ensure_future(
            self.peers.call(node, body, timeout=timeout, cause=cause)
        )
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return call.result()
            raise NodeGone(f"{body.op} to {node.name} cut short: {gone.result()}")
        finally:
            call.cancel()
            with contextlib.suppress(ValueError, KeyError):
                self._gone[node.name].remove(gone)

    def _target(self, job: JobRecord, want: str) -> NodeRecord:
        if want in ("", "auto"):
            placement = self.jobs.scheduling.place(
                job, exclude=(job.node,), keep_pin=False
            )
            if placement.node is None:
                raise Conflict(f"no node can take job {job.id}: {placement.reason}")
            want = placement.node
        target = self.jobs._node(want)
        if target.name == job.node:
            raise BadRequest(f"job {job.id} already runs on {target.name}")
        if target.state is not NodeState.ONLINE:
            raise Conflict(f"{target.name} is {target.state.value}: it takes no jobs")
        return target

    async def migrate(
        self, job: JobRecord, want: str, *, cause: str, live: bool = False
    ) -> dict[str, Any]:
        if job.state is not JobState.RUNNING:
            raise Conflict(f"job {job.id} is {job.state.value}: only running jobs move")
        if job.id in self.jobs._busy:
            raise Conflict(f"job {job.id} has a checkpoint, restart or move under way")
        target = self._target(job, want)
        source = self.jobs._node(job.node)
        self.jobs._busy.add(job.id)
        try:
            return await self._move(job, source, target, cause, live)
        finally:
            self.jobs._busy.discard(job.id)

    async def _move(
        self,
        job: JobRecord,
        source: NodeRecord,
        target: NodeRecord,
        cause: str,
        live: bool,
    ) -> dict[str, Any]:
        name = f"mig-{job.id}-{int(time.time() * 1000)}"
        job = self.jobs._save(
            job.but(state=JobState.MIGRATING), "migrating", to=target.name
        )
        t0 = time.monotonic()
        try:  # the target listens for the source's connection (images, pages)
            channel = await self._call(
                target,
                m.AgentMovePrepare(
                    job=job.id, migration=name, source=source.address, live=live
                ),
                timeout=30.0,
                cause=cause,
            )
        except SsiError as e:
            raise self._failed(job, target, "prepare", e) from None
        self._phase(job, "dumping", source.name, name)
        t_freeze = time.monotonic()  # the source freezes the job on this request
        try:
            out = await self._call(
                source,
                m.AgentMigrateOut(
                    job=job.id, migration=name, live=live, channel=channel
                ),
                timeout=MOVE_TIMEOUT,
                cause=cause,
            )
        except SsiError as e:  # the source thawed it, unless its ssid died meanwhile
            await self._undo(job, source, target, name)
            raise self._failed(job, target, "dump or transfer", e) from None

        t1 = time.monotonic()
        self._phase(job, "restoring", target.name, name)
        try:
            restored = await self._call(
                target,
                m.AgentRestore(
                    job=job.id,
                    checkpoint=name,
                    spec=job.spec,
                    cleanup=True,
                    channel_sums=out["checksums"],
                    live=live,
                ),
                timeout=MOVE_TIMEOUT,
                cause=cause,
            )
        except SsiError as e:
            await self._undo(job, source, target, name)
            raise self._failed(job, target, "restore", e) from None
        t2 = time.monotonic()
        # The commit point: once the store says the target, the target's copy runs
        # (keep) and the source's dies (settle); before it, the source's may resume.
        self.jobs._save(
            job.but(
                state=JobState.RUNNING,
                node=target.name,
                reason=f"migrated from {source.name} to {target.name}",
            )
        )
        try:
            await self._call(target, m.AgentKeep(job=job.id), timeout=30.0, cause=cause)
        except SsiError as e:  # frozen there till its ssid's return (job.here resumes)
            log.warning(
                "job %d: target %s not told to keep it: %s", job.id, target.name, e
            )
        t3 = time.monotonic()  # a cold move's copy resumed on keep
        figures = {
            "from": source.name,
            "to": target.name,
            "mode": "live" if live else "cold",
            "prepare_seconds": t_freeze - t0,  # the target ready, the job running
            "freeze_seconds": t3 - t_freeze,
            "dump_seconds": out["dump_seconds"],
            "transfer_seconds": out["transfer_seconds"],
            "restore_seconds": t2 - t1,
            "bytes": out["bytes"],
        }
        if live:  # it ran on the target before its pages were all there
            frozen = out["dump_seconds"] + out["transfer_seconds"]
            figures.update(
                freeze_seconds=frozen + restored["restore_seconds"],
                restore_seconds=restored["restore_seconds"],
                pages_seconds=restored["pages_seconds"],
                last_page_seconds=t2 - t_freeze,  # the target answers once all came
                bytes=out["bytes"] + restored["page_bytes"],
                page_bytes=restored["page_bytes"],
            )
        self.store.add_job_event(job.id, "migrated", figures)
        try:  # the frozen copy on the source may go
            await self._call(
                source, m.AgentSettle(job=job.id, moved=True), timeout=60.0, cause=cause
            )
        except SsiError as e:  # it learns on its return (job.here) and kills it
            log.warning(
                "job %d: source %s not told of the move: %s", job.id, source.name, e
            )
        figures["total_seconds"] = time.monotonic() - t0
        return figures

    async def _undo(
        self, job: JobRecord, source: NodeRecord, target: NodeRecord, name: str
    ) -> None:
        """The target did not confirm: make sure it does not run the job nor keep
        its images, then let the source go on (a source whose ssid restarted
        finds the job still frozen by the dump: settle thaws it)."""
        with contextlib.suppress(SsiError):  # if down, job.here kills its copy later
            await self._call(
                target,
                m.AgentForget(job=job.id, kill=True, checkpoints=[name]),
                timeout=30.0,
                cause="",
            )
        try:
            await self._call(
                source, m.AgentSettle(job=job.id, moved=False), timeout=60.0, cause=""
            )
        except SsiError as e:  # still frozen there: job.here resumes it on its return
            log.warning(
                "job %d: source %s not told to resume: %s", job.id, source.name, e
            )

    def _failed(
        self, job: JobRecord, target: NodeRecord, phase: str, error: SsiError
    ) -> MigrationFailed:
        why = (
            f"migration to {target.name} failed at {phase}: {error}; it runs on "
            f"{job.node}"
        )
        self.jobs._save(
            job.but(state=JobState.RUNNING, reason=why),
            "migration-failed",
            to=target.name,
            phase=phase,
            error=str(error),
        )
        return MigrationFailed(f"job {job.id}: {why}")

    # --- evacuation and balancing ---------------------------------------------------

    async def evacuate(self, node: str, cause: str) -> list[dict[str, Any]]:
        """Moves every job off `node`; returns what went where, or why not."""
        moves = []
        for job in self.store.jobs():
            if job.node != node or not job.state.live:
                continue
            try:
                figures = await self.migrate(job, "auto", cause=cause)
                moves.append(
                    {
                        "job": job.id,
                        "to": figures["to"],
                        "how": "migrated",
                        "freeze_seconds": figures["freeze_seconds"],
                    }
                )
            except SsiError as e:
                moves.append(
                    {"job": job.id, "to": None, "how": "failed", "error": str(e)}
                )
        return moves

    async def _rebalance_rounds(self) -> None:
        every = self.jobs.cfg.scheduler.rebalance_every
        while True:
            await asyncio.sleep(every)
            plan = self.jobs.scheduling.scheduler.rebalance(time.time())
            for decision in plan.migrations:
                job = self.store.job(int(decision.job))
                ok = False
                if job is not None and job.state is JobState.RUNNING:
                    try:
                        await self.migrate(
                            job, decision.target, cause=f"rebalance: {decision.reason}"
                        )
                        ok = True
                    except SsiError as e:
                        log.info("rebalancing job %s: %s", decision.job, e)
                self.jobs.scheduling.scheduler.migration_result(
                    decision, ok, time.time()
                )
