"""Availability-aware: long jobs go where they are most likely to run to the end.

A job is long when its request says time=T with T >= `long_job`, or when it asks
`prefer stable` (then T = its time or `stable_horizon`). A long job is placed on the
node maximising P(the node stays up for T), from the node's up/down history (Kaplan-
Meier survival conditional on its current uptime, see schedulers.availability); for a
job of a group (group=NAME) already running on some nodes, it is P(those nodes and
this one all stay up for T), in which failures that strike correlated nodes together
count once (after Kondo et al., 2008): the group grows inside one failure domain
rather than across several. Score = (1 - P) + load_weight x normalised load after
placement. Short jobs are placed as least_loaded does. Never migrates.

Example: T = 10h; node a has failed every ~20h (P = exp(-0.5) = 0.61), node b every
~200h (P = 0.95) but is busier (load 0.5 vs 0.1): a scores 0.39 + 0.05 x 0.35 = 0.41,
b scores 0.05 + 0.05 x 0.75 = 0.09: b. A 5-minute job goes to a, the less loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.cluster import ClusterView
from schedulers.decisions import NodeVerdict
from schedulers.index import NodeIndex
from schedulers.params import param
from schedulers.policies.least_loaded import LeastLoaded, LoadParams
from schedulers.units import format_duration
from schedulers.views import JobRequest, NodeView


@dataclass(frozen=True)
class AvailabilityParams(LoadParams):
    long_job: float = param(
        3600.0, "jobs whose time= is at least this are placed by availability", unit="s"
    )
    load_weight: float = param(
        0.05, "weight of the normalised load against 1 - P(up)", min=0
    )


class AvailabilityAware(LeastLoaded):
    """Long jobs where P(staying up for their time) is highest, groups included."""

    name: ClassVar[str] = "availability_aware"
    Params: ClassVar[type] = AvailabilityParams
    p: AvailabilityParams

    def __init__(self) -> None:
        super().__init__()
        self._avail_index: NodeIndex | None = None

    def configure(self, **params: object) -> None:
        super().configure(**params)
        if self._avail_index is not None:
            self._avail_index.invalidate()

    def start(self, cluster: ClusterView, now: float) -> None:
        super().start(cluster, now)
        self._avail_index = None

    def horizon(self, job: JobRequest) -> float | None:
        """T when the job is placed by availability, else None."""
        t = job.expected_runtime
        if t is not None and t >= self.p.long_job:
            return t
        if job.request.prefers("stable"):
            return t or self.p.stable_horizon
        return None

    def _rate_key(self, cluster: ClusterView, node: str) -> float | None:
        # Expected failures over one long job: the order in which to examine nodes.
        return cluster.availability.rate(node) * self.p.long_job

    def index_for(self, job: JobRequest) -> NodeIndex:
        if self.horizon(job) is None:
            return self.index()
        if self._avail_index is None:
            self._avail_index = self.make_index(self._rate_key)
        return self._avail_index

    def shortlist_for(self, job: JobRequest) -> int:
        if self.horizon(job) is None:
            return super().shortlist_for(job)
        return 32  # the rate order ignores uptime and load: score a few exactly

    def _extra_candidates(self, job: JobRequest, cluster: ClusterView) -> list[str]:
        out = super()._extra_candidates(job, cluster)
        if job.group and self.horizon(job) is not None:
            out += sorted(cluster.group_nodes(job.group))
        return out

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        t = self.horizon(job)
        load_after = (cluster.load(node.name, self.p.load_source) + job.cpus) / max(
            node.capacity, 1e-9
        )
        if t is None:
            return load_after, f"load after {load_after:.2f} (short job)"
        group = cluster.group_nodes(job.group) if job.group else {}
        if group:
            members = set(group) | {node.name}
            p = cluster.availability.p_all_up(members, t, now)
            what = f"P(all {len(members)} group nodes up {format_duration(t)}) {p:.3f}"
        else:
            p = cluster.p_up(node.name, t, now)
            what = f"P(up {format_duration(t)}) {p:.3f}"
        return (
            1.0 - p
        ) + self.p.load_weight * load_after, f"{what}, load {load_after:.2f}"

    def reason(self, best: NodeVerdict, candidates: int) -> str:
        return f"best of {candidates} candidates: {best.reason}"
