"""Node availability from up/down history: will these N nodes all stay up for T?

After Kondo, Andrzejak and Anderson ("On Correlated Availability in Internet
Distributed Systems", 2008): per-node availability is not enough, because hosts fail
together (a switch, a power feed, a rack, a building's night); they find groups of
hosts whose availability is correlated and use those groups to pick sets of hosts that
stay up together for parallel jobs. Here, from the node events the coordinator sees:

1. Per node, its up intervals (ADDED/RETURNED .. LOST; an eviction ends an interval
   without counting as a failure: right-censored). With enough failures, survival of
   an up interval is a censored Weibull fit (exponential when shape = 1, a falling
   hazard when < 1), blended with the Kaplan-Meier estimate in proportion to how
   many intervals outlived age + T; with few failures, an exponential whose rate is
   shrunk towards the cluster's pooled rate (a gamma prior worth one failure). The
   prediction is conditional on the node's current age a: P_i(T) = S(a + T) / S(a).
2. Across nodes, failures less than `window` apart are coincidences; a pair of nodes
   that coincides far more often than chance would allow (Poisson, given their
   failure counts) is correlated, and correlated pairs join into groups.
3. For a set S, nodes of different groups (and ungrouped nodes) are independent:
   P(S) = prod over groups G of P(S & G) * prod over ungrouped i of P_i. For the
   members of one group, P(S & G) comes from their joint history: the intervals in
   which all of them were up, ending when the first went down, fitted like a single
   node's (so coincident failures count once, and their timing is the data's).

Example: 5 nodes fail alone at 0.01/h and together (one shock) at 0.05/h, so each
fails at 0.06/h. P(one stays up 5h) = exp(-0.3) = 0.74. Independence would say
P(all 5 stay up 5h) = exp(-5 * 0.06 * 5) = 0.22; their joint history fails at
0.05 + 5 * 0.01 = 0.1/h, so the model says exp(-0.5) = 0.61, the true value. Five
independent nodes with the same 0.06/h get 0.22. So a long parallel job goes to one
correlated group rather than to the individually best nodes scattered over several.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schedulers.views import DOWN_KINDS, UP_KINDS, NodeEvent, NodeEventKind

DEFAULT_MTBF = 30 * 86400.0  # prior mean up time when the cluster has seen no failure


def _fit_weibull(data: list[tuple[float, bool]]) -> tuple[float, float] | None:
    """Censored Weibull MLE (shape k, scale), or None when it cannot be fitted. The
    shape solves sum t^k ln t / sum t^k - 1/k = mean ln t over failures (monotone in
    k: bisection on log k), then scale^k = sum t^k / failures."""
    data = [(t, f) for t, f in data if t > 0]
    r = sum(1 for _, f in data if f)
    if r < 2:
        return None
    mean_t = sum(t for t, _ in data) / len(data)
    logs = [math.log(t / mean_t) for t, _ in data]  # scaled: no overflow in t^k
    c = sum(lg for lg, (_, f) in zip(logs, data, strict=True) if f) / r

    def g(k: float) -> float:
        powers = [math.exp(k * lg) for lg in logs]
        b = sum(powers)
        a = sum(p * lg for p, lg in zip(powers, logs, strict=True))
        return a / b - 1.0 / k - c

    lo, hi = math.log(0.05), math.log(20.0)
    if g(math.exp(lo)) > 0 or g(math.exp(hi)) < 0:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if g(math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    k = math.exp((lo + hi) / 2)
    scale = (sum(math.exp(k * lg) for lg in logs) / r) ** (1.0 / k) * mean_t
    return (k, scale)


class Survival:
    """Survival of interval lengths [(length, ended by a failure)]: Weibull fit,
    Kaplan-Meier curve, and P(lasting `horizon` more | lasted `age`)."""

    def __init__(self, data: list[tuple[float, bool]]) -> None:
        self.data = data
        self.failures = sum(1 for _, f in data if f)
        self.exposure = sum(t for t, _ in data)
        self._durations = sorted(t for t, _ in data)
        self._weibull: tuple[float, float] | None | bool = False  # False: not fitted
        self._km: tuple[list[float], list[float]] | None = None

    def weibull(self) -> tuple[float, float] | None:
        if self._weibull is False:
            self._weibull = _fit_weibull(self.data)
        return self._weibull if isinstance(self._weibull, tuple) else None

    def km(self) -> tuple[list[float], list[float]]:
        """Step times and S(t) just after each."""
        if self._km is None:
            ordered = sorted(self.data)
            times: list[float] = []
            surv: list[float] = []
            s = 1.0
            at_risk = len(ordered)
            i = 0
            while i < len(ordered):
                t = ordered[i][0]
                deaths = leaving = 0
                while i < len(ordered) and ordered[i][0] == t:
                    deaths += ordered[i][1]
                    leaving += 1
                    i += 1
                if deaths:
                    s *= 1.0 - deaths / at_risk
                    times.append(t)
                    surv.append(s)
                at_risk -= leaving
            self._km = (times, surv)
        return self._km

    def at_risk(self, t: float) -> int:
        """Intervals that lasted longer than t."""
        return len(self._durations) - bisect.bisect_right(self._durations, t)

    def p(
        self, age: float, horizon: float, *, fallback_rate: float, credibility: float
    ) -> float:
        wb = self.weibull()
        if wb is not None:
            k, scale = wb
            p = math.exp((age / scale) ** k - ((age + horizon) / scale) ** k)
        else:
            p = math.exp(-fallback_rate * horizon)
        # Where enough intervals outlived age + T, let the data speak (Kaplan-Meier),
        # weighted by how many did: KM ratios deep in the tail are noise.
        n = self.at_risk(age + horizon)
        if n > 0:
            times, surv = self.km()
            i_a = bisect.bisect_right(times, age)
            i_b = bisect.bisect_right(times, age + horizon)
            s_a = surv[i_a - 1] if i_a else 1.0
            s_b = surv[i_b - 1] if i_b else 1.0
            if s_a > 0:
                w = n / (n + credibility)
                p = w * (s_b / s_a) + (1.0 - w) * p
        return min(1.0, max(0.0, p))


@dataclass
class NodeHistory:
    """Up intervals of one node: closed (start, end, failed) and the open one."""

    name: str
    first_seen: float | None = None
    intervals: list[tuple[float, float, bool]] = field(default_factory=list)
    up_since: float | None = None
    down_since: float | None = None
    _survival: Survival | None = field(default=None, repr=False)

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
            self._survival = None
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

    def survival(self) -> Survival:
        if self._survival is None:
            self._survival = Survival([(e - s, f) for s, e, f in self.intervals])
        return self._survival

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

        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(str(v))

        return cls(
            name=str(d["name"]),
            first_seen=opt("first_seen"),
            intervals=[(float(a), float(b), bool(f)) for a, b, f in raw],
            up_since=opt("up_since"),
            down_since=opt("down_since"),
        )


def joint_intervals(histories: list[NodeHistory]) -> list[tuple[float, bool]]:
    """Closed intervals during which every one of the nodes was up, each ending when
    the first of them went down (failed if that one failed). The current all-up
    interval, if any, is still open and left out."""
    n = len(histories)
    events: list[tuple[float, int, bool]] = []  # (time, +1 up / -1 down, failed)
    for h in histories:
        for s, e, f in h.intervals:
            events.append((s, 1, False))
            events.append((e, -1, f))
        if h.up_since is not None:
            events.append((h.up_since, 1, False))
    events.sort(key=lambda ev: (ev[0], -ev[1]))
    out: list[tuple[float, bool]] = []
    up = 0
    since = 0.0
    for t, step, failed in events:
        if step > 0:
            up += 1
            if up == n:
                since = t
        else:
            if up == n:
                out.append((t - since, failed))
            up -= 1
    return out


@dataclass(frozen=True, slots=True)
class NodeAvailability:
    """A node's availability in numbers, for `ssi why` and `ssi node show`."""

    name: str
    up: bool
    age: float  # seconds in the current up interval (0 when down)
    failures: int
    mtbf: float  # shrunk mean up time, seconds
    up_fraction: float | None
    method: str  # "weibull+km" | "exponential"
    weibull_shape: float | None
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

    Tunables: window (s) within which failures coincide; fit_min_failures before a
    node's (or a set's) own survival fit is used, else a shrunk exponential;
    km_credibility, the number of intervals outliving age + T at which Kaplan-Meier
    gets half the weight; min_cofailures and significance for a pair of nodes to be
    called correlated.
    """

    def __init__(
        self,
        *,
        window: float = 60.0,
        fit_min_failures: int = 10,
        km_credibility: float = 200.0,
        min_cofailures: int = 3,
        significance: float = 1e-4,
        default_mtbf: float = DEFAULT_MTBF,
    ) -> None:
        self.window = window
        self.fit_min_failures = fit_min_failures
        self.km_credibility = km_credibility
        self.min_cofailures = min_cofailures
        self.significance = significance
        self.default_mtbf = default_mtbf
        self.histories: dict[str, NodeHistory] = {}
        self._failures: list[tuple[float, str]] = []  # (time, node), sorted
        self._groups: dict[str, int] | None = None  # node -> group id
        self._group_members: dict[int, list[str]] = {}
        self._joint: dict[frozenset[str], Survival] = {}
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
        closed = len(h.intervals)
        if h.record(kind, at):
            item = (at, node)
            if not self._failures or self._failures[-1] <= item:
                self._failures.append(item)
            else:
                bisect.insort(self._failures, item)
            self._groups = None
        if len(h.intervals) != closed:
            self._pooled = None
            self._joint.clear()
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
        self._joint.clear()
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
        lam = self.rate(node, now)
        if h.failures < self.fit_min_failures:
            return math.exp(-lam * horizon)
        return h.survival().p(
            max(0.0, now - h.up_since),
            horizon,
            fallback_rate=lam,
            credibility=self.km_credibility,
        )

    def method(self, node: str) -> str:
        h = self.histories.get(node)
        if h is None or h.failures < self.fit_min_failures:
            return "exponential"
        return "weibull+km" if h.survival().weibull() else "exponential+km"

    def describe(self, node: str, now: float) -> NodeAvailability:
        h = self.history(node)
        wb = h.survival().weibull() if h.failures >= self.fit_min_failures else None
        return NodeAvailability(
            name=node,
            up=h.up_since is not None,
            age=0.0 if h.up_since is None else max(0.0, now - h.up_since),
            failures=h.failures,
            mtbf=1.0 / self.rate(node, now),
            up_fraction=h.up_fraction(now),
            method=self.method(node),
            weibull_shape=wb[0] if wb else None,
            group=self.groups().get(node),
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
        # Coincidences: each failure paired with the earlier failures of other nodes
        # within the window (a partner counted once per failure).
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
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for (a, b), c in sorted(pairs.items()):
            if c < self.min_cofailures or span <= 0:
                continue
            expected = counts[a] * counts[b] * 2 * w / span
            if _poisson_sf(c, expected) < self.significance:
                parent.setdefault(a, a)
                parent.setdefault(b, b)
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
        self._joint.clear()

    def joint_survival(self, nodes: frozenset[str]) -> Survival:
        s = self._joint.get(nodes)
        if s is None:
            s = Survival(joint_intervals([self.history(n) for n in sorted(nodes)]))
            if len(self._joint) > 4096:
                self._joint.clear()
            self._joint[nodes] = s
        return s

    def p_joint(self, nodes: frozenset[str], horizon: float, now: float) -> float:
        """P(all of these nodes, taken as one unit, stay up for horizon)."""
        hs = [self.history(n) for n in nodes]
        if any(h.up_since is None for h in hs):
            return 0.0
        if len(hs) == 1:
            return self.p_up(next(iter(nodes)), horizon, now)
        surv = self.joint_survival(nodes)
        age = max(0.0, now - max(h.up_since for h in hs if h.up_since is not None))
        if surv.failures < self.fit_min_failures or surv.exposure <= 0:
            # Too little joint history: independence, the cautious answer.
            return math.prod(self.p_up(n, horizon, now) for n in nodes)
        rate = surv.failures / surv.exposure
        return surv.p(age, horizon, fallback_rate=rate, credibility=self.km_credibility)

    def p_all_up(self, nodes: Iterable[str], horizon: float, now: float) -> float:
        """P(every node of the set stays up for `horizon`), correlation included."""
        uniq = set(nodes)
        if not uniq:
            return 1.0
        groups = self.groups()
        parts: dict[int, set[str]] = {}
        p = 1.0
        for n in sorted(uniq):
            gid = groups.get(n)
            if gid is None:
                p *= self.p_up(n, horizon, now)
            else:
                parts.setdefault(gid, set()).add(n)
        for members in parts.values():
            p *= self.p_joint(frozenset(members), horizon, now)
        return p

    def best_set(
        self, n: int, horizon: float, candidates: Iterable[str], now: float
    ) -> tuple[list[str], float]:
        """n nodes among candidates maximising P(all up for horizon): greedy over
        all candidates, and greedy inside each correlation group big enough (a set
        inside one failure domain is often the best and greedy alone misses it)."""
        pool = sorted(c for c in set(candidates) if self.p_up(c, horizon, now) > 0)
        groups = self.groups()
        tries = [pool]
        by_group: dict[int, list[str]] = {}
        for c in pool:
            if c in groups:
                by_group.setdefault(groups[c], []).append(c)
        tries += [members for members in by_group.values() if len(members) >= n]
        best: tuple[float, list[str]] = (0.0, [])
        for start in tries:
            chosen = self._greedy(n, horizon, start, now)
            if len(chosen) == n:
                p = self.p_all_up(chosen, horizon, now)
                if p > best[0] or not best[1]:
                    best = (p, chosen)
        return best[1], best[0]

    def _greedy(self, n: int, horizon: float, pool: list[str], now: float) -> list[str]:
        left = list(pool)
        chosen: list[str] = []
        while len(chosen) < n and left:
            pick = max(
                left, key=lambda c: (self.p_all_up(chosen + [c], horizon, now), c)
            )
            chosen.append(pick)
            left.remove(pick)
        return chosen
