"""Synthetic clusters, workloads and failure domains for the simulator, by seed.

Example: cluster(1000, seed=1) gives 1000 nodes in racks of 20: 60% have 4 CPUs at
speed 1.0 and 16G, 30% 8 CPUs at 1.5 and 32G, 10% 16 CPUs at 2.0 and 64G; 30% carry
the label ssd. failure_domains(nodes) makes each rack a failure domain with shocks
(a switch or a feed) every ~60 days and each node fail alone every ~30 days, except
a volatile tenth failing every ~2 days. workload(...) draws Poisson arrivals, partly
in bulk submissions, with log-normal run times (heavy tail) and declared times off
by up to +-30%.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from schedulers.sim.traces import GroupSpec

DAY = 86400.0
GiB = 2**30


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    cpus: int
    speed: float
    mem: int
    labels: frozenset[str] = frozenset()
    rack: int = 0


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    arrival: float
    work: float  # seconds on a speed-1.0 core, with its cpus all to itself
    cpus: int = 1
    mem: int = 0
    rss: int = 0
    walltime: float | None = None  # what the submitter declares
    checkpoint_period: float | None = None  # seconds of work between checkpoints
    io: float = 0.0  # share of its time spent on disk I/O, 0..1
    group: str | None = None
    require: str = ""  # extra request clauses

    def request_text(self) -> str:
        parts = [f"cpus>={self.cpus}"] if self.cpus != 1 else []
        if self.mem:
            parts.append(f"mem>={self.mem // 2**20}M")
        if self.walltime is not None:
            parts.append(f"time={int(max(1, self.walltime))}s")
        if self.group:
            parts.append(f"group={self.group}")
        if self.require:
            parts.append(self.require)
        return " ".join(parts)


def cluster(n: int, *, seed: int = 0, rack_size: int = 20) -> list[NodeSpec]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            cpus, speed, mem = 4, 1.0, 16 * GiB
        elif r < 0.9:
            cpus, speed, mem = 8, 1.5, 32 * GiB
        else:
            cpus, speed, mem = 16, 2.0, 64 * GiB
        labels = {"ssd"} if rng.random() < 0.3 else set()
        out.append(
            NodeSpec(f"n{i:05d}", cpus, speed, mem, frozenset(labels), i // rack_size)
        )
    return out


def failure_domains(
    nodes: Sequence[NodeSpec],
    *,
    seed: int = 0,
    rack_shock_mtbf: float = 60 * DAY,
    node_mtbf: float = 30 * DAY,
    volatile_mtbf: float = 2 * DAY,
    volatile_share: float = 0.1,
    mean_down: float = 1800.0,
) -> list[GroupSpec]:
    """Per rack: a shock process (all its nodes at once); per node: its own
    exponential failures, a volatile minority much more often."""
    rng = random.Random(seed)
    racks: dict[int, list[NodeSpec]] = {}
    for n in nodes:
        racks.setdefault(n.rack, []).append(n)
    out: list[GroupSpec] = []
    for rack in sorted(racks):
        members = [n.name for n in racks[rack]]
        out.append(
            GroupSpec(members, shock_rate=1.0 / rack_shock_mtbf, mean_down=mean_down)
        )
        for name in members:
            mtbf = volatile_mtbf if rng.random() < volatile_share else node_mtbf
            out.append(GroupSpec([name], node_rate=1.0 / mtbf, mean_down=mean_down))
    return out


def workload(
    n_jobs: int,
    *,
    seed: int = 0,
    mean_interarrival: float = 1.0,
    bulk_share: float = 0.3,
    bulk_size: int = 20,
    work_median: float = 600.0,
    work_sigma: float = 1.5,
    multi_cpu_share: float = 0.2,
    mem_per_cpu: int = 2 * GiB,
    io_share: float = 0.2,
    checkpoint_share: float = 0.5,
    checkpoint_period: float = 600.0,
    estimate_error: float = 0.3,
) -> list[JobSpec]:
    """Jobs with Poisson arrivals (a share of them in bulk submissions of
    `bulk_size` at one instant), log-normal work, some multi-CPU, some I/O-bound,
    some checkpointing; declared times within +-estimate_error of the truth."""
    rng = random.Random(seed)
    out: list[JobSpec] = []
    t = 0.0
    i = 0
    while i < n_jobs:
        t += rng.expovariate(1.0 / mean_interarrival)
        batch = bulk_size if rng.random() < bulk_share / bulk_size * 2 else 1
        for _ in range(min(batch, n_jobs - i)):
            work = work_median * math.exp(rng.gauss(0.0, work_sigma))
            cpus = rng.choice((2, 4)) if rng.random() < multi_cpu_share else 1
            est = work * (1.0 + rng.uniform(-estimate_error, estimate_error))
            out.append(
                JobSpec(
                    id=f"j{i:06d}",
                    arrival=t,
                    work=work,
                    cpus=cpus,
                    mem=int(cpus * mem_per_cpu * rng.uniform(0.25, 1.0)),
                    rss=int(cpus * mem_per_cpu * rng.uniform(0.1, 0.5)),
                    walltime=est,
                    checkpoint_period=checkpoint_period
                    if rng.random() < checkpoint_share
                    else None,
                    io=rng.uniform(0.3, 0.9) if rng.random() < io_share else 0.0,
                )
            )
            i += 1
    return out
