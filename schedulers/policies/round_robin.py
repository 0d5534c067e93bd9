"""Round robin: the next online node in turn that fits the job.

Example: nodes a, b, c (sorted by name), cursor after b: a 1-CPU job goes to c, the
next to a; if a is draining, the next goes to b and the cursor stays after b. With
soft preferences, the first `16` fitting nodes in turn are scored by preferences only
and ties keep the turn order. Never migrates (Kerrighed's round_robin_balancer).
"""

from __future__ import annotations

import bisect
from typing import ClassVar

from schedulers.base import KEEP_VERDICTS, PolicyBase
from schedulers.cluster import ClusterView
from schedulers.decisions import NodeVerdict, Placement
from schedulers.views import JobRequest, NodeState


class RoundRobin(PolicyBase):
    """Round robin over the online nodes that fit."""

    name: ClassVar[str] = "round_robin"
    key_doc: ClassVar[str] = "turn"

    def __init__(self) -> None:
        super().__init__()
        self._ring: list[str] = []
        self._ring_version = -1
        self._ring_cluster = 0
        self._last: str | None = None

    def _sync(self, cluster: ClusterView) -> list[str]:
        if self._ring_version != cluster.membership_version or self._ring_cluster != id(
            cluster
        ):
            self._ring = sorted(
                n for n, v in cluster.nodes.items() if v.state is NodeState.ONLINE
            )
            self._ring_version = cluster.membership_version
            self._ring_cluster = id(cluster)
        return self._ring

    def place(self, job: JobRequest, cluster: ClusterView, now: float) -> Placement:
        ring = self._sync(cluster)
        total = len(cluster.nodes)
        if not ring:
            return Placement(
                job.id, None, self.name, now, "no node is online", total=total
            )
        start = 0 if self._last is None else bisect.bisect_right(ring, self._last)
        want = self.shortlist_for(job)
        scored: list[tuple[float, int, NodeVerdict]] = []
        rejected: list[NodeVerdict] = []
        counts: dict[str, int] = {}
        examined = 0
        for i in range(len(ring)):
            name = ring[(start + i) % len(ring)]
            node = cluster.nodes[name]
            examined += 1
            bad = self.filter(job, cluster, node, now)
            if bad is not None:
                counts[bad[0]] = counts.get(bad[0], 0) + 1
                if len(rejected) < KEEP_VERDICTS:
                    rejected.append(NodeVerdict(name, False, None, bad[1], bad[0]))
                continue
            pen, notes = self.soft_penalty(job, cluster, node, now)
            why = f"turn {i}" + (f"; {notes}" if notes else "")
            scored.append((pen, i, NodeVerdict(name, True, pen, why)))
            if len(scored) >= want:
                break
        if not scored:
            why = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
            return Placement(
                job.id,
                None,
                self.name,
                now,
                f"no node fits ({why})",
                tuple(rejected),
                counts,
                examined,
                total,
            )
        scored.sort(key=lambda t: (t[0], t[1]))
        best = scored[0][2]
        self._last = best.node
        verdicts = tuple(v for _, _, v in scored) + tuple(rejected)
        reason = f"next in turn that fits ({examined} examined)"
        return Placement(
            job.id, best.node, self.name, now, reason, verdicts, counts, examined, total
        )
