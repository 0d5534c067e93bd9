"""The public plugin interface: what a probe, a filter and a policy must provide.

Built-ins use exactly this, and are declared as entry points like a third party's:

    [project.entry-points."ssi.policies"]
    my_policy = "my_pkg.policy:MyPolicy"

Every plugin class states `name`, `api_version` (must equal API_VERSION, or the loader
refuses it, naming both versions and the package) and a docstring whose first line
summarises it and whose body states its algorithm by one example (Kerrighed's house
style). Plugins are classes: the loader instantiates them with no arguments and then
calls configure(**params).

The flow, as in Kerrighed (probes -> filters -> policies), with our plumbing:

    agent:        Probe.sample(now) -> typed sample -> Filter.feed(...) -> report
    coordinator:  report -> NodeView -> ClusterView.upsert_node
                  node events -> ClusterView.apply_event + Policy.on_node_event
                  submit -> Policy.place(JobRequest, ClusterView, now) -> Placement
                  every interval -> Policy.rebalance(ClusterView, now) -> RebalancePlan

Policies are sans-IO: they read views, keep their own small state (cursors, cooldowns,
indexes) and return decisions; the coordinator executes them and reports outcomes
back through on_migration_result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from schedulers.cluster import ClusterView
    from schedulers.decisions import MigrationDecision, Placement, RebalancePlan
    from schedulers.params import ParamInfo
    from schedulers.views import JobRequest, NodeEvent

API_VERSION = 1

GROUP_PROBES = "ssi.probes"
GROUP_FILTERS = "ssi.filters"
GROUP_POLICIES = "ssi.policies"
GROUPS = (GROUP_PROBES, GROUP_FILTERS, GROUP_POLICIES)

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


@runtime_checkable
class Probe(Protocol[T_co]):
    """Measures one thing on the local node and returns a typed sample.

    Rates need two samples: the first call returns rates of 0.0 and primes the probe.
    Probes may read /proc and call psutil; nothing else in schedulers/ does I/O.
    """

    name: ClassVar[str]
    api_version: ClassVar[int]

    def sample(self, now: float) -> T_co: ...


@runtime_checkable
class JobProbe(Protocol[T_co]):
    """Measures one job, given the pids of its process tree (or its cgroup's)."""

    name: ClassVar[str]
    api_version: ClassVar[int]

    def sample_job(self, job: str, pids: Sequence[int], now: float) -> T_co: ...

    def forget(self, job: str) -> None: ...


@runtime_checkable
class Filter(Protocol[T]):
    """Sits between a probe and its consumers: smooths, rate-limits, thresholds or
    caches values. feed() returns the value to publish now, or None to hold it back.
    """

    name: ClassVar[str]
    api_version: ClassVar[int]

    def configure(self, **params: object) -> None: ...

    def feed(self, value: T, now: float) -> T | None: ...


@runtime_checkable
class Policy(Protocol):
    """Decides placement of new jobs and migrations (Kerrighed's scheduler policy).

    Operations, after Kerrighed's new / destroy / update_node_set / new_task_node:
      configure(**params)     validate and apply parameters (ParamError if bad)
      start(cluster, now)     becomes the active policy; sees the whole node set
      stop()                  no longer active
      on_node_event(ev, cluster, now) -> migrations to make (e.g. expel on eviction)
      place(job, cluster, now) -> Placement (a node or none, with explanations)
      rebalance(cluster, now) -> RebalancePlan (migrations with reasons, notes)
      on_migration_result(decision, ok, now): what became of a decision
    """

    name: ClassVar[str]
    api_version: ClassVar[int]

    def configure(self, **params: object) -> None: ...

    def describe_params(self) -> list[ParamInfo]: ...

    def params(self) -> Mapping[str, object]: ...

    def start(self, cluster: ClusterView, now: float) -> None: ...

    def stop(self) -> None: ...

    def on_node_event(
        self, event: NodeEvent, cluster: ClusterView, now: float
    ) -> list[MigrationDecision]: ...

    def place(self, job: JobRequest, cluster: ClusterView, now: float) -> Placement: ...

    def rebalance(self, cluster: ClusterView, now: float) -> RebalancePlan: ...

    def on_migration_result(
        self, decision: MigrationDecision, ok: bool, now: float
    ) -> None: ...


def summary(obj: object) -> str:
    """First line of a plugin's docstring."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
