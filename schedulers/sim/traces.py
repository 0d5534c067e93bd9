"""Availability traces with known distributions, for the simulator and the tests.

A trace is a time-ordered list of (time, node, kind) with kind LOST (the node goes
down) or RETURNED (it is back); every node starts up at `start`. Failures come from:

- per-node failures: exponential up-times (rate 1/mean_up) or Weibull (shape k,
  scale): memoryless or not;
- group shocks: a Poisson process per group (rate shock_rate) that takes down every
  member that is up at that instant: failures correlated across nodes.

Down-times are exponential (mean_down). Known answers follow: with exponential
per-node failures at rate l_i and group shocks at rate g, the probability that a set
S of one group's nodes, all up now, stays up for T is exp(-(g + sum_{i in S} l_i) T),
while each node alone has exp(-(g + l_i) T).

Example: GroupSpec(["n1", "n2"], shock_rate=1/72000, node_rate=1/360000,
mean_down=600) over 1e7 s gives ~140 shocks, each downing both nodes.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schedulers.views import NodeEventKind

Trace = list[tuple[float, str, NodeEventKind]]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Nodes sharing a failure domain: shocks at shock_rate (1/s) down all of them;
    each also fails alone at node_rate (exponential) or after Weibull up-times."""

    nodes: Sequence[str]
    shock_rate: float = 0.0
    node_rate: float = 0.0
    mean_down: float = 600.0
    weibull_shape: float | None = None  # individual up-times Weibull(shape, scale)
    weibull_scale: float = 0.0


def _weibull(rng: random.Random, shape: float, scale: float) -> float:
    life: float = scale * (-math.log(1.0 - rng.random())) ** (1.0 / shape)
    return life


def generate(
    groups: Iterable[GroupSpec], horizon: float, *, seed: int = 0, start: float = 0.0
) -> Trace:
    """Events from start to start + horizon for every group's nodes, time-ordered."""
    rng = random.Random(seed)
    out: Trace = []
    for spec in groups:
        out += _group_trace(rng, spec, start, start + horizon)
    out.sort(key=lambda e: (e[0], e[1], e[2] is NodeEventKind.RETURNED))
    return out


def _group_trace(
    rng: random.Random, spec: GroupSpec, start: float, end: float
) -> Trace:
    # Shock times of the group, drawn first so they are shared by every member.
    shocks: list[float] = []
    if spec.shock_rate > 0:
        t = start + rng.expovariate(spec.shock_rate)
        while t < end:
            shocks.append(t)
            t += rng.expovariate(spec.shock_rate)
    out: Trace = []
    for node in spec.nodes:
        up_since = start
        si = 0
        while True:
            # Next individual failure, drawn at the start of each up interval
            # (memoryless for exponential; a fresh Weibull life otherwise).
            if spec.weibull_shape is not None:
                indiv = up_since + _weibull(rng, spec.weibull_shape, spec.weibull_scale)
            elif spec.node_rate > 0:
                indiv = up_since + rng.expovariate(spec.node_rate)
            else:
                indiv = math.inf
            while si < len(shocks) and shocks[si] < up_since:
                si += 1  # shocks while the node was down miss it
            shock = shocks[si] if si < len(shocks) else math.inf
            down_at = min(indiv, shock)
            if down_at >= end:
                break
            out.append((down_at, node, NodeEventKind.LOST))
            back = down_at + rng.expovariate(1.0 / spec.mean_down)
            if back >= end:
                break
            out.append((back, node, NodeEventKind.RETURNED))
            up_since = back
    return out


def merge(*traces: Trace) -> Trace:
    return list(heapq.merge(*traces, key=lambda e: e[0]))
