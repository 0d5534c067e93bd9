"""Scheduler: the one object the coordinator (and the simulator) drives. Sans-IO.

It owns the ClusterView and the active policy, switches policy at run time, records
every decision per job for `ssi why`, and keeps the view consistent with what was
decided (placements noted at once, migrations undone in the view when they fail).

    coordinator                          Scheduler
    node report ------------------------> cluster.upsert_node(NodeView)
    node event  ------------------------> node_event(ev) -> [MigrationDecision]
    submit      ------------------------> place(JobRequest, now) -> Placement
    timer (1 s) ------------------------> rebalance(now) -> RebalancePlan
    migration done/failed --------------> migration_result(decision, ok, now)
    job ended   ------------------------> job_finished(job_id)
    ssi policy list|show|set -----------> policies() | show() | set_policy(name, params)
    ssi why J   ------------------------> why(J) -> text   (why_data(J) -> dict)

Example: s = Scheduler(); s.set_policy("mosix", {"interval": "5s"}); p = s.place(
JobRequest("7", parse_request("cpus>=2")), now=t); p.node -> "node2"; s.why("7") ->
the placement's explanation, then what the last balancing round said about job 7.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

from schedulers.api import GROUP_POLICIES, Policy, summary
from schedulers.cluster import ClusterView
from schedulers.decisions import MigrationDecision, Placement, RebalancePlan
from schedulers.loader import PluginInfo, discover, load
from schedulers.params import ParamInfo
from schedulers.views import JobRequest, NodeEvent

WHY_KEPT = 20_000  # jobs whose last decisions are kept for `ssi why`


@dataclass
class JobRecord:
    placement: Placement | None = None
    migration: MigrationDecision | None = None  # the last one decided
    migration_ok: bool | None = None
    note: str | None = None  # what the last round that considered it said
    note_at: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyDescription:
    name: str
    summary: str
    doc: str
    params: tuple[ParamInfo, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Scheduler:
    def __init__(
        self,
        cluster: ClusterView | None = None,
        policy: str = "least_loaded",
        params: Mapping[str, object] | None = None,
        *,
        now: float = 0.0,
        factory: Callable[[str], type] | None = None,
        explain_all_up_to: int | None = None,
    ) -> None:
        """factory(name) -> policy class; default: the `ssi.policies` entry points.
        explain_all_up_to: clusters up to this size get every node examined and
        explained at each placement (default: the policy's, 64)."""
        self.explain_all_up_to = explain_all_up_to
        self.cluster = cluster if cluster is not None else ClusterView()
        self._factory = factory or (lambda name: load(GROUP_POLICIES, name))
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self.last_plan: RebalancePlan | None = None
        self.policy: Policy = self._make(policy, params or {})
        self.policy.start(self.cluster, now)

    # --- policies -----------------------------------------------------------------

    def _make(self, name: str, params: Mapping[str, object]) -> Policy:
        cls = self._factory(name)
        inst = cls()
        if params:
            inst.configure(**params)
        assert isinstance(inst, Policy)
        if self.explain_all_up_to is not None and hasattr(inst, "full_explain_nodes"):
            inst.full_explain_nodes = self.explain_all_up_to
        return inst

    @property
    def policy_name(self) -> str:
        return self.policy.name

    @staticmethod
    def policies() -> list[PluginInfo]:
        """`ssi policy list`: every installed policy, broken ones with their error."""
        return sorted(discover(GROUP_POLICIES).values(), key=lambda i: i.name)

    def set_policy(
        self, name: str, params: Mapping[str, object] | None = None, now: float = 0.0
    ) -> PolicyDescription:
        """`ssi policy set NAME k=v...`: the same policy is reconfigured (unnamed
        parameters keep their values); another one starts from its defaults. Raises
        PluginError / ParamError and keeps the current policy when anything is wrong.
        """
        params = dict(params or {})
        if name == self.policy.name:
            self.policy.configure(**params)  # validates everything before applying
            return self.show()
        new = self._make(name, params)
        self.policy.stop()
        self.policy = new
        new.start(self.cluster, now)
        return self.show()

    def show(self) -> PolicyDescription:
        """`ssi policy show`: name, summary, algorithm, parameters and values."""
        doc = _module_doc(self.policy)
        return PolicyDescription(
            self.policy.name,
            summary(self.policy),
            doc,
            tuple(self.policy.describe_params()),
        )

    # --- decisions ------------------------------------------------------------------

    def _record(self, job: str) -> JobRecord:
        rec = self._records.get(job)
        if rec is None:
            rec = self._records[job] = JobRecord()
            if len(self._records) > WHY_KEPT:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(job)
        return rec

    def place(self, job: JobRequest, now: float, *, commit: bool = True) -> Placement:
        """Chooses a node; with commit (the default) the job counts there at once."""
        placement = self.policy.place(job, self.cluster, now)
        self._record(job.id).placement = placement
        if commit and placement.node is not None:
            self.cluster.note_placement(
                job.id,
                placement.node,
                cpus=job.cpus,
                mem=job.mem,
                now=now,
                group=job.group,
                migratable=job.request.migratable,
                expected_runtime=job.expected_runtime,
                request=job.request,
            )
        return placement

    def rebalance(self, now: float) -> RebalancePlan:
        plan = self.policy.rebalance(self.cluster, now)
        self.last_plan = plan
        for d in plan.migrations:
            rec = self._record(d.job)
            rec.migration, rec.migration_ok = d, None
            rec.note, rec.note_at = f"migrating: {d.reason}", now
        for n in plan.notes:
            rec = self._record(n.job)
            rec.note, rec.note_at = n.note, now
        return plan

    def node_event(self, event: NodeEvent) -> list[MigrationDecision]:
        """Applies a node event; returns the migrations the policy wants for it
        (e.g. its jobs' new homes when a node is evicted)."""
        self.cluster.apply_event(event)
        decisions = self.policy.on_node_event(event, self.cluster, event.at)
        for d in decisions:
            rec = self._record(d.job)
            rec.migration, rec.migration_ok = d, None
            rec.note, rec.note_at = f"migrating: {d.reason}", event.at
        return decisions

    def migration_result(
        self, decision: MigrationDecision, ok: bool, now: float
    ) -> None:
        """Reports what became of a migration; a failed one puts the job back."""
        if not ok and decision.job in self.cluster.jobs:
            job = self.cluster.jobs[decision.job]
            if job.node == decision.target:
                self.cluster.upsert_job(replace(job, node=decision.source))
        rec = self._record(decision.job)
        if rec.migration == decision:
            rec.migration_ok = ok
        self.policy.on_migration_result(decision, ok, now)

    def job_finished(self, job_id: str) -> None:
        self.cluster.remove_job(job_id)

    # --- ssi why --------------------------------------------------------------------

    def why_data(self, job_id: str) -> dict[str, object] | None:
        rec = self._records.get(job_id)
        if rec is None:
            return None
        return {
            "placement": rec.placement.to_dict() if rec.placement else None,
            "migration": rec.migration.to_dict() if rec.migration else None,
            "migration_ok": rec.migration_ok,
            "note": rec.note,
            "note_at": rec.note_at,
            "policy": self.policy.name,
        }

    def why(self, job_id: str) -> str:
        rec = self._records.get(job_id)
        if rec is None:
            if job_id not in self.cluster.jobs:
                return f"job {job_id}: no scheduling decision recorded"
            rec = JobRecord()
        lines = []
        if rec.placement is None:
            node = (
                self.cluster.jobs[job_id].node if job_id in self.cluster.jobs else "?"
            )
            lines.append(f"job {job_id} on {node}: no placement recorded by this ssid")
        else:
            lines.append(rec.placement.explain())
        if rec.migration is not None:
            state = {None: "decided", True: "done", False: "failed"}[rec.migration_ok]
            lines.append(f"last migration ({state}): {rec.migration.explain()}")
        if rec.note is not None and (
            rec.migration is None or not rec.note.startswith("migrating")
        ):
            lines.append(f"last balancing round at {rec.note_at:.1f}: {rec.note}")
        elif rec.note is None and self.last_plan is not None:
            lines.append(
                f"last balancing round ({self.last_plan.policy} at"
                f" {self.last_plan.at:.1f}) did not consider it:"
                f" {self.last_plan.summary}"
            )
        return "\n".join(lines)


def _module_doc(obj: object) -> str:
    mod = sys.modules.get(type(obj).__module__)
    return (mod.__doc__ or "").strip() if mod else ""
