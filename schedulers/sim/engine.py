"""The simulator: a discrete-event cluster driven through the real Scheduler.

Nodes share their CPUs among their jobs (processor sharing: a job gets
speed x min(1, CPUs / CPUs demanded) of its own pace) and their disk among I/O-bound
jobs (a job spending share f of its time on disk is slowed by (1 - f) + f / max(1,
total f)). Node failures come from an availability trace: a failed node's jobs
restart elsewhere from their last checkpoint (every checkpoint_period seconds of
work) or from zero; the trace before t = 0 (the warm-up) only feeds the availability
history, so availability-aware placement has something to learn from. Every
`rebalance_every` seconds the policy may migrate: a migrating job makes no progress
for the decision's cost (or fixed + rss / bandwidth) and then runs on its target.

Example: Simulation(nodes, jobs, trace, policy="mosix").run() -> SimResult with
makespan, mean slowdown, migrations, interruptions (jobs hit by a failure), work
lost, and the lower bound total work / total capacity. Same seed, same result.
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from schedulers.availability import AvailabilityModel
from schedulers.cluster import ClusterView
from schedulers.request import parse_request
from schedulers.scheduler import Scheduler
from schedulers.sim.traces import Trace
from schedulers.sim.workload import JobSpec, NodeSpec
from schedulers.views import (
    JobRequest,
    NodeEvent,
    NodeEventKind,
    NodeState,
    NodeView,
)

ARRIVE, COMPLETE, DOWN, UP, TICK, LANDED = range(6)


@dataclass
class _Job:
    spec: JobSpec
    remaining: float
    node: str | None = None
    rate: float = 0.0
    last: float = 0.0
    version: int = 0
    done_at: float | None = None
    restarts: int = 0
    migrations: int = 0
    in_flight: tuple[str, str] | None = None  # (source, target) while migrating

    @property
    def done_work(self) -> float:
        return self.spec.work - self.remaining


@dataclass
class _Node:
    spec: NodeSpec
    up: bool = True
    up_since: float = 0.0
    jobs: dict[str, _Job] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimResult:
    policy: str
    nodes: int
    jobs: int
    completed: int
    makespan: float
    mean_slowdown: float
    p95_slowdown: float
    migrations: int
    interruptions: int  # job runs cut by a node failure
    work_lost: float  # seconds of work redone after failures
    lower_bound: float  # total work / total capacity
    critical_bound: float  # latest arrival + work on the fastest node, from the first
    place_us_mean: float
    place_us_p99: float
    wall_seconds: float
    unplaced: int  # jobs never placed (nothing fits)


class Simulation:
    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        jobs: Sequence[JobSpec],
        trace: Trace = (),  # type: ignore[assignment]
        *,
        policy: str = "least_loaded",
        params: Mapping[str, object] | None = None,
        rebalance_every: float = 2.0,
        bandwidth: float = 1e9,
        migration_fixed: float = 1.0,
        max_time: float = math.inf,
    ) -> None:
        self.specs = {n.name: n for n in nodes}
        self.nodes = {n.name: _Node(n) for n in nodes}
        self.job_specs = list(jobs)
        self.jobs: dict[str, _Job] = {}
        self.trace = list(trace)
        self.rebalance_every = rebalance_every
        self.bandwidth = bandwidth
        self.migration_fixed = migration_fixed
        self.max_time = max_time
        self.policy_name = policy
        self.params = dict(params or {})
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = itertools.count()
        self._queue: list[str] = []
        self._place_times: list[float] = []
        self.migrations = 0
        self.interruptions = 0
        self.work_lost = 0.0
        self.now = 0.0
        self._max_speed = max((n.speed for n in nodes), default=1.0)
        self._requests: dict[str, JobRequest] = {}

    # --- plumbing -----------------------------------------------------------------

    def _push(self, t: float, kind: int, key: str = "", version: int = 0) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), key, version))

    def _view(self, node: _Node) -> NodeView:
        s = node.spec
        demand = sum(j.spec.cpus for j in node.jobs.values())
        io = sum(j.spec.io for j in node.jobs.values())
        mem = sum(j.spec.mem for j in node.jobs.values())
        return NodeView(
            name=s.name,
            state=NodeState.ONLINE if node.up else NodeState.LOST,
            cpus=s.cpus,
            cpu_speed=s.speed,
            load=float(demand),
            background_load=0.0,
            mem_total=s.mem,
            mem_free=s.mem - mem,
            io_busy=min(1.0, io),
            io_pressure=min(100.0, max(0.0, io - 1.0) * 100.0),
            labels=s.labels,
            up_since=node.up_since,
            sampled_at=self.now,
        )

    def _refresh(self, name: str) -> None:
        """Brings a node's jobs up to now, recomputes their rates and completions,
        and publishes the node's view."""
        node = self.nodes[name]
        now = self.now
        demand = sum(j.spec.cpus for j in node.jobs.values())
        io_total = sum(j.spec.io for j in node.jobs.values())
        share = node.spec.speed * min(1.0, node.spec.cpus / demand) if demand else 0.0
        for job in node.jobs.values():
            job.remaining = max(0.0, job.remaining - job.rate * (now - job.last))
            job.last = now
            f = job.spec.io
            io_factor = (1.0 - f) + f / max(1.0, io_total) if f else 1.0
            job.rate = share * io_factor
            job.version += 1
            self._push(
                now + job.remaining / job.rate, COMPLETE, job.spec.id, job.version
            )
        self.sched.cluster.upsert_node(self._view(node))

    def _request(self, spec: JobSpec) -> JobRequest:
        req = self._requests.get(spec.id)
        if req is None:
            req = JobRequest(spec.id, parse_request(spec.request_text()), spec.arrival)
            self._requests[spec.id] = req
        return req

    def _try_place(self, job: _Job) -> bool:
        req = self._request(job.spec)
        t0 = time.perf_counter()
        placement = self.sched.place(req, self.now)
        self._place_times.append(time.perf_counter() - t0)
        if placement.node is None:
            return False
        # The job's view carries what the simulator knows of it (rss for costs).
        cl = self.sched.cluster
        cl.upsert_job(
            replace(cl.jobs[job.spec.id], rss=job.spec.rss, io_bps=job.spec.io * 1e8)
        )
        self._start(job, placement.node)
        return True

    def _start(self, job: _Job, node: str) -> None:
        job.node = node
        job.last = self.now
        job.rate = 0.0
        self.nodes[node].jobs[job.spec.id] = job
        self._refresh(node)

    def _drain_queue(self, budget: int = 8, misses: int = 2) -> None:
        """Retries waiting jobs in order (a few, with a little backfilling: up to
        `misses` that still fit nowhere are stepped over)."""
        kept: list[str] = []
        missed = 0
        for i, jid in enumerate(self._queue):
            if i >= budget or missed >= misses:
                kept += self._queue[i:]
                break
            if not self._try_place(self.jobs[jid]):
                kept.append(jid)
                missed += 1
        self._queue = kept

    # --- events ---------------------------------------------------------------------

    def _arrive(self, jid: str) -> None:
        job = self.jobs[jid]
        if not self._try_place(job):
            self._queue.append(jid)

    def _complete(self, jid: str, version: int) -> None:
        job = self.jobs[jid]
        if job.version != version or job.node is None or job.in_flight:
            return
        node = job.node
        del self.nodes[node].jobs[jid]
        job.remaining = 0.0
        job.done_at = self.now
        job.node = None
        self.sched.job_finished(jid)
        self._refresh(node)
        self._drain_queue()

    def _lose(self, job: _Job) -> None:
        """A failure killed this run of the job: back to its last checkpoint."""
        p = job.spec.checkpoint_period
        kept = math.floor(job.done_work / p) * p if p else 0.0
        self.work_lost += job.done_work - kept
        job.remaining = job.spec.work - kept
        job.restarts += 1
        job.version += 1
        job.node = None
        job.in_flight = None
        self.interruptions += 1
        self.sched.job_finished(job.spec.id)
        self._queue.insert(0, job.spec.id)

    def _down(self, name: str) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        for job in list(node.jobs.values()):
            job.remaining = max(0.0, job.remaining - job.rate * (self.now - job.last))
            job.last = self.now
        victims = list(node.jobs.values())
        victims += [
            j for j in self.jobs.values() if j.in_flight and name in j.in_flight
        ]
        node.jobs.clear()
        node.up = False
        self.sched.node_event(NodeEvent(NodeEventKind.LOST, name, self.now, "trace"))
        self.sched.cluster.upsert_node(self._view(node))
        for job in victims:
            self._lose(job)
        self._drain_queue()

    def _up(self, name: str) -> None:
        node = self.nodes[name]
        if node.up:
            return
        node.up = True
        node.up_since = self.now
        self.sched.node_event(
            NodeEvent(NodeEventKind.RETURNED, name, self.now, "trace")
        )
        self.sched.cluster.upsert_node(self._view(node))
        self._drain_queue()

    def _tick(self) -> None:
        plan = self.sched.rebalance(self.now)
        for d in plan.migrations:
            job = self.jobs.get(d.job)
            if job is None or job.node != d.source or job.in_flight:
                self.sched.migration_result(d, False, self.now)
                continue
            src = self.nodes[d.source]
            job.remaining = max(0.0, job.remaining - job.rate * (self.now - job.last))
            job.last = self.now
            del src.jobs[job.spec.id]
            job.in_flight = (d.source, d.target)
            job.version += 1
            job.node = d.target
            cost = d.cost or self.migration_fixed + job.spec.rss / self.bandwidth
            self._push(self.now + cost, LANDED, job.spec.id, job.version)
            self._refresh(d.source)
            self.migrations += 1
            job.migrations += 1
        if self._unfinished():
            self._push(self.now + self.rebalance_every, TICK)

    def _landed(self, jid: str, version: int) -> None:
        job = self.jobs[jid]
        if job.in_flight is None or job.version != version:
            return
        target = job.in_flight[1]
        job.in_flight = None
        if not self.nodes[target].up:
            self._lose(job)
            return
        self._start(job, target)

    def _unfinished(self) -> bool:
        return self._done < len(self.jobs)

    # --- run --------------------------------------------------------------------------

    def run(self) -> SimResult:
        wall = time.perf_counter()
        model = AvailabilityModel()
        cluster = ClusterView(model)
        for name in self.nodes:
            model.record_kind(name, NodeEventKind.ADDED, min(0.0, self._first_event()))
        for t, name, kind in self.trace:  # warm-up: history only
            if t >= 0:
                break
            model.record_kind(name, kind, t)
        self.sched = Scheduler(
            cluster, self.policy_name, self.params, explain_all_up_to=0
        )
        for name, node in self.nodes.items():
            h = model.history(name)
            node.up = h.up_since is not None
            node.up_since = h.up_since if h.up_since is not None else 0.0
            cluster.upsert_node(self._view(node))
        for spec in self.job_specs:
            self.jobs[spec.id] = _Job(spec, remaining=spec.work)
            self._push(spec.arrival, ARRIVE, spec.id)
        for t, name, kind in self.trace:
            if t >= 0:
                self._push(t, DOWN if kind is NodeEventKind.LOST else UP, name)
        self._push(0.0, TICK)
        self._done = 0
        while self._events and self._done < len(self.jobs):
            t, what, _, key, version = heapq.heappop(self._events)
            if t > self.max_time:
                break
            self.now = t
            if what == ARRIVE:
                self._arrive(key)
            elif what == COMPLETE:
                before = self.jobs[key].done_at
                self._complete(key, version)
                if before is None and self.jobs[key].done_at is not None:
                    self._done += 1
            elif what == DOWN:
                self._down(key)
            elif what == UP:
                self._up(key)
            elif what == TICK:
                self._tick()
            elif what == LANDED:
                self._landed(key, version)
        return self._result(time.perf_counter() - wall)

    def _first_event(self) -> float:
        return min((t for t, _, _ in self.trace), default=0.0)

    def _result(self, wall: float) -> SimResult:
        done = [j for j in self.jobs.values() if j.done_at is not None]
        first = min((j.spec.arrival for j in self.jobs.values()), default=0.0)
        makespan = max((j.done_at or 0.0 for j in done), default=0.0) - first
        slowdowns = sorted(
            (j.done_at - j.spec.arrival) / max(j.spec.work / self._max_speed, 10.0)
            for j in done
            if j.done_at is not None
        )
        capacity = sum(n.cpus * n.speed for n in self.specs.values())
        total_work = sum(j.work * j.cpus for j in self.job_specs)
        times = sorted(self._place_times)
        return SimResult(
            policy=self.policy_name,
            nodes=len(self.nodes),
            jobs=len(self.jobs),
            completed=len(done),
            makespan=makespan,
            mean_slowdown=statistics.fmean(slowdowns) if slowdowns else math.nan,
            p95_slowdown=slowdowns[int(0.95 * (len(slowdowns) - 1))]
            if slowdowns
            else math.nan,
            migrations=self.migrations,
            interruptions=self.interruptions,
            work_lost=self.work_lost,
            lower_bound=total_work / capacity if capacity else math.nan,
            critical_bound=max(
                (j.arrival + j.work / self._max_speed for j in self.job_specs),
                default=first,
            )
            - first,
            place_us_mean=statistics.fmean(times) * 1e6 if times else 0.0,
            place_us_p99=times[int(0.99 * (len(times) - 1))] * 1e6 if times else 0.0,
            wall_seconds=wall,
            unplaced=len(self._queue),
        )
