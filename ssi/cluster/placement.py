"""Where a job goes, until the scheduler's policies are wired in: the least loaded
online node, round robin among equals.

Example: node1 load 1.5 on 2 cpus with 1 job just placed, node2 load 0.2 on 2 cpus:
scores 0.75 + 0.5 and 0.1 -> node2.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ssi.cluster.store import NodeRecord, NodeState


@dataclass(frozen=True, slots=True)
class Placement:
    node: str | None
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # node -> why not


class LeastLoaded:
    name = "least_loaded"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def place(
        self,
        nodes: Iterable[NodeRecord],
        load: Mapping[str, Mapping[str, float]],
        running: Mapping[str, int],
        *,
        want: str = "",
        exclude: Iterable[str] = (),
    ) -> Placement:
        excluded = set(exclude)
        refused: dict[str, str] = {}
        scores: dict[str, float] = {}
        for n in nodes:
            if want and n.name != want:
                refused[n.name] = f"not the node asked for ({want})"
            elif n.name in excluded:
                refused[n.name] = "excluded"
            elif n.state is not NodeState.ONLINE:
                refused[n.name] = f"{n.state.value}" + (
                    f": {n.reason}" if n.reason else ""
                )
            else:
                cpus = max(1, int(n.resources.get("cpus", 1)))
                scores[n.name] = (
                    load.get(n.name, {}).get("load1", 0.0) + running.get(n.name, 0)
                ) / cpus
        if not scores:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
            return Placement(
                None, f"no node can take it ({why or 'no nodes'})", {}, refused
            )
        best = min(scores.values())
        ties = sorted(k for k, v in scores.items() if v - best < 0.05)
        choice = ties[next(self._turn) % len(ties)]
        return Placement(
            choice,
            f"{self.name}: {choice} has the lowest load per cpu",
            scores,
            refused,
        )
