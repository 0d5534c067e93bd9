"""Least loaded: the node whose normalised load is lowest once the job is on it.

Normalised load = (run-queue length + the job's CPUs) / (CPUs x CPU speed). Example:
node a (4 CPUs, speed 1.0, load 2) scores (2 + 1) / 4 = 0.75; node b (2 CPUs,
speed 2.0, load 1) scores (1 + 1) / 4 = 0.5; node c (1 CPU, speed 1.0, idle) scores
1.0: a 1-CPU job goes to b. The index orders nodes by (load + 1) / capacity and the
best 4 that fit are scored exactly, so heterogeneous multi-CPU requests still find
their best node. Never migrates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.base import BaseParams, PolicyBase
from schedulers.cluster import ClusterView
from schedulers.decisions import NodeVerdict
from schedulers.params import param
from schedulers.views import JobRequest, NodeView

LOAD_SOURCES = ("jobs", "node")


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
    shortlist: ClassVar[int] = 4
    key_doc: ClassVar[str] = "load"
    p: LoadParams

    def index_key(self, cluster: ClusterView, node: str) -> float | None:
        v = cluster.nodes[node]
        return (cluster.load(node, self.p.load_source) + 1.0) / max(v.capacity, 1e-9)

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
