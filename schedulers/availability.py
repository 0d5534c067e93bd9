"""Node availability from up/down history: will these N nodes all stay up for T?

After Kondo, Andrzejak and Anderson ("On Correlated Availability in Internet
Distributed Systems", 2008): per-node availability is not enough, because hosts fail
together (a switch, a power feed, a rack, a building's night); they find groups of
hosts whose availability is correlated and use those groups to pick sets of hosts that
stay up together for parallel jobs. Here, from the node events the coordinator sees:

1. Per node, its up intervals (ADDED/RETURNED .. LOST; an eviction ends an interval
   without counting as a failure: right-censored). Survival of an up interval is the
   Kaplan-Meier estimate when the node has failed often enough, else an exponential
   whose rate is shrunk towards the cluster's pooled rate (a gamma prior worth one
   failure). The prediction is conditional on the node's current age a:
   P_i(T) = S(a + T) / S(a) (beyond the longest interval seen, an exponential tail).
2. Across nodes, failures less than `window` apart are coincidences; a pair of nodes
   that coincides far more often than chance would allow (Poisson, given their
   failure counts) is correlated, and correlated pairs join into groups. Within a group
   coincident failures are one shock.
3. For a set S: P(all up for T) = prod_i P_i(T) * prod_G exp((sum_{i in S&G} l_i -
   l_{S&G}) T), where l_i is node i's failure rate and l_{S&G} the rate of distinct
   shocks touching S&G: the independent product corrected for the failures that hit
   several members at once (capped by the weakest member).

Example: 5 nodes fail alone at 0.01/h and together (one shock) at 0.05/h, so each
fails at 0.06/h. P(one stays up 5h) = exp(-0.3) = 0.74. Independence would say
P(all 5 stay up 5h) = exp(-5 * 0.06 * 5) = 0.22; the shocks count once, so the model
says exp(-(0.05 + 5 * 0.01) * 5) = 0.61, the true value. Five independent nodes with
the same 0.06/h get 0.22. So a long parallel job goes to one correlated group rather
than to the individually best nodes scattered over several groups.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schedulers.views import DOWN_KINDS, UP_KINDS, NodeEvent, NodeEventKind

DEFAULT_MTBF = 30 * 86400.0  # prior mean up time when the cluster has seen no failure


@dataclass
class NodeHistory:
    """Up intervals of one node: closed (start, end, failed) and the open one."""

    name: str
    first_seen: float | None = None
    intervals: list[tuple[float, float, bool]] = field(default_factory=list)
    up_since: float | None = None
    down_since: float | None = None
    _km: tuple[list[float], list[float]] | None = field(default=None, repr=False)

    def record(self, kind: NodeEventKind, at: float) -> bool:
        """Applies one event; True when it ended an up interval by a failure."""
        if self.first_seen is None:
            self.first_seen = at
        if kind in UP_KINDS:
            if self.up_since is None:
                self.up_since = at
                self.down_since = None
            return False
        if kind in DOWN_KINDS and self.up_since is not None:
            failed = kind is NodeEventKind.LOST
            self.intervals.append((self.up_since, max(at, self.up_since), failed))
            self.up_since = None
            self.down_since = at
            self._km = None
            return failed
        return False

    @property
    def failures(self) -> int:
        return sum(1 for _, _, failed in self.intervals if failed)

    def uptime(self, now: float | None = None) -> float:
        """Seconds up: closed intervals, plus the open one up to `now` if given."""
        total = sum(end - start for start, end, _ in self.intervals)
        if now is not None and self.up_since is not None:
            total += max(0.0, now - self.up_since)
        return total

    def up_fraction(self, now: float) -> float | None:
        if self.first_seen is None or now <= self.first_seen:
            return None
        return min(1.0, self.uptime(now) / (now - self.first_seen))

    def km(self) -> tuple[list[float], list[float]]:
        """Kaplan-Meier survival of up intervals: step times and S just after them."""
        if self._km is None:
            durations = sorted(
                (end - start, failed) for start, end, failed in self.intervals
            )
            times: list[float] = []
            surv: list[float] = []
            s = 1.0
            at_risk = len(durations)
            i = 0
            while i < len(durations):
                t = durations[i][0]
                deaths = 0
                leaving = 0
                while i < len(durations) and durations[i][0] == t:
                    deaths += durations[i][1]
                    leaving += 1
                    i += 1
                if deaths:
                    s *= 1.0 - deaths / at_risk
                    times.append(t)
                    surv.append(s)
                at_risk -= leaving
            self._km = (times, surv)
        return self._km

    def longest(self) -> float:
        return max((end - start for start, end, _ in self.intervals), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "first_seen": self.first_seen,
            "intervals": [list(iv) for iv in self.intervals],
            "up_since": self.up_since,
            "down_since": self.down_since,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> NodeHistory:
        raw = d.get("intervals") or []
        assert isinstance(raw, list)
        first_seen, up_since, down_since = (
            d.get("first_seen"),
            d.get("up_since"),
            d.get("down_since"),
        )
        return cls(
            name=str(d["name"]),
            first_seen=None if first_seen is None else float(str(first_seen)),
            intervals=[(float(a), float(b), bool(f)) for a, b, f in raw],
            up_since=None if up_since is None else float(str(up_since)),
            down_since=None if down_since is None else float(str(down_since)),
        )


@dataclass(frozen=True, slots=True)
class NodeAvailability:
    """A node's availability in numbers, for `ssi why` and `ssi node show`."""

    name: str
    up: bool
    age: float  # seconds in the current up interval (0 when down)
    failures: int
    mtbf: float  # shrunk mean up time, seconds
    up_fraction: float | None
    method: str  # "kaplan-meier" | "exponential"
    group: int | None  # correlation group id, None when independent


def _poisson_sf(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    term = math.exp(-mean)
    cdf = term
    for i in range(1, k):
        term *= mean / i
        cdf += term
    return max(0.0, 1.0 - cdf)


class AvailabilityModel:
    """Histories of all nodes, and the predictions made from them (pure, no clock).

    Tunables: window (s) within which failures coincide; km_min_failures before a
    node's own Kaplan-Meier curve is trusted; significance of a correlated pair.
    """

    def __init__(
        self,
        *,
        window: float = 60.0,
        km_min_failures: int = 10,
        min_cofailures: int = 3,
        significance: float = 1e-4,
        default_mtbf: float = DEFAULT_MTBF,
    ) -> None:
        self.window = window
        self.km_min_failures = km_min_failures
        self.min_cofailures = min_cofailures
        self.significance = significance
        self.default_mtbf = default_mtbf
        self.histories: dict[str, NodeHistory] = {}
        self._failures: list[tuple[float, str]] = []  # (time, node), sorted
        self._groups: dict[str, int] | None = None  # node -> group id
        self._shocks: dict[str, set[int]] = {}  # node -> shock ids (grouped nodes)
        self._group_members: dict[int, list[str]] = {}
        self._pooled: float | None = None
        self.version = 0  # bumps on every change that can move a prediction

    # --- feeding --------------------------------------------------------------

    def history(self, node: str) -> NodeHistory:
        h = self.histories.get(node)
        if h is None:
            h = self.histories[node] = NodeHistory(node)
        return h

    def record(self, event: NodeEvent) -> None:
        self.record_kind(event.node, event.kind, event.at)

    def record_kind(self, node: str, kind: NodeEventKind, at: float) -> None:
        h = self.history(node)
        if h.record(kind, at):
            item = (at, node)
            if not self._failures or self._failures[-1] <= item:
                self._failures.append(item)
            else:
                bisect.insort(self._failures, item)
            self._groups = None
            self._pooled = None
        elif kind in UP_KINDS or kind in DOWN_KINDS:
            self._pooled = None
        self.version += 1

    def load(self, histories: Iterable[NodeHistory]) -> None:
        """Replaces all histories (e.g. from the store after a restart)."""
        self.histories = {h.name: h for h in histories}
        self._failures = sorted(
            (end, h.name)
            for h in self.histories.values()
            for _, end, failed in h.intervals
            if failed
        )
        self._groups = None
        self._pooled = None
        self.version += 1

    # --- per node ---------------------------------------------------------------

    def pooled_mtbf(self) -> float:
        """Cluster-wide mean up time (total uptime / failures): the prior's mean."""
        if self._pooled is None:
            up = sum(h.uptime() for h in self.histories.values())
            f = sum(h.failures for h in self.histories.values())
            self._pooled = up / f if f else max(self.default_mtbf, up)
        return self._pooled

    def rate(self, node: str, now: float | None = None) -> float:
        """Failure rate (1/s), shrunk towards the pooled rate by one prior failure."""
        h = self.histories.get(node)
        m0 = self.pooled_mtbf()
        if h is None:
            return 1.0 / m0
        return (1.0 + h.failures) / (m0 + h.uptime(now))

    def p_up(self, node: str, horizon: float, now: float) -> float:
        """P(node stays up for `horizon` seconds from `now`): 0 when it is down."""
        h = self.histories.get(node)
        if h is None:
            return math.exp(-horizon / self.pooled_mtbf())
        if h.up_since is None:
            return 0.0
        age = max(0.0, now - h.up_since)
        lam = self.rate(node, now)
        if h.failures < self.km_min_failures:
            return math.exp(-lam * horizon)
        times, surv = h.km()
        tmax = h.longest()

        def s_at(t: float) -> float:
            if t <= tmax:
                i = bisect.bisect_right(times, t)
                return surv[i - 1] if i else 1.0
            i = bisect.bisect_right(times, tmax)
            base = surv[i - 1] if i else 1.0
            return base * math.exp(-lam * (t - tmax))

        s_age = s_at(age)
        if s_age <= 0.0:
            return math.exp(-lam * horizon)
        return min(1.0, s_at(age + horizon) / s_age)

    def describe(self, node: str, now: float) -> NodeAvailability:
        h = self.history(node)
        groups = self.groups()
        return NodeAvailability(
            name=node,
            up=h.up_since is not None,
            age=0.0 if h.up_since is None else max(0.0, now - h.up_since),
            failures=h.failures,
            mtbf=1.0 / self.rate(node, now),
            up_fraction=h.up_fraction(now),
            method="kaplan-meier"
            if h.failures >= self.km_min_failures
            else "exponential",
            group=groups.get(node),
        )

    # --- across nodes -----------------------------------------------------------

    def groups(self) -> dict[str, int]:
        """Correlation groups: node -> group id, for nodes in a group of 2 or more."""
        if self._groups is None:
            self._rebuild_groups()
        assert self._groups is not None
        return self._groups

    def group_members(self) -> dict[int, list[str]]:
        self.groups()
        return self._group_members

    def _observed_span(self) -> float:
        starts = [
            h.first_seen for h in self.histories.values() if h.first_seen is not None
        ]
        if not starts or not self._failures:
            return 0.0
        return max(self._failures[-1][0] - min(starts), self.window)

    def _rebuild_groups(self) -> None:
        w = self.window
        fails = self._failures
        counts: dict[str, int] = {}
        for _, n in fails:
            counts[n] = counts.get(n, 0) + 1
        # Coincidences: each failure paired with the later failures of other nodes
        # within the window (a node counted once per partner failure).
        pairs: dict[tuple[str, str], int] = {}
        j0 = 0
        for i, (t, a) in enumerate(fails):
            while fails[j0][0] < t - w:
                j0 += 1
            seen: set[str] = set()
            for j in range(j0, i):
                b = fails[j][1]
                if b != a and b not in seen:
                    seen.add(b)
                    key = (a, b) if a < b else (b, a)
                    pairs[key] = pairs.get(key, 0) + 1
        span = self._observed_span()
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                parent[x] = parent.get(parent[x], parent[x])
                x = parent[x]
            return x

        for (a, b), c in sorted(pairs.items()):
            if c < self.min_cofailures or span <= 0:
                continue
            expected = counts[a] * counts[b] * 2 * w / span
            if _poisson_sf(c, expected) < self.significance:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        members: dict[str, list[str]] = {}
        for n in parent:
            members.setdefault(find(n), []).append(n)
        self._groups = {}
        self._group_members = {}
        for gid, root in enumerate(sorted(members)):
            names = sorted(members[root])
            self._group_members[gid] = names
            for n in names:
                self._groups[n] = gid
        # Shocks: within a group, failures closer than the window to the shock's
        # first failure are one shock.
        self._shocks = {}
        open_shock: dict[int, tuple[float, int]] = {}
        next_id = 0
        for t, n in fails:
            g = self._groups.get(n)
            if g is None:
                continue
            gid = g
            cur = open_shock.get(gid)
            if cur is None or t - cur[0] > w:
                cur = (t, next_id)
                open_shock[gid] = cur
                next_id += 1
            self._shocks.setdefault(n, set()).add(cur[1])

    def p_all_up(self, nodes: Iterable[str], horizon: float, now: float) -> float:
        """P(every node of the set stays up for `horizon`), correlation included."""
        uniq = sorted(set(nodes))
        if not uniq:
            return 1.0
        ps = [self.p_up(n, horizon, now) for n in uniq]
        p = math.prod(ps)
        if p <= 0.0:
            return 0.0
        groups = self.groups()
        by_group: dict[int, list[str]] = {}
        for n in uniq:
            gid = groups.get(n)
            if gid is not None:
                by_group.setdefault(gid, []).append(n)
        log_corr = 0.0
        for members in by_group.values():
            if len(members) < 2:
                continue
            log_corr += self._excess_rate(members) * horizon
        return min(min(ps), p * math.exp(log_corr))

    def _excess_rate(self, members: Sequence[str]) -> float:
        """sum of member failure rates minus the rate of distinct shocks (>= 0)."""
        rates = 0.0
        exposure = 0.0
        shocks: set[int] = set()
        for n in members:
            h = self.histories[n]
            up = h.uptime()
            if up <= 0:
                return 0.0
            rates += h.failures / up
            exposure += up
            shocks |= self._shocks.get(n, set())
        exposure /= len(members)
        return max(0.0, rates - len(shocks) / exposure)

    def best_set(
        self, n: int, horizon: float, candidates: Iterable[str], now: float
    ) -> tuple[list[str], float]:
        """Greedy: n nodes among candidates maximising P(all up for horizon)."""
        pool = sorted(c for c in set(candidates) if self.p_up(c, horizon, now) > 0)
        chosen: list[str] = []
        p = 1.0
        while len(chosen) < n and pool:
            best = max(
                pool, key=lambda c: (self.p_all_up(chosen + [c], horizon, now), c)
            )
            chosen.append(best)
            pool.remove(best)
            p = self.p_all_up(chosen, horizon, now)
        return chosen, (p if len(chosen) == n else 0.0)
