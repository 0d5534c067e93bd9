"""Checkpoints and restarts, as the coordinator drives them: a job's checkpoint is
taken on its node and copied to another one before it counts; periodic checkpoints
and retention; restarts on a node the policy (or the admin) chooses, falling back to
a replica, then to an older checkpoint; the jobs of a lost node restarted from their
latest checkpoint.

    job.checkpoint ─▶ agent.dump(replicas) on the job's node ─▶ CheckpointRecord
    job.restart / node lost ─▶ place ─▶ agent.restore(holders) on the target
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

from ssi.cluster.events import NodeEvent, NodeEventKind, NodeEvents
from ssi.cluster.peers import endpoint
from ssi.cluster.store import CheckpointRecord, JobRecord, JobState, NodeState
from ssi.proto import messages as m
from ssi.proto.errors import Conflict, NotFound, SsiError

if TYPE_CHECKING:
    from ssi.cluster.jobs import JobManager

log = logging.getLogger(__name__)

DUMP_TIMEOUT = 900.0  # a GB-sized job replicated to another node


class Checkpoints:
    HANDLERS: ClassVar[dict[str, str]] = {
        m.JobCheckpoint.op: "on_checkpoint",
        m.JobCheckpoints.op: "on_checkpoints",
        m.JobRestart.op: "on_restart",
    }
    OPS = frozenset(HANDLERS)

    def __init__(self, jobs: JobManager, events: NodeEvents) -> None:
        self.jobs = jobs
        self.cfg = jobs.cfg
        self.store = jobs.store
        self.peers = jobs.peers
        events.subscribe("checkpoints", self.on_node_event)

    def handlers(self) -> dict[str, Any]:
        return {op: getattr(self, name) for op, name in self.HANDLERS.items()}

    def start(self) -> None:
        self.jobs.spawn(self._periodic_checkpoints())

    # --- checkpoints ------------------------------------------------------------------

    async def on_checkpoint(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobCheckpoint)
        job = self.jobs._owned(env, body.job)
        return asdict(await self.checkpoint(job, stop=body.stop, cause=env.id))

    async def checkpoint(
        self, job: JobRecord, *, stop: bool, cause: str
    ) -> CheckpointRecord:
        if job.state not in (JobState.RUNNING, JobState.SUSPENDED):
            raise Conflict(
                f"job {job.id} is {job.state.value}: only running jobs are checkpointed"
            )
        if job.id in self.jobs._busy:
            raise Conflict(f"job {job.id} has a checkpoint or restart under way")
        self.jobs._busy.add(job.id)
        try:
            return await self._checkpoint(job, stop, cause)
        finally:
            self.jobs._busy.discard(job.id)

    async def _checkpoint(
        self, job: JobRecord, stop: bool, cause: str
    ) -> CheckpointRecord:
        node = self.jobs._node(job.node)
        others = [
            n
            for n in self.store.nodes()
            if n.name != node.name and n.state in (NodeState.ONLINE, NodeState.DRAINING)
        ]
        # Candidates in order: the first that takes a copy holds it (one is enough).
        replicas = [endpoint(n) for n in others[:3]]
        ckpt_id = (
            f"{job.id}-{_next_seq(self.store.checkpoints(job.id))}-{int(time.time())}"
        )
        try:
            done = await self.peers.call(
                node,
                m.AgentDump(
                    job=job.id, checkpoint=ckpt_id, stop=stop, replicas=replicas
                ),
                timeout=DUMP_TIMEOUT,
                cause=cause,
            )
        except SsiError as e:
            why = f"checkpoint failed: {e}"
            self.jobs._save(job.but(reason=why), "checkpoint-failed", error=str(e))
            raise
        holders = [node.name, *done.get("replicated_to", [])]
        ckpt = CheckpointRecord(
            ckpt_id,
            job.id,
            node.name,
            holders,
            time.time(),
            int(done.get("size", 0)),
            stop,
            dict(done),
        )
        self.store.put_checkpoint(ckpt)
        if done.get("shared"):
            note = " (in the shared spool)"
        elif len(holders) > 1:
            note = ""
        else:
            note = " (not replicated: no other node online)"
        job = self.jobs._job(job.id)
        if stop:
            job = job.but(state=JobState.STOPPED)
        self.jobs._save(
            job.but(reason=f"checkpoint {ckpt_id} taken{note}"),
            "checkpointed",
            checkpoint=ckpt_id,
            holders=holders,
            stop=stop,
            seconds=done.get("seconds"),
            size=ckpt.size,
        )
        self._retain(job.id)
        return ckpt

    def _retain(self, job_id: int) -> None:
        """Keep the last few checkpoints of a job; drop the older copies everywhere.
        The records go first, in the same step as the new one's arrival, so that no
        listing or restart sees more than ckpt_keep; the copies follow in the
        background, not on the way of the answer (best effort: a holder that is
        down keeps its copy)."""
        keep = self.cfg.cluster.ckpt_keep
        old = self.store.checkpoints(job_id)[:-keep]
        for ckpt in old:
            self.store.delete_checkpoint(ckpt.id)
        if old:
            self.jobs.spawn(self._delete_copies(job_id, old))

    async def _delete_copies(self, job_id: int, old: list[CheckpointRecord]) -> None:
        for ckpt in old:
            for holder in ckpt.holders:
                rec = self.store.node(holder)
                if rec is not None and rec.state is not NodeState.LOST:
                    with contextlib.suppress(SsiError):
                        await self.peers.call(
                            rec,
                            m.AgentForget(job=job_id, checkpoints=[ckpt.id]),
                            timeout=30.0,
                        )

    async def on_checkpoints(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        body = env.body
        assert isinstance(body, m.JobCheckpoints)
        self.jobs._job(body.job)
        return [asdict(c) for c in self.store.checkpoints(body.job)]

    async def _periodic_checkpoints(self) -> None:
        last: dict[int, float] = {}
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for job in self.store.jobs():
                if job.ckpt_every <= 0 or job.state is not JobState.RUNNING:
                    continue
                if job.id not in last:
                    ckpts = self.store.checkpoints(job.id)
                    last[job.id] = (
                        ckpts[-1].taken_at if ckpts else (job.started_at or now)
                    )
                if (
                    now - last[job.id] >= job.ckpt_every
                    and job.id not in self.jobs._busy
                ):
                    last[job.id] = now
                    self.jobs.spawn(self._quiet_checkpoint(job))

    async def _quiet_checkpoint(self, job: JobRecord) -> None:
        with contextlib.suppress(SsiError):  # the failure is on the job's record
            await self.checkpoint(job, stop=False, cause="periodic")

    # --- restart ----------------------------------------------------------------------

    async def on_restart(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobRestart)
        job = self.jobs._owned(env, body.job)
        if job.state.live:
            raise Conflict(
                f"job {job.id} is {job.state.value} on {job.node}: checkpoint it with "
                "--stop first (or migrate it)"
            )
        if body.node:
            self.jobs._node(body.node)
        job = await self.restart(
            job, checkpoint=body.checkpoint, node=body.node, cause=env.id
        )
        return self.jobs.view(job)

    async def restart(
        self,
        job: JobRecord,
        *,
        checkpoint: str = "",
        node: str = "",
        cause: str,
        exclude: tuple[str, ...] = (),
    ) -> JobRecord:
        ckpts = self.store.checkpoints(job.id)
        if checkpoint:
            ckpts = [c for c in ckpts if c.id == checkpoint]
            if not ckpts:
                raise NotFound(f"job {job.id} has no checkpoint {checkpoint!r}")
        if not ckpts:
            raise Conflict(f"job {job.id} has no checkpoint to restart from")
        if job.id in self.jobs._busy:
            raise Conflict(f"job {job.id} has a checkpoint or restart under way")
        self.jobs._busy.add(job.id)
        try:
            return await self._restart(job, list(reversed(ckpts)), node, cause, exclude)
        finally:
            self.jobs._busy.discard(job.id)

    async def _restart(
        self,
        job: JobRecord,
        ckpts: list[CheckpointRecord],
        want: str,
        cause: str,
        exclude: tuple[str, ...],
    ) -> JobRecord:
        spec = dict(job.spec, node=want)
        placement = self.jobs.scheduling.place(
            job, exclude=exclude, restart=True, node=want, keep_pin=not exclude
        )
        if placement.node is None:
            raise Conflict(f"job {job.id} cannot restart: {placement.reason}")
        target = self.jobs._node(placement.node)
        job = self.jobs._save(
            job.but(
                state=JobState.RESTARTING, node=target.name, reason=placement.reason
            ),
            "restarting",
            node=target.name,
        )
        errors = []
        for ckpt in ckpts:  # newest first: fall back to older ones if one is damaged
            holders = [
                endpoint(n)
                for h in ckpt.holders
                if (n := self.store.node(h)) is not None
                and n.state is not NodeState.LOST
            ]
            try:
                done = await self.peers.call(
                    target,
                    m.AgentRestore(
                        job=job.id, checkpoint=ckpt.id, spec=spec, holders=holders
                    ),
                    timeout=DUMP_TIMEOUT,
                    cause=cause,
                )
            except SsiError as e:
                errors.append(f"{ckpt.id}: {e}")
                self.store.add_job_event(
                    job.id, "restore-failed", {"checkpoint": ckpt.id, "error": str(e)}
                )
                continue
            return self.jobs._save(
                job.but(
                    state=JobState.RUNNING,
                    started_at=job.started_at or time.time(),
                    reason=f"restarted on {target.name} from {ckpt.id}",
                ),
                "restarted",
                node=target.name,
                checkpoint=ckpt.id,
                fetched_from=done.get("fetched_from"),
                seconds=done.get("seconds"),
            )
        why = "; ".join(errors)
        self.jobs._save(
            job.but(
                state=JobState.FAILED,
                ended_at=time.time(),
                reason=f"no checkpoint could be restored: {why}",
            ),
            "restart-failed",
            errors=errors,
        )
        raise Conflict(f"job {job.id}: no checkpoint could be restored: {why}")

    # --- jobs of a lost or evicted node ---

    async def on_node_event(self, event: NodeEvent) -> None:
        if event.kind in (NodeEventKind.LOST, NodeEventKind.EVICTED):
            for job in self.store.jobs():
                if job.node == event.node and job.state.live:
                    self.jobs.spawn(self._recover(job, event))

    async def _recover(self, job: JobRecord, event: NodeEvent) -> None:
        why = f"node {event.node} {event.kind.value} ({event.cause})"
        # A move under way decides first where the job lives (it may have reached
        # its target already); only a job still on the lost node is recovered.
        while job.id in self.jobs._busy:
            await asyncio.sleep(0.1)
        current = self.store.job(job.id)
        if current is None or current.node != event.node or not current.state.live:
            return
        job = current
        if not self.store.checkpoints(job.id):
            self.jobs._save(
                job.but(
                    state=JobState.FAILED,
                    ended_at=time.time(),
                    reason=f"{why}; it had no checkpoint",
                    exit={"aborted": True, "lost": True},
                ),
                "lost",
                node=event.node,
            )
            return
        self.store.add_job_event(job.id, "lost", {"node": event.node})
        try:
            await self.restart(job, cause=f"lost:{event.node}", exclude=(event.node,))
        except SsiError as e:
            log.error("job %d could not be recovered after %s: %s", job.id, why, e)


def _next_seq(ckpts: list[CheckpointRecord]) -> int:
    """The sequence number of a job's next checkpoint (ids "<job>-<seq>-<time>"):
    one past its newest, so that an id is never taken twice, even once retention
    has deleted older ones (a count would repeat the newest's within a second)."""
    seqs = [
        int(p[1]) for c in ckpts if len(p := c.id.split("-")) == 3 and p[1].isdigit()
    ]
    return max(seqs, default=len(ckpts)) + 1
