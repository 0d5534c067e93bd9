"""Availability-aware: long jobs go where they are most likely to run to the end.

A job is long when its request says time=T with T >= `long_job`, or when it asks
`prefer stable` (then T = its time or `stable_horizon`). For a long job, each node
gets P = P(the node stays up for the job's run time there), from its up/down history
(Weibull + Kaplan-Meier survival conditional on its current uptime, see
schedulers.availability); for a job of a group (group=NAME) already running on some
nodes, P = P(those nodes and this one all stay up), in which failures that strike
correlated nodes together count once (after Kondo et al., 2008), so the group grows
inside one failure domain rather than across several. The run time there is
t = T x slowdown, slowdown = max(1, (load + cpus) / CPUs) / speed, and the score is
the expected time per unit of work with restarts, slowdown / P^stability_weight:
availability first, speed and load as the tie-breakers they should be. Short jobs
are placed as least_loaded does. Never migrates.

Example: T = 10h; node a (speed 1, idle) fails every ~20h: P = exp(-0.5) = 0.61,
score 1 / 0.61 = 1.65; node b (speed 1, idle) every ~200h: P = 0.95, score 1.05;
node c (speed 2, idle) every ~20h: t = 5h, P = exp(-0.25) = 0.78, score 0.5 / 0.78 =
0.64: c, then b, then a. A 5-minute job goes where least_loaded would put it.
"""

from __future__ import annotations

import math
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
    stability_weight: float = param(
        1.0,
        "exponent of P in the score: 1 = expected time with restarts, larger ="
        " availability matters more than speed",
        min=0,
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

    @staticmethod
    def slowdown(cluster: ClusterView, node: NodeView, load: float, cpus: int) -> float:
        return max(1.0, (load + cpus) / max(node.cpus, 1)) / max(node.cpu_speed, 1e-9)

    def _avail_key(self, cluster: ClusterView, node: str) -> float | None:
        # Job-independent order of examination: the score of a 1-CPU job of
        # `long_job` seconds with an exponential P.
        v = cluster.nodes[node]
        sd = self.slowdown(cluster, v, cluster.load(node, self.p.load_source), 1)
        expected_failures = cluster.availability.rate(node) * self.p.long_job * sd
        return sd * math.exp(self.p.stability_weight * min(expected_failures, 50.0))

    def index_for(self, job: JobRequest) -> NodeIndex:
        if self.horizon(job) is None:
            return super().index_for(job)
        if self._avail_index is None:
            self._avail_index = self.make_index(self._avail_key)
        return self._avail_index

    def key_bounds_score(self, job: JobRequest) -> bool:
        return self.horizon(job) is None

    def shortlist_for(self, job: JobRequest) -> int:
        if self.horizon(job) is None:
            return super().shortlist_for(job)
        return 32  # the index ignores uptime, shape and groups: score a few exactly

    def _extra_candidates(self, job: JobRequest, cluster: ClusterView) -> list[str]:
        out = super()._extra_candidates(job, cluster)
        if job.group and self.horizon(job) is not None:
            out += sorted(cluster.group_nodes(job.group))
        return out

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        t = self.horizon(job)
        load = cluster.load(node.name, self.p.load_source)
        if t is None:
            s = (load + job.cpus) / max(node.capacity, 1e-9)
            return s, f"load after {s:.2f} (short job)"
        sd = self.slowdown(cluster, node, load, job.cpus)
        run = t * sd
        group = cluster.group_nodes(job.group) if job.group else {}
        if group:
            members = set(group) | {node.name}
            p = cluster.availability.p_all_up(members, run, now)
            what = (
                f"P(all {len(members)} group nodes up {format_duration(run)}) {p:.3f}"
            )
        else:
            p = cluster.p_up(node.name, run, now)
            what = f"P(up {format_duration(run)}) {p:.3f}"
        score = sd / max(p, 1e-6) ** self.p.stability_weight
        return score, f"{what}, slowdown {sd:.2f}"

    def reason(self, best: NodeVerdict, candidates: int) -> str:
        return f"best of {candidates} candidates: {best.reason}"
