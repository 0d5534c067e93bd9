"""MOSIX-style dynamic load balancing: places on the least loaded node, then migrates.

Kerrighed's rule, made central and given a cost model. At most every `interval`
(2 s), for each node from the most loaded down, take its second most CPU-demanding
migratable job (the most demanding if it has only one) and find the node t that
minimises (load_t + stab_factor x job demand) / capacity_t; move the job if that is
still lower than the source's normalised load by `hysteresis`, the job itself would
not run slower there (a fast crowded node can beat a slow idle one), and the
expected gain beats the cost: gain = the seconds the move saves (the job and its
neighbours at the source run faster, those at the target slower while it is there;
a job's remaining time is its declared time minus its age, else its age), cost =
fixed_cost + rss / bandwidth (more if it dirties memory fast); the gain must exceed
gain_factor x cost. One migration per source per round, `candidates` jobs tried per
source, at most 4096 target nodes examined per round (bounded at 10,000 nodes); a
migrated job rests `job_cooldown`, and may not return to a node it left within
`return_cooldown`: no ping-pong.

Example (1 CPU per node, 6 CPU-bound jobs of age 60 s on n1, stab 1.3): loads 6/0/0
-> n1 sends one job to n2 (0 + 1.3 < 6) -> 5/1/0 -> one to n3 -> 4/1/1 -> one to n2
(1 + 1.3 < 4) -> 3/2/1 -> one to n3 -> 2/2/2; then 2 + 1.3 > 2 everywhere: it stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from schedulers.base import request_of
from schedulers.cluster import ClusterView
from schedulers.decisions import JobNote, MigrationDecision, RebalancePlan
from schedulers.params import param
from schedulers.policies.least_loaded import LeastLoaded, LoadParams
from schedulers.units import format_size
from schedulers.views import JobRequest, JobView

TARGETS_SCORED = 8  # fitting targets, best by index order, scored exactly per move
ROUND_BUDGET = 4096  # target nodes examined per round at most (bounded rounds)


@dataclass(frozen=True)
class MosixParams(LoadParams):
    interval: float = param(
        2.0, "seconds between balancing rounds (Kerrighed: 2 s)", unit="s", min=0
    )
    stab_factor: float = param(
        1.3,
        "a target's load plus this many times the job's demand must stay below the"
        " source's (Kerrighed: 130%)",
        min=1.0,
    )
    hysteresis: float = param(
        0.05, "normalised load margin a move must also win by", min=0
    )
    job_cooldown: float = param(
        30.0, "seconds before a migrated job may move again", unit="s", min=0
    )
    return_cooldown: float = param(
        300.0, "seconds before a job may go back to a node it left", unit="s", min=0
    )
    min_age: float = param(
        5.0, "younger jobs stay: their gain is unknown", unit="s", min=0
    )
    bandwidth: float = param(
        100e6, "bytes per second a migration moves (cost model)", unit="B", min=1
    )
    fixed_cost: float = param(
        0.5, "seconds of freeze, dump and restore per migration", unit="s", min=0
    )
    gain_factor: float = param(
        2.0, "the expected gain must exceed this many times the cost", min=0
    )
    max_migrations: int = param(16, "migrations per round, at most", min=1)
    candidates: int = param(
        3, "jobs of one source tried per round (Kerrighed: 1)", min=1
    )


def _rate(speed: float, cpus: int, load: float) -> float:
    """Share of one reference core a CPU-bound thread gets on a node with `load`."""
    return speed * min(1.0, cpus / max(load, 1e-9))


class Mosix(LeastLoaded):
    """MOSIX-style load balancing by migration (Kerrighed's mosix_load_balancer)."""

    name: ClassVar[str] = "mosix"
    Params: ClassVar[type] = MosixParams
    p: MosixParams

    def __init__(self) -> None:
        super().__init__()
        self._last_round: float | None = None
        self._moved_at: dict[str, float] = {}
        self._left: dict[str, tuple[str, float]] = {}  # job -> (node it left, when)
        self._budget = ROUND_BUDGET

    def start(self, cluster: ClusterView, now: float) -> None:
        super().start(cluster, now)
        self._last_round = None

    def on_migration_result(
        self, decision: MigrationDecision, ok: bool, now: float
    ) -> None:
        if not ok:  # it did not leave: do not hold the source against it
            self._left.pop(decision.job, None)

    # --- the cost model ---------------------------------------------------------

    def remaining(self, job: JobView, now: float) -> float:
        age = job.age(now)
        if job.expected_runtime is not None:
            return max(0.0, job.expected_runtime - age)
        return age

    def cost(self, job: JobView) -> float:
        p = self.p
        transfer = job.rss / p.bandwidth
        dirty = min(1.0, job.dirty_rate / p.bandwidth)  # post-copy: bounded
        return p.fixed_cost + transfer * (1.0 + dirty)

    def speedup(self, job: JobView, src: str, dst: str, cluster: ClusterView) -> float:
        """How much faster the job itself would run on dst (< 1: slower)."""
        s, t = cluster.nodes[src], cluster.nodes[dst]
        ls = cluster.load(src, self.p.load_source)
        lt = cluster.load(dst, self.p.load_source)
        rs = _rate(s.cpu_speed, s.cpus, ls)
        return _rate(t.cpu_speed, t.cpus, lt + job.cpu_demand) / max(rs, 1e-12)

    def gain(
        self, job: JobView, src: str, dst: str, cluster: ClusterView, now: float
    ) -> float:
        """Seconds of run time the move saves, all jobs on both nodes counted.

        Rates are processor-sharing shares held constant while the moved job would
        stay: T_s = its remaining time here, T_t = on the target. It saves T_s - T_t;
        each neighbour at the source runs faster for min(its remaining, T_s); each at
        the target slower for min(its remaining, T_t).
        """
        s, t = cluster.nodes[src], cluster.nodes[dst]
        ls = cluster.load(src, self.p.load_source)
        lt = cluster.load(dst, self.p.load_source)
        d = job.cpu_demand
        rs, rt = _rate(s.cpu_speed, s.cpus, ls), _rate(t.cpu_speed, t.cpus, lt + d)
        t_src = self.remaining(job, now)
        t_dst = t_src * rs / rt
        total = t_src - t_dst
        rs_after = _rate(s.cpu_speed, s.cpus, ls - d)
        for other in cluster.jobs_on(src):
            if other.id != job.id:
                total += min(self.remaining(other, now), t_src) * (1.0 - rs / rs_after)
        rt_before = _rate(t.cpu_speed, t.cpus, lt)
        for other in cluster.jobs_on(dst):
            total -= min(self.remaining(other, now), t_dst) * (rt_before / rt - 1.0)
        return total

    # --- the round ----------------------------------------------------------------

    def _eligible(self, job: JobView, now: float) -> str | None:
        p = self.p
        if not job.migratable:
            return "not migratable"
        if job.age(now) < p.min_age:
            return f"younger than {p.min_age:g}s"
        moved = max(
            job.last_migrated_at or -math.inf, self._moved_at.get(job.id, -math.inf)
        )
        if now - moved < p.job_cooldown:
            return f"migrated {now - moved:.1f}s ago (cooldown {p.job_cooldown:g}s)"
        return None

    def _target(
        self, job: JobView, src: str, limit: float, cluster: ClusterView, now: float
    ) -> tuple[str | None, str]:
        exclude = {src}
        left = self._left.get(job.id)
        if left is not None and now - left[1] < self.p.return_cooldown:
            exclude.add(left[0])
        req = JobRequest(job.id, request_of(job), exclude=frozenset(exclude))
        best: tuple[float, str] | None = None
        fitting = 0
        it = self.index().ordered(cluster)
        try:
            for _, name in it:
                if name in exclude:
                    continue
                node = cluster.nodes[name]
                if self._budget <= 0:
                    break
                self._budget -= 1
                if self.filter(req, cluster, node, now, explain=False) is not None:
                    continue
                fitting += 1
                lt = cluster.load(name, self.p.load_source)
                v = (lt + self.p.stab_factor * job.cpu_demand) / max(
                    node.capacity, 1e-9
                )
                if best is None or v < best[0]:
                    best = (v, name)
                if fitting >= TARGETS_SCORED:
                    break
        finally:
            it.close()
        if best is None:
            if self._budget <= 0:
                return None, "not examined: this round's budget is spent"
            return None, "no other node fits it"
        if best[0] >= limit:
            return None, (
                f"best target {best[1]} would be at {best[0]:.2f} with it"
                f" (x{self.p.stab_factor:g}), not below {limit:.2f}"
            )
        return best[1], f"{best[1]} would be at {best[0]:.2f} < {limit:.2f}"

    def rebalance(self, cluster: ClusterView, now: float) -> RebalancePlan:
        p = self.p
        if self._last_round is not None and now - self._last_round < p.interval:
            wait = p.interval - (now - self._last_round)
            return RebalancePlan(self.name, now, summary=f"next round in {wait:.1f}s")
        self._last_round = now
        self._budget = ROUND_BUDGET
        src_load = p.load_source
        floor = self.index().best(cluster)
        if floor is None:
            return RebalancePlan(self.name, now, summary="no online node")
        sources = sorted(
            (n for n in cluster.nodes if cluster.job_count(n) > 0),
            key=lambda n: (-cluster.norm_load(n, src_load), n),
        )
        migrations: list[MigrationDecision] = []
        notes: list[JobNote] = []
        for src in sources:
            if len(migrations) >= p.max_migrations:
                break
            ns = cluster.norm_load(src, src_load)
            limit = ns - p.hysteresis
            lightest = self.index().best(cluster)
            if lightest is None:
                break
            lightest_norm = cluster.norm_load(lightest[1], src_load)
            if lightest_norm + p.hysteresis >= ns:
                break  # sorted: no later source is more loaded than the lightest
            jobs = sorted(cluster.jobs_on(src), key=lambda j: (-j.cpu_demand, j.id))
            eligible = []
            for job in jobs:
                why = self._eligible(job, now)
                if why is None:
                    eligible.append(job)
                else:
                    notes.append(JobNote(job.id, src, why))
            # Kerrighed: the second most loaded task first (the most loaded one is
            # likely the reason the node is busy for long; moving it hurts most).
            order = eligible[1:2] + eligible[:1] + eligible[2 : p.candidates]
            for job in order:
                target, why = self._target(job, src, limit, cluster, now)
                if target is None:
                    notes.append(JobNote(job.id, src, why))
                    continue
                own = self.speedup(job, src, target, cluster)
                if own < 1.0:
                    notes.append(
                        JobNote(
                            job.id,
                            src,
                            f"{why}, but it would run {1 / own:.2f}x slower there",
                        )
                    )
                    continue
                gain = self.gain(job, src, target, cluster, now)
                cost = self.cost(job)
                if gain < p.gain_factor * cost:
                    notes.append(
                        JobNote(
                            job.id,
                            src,
                            f"{why}, but gain {gain:.1f}s < {p.gain_factor:g} x cost"
                            f" {cost:.1f}s (rss {format_size(job.rss)})",
                        )
                    )
                    continue
                migrations.append(
                    MigrationDecision(
                        job=job.id,
                        source=src,
                        target=target,
                        policy=self.name,
                        at=now,
                        reason=f"{src} at {ns:.2f}; {why}; gain {gain:.1f}s vs cost"
                        f" {cost:.1f}s",
                        gain=gain,
                        cost=cost,
                    )
                )
                cluster.move_job(job.id, target, now)
                self._moved_at[job.id] = now
                self._left[job.id] = (src, now)
                break
        self._forget_old(cluster, now)
        summary = (
            f"{len(migrations)} migration(s) from {len(sources)} loaded node(s)"
            if migrations
            else "balanced: no move passes the load and cost tests"
        )
        return RebalancePlan(self.name, now, tuple(migrations), tuple(notes), summary)

    def _forget_old(self, cluster: ClusterView, now: float) -> None:
        horizon = max(self.p.job_cooldown, self.p.return_cooldown)
        for table in (self._moved_at,):
            for jid in [
                j
                for j, t in table.items()
                if now - t > horizon or j not in cluster.jobs
            ]:
                del table[jid]
        for jid in [
            j
            for j, (_, t) in self._left.items()
            if now - t > horizon or j not in cluster.jobs
        ]:
            del self._left[jid]
