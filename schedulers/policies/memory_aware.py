"""Memory-aware: the node left with the most free memory, away from memory pressure.

Placement filters out nodes whose PSI memory pressure (share of time some task stalled
on memory, avg10) is at or above `max_pressure`, or that would keep less than
`reserve` of their memory free with the job; it then scores
(1 - free after placement / total) + pressure / 100 + load_weight x normalised load.
Example: a 4G job; node a (16G total, 6G free, pressure 0) scores 1 - 2/16 = 0.875;
node b (8G total, 7G free, pressure 2%) scores 1 - 3/8 + 0.02 = 0.645: b wins.
Rebalancing: every `interval`, a node at or above `relieve_pressure`, or with less
than `reserve` free, sends away the smallest migratable job whose RSS covers the
deficit (else its largest) to the node that keeps the most memory free; per-job
cooldown as in mosix.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar

from schedulers.base import BaseParams, PolicyBase, request_of
from schedulers.cluster import ClusterView
from schedulers.decisions import JobNote, MigrationDecision, RebalancePlan
from schedulers.index import NodeIndex
from schedulers.params import param
from schedulers.units import format_size
from schedulers.views import JobRequest, JobView, NodeView

MEM_CLASSES = (0,) + tuple(2**k for k in range(28, 44))  # 0, 256M ... 8T


@dataclass(frozen=True)
class MemoryParams(BaseParams):
    max_pressure: float = param(
        20.0, "no placement on nodes with PSI memory some avg10 >= this (%)", min=0
    )
    reserve: float = param(
        0.05, "fraction of a node's memory to keep free", min=0, max=0.9
    )
    load_weight: float = param(0.25, "weight of the normalised CPU load", min=0)
    relieve_pressure: float = param(
        40.0, "rebalance away from nodes at or above this pressure (%)", min=0
    )
    interval: float = param(10.0, "seconds between rebalancing rounds", unit="s", min=0)
    job_cooldown: float = param(
        120.0, "seconds before a migrated job may move again", unit="s", min=0
    )


class MemoryAware(PolicyBase):
    """Most free memory after placement, least memory pressure."""

    name: ClassVar[str] = "memory_aware"
    Params: ClassVar[type] = MemoryParams
    key_doc: ClassVar[str] = "memory"
    p: MemoryParams

    def __init__(self) -> None:
        super().__init__()
        self._last_round: float | None = None
        self._moved_at: dict[str, float] = {}
        self._by_mem: dict[int, NodeIndex] = {}

    def configure(self, **params: object) -> None:
        super().configure(**params)
        for index in self._by_mem.values():
            index.invalidate()

    def start(self, cluster: ClusterView, now: float) -> None:
        super().start(cluster, now)
        self._by_mem.clear()

    def _free_fraction(self, cluster: ClusterView, node: NodeView, extra: int) -> float:
        if node.mem_total <= 0:
            return 0.0
        return (cluster.mem_free(node.name) - extra) / node.mem_total

    def index_key(self, cluster: ClusterView, node: str) -> float | None:
        return self._key(cluster, node, 0)

    def _key(self, cluster: ClusterView, node: str, mem: int) -> float:
        v = cluster.nodes[node]
        return (
            1.0
            - self._free_fraction(cluster, v, mem)
            + v.mem_pressure / 100.0
            + self.p.load_weight * cluster.norm_load(node)
        )

    def index_for(self, job: JobRequest) -> NodeIndex:
        """One index per memory class m (0, then powers of two from 256M) keyed as
        the score of a job of m bytes: a lower bound for any job of >= m bytes,
        so the search can stop early and stay exact."""
        if job.mem < MEM_CLASSES[1]:
            return self.index()
        m = MEM_CLASSES[bisect.bisect_right(MEM_CLASSES, job.mem) - 1]
        index = self._by_mem.get(m)
        if index is None:
            index = self._by_mem[m] = self.make_index(
                lambda cluster, node: self._key(cluster, node, m)
            )
        return index

    def key_bounds_score(self, job: JobRequest) -> bool:
        return True  # the score only adds the job's own needs to the key

    def extra_filter(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[str, str] | None:
        if node.mem_pressure >= self.p.max_pressure:
            return (
                "pressure",
                f"memory pressure {node.mem_pressure:.1f}% >= {self.p.max_pressure:g}%",
            )
        if (
            node.mem_total > 0
            and self._free_fraction(cluster, node, job.mem) < self.p.reserve
        ):
            return "mem", (
                f"{format_size(cluster.mem_free(node.name))} free; with"
                f" {format_size(job.mem)} it would keep < {self.p.reserve:.0%}"
            )
        return None

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        ff = self._free_fraction(cluster, node, job.mem)
        nl = cluster.norm_load(node.name)
        s = 1.0 - ff + node.mem_pressure / 100.0 + self.p.load_weight * nl
        return s, (
            f"{ff:.0%} free after, pressure {node.mem_pressure:.1f}%, load {nl:.2f}"
        )

    def rebalance(self, cluster: ClusterView, now: float) -> RebalancePlan:
        p = self.p
        if self._last_round is not None and now - self._last_round < p.interval:
            return RebalancePlan(self.name, now, summary="not yet")
        self._last_round = now
        migrations: list[MigrationDecision] = []
        notes: list[JobNote] = []
        for name in sorted(cluster.nodes):
            node = cluster.nodes[name]
            if cluster.job_count(name) == 0 or node.mem_total <= 0:
                continue
            free = cluster.mem_free(name)
            want_free = int(p.reserve * node.mem_total)
            if node.mem_pressure < p.relieve_pressure and free >= want_free:
                continue
            deficit = max(want_free - free, 1)
            movable = [j for j in cluster.jobs_on(name) if self._movable(j, now)]
            if not movable:
                continue
            covering = sorted(
                (j for j in movable if j.rss >= deficit), key=lambda j: (j.rss, j.id)
            )
            job = covering[0] if covering else max(movable, key=lambda j: (j.rss, j.id))
            req = JobRequest(job.id, request_of(job), exclude=frozenset({name}))
            placement = self.place(req, cluster, now)
            if placement.node is None:
                notes.append(
                    JobNote(job.id, name, f"pressure here, but {placement.reason}")
                )
                continue
            migrations.append(
                MigrationDecision(
                    job=job.id,
                    source=name,
                    target=placement.node,
                    policy=self.name,
                    at=now,
                    reason=f"{name}: pressure {node.mem_pressure:.1f}%,"
                    f" {format_size(free)} free; {placement.reason}",
                )
            )
            cluster.move_job(job.id, placement.node, now)
            self._moved_at[job.id] = now
        return RebalancePlan(
            self.name,
            now,
            tuple(migrations),
            tuple(notes),
            f"{len(migrations)} migration(s) to relieve memory",
        )

    def _movable(self, job: JobView, now: float) -> bool:
        moved = max(
            job.last_migrated_at or -math.inf, self._moved_at.get(job.id, -math.inf)
        )
        return job.migratable and now - moved >= self.p.job_cooldown
