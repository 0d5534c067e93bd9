"""The coordinator's view of jobs: submission, placement, life cycle, waiting and
control (checkpoints and restarts: checkpoints.py; moves: migrations.py).

    submit ─▶ QUEUED ─place─▶ STARTING ─agent.start─▶ RUNNING ─end─▶ DONE|FAILED|KILLED
              HELD ◀─hold/release─┘        │ agent.dump(stop) ─▶ STOPPED ─restart─┐
                                            └── node lost ─▶ RESTARTING ◀───────────┘

Agents do the work on their nodes; this module decides and keeps the record, so that
a coordinator restart loses no job (every state change is in the store first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar

from ssi.auth import is_admin
from ssi.cluster.events import NodeEvent, NodeEventKind, NodeEvents
from ssi.cluster.netpool import JobAddresses
from ssi.cluster.peers import Peers
from ssi.cluster.scheduling import Scheduling, check_request, request_text
from ssi.cluster.store import (
    JobRecord,
    JobState,
    NodeRecord,
    StateStore,
)
from ssi.config import Config
from ssi.proto import messages as m
from ssi.proto.errors import (
    BadRequest,
    Conflict,
    Denied,
    Internal,
    NotFound,
    SsiError,
    Timeout,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0


def state_of_exit(status: Mapping[str, Any]) -> JobState:
    if "signaled" in status:
        return JobState.KILLED
    return JobState.DONE if status.get("exited") == 0 else JobState.FAILED


class JobManager:
    HANDLERS: ClassVar[dict[str, str]] = {
        m.JobSubmit.op: "on_submit",
        m.JobSubmitBatch.op: "on_submit_batch",
        m.JobWaitAny.op: "on_wait_any",
        m.JobList.op: "on_list",
        m.JobShow.op: "on_show",
        m.JobWait.op: "on_wait",
        m.JobKill.op: "on_kill",
        m.JobSuspend.op: "on_suspend",
        m.JobResume.op: "on_resume",
        m.JobHold.op: "on_hold",
        m.JobRelease.op: "on_release",
        m.JobWhy.op: "on_why",
        m.JobEnded.op: "on_ended",
        m.JobsHere.op: "on_here",
        m.PolicyList.op: "on_policy_list",
        m.PolicyShow.op: "on_policy_show",
        m.PolicySet.op: "on_policy_set",
    }
    OPS = frozenset(HANDLERS)

    def __init__(
        self, cfg: Config, store: StateStore, events: NodeEvents, peers: Peers
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.peers = peers
        self.scheduling = Scheduling(cfg, store)
        self.addresses = JobAddresses(cfg, store)
        self.stats: dict[int, dict[str, Any]] = {}  # live figures from heartbeats
        self.load: dict[str, dict[str, float]] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._busy: set[int] = (
            set()
        )  # jobs with a checkpoint, restart or move under way
        self._tasks: set[asyncio.Task[Any]] = set()
        events.subscribe("scheduler", self.scheduling.node_event)
        events.subscribe("jobs", self.on_node_event)

    # --- plumbing ---------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {op: getattr(self, name) for op, name in self.HANDLERS.items()}

    def spawn(self, coro: Any) -> None:
        """Background work whose failure is logged, never lost silently."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background job work failed", exc_info=t.exception())

        task.add_done_callback(done)

    def start(self) -> None:
        """After a coordinator (re)start: queued jobs get placed again, and periodic
        checkpoints resume."""
        for job in self.store.jobs():
            if job.state in (JobState.QUEUED, JobState.STARTING):
                self.spawn(self._place_and_start(job, cause="coordinator start"))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _job(self, job_id: int) -> JobRecord:
        job = self.store.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id} (see `ssi ps -a`)")
        return job

    def _node(self, name: str) -> NodeRecord:
        rec = self.store.node(name)
        if rec is None:
            raise NotFound(f"no node named {name!r}")
        return rec

    def is_admin(self, uid: int | None, gid: int | None) -> bool:
        return is_admin(uid, gid, self.cfg.cluster.admin_group)

    def _owned(self, env: m.Envelope, job_id: int) -> JobRecord:
        job = self._job(job_id)
        if env.uid != job.uid and not self.is_admin(env.uid, env.gid):
            raise Denied(
                f"job {job_id} belongs to {job.user}; you may act only on your jobs"
            )
        return job

    def _save(self, job: JobRecord, event: str = "", **data: Any) -> JobRecord:
        job = self.store.put_job(job)
        if event:
            self.store.add_job_event(job.id, event, data)
        if job.state.ended:
            self.stats.pop(job.id, None)
            self.scheduling.job_done(job.id)
            for fut in self._waiters.pop(job.id, []):
                if not fut.done():
                    fut.set_result(None)
        return job

    def view(self, job: JobRecord) -> dict[str, Any]:
        out = asdict(job)
        out.pop("rev")
        live = self.stats.get(job.id, {})
        out["stats"] = live
        end = job.ended_at or time.time()
        out["runtime"] = end - job.started_at if job.started_at else 0.0
        return out

    # --- submission and start ---------------------------------------------------------

    def _check(self, body: m.JobSubmit) -> None:
        if not body.argv or not body.argv[0]:
            raise BadRequest("nothing to run: give a command after --")
        if not os.path.isabs(body.cwd):
            raise BadRequest(
                f"the working directory must be an absolute path, not {body.cwd!r}"
            )
        if body.ckpt_every < 0 or body.wall_limit < 0:
            raise BadRequest("--ckpt-every and time limits take seconds >= 0")
        if body.node:
            self._node(body.node)
        check_request(request_text(body.require, body.node))
        self.addresses.check(body)

    def _record(
        self, job_id: int, body: m.JobSubmit, env: m.Envelope, address: str = ""
    ) -> JobRecord:
        """A new job's record from what its submitter asked; uid and gid from the
        envelope, which the submitter's ssid filled from the socket's credentials."""
        assert env.uid is not None and env.gid is not None
        try:
            pw = pwd.getpwuid(env.uid)
            user, groups = pw.pw_name, os.getgrouplist(pw.pw_name, env.gid)
        except KeyError:
            user, groups = str(env.uid), [env.gid]
        name = body.name or os.path.basename(body.argv[0])
        spec = {
            "argv": list(body.argv),
            "name": name,
            "cwd": body.cwd,
            "env": dict(body.env),
            "uid": env.uid,
            "gid": env.gid,
            "groups": groups,
            "stdin": body.stdin or "/dev/null",
            "stdout": body.stdout or os.path.join(body.cwd, f"ssi-{job_id}.out"),
            "stderr": body.stderr or os.path.join(body.cwd, f"ssi-{job_id}.err"),
            "node": body.node,
            "wall_limit": body.wall_limit,
            "cluster_ipc": body.cluster_ipc,
        }
        if address:
            spec["net"] = {"address": address}
        return JobRecord(
            job_id,
            name,
            env.uid,
            env.gid,
            user,
            spec,
            body.require,
            state=JobState.HELD if body.hold else JobState.QUEUED,
            ckpt_every=body.ckpt_every,
            submit_node=env.sender,
            session=body.session,
        )

    async def on_submit(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobSubmit)
        return (await self._submit([body], env))[0]

    async def on_submit_batch(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        body = env.body
        assert isinstance(body, m.JobSubmitBatch)
        return await self._submit(body.jobs, env)

    async def _submit(
        self, bodies: list[m.JobSubmit], env: m.Envelope
    ) -> list[dict[str, Any]]:
        if env.uid is None or env.gid is None:
            raise BadRequest("a job needs the submitter's uid and gid")
        for body in bodies:
            self._check(body)  # all or none: a bad one refuses the whole batch
        addresses = self.addresses.assign(bodies)  # no await until they are stored
        ids = self.store.next_job_ids(len(bodies))
        jobs = self.store.put_jobs(
            [
                self._record(i, b, env, a)
                for i, b, a in zip(ids, bodies, addresses, strict=True)
            ]
        )
        for job in jobs:
            if job.state is JobState.QUEUED:
                self.spawn(self._place_and_start(job, cause=env.id))
        return [self.view(j) for j in jobs]

    async def _place_and_start(self, job: JobRecord, cause: str) -> None:
        current = self.store.job(job.id)
        if current is None or current.state is not job.state:
            return  # placed by another task meanwhile (submit vs retry), or cancelled
        job = current
        placement = self.scheduling.place(job)
        if placement.node is None:
            self._save(
                job.but(reason=placement.reason), "unplaced", reason=placement.reason
            )
            return  # stays queued; tried again when a node comes or frees up
        node = self._node(placement.node)
        job = self._save(
            job.but(state=JobState.STARTING, node=node.name, reason=placement.reason),
            "placed",
            node=node.name,
            policy=placement.policy,
            explanation=placement.explain(),
        )
        try:
            started = await self.peers.call(
                node,
                m.AgentStart(job=job.id, spec=job.spec),
                timeout=START_TIMEOUT,
                cause=cause,
            )
        except SsiError as e:
            self._fail_to_start(job, f"could not start on {node.name}: {e}")
            return
        started_at = started.get("started_at", time.time())
        current = self.store.job(job.id)
        if current is None or current.state is not JobState.STARTING:
            # It ended (or was killed) while the agent's answer was on its way: its
            # end is recorded already and must not be overwritten by RUNNING.
            if current is not None and current.started_at is None:
                self.store.put_job(current.but(started_at=started_at))
            return
        self._save(
            current.but(state=JobState.RUNNING, started_at=started_at),
            "started",
            node=node.name,
            pid=started.get("pid"),
        )

    def _fail_to_start(self, job: JobRecord, why: str) -> None:
        log.warning("job %d: %s", job.id, why)
        self._save(
            job.but(
                state=JobState.FAILED,
                reason=why,
                ended_at=time.time(),
                exit={"aborted": True, "error": why},
            ),
            "aborted",
            reason=why,
        )

    async def retry_queued(self) -> None:
        for job in self.store.jobs():
            if job.state is JobState.QUEUED:
                await self._place_and_start(job, cause="retry")

    # --- reports from agents ----------------------------------------------------------

    async def on_ended(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobEnded)
        job = self.store.job(body.job)
        if job is None or job.state.ended or job.node != body.node:
            return {"ack": True, "stale": True}  # e.g. a copy that was moved away
        if job.state is JobState.STOPPED:
            return {"ack": True}  # the end of the dumped original: not the job's end
        status = dict(body.status)
        state = state_of_exit(status)
        if status.get("aborted"):
            state = JobState.FAILED
        reason = (
            status.get("setup_error")
            or status.get("exec_error")
            or (
                f"exited {status['exited']}"
                if "exited" in status
                else f"killed by signal {status.get('signaled')}"
            )
        )
        self._save(
            job.but(
                state=state,
                exit=status,
                ended_at=status.get("ended", time.time()),
                reason=reason,
            ),
            "ended",
            node=body.node,
            status=status,
        )
        self.spawn(self.retry_queued())
        return {"ack": True}

    async def on_here(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        """A (re)started agent lists its running jobs: those the cluster moved away in
        the meantime must not run twice."""
        body = env.body
        assert isinstance(body, m.JobsHere)
        kill, resume = [], []
        for job_id in body.running:
            job = self.store.job(job_id)
            if (
                job is None
                or job.state.ended
                or job.node != body.node
                or job.state is JobState.STOPPED
            ):
                kill.append(job_id)
            elif job.state is JobState.RUNNING:
                # Frozen by a move its restart cut short: the target's copy (recorded
                # here, agent.keep lost) or a source's (thawed by no settle).
                resume.append(job_id)
        return {"kill": kill, "resume": resume}

    def on_heartbeat_jobs(
        self,
        node: str,
        jobs: Mapping[str, Mapping[str, Any]],
        load: Mapping[str, float],
    ) -> None:
        self.load[node] = dict(load)
        for key, figures in jobs.items():
            self.stats[int(key)] = dict(figures)
        self.scheduling.jobs_seen(node, jobs)

    # --- reading ----------------------------------------------------------------------

    async def on_list(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        body = env.body
        assert isinstance(body, m.JobList)
        jobs = self.store.jobs(ended=body.all or bool(body.ids))
        if body.user is not None:
            jobs = [j for j in jobs if j.uid == body.user]
        if body.session:
            jobs = [j for j in jobs if j.session == body.session]
        if body.ids:
            wanted = set(body.ids)
            jobs = [j for j in jobs if j.id in wanted]
        return [self.view(j) for j in jobs]

    async def on_show(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobShow)
        job = self._job(body.job)
        out = self.view(job)
        out["events"] = self.store.job_events(job.id)
        out["checkpoints"] = [asdict(c) for c in self.store.checkpoints(job.id)]
        return out

    async def on_why(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobWhy)
        job = self._job(body.job)
        events = self.store.job_events(job.id)
        return {
            "job": job.id,
            "state": job.state.value,
            "reason": job.reason,
            "scheduler": self.scheduling.why(job.id),
            "events": events[-10:],
        }

    # --- ssi policy -------------------------------------------------------------------

    async def on_policy_list(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        return self.scheduling.policies()

    async def on_policy_show(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        return self.scheduling.show()

    async def on_policy_set(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.PolicySet)
        if not self.is_admin(env.uid, env.gid):
            raise Denied("only an admin may switch the cluster's policy")
        return self.scheduling.set_policy(body.name, body.params)

    async def on_wait(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobWait)
        self._job(body.job)
        done = await self._wait_any([body.job], body.timeout)
        assert done is not None
        return done

    async def on_wait_any(self, env: m.Envelope, peer: Any) -> dict[str, Any] | None:
        body = env.body
        assert isinstance(body, m.JobWaitAny)
        for job_id in body.jobs:
            self._job(job_id)
        return await self._wait_any(body.jobs, body.timeout)

    async def _wait_any(
        self, ids: list[int], timeout: float | None
    ) -> dict[str, Any] | None:
        """The first of `ids` to have ended (at once if one has), Timeout else."""
        if not ids:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            for job_id in ids:
                job = self._job(job_id)
                if job.state.ended:
                    return self.view(job)
                self._waiters.setdefault(job_id, []).append(fut)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except TimeoutError:
                what = f"job {ids[0]}" if len(ids) == 1 else f"none of {len(ids)} jobs"
                raise Timeout(f"{what} ended within {timeout:g}s") from None
            for job_id in ids:
                job = self._job(job_id)
                if job.state.ended:
                    return self.view(job)
            raise Internal("woken by a job that had not ended")
        finally:
            for job_id in ids:
                waiters = self._waiters.get(job_id, [])
                if fut in waiters:
                    waiters.remove(fut)

    # --- control ----------------------------------------------------------------------

    async def _on_node(self, job: JobRecord, body: m.Request[Any], cause: str) -> Any:
        if not job.state.live or not job.node:
            raise Conflict(f"job {job.id} is {job.state.value}: it runs nowhere")
        return await self.peers.call(
            self._node(job.node), body, timeout=30.0, cause=cause
        )

    async def on_kill(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobKill)
        job = self._owned(env, body.job)
        if job.state in (JobState.QUEUED, JobState.HELD, JobState.STOPPED):
            job = self._save(
                job.but(
                    state=JobState.KILLED,
                    ended_at=time.time(),
                    reason=f"cancelled by uid {env.uid}",
                    exit={"aborted": True, "cancelled": True},
                ),
                "cancelled",
                by=env.uid,
            )
            return self.view(job)
        await self._on_node(job, m.AgentSignal(job=job.id, signal=body.signal), env.id)
        self.store.add_job_event(
            job.id, "signal", {"signal": body.signal, "by": env.uid}
        )
        return self.view(job)

    async def _freeze(
        self, env: m.Envelope, job_id: int, frozen: bool
    ) -> dict[str, Any]:
        job = self._owned(env, job_id)
        want_from = JobState.RUNNING if frozen else JobState.SUSPENDED
        if job.state is not want_from:
            raise Conflict(f"job {job.id} is {job.state.value}, not {want_from.value}")
        await self._on_node(job, m.AgentFreeze(job=job.id, frozen=frozen), env.id)
        state = JobState.SUSPENDED if frozen else JobState.RUNNING
        return self.view(self._save(job.but(state=state), state.value, by=env.uid))

    async def on_suspend(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobSuspend)
        return await self._freeze(env, body.job, True)

    async def on_resume(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobResume)
        return await self._freeze(env, body.job, False)

    async def on_hold(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobHold)
        job = self._owned(env, body.job)
        if job.state is not JobState.QUEUED:
            raise Conflict(
                f"job {job.id} is {job.state.value}: only queued jobs can be held"
            )
        return self.view(self._save(job.but(state=JobState.HELD), "held", by=env.uid))

    async def on_release(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.JobRelease)
        job = self._owned(env, body.job)
        if job.state is not JobState.HELD:
            raise Conflict(f"job {job.id} is {job.state.value}, not held")
        job = self._save(job.but(state=JobState.QUEUED), "released", by=env.uid)
        self.spawn(self._place_and_start(job, cause=env.id))
        return self.view(job)

    # --- node events ------------------------------------------------------------------

    async def on_node_event(self, event: NodeEvent) -> None:
        if event.kind in (
            NodeEventKind.ADDED,
            NodeEventKind.RESUMED,
            NodeEventKind.RETURNED,
        ):
            self.spawn(self.retry_queued())
