"""python -m schedulers.sim: compare policies on one synthetic workload.

python -m schedulers.sim --nodes 200 --jobs 2000 --seed 1 [--policies a,b]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from schedulers.sim.engine import SimResult, Simulation
from schedulers.sim.traces import generate
from schedulers.sim.workload import DAY, cluster, failure_domains, workload

POLICIES = (
    "round_robin",
    "least_loaded",
    "memory_aware",
    "io_aware",
    "availability_aware",
    "mosix",
)


def compare(
    nodes: int,
    jobs: int,
    *,
    seed: int = 1,
    policies: Sequence[str] = POLICIES,
    load: float = 0.9,
    warmup: float = 60 * DAY,
    rebalance_every: float = 10.0,
) -> list[SimResult]:
    """Runs each policy on the same cluster, jobs and failures. `load` sets the
    arrival rate so that offered work / capacity is about that."""
    specs = cluster(nodes, seed=seed)
    capacity = sum(n.cpus * n.speed for n in specs)
    probe = workload(1000, seed=seed)
    mean_work = sum(j.work * j.cpus for j in probe) / len(probe)
    interarrival = mean_work / (capacity * load)
    jobs_spec = workload(jobs, seed=seed, mean_interarrival=interarrival)
    horizon = jobs_spec[-1].arrival * 3 + 30 * DAY
    trace = generate(
        failure_domains(specs, seed=seed), warmup + horizon, seed=seed, start=-warmup
    )
    return [
        Simulation(
            specs, jobs_spec, trace, policy=p, rebalance_every=rebalance_every
        ).run()
        for p in policies
    ]


def table(results: Sequence[SimResult]) -> str:
    lb = results[0].lower_bound if results else 0.0
    head = (
        f"{'policy':<20}{'makespan s':>12}{'/bound':>8}{'slowdown':>10}{'p95':>9}"
        f"{'migr':>7}{'interr':>8}{'lost h':>8}{'place us':>10}{'wall s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.policy:<20}{r.makespan:>12.0f}{r.makespan / lb:>8.2f}"
            f"{r.mean_slowdown:>10.2f}{r.p95_slowdown:>9.1f}{r.migrations:>7d}"
            f"{r.interruptions:>8d}{r.work_lost / 3600:>8.1f}{r.place_us_mean:>10.0f}"
            f"{r.wall_seconds:>8.1f}"
        )
    lines.append(
        f"{'lower bound':<20}{lb:>12.0f}{1.0:>8.2f}   (total work / total capacity)"
    )
    if results:
        cb = results[0].critical_bound
        lines.append(
            f"{'critical path':<20}{cb:>12.0f}{cb / lb:>8.2f}   (latest arrival +"
            " its work on the fastest node)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--policies", default=",".join(POLICIES))
    a = ap.parse_args(argv)
    results = compare(
        a.nodes, a.jobs, seed=a.seed, load=a.load, policies=a.policies.split(",")
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
