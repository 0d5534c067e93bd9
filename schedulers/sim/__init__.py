"""The simulator: the same Scheduler and policies on a synthetic cluster.

workload.py  cluster(n), failure_domains(nodes), workload(n_jobs): by seed
traces.py    availability traces with known distributions (per node, per group)
engine.py    Simulation(nodes, jobs, trace, policy=...).run() -> SimResult
__main__.py  python -m schedulers.sim --nodes 1000 --jobs 5000: a table per policy

arrivals ─┐                     ┌─> Scheduler.place   (the real policy code)
trace  ───┼─> event heap ─> sim ┼─> Scheduler.rebalance -> migrations (in flight)
ticks  ───┘                     └─> Scheduler.node_event (lost / returned)
"""

from schedulers.sim.engine import SimResult, Simulation
from schedulers.sim.traces import GroupSpec, generate
from schedulers.sim.workload import (
    JobSpec,
    NodeSpec,
    cluster,
    failure_domains,
    workload,
)

__all__ = [
    "GroupSpec",
    "JobSpec",
    "NodeSpec",
    "SimResult",
    "Simulation",
    "cluster",
    "failure_domains",
    "generate",
    "workload",
]
