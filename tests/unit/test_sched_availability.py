"""The availability predictor on generated traces whose answers are known."""

from __future__ import annotations

import math
import statistics

import pytest

from schedulers.availability import AvailabilityModel, NodeHistory, joint_intervals
from schedulers.sim.traces import GroupSpec, Trace, generate
from schedulers.views import NodeEvent, NodeEventKind

H = 3600.0


def feed(
    trace: Trace, nodes: list[str], model: AvailabilityModel | None = None
) -> AvailabilityModel:
    m = model or AvailabilityModel()
    for n in nodes:
        m.record_kind(n, NodeEventKind.ADDED, 0.0)
    for t, n, kind in trace:
        m.record_kind(n, kind, t)
    return m


def test_exponential_uptimes_give_exp_minus_t_over_mean() -> None:
    mean_up = 10 * H
    trace = generate(
        [GroupSpec(["n"], node_rate=1 / mean_up, mean_down=600)], 20000 * H, seed=7
    )
    m = feed(trace, ["n"])
    h = m.histories["n"]
    assert h.failures > 1500
    # Memoryless: the same answer whatever the node's current age.
    last = h.up_since if h.up_since is not None else h.intervals[-1][1]
    if h.up_since is None:
        m.record_kind("n", NodeEventKind.RETURNED, last + 1)
        last += 1
    for age in (0.0, 2 * H, 10 * H, 30 * H):
        for t in (1 * H, 5 * H, 20 * H):
            p = m.p_up("n", t, last + age)
            assert p == pytest.approx(math.exp(-t / mean_up), abs=0.04), (age, t)
    d = m.describe("n", last)
    assert d.method == "weibull+km" and d.weibull_shape == pytest.approx(1.0, abs=0.08)
    assert d.mtbf == pytest.approx(mean_up, rel=0.1)


def test_weibull_uptimes_condition_on_age() -> None:
    k, scale = 0.5, 10 * H  # a hazard that falls with uptime: old nodes are safer
    trace = generate(
        [GroupSpec(["w"], weibull_shape=k, weibull_scale=scale, mean_down=60)],
        20000 * H,
        seed=3,
    )
    m = feed(trace, ["w"])
    h = m.histories["w"]
    if h.up_since is None:
        m.record_kind("w", NodeEventKind.RETURNED, h.intervals[-1][1] + 1)
    start = h.up_since
    assert start is not None
    for age in (0.0, 1 * H, 10 * H, 50 * H):
        for t in (1 * H, 10 * H):
            truth = math.exp((age / scale) ** k - ((age + t) / scale) ** k)
            assert m.p_up("w", t, start + age) == pytest.approx(truth, abs=0.04)
    assert m.p_up("w", 10 * H, start + 50 * H) > m.p_up("w", 10 * H, start) + 0.3


def test_little_history_shrinks_to_the_pooled_rate() -> None:
    m = AvailabilityModel()
    for n in ("a", "b", "c"):
        m.record_kind(n, NodeEventKind.ADDED, 0.0)
    # a and b fail every 10h for a while; c has never failed and is 5h old.
    for i in range(1, 21):
        for n in ("a", "b"):
            m.record_kind(n, NodeEventKind.LOST, i * 10 * H)
            m.record_kind(n, NodeEventKind.RETURNED, i * 10 * H + 1)
    m.record_kind("c", NodeEventKind.EVICTED, 5 * H)  # planned: not a failure
    m.record_kind("c", NodeEventKind.ADDED, 5 * H + 1)
    assert m.histories["c"].failures == 0 and len(m.histories["c"].intervals) == 1
    now = 200 * H + 2
    pooled = m.pooled_mtbf()
    assert pooled == pytest.approx((400 * H + 5 * H) / 40, rel=0.01)
    # c, 5h of history and no failure: one prior failure over (pooled + 5h), a
    # cautious estimate rather than a perfect record...
    assert m.rate("c") == pytest.approx(1 / (pooled + 5 * H))
    assert m.p_up("c", 10 * H, 5 * H + 1) == pytest.approx(
        math.exp(-10 * H / (pooled + 5 * H)), rel=1e-3
    )
    # ... which improves as it keeps running without failing
    assert m.p_up("c", 10 * H, now) > 0.9
    assert m.p_up("nobody", 10 * H, now) == pytest.approx(math.exp(-10 * H / pooled))
    m.record_kind("a", NodeEventKind.LOST, now)
    assert m.p_up("a", 1.0, now + 1) == 0.0  # a down node stays up for nothing


GROUP = [f"c{i}" for i in range(5)]
ALONE = [f"i{i}" for i in range(5)]


@pytest.fixture(scope="module")
def correlated() -> AvailabilityModel:
    """5 nodes with shocks at 0.05/h and own failures at 0.01/h, and 5 independent
    nodes failing at 0.06/h: the same marginal rate, different joint behaviour."""
    specs = [GroupSpec(GROUP, shock_rate=0.05 / H, node_rate=0.01 / H, mean_down=300)]
    specs += [GroupSpec([n], node_rate=0.06 / H, mean_down=300) for n in ALONE]
    m = feed(generate(specs, 20000 * H, seed=11), GROUP + ALONE)
    return m


def _joint_spans(m: AvailabilityModel, nodes: list[str]) -> list[tuple[float, float]]:
    events = []
    for n in nodes:
        for s, e, _ in m.histories[n].intervals:
            events += [(s, 1), (e, -1)]
    events.sort(key=lambda x: (x[0], -x[1]))
    spans, up, since = [], 0, 0.0
    for t, step in events:
        if step > 0:
            up += 1
            if up == len(nodes):
                since = t
        else:
            if up == len(nodes):
                spans.append((since, t))
            up -= 1
    return spans


def test_correlated_group_is_found_and_nothing_else(
    correlated: AvailabilityModel,
) -> None:
    assert correlated.group_members() == {0: GROUP}
    assert correlated.describe("c3", 0.0).group == 0
    assert correlated.describe("i3", 0.0).group is None


def test_joint_probability_matches_the_generator(correlated: AvailabilityModel) -> None:
    t = 5 * H
    end = max(h.intervals[-1][1] for h in correlated.histories.values())
    for n in GROUP + ALONE:  # bring everyone up now
        if correlated.histories[n].up_since is None:
            correlated.record_kind(n, NodeEventKind.RETURNED, end + 1)
    now = end + 2
    one = correlated.p_up("c0", t, now)
    assert one == pytest.approx(math.exp(-0.06 * 5), abs=0.05)
    truth_group = math.exp(-(0.05 + 5 * 0.01) * 5)  # 0.61
    truth_alone = math.exp(-5 * 0.06 * 5)  # 0.22
    assert correlated.p_all_up(GROUP, t, now) == pytest.approx(truth_group, abs=0.05)
    assert correlated.p_all_up(ALONE, t, now) == pytest.approx(truth_alone, abs=0.05)
    mixed = correlated.p_all_up(["c0", "c1", "i0"], t, now)
    assert mixed == pytest.approx(math.exp(-(0.05 + 0.02) * 5 - 0.06 * 5), abs=0.05)
    # Independence would have been badly wrong for the group:
    naive = math.prod(correlated.p_up(n, t, now) for n in GROUP)
    assert naive < truth_group - 0.25
    # And the known answer is what the trace itself shows: the share of all-up
    # spans that lasted T.
    hits = [1.0 if e - s > t else 0.0 for s, e in _joint_spans(correlated, GROUP)]
    assert statistics.fmean(hits) == pytest.approx(truth_group, abs=0.04)


def test_best_set_stays_inside_the_failure_domain(
    correlated: AvailabilityModel,
) -> None:
    end = max(h.intervals[-1][1] for h in correlated.histories.values()) + 10
    for n in GROUP + ALONE:
        if correlated.histories[n].up_since is None:
            correlated.record_kind(n, NodeEventKind.RETURNED, end)
    chosen, p = correlated.best_set(3, 5 * H, GROUP + ALONE, end + 1)
    assert set(chosen) <= set(GROUP)
    assert p == pytest.approx(math.exp(-(0.05 + 0.03) * 5), abs=0.06)


def test_history_round_trips_and_joint_intervals() -> None:
    h = NodeHistory("a")
    h.record(NodeEventKind.ADDED, 0.0)
    h.record(NodeEventKind.LOST, 10.0)
    h.record(NodeEventKind.RETURNED, 12.0)
    h.record(NodeEventKind.EVICTED, 20.0)
    h.record(NodeEventKind.ADDED, 25.0)
    back = NodeHistory.from_dict(h.to_dict())
    assert back.intervals == [(0.0, 10.0, True), (12.0, 20.0, False)]
    assert back.up_since == 25.0 and back.failures == 1
    g = NodeHistory("b", 0.0, [(0.0, 5.0, True), (6.0, 30.0, True)], None, 30.0)
    # both up: 0-5 (b fails), 6-10 (a fails), 12-20 (a evicted), 25-30 (b fails)
    assert joint_intervals([h, g]) == [
        (5.0, True),
        (4.0, True),
        (8.0, False),
        (5.0, True),
    ]
    m = AvailabilityModel()
    m.load([h, g])
    assert m.histories["a"].failures == 1 and m.histories["b"].failures == 2


def test_events_feed_the_model_through_record() -> None:
    m = AvailabilityModel()
    m.record(NodeEvent(NodeEventKind.ADDED, "x", 0.0))
    m.record(NodeEvent(NodeEventKind.DRAINING, "x", 5.0))  # still up
    m.record(NodeEvent(NodeEventKind.LOST, "x", 7.0))
    assert m.histories["x"].intervals == [(0.0, 7.0, True)]
