"""Snapshots the policies decide on: nodes, jobs, job requests and node events.

All frozen: a probe report or a job record becomes a view once, and a decision can keep
the views it was made from. Units are SI (bytes, seconds, bytes per second); loads
count runnable threads (one CPU-bound thread = 1.0), before normalisation by capacity.

Example: a 4-CPU node at twice the reference speed with 6 CPU-bound jobs has
capacity 8.0 and normalised load 6 / 8 = 0.75.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schedulers.request import Request


class NodeState(enum.StrEnum):
    """Same names as the coordinator's membership states; only ONLINE takes jobs."""

    ONLINE = "online"
    DRAINING = "draining"  # a member, but no new placements
    EVICTING = "evicting"  # being emptied before removal
    LOST = "lost"  # missed its heartbeats


class NodeEventKind(enum.StrEnum):
    """Same values as ssi.cluster.events.NodeEventKind: convert with Kind(ev.kind)."""

    ADDED = "added"
    DRAINING = "draining"
    RESUMED = "resumed"
    EVICTED = "evicted"
    LOST = "lost"
    RETURNED = "returned"


# Which kinds end an up interval and which start one, for availability history.
DOWN_KINDS = frozenset({NodeEventKind.LOST, NodeEventKind.EVICTED})
UP_KINDS = frozenset({NodeEventKind.ADDED, NodeEventKind.RETURNED})


@dataclass(frozen=True, slots=True)
class NodeEvent:
    kind: NodeEventKind
    node: str
    at: float  # seconds (the coordinator's realtime clock)
    cause: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the coordinator last heard of it.

    `load` is the probe's decayed run-queue length of the whole machine;
    `background_load` is the part not due to ssi jobs (the agent subtracts its jobs'
    demand; a shared-host test cluster reports 0). Policies add the jobs' demand they
    know of, so a placement or a migration counts at once, before probes catch up.
    """

    name: str
    state: NodeState = NodeState.ONLINE
    cpus: int = 1
    cpu_speed: float = 1.0  # relative to the reference core (bogomips / reference)
    load: float = 0.0
    background_load: float = 0.0
    mem_total: int = 0
    mem_free: int = 0  # available to new jobs, bytes
    mem_pressure: float = 0.0  # PSI memory "some" avg10, percent of time stalled
    io_read_bps: float = 0.0
    io_write_bps: float = 0.0
    io_busy: float = 0.0  # fraction of time the busiest disk was busy, 0..1
    io_pressure: float = 0.0  # PSI io "some" avg10, percent
    net_rx_bps: float = 0.0
    net_tx_bps: float = 0.0
    net_capacity_bps: float = 0.0  # 0: unknown
    labels: frozenset[str] = frozenset()
    up_since: float | None = None
    sampled_at: float = 0.0
    extra: Mapping[str, float] = field(default_factory=dict)  # third-party probes

    @property
    def capacity(self) -> float:
        return self.cpus * self.cpu_speed

    @property
    def accepts_jobs(self) -> bool:
        return self.state is NodeState.ONLINE


@dataclass(frozen=True, slots=True)
class JobView:
    """A running job as probes and the coordinator see it.

    cpu_demand: decayed count of its runnable threads (what MOSIX calls the process
    load: 1.0 for a CPU-bound single thread even on a crowded node); cpu_usage: the
    cores it actually got. dirty_rate: bytes/s of memory it newly dirties (an estimate:
    no soft-dirty tracking here, see probes.job).
    """

    id: str
    node: str
    cpus: int = 1
    mem: int = 0  # reserved by its request, bytes
    cpu_demand: float = 1.0
    cpu_usage: float = 0.0
    rss: int = 0
    dirty_rate: float = 0.0
    io_bps: float = 0.0
    started_at: float = 0.0
    migratable: bool = True
    last_migrated_at: float | None = None
    group: str | None = None
    expected_runtime: float | None = None
    request: Request | None = None  # as submitted, to re-place it elsewhere

    def age(self, now: float) -> float:
        return max(0.0, now - self.started_at)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job to place: its id and its parsed resource request.

    `exclude` names nodes it must avoid (a restart after its node was lost, an
    evacuation); `restart` marks a restart from a checkpoint, for explanations.
    """

    id: str
    request: Request = field(default=None)  # type: ignore[assignment]
    submitted_at: float = 0.0
    exclude: frozenset[str] = frozenset()
    restart: bool = False

    def __post_init__(self) -> None:
        if self.request is None:
            from schedulers.request import Request

            object.__setattr__(self, "request", Request())

    @property
    def cpus(self) -> int:
        return self.request.cpus

    @property
    def mem(self) -> int:
        return self.request.mem

    @property
    def group(self) -> str | None:
        return self.request.group

    @property
    def expected_runtime(self) -> float | None:
        return self.request.walltime
