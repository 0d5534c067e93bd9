"""Least loaded: the node whose normalised load is lowest once the job is on it.

Normalised load = (run-queue length + the job's CPUs) / (CPUs x CPU speed). Example:
node a (4 CPUs, speed 1.0, load 2) scores (2 + 1) / 4 = 0.75; node b (2 CPUs,
speed 2.0, load 1) scores (1 + 1) / 4 = 0.5; node c (1 CPU, speed 1.0, idle) scores
1.0: a 1-CPU job goes to b. Nodes are examined from an index keyed by
(load + c) / capacity, one per CPU class c <= the job's CPUs (1, 2, 4, ...): a lower
bound of the score, so the search stops at the first key past the best score found
and the answer is exact at any cluster size. Never migrates.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar

from schedulers.base import BaseParams, PolicyBase
from schedulers.cluster import ClusterView
from schedulers.decisions import NodeVerdict
from schedulers.index import NodeIndex
from schedulers.params import param
from schedulers.views import JobRequest, NodeView

LOAD_SOURCES = ("jobs", "node")
CPU_CLASSES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class LoadParams(BaseParams):
    load_source: str = param(
        "jobs",
        "jobs: background load + demand of ssi jobs (reacts at once); node: the"
        " probe's whole-machine load",
        choices=LOAD_SOURCES,
    )


class LeastLoaded(PolicyBase):
    """Lowest normalised CPU load after placement."""

    name: ClassVar[str] = "least_loaded"
    Params: ClassVar[type] = LoadParams
    key_doc: ClassVar[str] = "load"
    p: LoadParams

    def __init__(self) -> None:
        super().__init__()
        self._by_cpus: dict[int, NodeIndex] = {}

    def configure(self, **params: object) -> None:
        super().configure(**params)
        for index in self._by_cpus.values():
            index.invalidate()

    def start(self, cluster: ClusterView, now: float) -> None:
        super().start(cluster, now)
        self._by_cpus.clear()

    def index_key(self, cluster: ClusterView, node: str) -> float | None:
        v = cluster.nodes[node]
        return (cluster.load(node, self.p.load_source) + 1.0) / max(v.capacity, 1e-9)

    def index_for(self, job: JobRequest) -> NodeIndex:
        """One index per CPU class c (1, 2, 4, ...) keyed (load + c) / capacity: for a
        job of `cpus` >= c, a lower bound of its score, so placement is exact."""
        c = CPU_CLASSES[bisect.bisect_right(CPU_CLASSES, job.cpus) - 1]
        if c == 1:
            return self.index()
        index = self._by_cpus.get(c)
        if index is None:
            src = self.p.load_source

            def key(cluster: ClusterView, node: str) -> float:
                v = cluster.nodes[node]
                return (cluster.load(node, src) + c) / max(v.capacity, 1e-9)

            index = self._by_cpus[c] = self.make_index(key)
        return index

    def key_bounds_score(self, job: JobRequest) -> bool:
        return True

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        load = cluster.load(node.name, self.p.load_source)
        s = (load + job.cpus) / max(node.capacity, 1e-9)
        return s, f"load {load:.2f} on {node.cpus} CPUs x {node.cpu_speed:g}"

    def reason(self, best: NodeVerdict, candidates: int) -> str:
        return (
            f"lowest normalised load after placement {best.score:.3f} of"
            f" {candidates} candidates"
        )
