"""PolicyBase: the shared half of a policy, so a policy file holds only its algorithm.

A subclass gives `index_key(cluster, node)` (job-independent, lower is better: the
order in which nodes are examined) and may refine `score(job, cluster, node, now)`,
add `extra_filter`, and override `rebalance`. PolicyBase.place then:

1. picks the candidates: the nodes a request names or labels when that set is small;
   every node when the cluster is small (so `ssi why` lists them all); otherwise the
   policy's index, best key first, stopping once the keys reach the best score found
   when the key is a lower bound of the score (exact), else after `shortlist` nodes
   that pass;
2. filters each: online, not excluded, the request's hard clauses (cpus, mem after
   reservations, names, labels, avail(T)>=p), then the policy's own filter;
3. scores the rest: the policy's score plus the request's soft preferences
   (`pref_weight` per unmet preference), and takes the lowest (ties: index order).

Example: least-loaded with nodes a (load 0.2, draining), b (0.5), c (0.9), request
"prefer node=c", pref_weight 1: a is filtered (state draining), b scores 0.5 + 1 = 1.5,
c scores 0.9: c wins, and the Placement lists all three with why.

It also gives Kerrighed's expel-on-remove: when a node is being evicted, each of its
migratable jobs is placed elsewhere by the policy's own placement and returned as a
migration; rebalance() does nothing unless overridden.

Contract with the caller (ssi's coordinator or the simulator): place() does not change
the ClusterView (the caller records the placement with note_placement); rebalance()
and on_node_event() record each migration they return (ClusterView.move_job) before
deciding the next one, so a plan never sends two jobs to one idle slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.cluster import ClusterView
from schedulers.decisions import (
    MigrationDecision,
    NodeVerdict,
    Placement,
    RebalancePlan,
)
from schedulers.index import KeyFn, NodeIndex
from schedulers.params import (
    ParamInfo,
    describe_params,
    param,
    params_dict,
    parse_params,
)
from schedulers.request import Request
from schedulers.views import (
    JobRequest,
    JobView,
    NodeEvent,
    NodeEventKind,
    NodeState,
    NodeView,
)

FULL_EXPLAIN_NODES = 64  # up to this many nodes, every placement examines them all
NARROW_SCAN_NODES = 512  # a named/labelled candidate set up to this size is scanned
KEEP_VERDICTS = 64  # verdicts kept in a Placement (the best, then the filtered)
MAX_EXAMINE = 4096  # nodes examined through an index once one fits, at most


@dataclass(frozen=True)
class BaseParams:
    pref_weight: float = param(
        1.0,
        "score added per unmet soft preference (in the policy's score units)",
        min=0,
    )
    stable_horizon: float = param(
        3600.0,
        "horizon for 'prefer stable/volatile' when the request gives no time=",
        unit="s",
        min=1,
    )


class PolicyBase:
    """Common machinery; see the module docstring."""

    name: ClassVar[str] = "base"
    api_version: ClassVar[int] = API_VERSION
    Params: ClassVar[type] = BaseParams
    shortlist: ClassVar[int] = 1  # feasible nodes scored exactly when using the index
    key_doc: ClassVar[str] = "index key"

    def __init__(self) -> None:
        self.p: BaseParams = self.Params()
        self._index: NodeIndex | None = None
        # Up to this many nodes, placement examines them all, so `ssi why` can list
        # every node; the simulator sets 0 to time the indexed path alone.
        self.full_explain_nodes = FULL_EXPLAIN_NODES

    # --- parameters and life cycle ---------------------------------------------

    def configure(self, **params: object) -> None:
        self.p = parse_params(self.Params, params, base=self.p)
        if self._index is not None:
            self._index.invalidate()

    def describe_params(self) -> list[ParamInfo]:
        return describe_params(self.p)

    def params(self) -> Mapping[str, object]:
        return params_dict(self.p)

    def start(self, cluster: ClusterView, now: float) -> None:
        if self._index is not None:
            self._index.invalidate()

    def stop(self) -> None:
        self._index = None

    def on_migration_result(
        self, decision: MigrationDecision, ok: bool, now: float
    ) -> None:
        return None

    # --- what subclasses provide ----------------------------------------------------

    def index_key(self, cluster: ClusterView, node: str) -> float | None:
        """Job-independent order of examination (lower first); None leaves it out."""
        return cluster.norm_load(node)

    def score(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        """(score, what it is made of) for a node that passed the filters."""
        key = self.index_key(cluster, node.name)
        if key is None:
            return 0.0, ""
        return key, f"{self.key_doc} {key:.3f}"

    def index_for(self, job: JobRequest) -> NodeIndex:
        """The index whose order candidates are examined in, for this job."""
        return self.index()

    def key_bounds_score(self, job: JobRequest) -> bool:
        """True when, for this job, index_for(job)'s key never exceeds score() plus
        soft penalties: placement is then exact, stopping once keys pass the best
        score. Otherwise the `shortlist_for(job)` first fitting nodes are scored."""
        return False

    def shortlist_for(self, job: JobRequest) -> int:
        want = self.shortlist
        if job.request.prefer:
            want = max(want, 16)
        return want

    def extra_filter(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[str, str] | None:
        return None

    def rebalance(self, cluster: ClusterView, now: float) -> RebalancePlan:
        return RebalancePlan(self.name, now, summary="this policy does not migrate")

    # --- node events ---------------------------------------------------------------

    def on_node_event(
        self, event: NodeEvent, cluster: ClusterView, now: float
    ) -> list[MigrationDecision]:
        if event.kind is NodeEventKind.EVICTED:
            return self.evacuate(event.node, cluster, now, cause=event.cause)
        return []

    def evacuate(
        self, node: str, cluster: ClusterView, now: float, cause: str = ""
    ) -> list[MigrationDecision]:
        """Kerrighed's expel: every migratable job of `node` to where place() says
        (a job pinned by name may leave too: the admin's eviction wins)."""
        out: list[MigrationDecision] = []
        for job in sorted(cluster.jobs_on(node), key=lambda j: j.id):
            if not job.migratable:
                continue
            request = request_of(job)
            if request.nodes is not None:  # pinned to nodes: eviction overrides it
                request = replace(request, nodes=None)
            req = JobRequest(job.id, request, exclude=frozenset({node}))
            placement = self.place(req, cluster, now)
            if placement.node is None:
                continue
            decision = MigrationDecision(
                job=job.id,
                source=node,
                target=placement.node,
                policy=self.name,
                at=now,
                reason=f"node {node} is being evicted{': ' + cause if cause else ''};"
                f" {placement.reason}",
            )
            cluster.move_job(job.id, placement.node, now)
            out.append(decision)
        return out

    # --- placement ------------------------------------------------------------------

    def index(self) -> NodeIndex:
        if self._index is None:
            self._index = self.make_index(self.index_key)
        return self._index

    @staticmethod
    def make_index(key: KeyFn) -> NodeIndex:
        """An index over the online nodes by `key`."""

        def online_key(cluster: ClusterView, node: str) -> float | None:
            if cluster.nodes[node].state is not NodeState.ONLINE:
                return None
            return key(cluster, node)

        return NodeIndex(online_key)

    def filter(
        self,
        job: JobRequest,
        cluster: ClusterView,
        node: NodeView,
        now: float,
        explain: bool = True,
    ) -> tuple[str, str] | None:
        if node.state is not NodeState.ONLINE:
            return "state", f"state {node.state}"
        if node.name in job.exclude:
            return "excluded", "excluded for this job (e.g. the node it leaves)"
        req = job.request
        hard = req.check(
            node,
            mem_free=cluster.mem_free(node.name) if req.mem else None,
            p_up=(lambda n, h: cluster.p_up(n, h, now)) if req.avail else None,
            explain=explain,
        )
        if hard is not None:
            return hard
        return self.extra_filter(job, cluster, node, now)

    def soft_penalty(
        self, job: JobRequest, cluster: ClusterView, node: NodeView, now: float
    ) -> tuple[float, str]:
        req = job.request
        if not req.prefer:
            return 0.0, ""
        w = self.p.pref_weight
        total = 0.0
        notes: list[str] = []
        horizon = req.walltime or self.p.stable_horizon
        for pref in req.prefer:
            pen = 0.0
            if pref.kind == "stable":
                pen = 1.0 - cluster.p_up(node.name, horizon, now)
            elif pref.kind == "volatile":
                pen = cluster.p_up(node.name, horizon, now)
            elif pref.kind == "idle":
                pen = min(1.0, cluster.norm_load(node.name))
            elif pref.kind == "same" and req.group:
                there = cluster.group_nodes(req.group)
                pen = 0.0 if (not there or node.name in there) else 1.0
            elif pref.kind == "spread" and req.group:
                pen = float(cluster.group_nodes(req.group).get(node.name, 0))
            elif pref.kind == "node":
                pen = 0.0 if node.name == pref.arg else 1.0
            elif pref.kind == "label":
                pen = 0.0 if pref.arg in node.labels else 1.0
            if pen:
                total += w * pen
                notes.append(f"{pref} +{w * pen:.3f}")
        return total, ", ".join(notes)

    def _candidates(
        self, job: JobRequest, cluster: ClusterView
    ) -> tuple[Iterable[str], bool]:
        """(names to examine in order, whether the order is the index's and may stop
        early)."""
        req = job.request
        if req.narrows_nodes:
            sets: list[set[str] | frozenset[str]] = []
            if req.nodes is not None:
                sets.append(req.nodes)
            sets += [cluster.with_label(lab) for lab in req.labels]
            for group in req.any_labels:
                union: set[str] = set()
                for lab in group:
                    union |= cluster.with_label(lab)
                sets.append(union)
            smallest = min(sets, key=len)
            if len(smallest) <= NARROW_SCAN_NODES:
                return sorted(n for n in smallest if n in cluster.nodes), False
        if len(cluster.nodes) <= self.full_explain_nodes:
            return self._all_in_index_order(job, cluster), False
        return [], True

    def _all_in_index_order(self, job: JobRequest, cluster: ClusterView) -> list[str]:
        it = self.index_for(job).ordered(cluster)
        try:
            ranked = [name for _, name in it]
        finally:
            it.close()
        seen = set(ranked)
        return ranked + sorted(n for n in cluster.nodes if n not in seen)

    def _extra_candidates(self, job: JobRequest, cluster: ClusterView) -> list[str]:
        """Nodes a soft preference points at, which the index might rank far down."""
        out: list[str] = []
        req = job.request
        for pref in req.prefer:
            if pref.kind == "node" and pref.arg in cluster.nodes:
                out.append(pref.arg)
            elif pref.kind == "label":
                labelled = cluster.with_label(pref.arg)
                if len(labelled) <= NARROW_SCAN_NODES:
                    out += sorted(labelled)
            elif pref.kind == "same" and req.group:
                out += sorted(cluster.group_nodes(req.group))
        return out

    def place(self, job: JobRequest, cluster: ClusterView, now: float) -> Placement:
        names, via_index = self._candidates(job, cluster)
        want = self.shortlist_for(job)
        scored: list[tuple[float, int, NodeVerdict]] = []
        rejected: list[NodeVerdict] = []
        counts: dict[str, int] = {}
        examined = 0
        best_score = math.inf
        seen: set[str] = set()

        def consider(name: str) -> None:
            nonlocal examined
            if name in seen:
                return
            seen.add(name)
            examined += 1
            node = cluster.nodes[name]
            bad = self.filter(job, cluster, node, now, len(rejected) < KEEP_VERDICTS)
            if bad is not None:
                rule, reason = bad
                counts[rule] = counts.get(rule, 0) + 1
                if len(rejected) < KEEP_VERDICTS:
                    rejected.append(NodeVerdict(name, False, None, reason, rule))
                return
            s, why = self.score(job, cluster, node, now)
            pen, notes = self.soft_penalty(job, cluster, node, now)
            if notes:
                why = f"{why}; {notes}" if why else notes
            scored.append((s + pen, examined, NodeVerdict(name, True, s + pen, why)))
            nonlocal best_score
            best_score = min(best_score, s + pen)

        for name in self._extra_candidates(job, cluster):
            consider(name)
        if via_index:
            # Soft preferences add penalties the key does not know: bounding would
            # then wade through every node keyed below the best penalised score, so
            # they are weighed among the `want` first fitting nodes instead.
            bound = self.key_bounds_score(job) and not job.request.prefer
            it = self.index_for(job).ordered(cluster)
            try:
                for key, name in it:
                    if scored:
                        if bound:
                            # Branch and bound: no node further down can beat
                            # the best score found once its key reaches it.
                            if key >= best_score:
                                break
                        elif len(scored) >= want:
                            break
                        if examined >= MAX_EXAMINE:
                            break
                    consider(name)
            finally:
                it.close()
        else:
            for name in names:
                consider(name)
        scored.sort(key=lambda t: (t[0], t[1]))
        total = len(cluster.nodes)
        if not scored:
            if counts:
                why = ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items()))
                reason = f"no node fits ({why})"
            else:
                reason = "no node is online"
            return Placement(
                job.id,
                None,
                self.name,
                now,
                reason,
                tuple(rejected),
                counts,
                examined,
                total,
            )
        best = scored[0][2]
        reason = self.reason(best, len(scored))
        verdicts = tuple(v for _, _, v in scored[:KEEP_VERDICTS]) + tuple(rejected)
        return Placement(
            job.id, best.node, self.name, now, reason, verdicts, counts, examined, total
        )

    def reason(self, best: NodeVerdict, candidates: int) -> str:
        return f"best score {best.score:.3f} ({best.reason}) of {candidates} candidates"


def request_of(job: JobView) -> Request:
    """The request to re-place a running job: as submitted, else its size."""
    if job.request is not None:
        return job.request
    return Request(cpus=job.cpus, mem=job.mem, group=job.group)
