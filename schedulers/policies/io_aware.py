"""I/O-aware: the node where the job's disk and network traffic meet least contention.

Contention = io_weight x (disk busy fraction + PSI io some avg10 / 100)
           + net_weight x (rx + tx) / link capacity (when known)
           + load_weight x (CPU load + 1) / capacity.
Nodes whose disk is busy at or above `max_io_busy` are filtered out. Example, nodes
of capacity 4: a (disk 80% busy, PSI io 30%, load 0) scores 0.8 + 0.3 + 0.5 x 0.25 =
1.225; b (disk 10% busy, PSI io 1%, load 3) scores 0.1 + 0.01 + 0.5 = 0.61: b wins,
since an idle CPU is of little use behind a saturated disk. Never migrates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.base import BaseParams, PolicyBase
from schedulers.cluster import ClusterView
from schedulers.params import param
from schedulers.views import JobRequest, NodeView


@dataclass(frozen=True)
class IoParams(BaseParams):
    io_weight: float = param(1.0, "weight of disk contention", min=0)
    net_weight: float = param(0.5, "weight of network link use", min=0)
    load_weight: float = param(0.5, "weight of the normalised CPU load", min=0)
    max_io_busy: float = param(
        0.95,
        "no placement on nodes whose disk is busier than this (0..1)",
        min=0,
        max=1,
    )


class IoAware(PolicyBase):
    """Least disk and network contention."""

    name: ClassVar[str] = "io_aware"
    Params: ClassVar[type] = IoParams
    key_doc: ClassVar[str] = "contention"
    p: IoParams

    def _parts(
        self, cluster: ClusterView, node: NodeView
    ) -> tuple[float, float, float]:
        io = node.io_busy + node.io_pressure / 100.0
        net = (
            (node.net_rx_bps + node.net_tx_bps) / node.net_capacity_bps
            if node.net_capacity_bps > 0
            else 0.0
        )
        load = (cluster.load(node.name) + 1.0) / max(node.capacity, 1e-9)
        return io, net, load

    def index_key(self, cluster: ClusterView, node: str) -> float | None:
        io, net, load = self._parts(cluster, cluster.nodes[node])
        p = self.p
        return p.io_weight * io + p.net_weight * net + p.load_weight * load

    def key_bounds_score(self, job: JobRequest) -> bool:
        return True  # the score only adds the job's own needs to the key

    def extra_filter(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[str, str] | None:
        if node.io_busy >= self.p.max_io_busy:
            return "io", f"disk {node.io_busy:.0%} busy >= {self.p.max_io_busy:.0%}"
        return None

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        io, net, load = self._parts(cluster, node)
        p = self.p
        s = p.io_weight * io + p.net_weight * net + p.load_weight * load
        return s, f"disk {io:.2f}, net {net:.2f}, load {load:.2f}"
