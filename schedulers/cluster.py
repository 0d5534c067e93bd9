"""ClusterView: what policies see of the cluster, kept up to date in place, indexed.

The coordinator (or the simulator) owns one and feeds it: node reports (upsert_node),
job records (upsert_job / remove_job), placements and migrations as they are decided
(note_placement, move_job), node events (apply_event, which also feeds availability
history). Policies only read it. Every change to what a node looks like appends the
node's name to a change log, so a policy's index catches up in O(changes) instead of
rescanning 10,000 nodes per decision.

Example: upsert_node(NodeView("n1", cpus=4)); note_placement("j1", "n1", cpus=1,
mem=2G) -> load("n1") is 1.0 at once, mem_free("n1") 2G lower, until n1's next report
(which already counts the job) clears the pending part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from schedulers.availability import AvailabilityModel, NodeAvailability, NodeHistory
from schedulers.request import Request
from schedulers.views import JobView, NodeEvent, NodeEventKind, NodeState, NodeView

_STATE_AFTER = {
    NodeEventKind.ADDED: NodeState.ONLINE,
    NodeEventKind.RESUMED: NodeState.ONLINE,
    NodeEventKind.RETURNED: NodeState.ONLINE,
    NodeEventKind.DRAINING: NodeState.DRAINING,
    NodeEventKind.EVICTED: NodeState.EVICTING,
    NodeEventKind.LOST: NodeState.LOST,
}


class ClusterView:
    def __init__(self, availability: AvailabilityModel | None = None) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.jobs: dict[str, JobView] = {}
        self.availability = availability or AvailabilityModel()
        self._jobs_on: dict[str, dict[str, JobView]] = {}
        self._demand: dict[str, float] = {}
        self._reserved_mem: dict[str, int] = {}
        self._pending_cpu: dict[str, float] = {}
        self._pending_mem: dict[str, int] = {}
        self._labels: dict[str, set[str]] = {}
        self._group_nodes: dict[str, dict[str, int]] = {}
        self._log: list[str] = []
        self._log_base = 0  # sequence number of _log[0]
        self.membership_version = 0  # bumps when nodes come, go or change state

    # --- change log ----------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._log_base + len(self._log)

    def changes_since(self, seq: int) -> list[str] | None:
        """Nodes changed since `seq` (repeats possible), or None if the log was
        compacted past it and the caller must rebuild from scratch."""
        if seq < self._log_base:
            return None
        return self._log[seq - self._log_base :]

    def _touch(self, name: str) -> None:
        self._log.append(name)
        if len(self._log) > 4 * len(self.nodes) + 1024:
            # Keep the newest half: laggards further behind rebuild.
            cut = len(self._log) // 2
            self._log_base += cut
            del self._log[:cut]

    # --- nodes ------------------------------------------------------------------------

    def upsert_node(self, view: NodeView) -> None:
        """A fresh report: replaces the node's view; its probes now count what was
        pending there."""
        old = self.nodes.get(view.name)
        self.nodes[view.name] = view
        self._pending_cpu.pop(view.name, None)
        self._pending_mem.pop(view.name, None)
        if old is None or old.labels != view.labels:
            if old is not None:
                for lab in old.labels:
                    self._labels.get(lab, set()).discard(view.name)
            for lab in view.labels:
                self._labels.setdefault(lab, set()).add(view.name)
        if old is None or old.state != view.state:
            self.membership_version += 1
        self._jobs_on.setdefault(view.name, {})
        self._touch(view.name)

    def set_state(self, name: str, state: NodeState) -> None:
        view = self.nodes.get(name)
        if view is not None and view.state != state:
            self.nodes[name] = replace(view, state=state)
            self.membership_version += 1
            self._touch(name)

    def remove_node(self, name: str) -> None:
        view = self.nodes.pop(name, None)
        if view is None:
            return
        for lab in view.labels:
            self._labels.get(lab, set()).discard(name)
        self._pending_cpu.pop(name, None)
        self._pending_mem.pop(name, None)
        self.membership_version += 1
        self._touch(name)

    def apply_event(self, event: NodeEvent) -> None:
        """Records availability history and moves the node's state."""
        self.availability.record(event)
        state = _STATE_AFTER.get(event.kind)
        if state is not None:
            self.set_state(event.node, state)
        if event.node in self.nodes:
            self._touch(event.node)  # its availability figures moved

    def with_label(self, label: str) -> set[str]:
        return self._labels.get(label, set())

    def online(self) -> Iterator[NodeView]:
        return (v for v in self.nodes.values() if v.state is NodeState.ONLINE)

    # --- jobs -------------------------------------------------------------------------

    def upsert_job(self, job: JobView) -> None:
        old = self.jobs.get(job.id)
        if old is not None:
            self._unaccount(old)
        self.jobs[job.id] = job
        self._account(job)

    def remove_job(self, job_id: str) -> JobView | None:
        old = self.jobs.pop(job_id, None)
        if old is not None:
            self._unaccount(old)
        return old

    def move_job(self, job_id: str, target: str, now: float) -> JobView | None:
        """Records a migration decided (or done): the job counts on target at once."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        moved = replace(job, node=target, last_migrated_at=now)
        self.upsert_job(moved)
        return moved

    def note_placement(
        self,
        job_id: str,
        node: str,
        *,
        cpus: int = 1,
        mem: int = 0,
        now: float = 0.0,
        group: str | None = None,
        migratable: bool = True,
        expected_runtime: float | None = None,
        request: Request | None = None,
    ) -> JobView:
        """Records a placement before any probe has seen the job."""
        self.reserve(node, cpus, mem)
        job = JobView(
            id=job_id,
            node=node,
            cpus=cpus,
            mem=mem,
            cpu_demand=float(cpus),
            started_at=now,
            group=group,
            migratable=migratable,
            expected_runtime=expected_runtime,
            request=request,
        )
        self.upsert_job(job)
        return job

    def _account(self, job: JobView) -> None:
        n = job.node
        self._jobs_on.setdefault(n, {})[job.id] = job
        self._demand[n] = self._demand.get(n, 0.0) + job.cpu_demand
        self._reserved_mem[n] = self._reserved_mem.get(n, 0) + job.mem
        if job.group is not None:
            g = self._group_nodes.setdefault(job.group, {})
            g[n] = g.get(n, 0) + 1
        self._touch(n)

    def _unaccount(self, job: JobView) -> None:
        n = job.node
        on = self._jobs_on.get(n)
        if on is not None:
            on.pop(job.id, None)
        self._demand[n] = self._demand.get(n, 0.0) - job.cpu_demand
        if not on:
            self._demand[n] = 0.0  # no float dust on an empty node
        self._reserved_mem[n] = self._reserved_mem.get(n, 0) - job.mem
        if job.group is not None:
            g = self._group_nodes.get(job.group, {})
            g[n] = g.get(n, 1) - 1
            if g[n] <= 0:
                g.pop(n, None)
            if not g:
                self._group_nodes.pop(job.group, None)
        self._touch(n)

    def jobs_on(self, node: str) -> list[JobView]:
        return list(self._jobs_on.get(node, {}).values())

    def job_count(self, node: str) -> int:
        return len(self._jobs_on.get(node, ()))

    # --- derived node figures -----------------------------------------------------

    def demand(self, node: str) -> float:
        """Sum of the CPU demand of the jobs known on the node."""
        return max(0.0, self._demand.get(node, 0.0))

    def load(self, node: str, source: str = "jobs") -> float:
        """Run-queue length a policy should assume: source "jobs" = background load +
        demand of ssi jobs (reacts at once to placements and migrations); "node" = the
        probe's whole-machine load + placements it has not seen yet."""
        v = self.nodes[node]
        if source == "node":
            return v.load + self._pending_cpu.get(node, 0.0)
        return v.background_load + self.demand(node)

    def norm_load(self, node: str, source: str = "jobs") -> float:
        v = self.nodes[node]
        return self.load(node, source) / max(v.capacity, 1e-9)

    def mem_free(self, node: str) -> int:
        """Memory a new job can have: the probe's free memory minus placements made
        since the report, and never more than total minus the jobs' reservations
        (a report may come before a job has touched its memory)."""
        v = self.nodes[node]
        probe = v.mem_free - self._pending_mem.get(node, 0)
        if v.mem_total <= 0:
            return probe
        return min(probe, v.mem_total - self._reserved_mem.get(node, 0))

    def reserve(self, node: str, cpus: float, mem: int) -> None:
        """Counts a placement against the node's probe values until its next report."""
        self._pending_cpu[node] = self._pending_cpu.get(node, 0.0) + cpus
        self._pending_mem[node] = self._pending_mem.get(node, 0) + mem
        self._touch(node)

    def p_up(self, node: str, horizon: float, now: float) -> float:
        return self.availability.p_up(node, horizon, now)

    def history(self, node: str) -> NodeHistory:
        """The node's up/down intervals (NodeHistory.to_dict() to persist them)."""
        return self.availability.history(node)

    def availability_of(self, node: str, now: float) -> NodeAvailability:
        """Failures, MTBF, uptime share, fitted shape, correlation group."""
        return self.availability.describe(node, now)

    def group_nodes(self, group: str) -> dict[str, int]:
        """Nodes hosting jobs of a group, with how many each."""
        return self._group_nodes.get(group, {})
