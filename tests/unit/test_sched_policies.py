"""Each built-in policy's decisions on small hand-made clusters, sans-IO; the MOSIX
balancer spreading 6 CPU-bound jobs over 3 nodes and then staying put; the
Scheduler's policy switching and `why`."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from schedulers.base import PolicyBase
from schedulers.cluster import ClusterView
from schedulers.loader import PluginError
from schedulers.params import ParamError
from schedulers.policies.availability_aware import AvailabilityAware
from schedulers.policies.io_aware import IoAware
from schedulers.policies.least_loaded import LeastLoaded
from schedulers.policies.memory_aware import MemoryAware
from schedulers.policies.mosix import Mosix
from schedulers.policies.round_robin import RoundRobin
from schedulers.request import parse_request
from schedulers.scheduler import Scheduler
from schedulers.views import (
    JobRequest,
    JobView,
    NodeEvent,
    NodeEventKind,
    NodeState,
    NodeView,
)

G = 2**30
H = 3600.0


def job(jid: str, text: str = "") -> JobRequest:
    return JobRequest(jid, parse_request(text))


def cluster_of(*views: NodeView) -> ClusterView:
    c = ClusterView()
    for v in views:
        c.upsert_node(v)
    return c


# --- round robin --------------------------------------------------------------------


def test_round_robin_takes_turns_and_skips_what_does_not_fit() -> None:
    c = cluster_of(
        NodeView("a", cpus=4),
        NodeView("b", cpus=1),
        NodeView("c", cpus=4),
        NodeView("d", cpus=4, state=NodeState.DRAINING),
    )
    rr = RoundRobin()
    got = [rr.place(job(str(i)), c, 0).node for i in range(4)]
    assert got == ["a", "b", "c", "a"]
    p = rr.place(job("big", "cpus>=2"), c, 0)  # b is next but too small
    assert p.node == "c"
    assert [v.node for v in p.verdicts if not v.ok] == ["b"]
    assert p.filtered == {"cpus": 1}
    assert rr.place(job("x", "node=d"), c, 0).node is None
    assert rr.rebalance(c, 0).migrations == ()


# --- least loaded -------------------------------------------------------------------


def test_least_loaded_docstring_example() -> None:
    c = cluster_of(
        NodeView("a", cpus=4, cpu_speed=1.0, background_load=2.0),
        NodeView("b", cpus=2, cpu_speed=2.0, background_load=1.0),
        NodeView("c", cpus=1, cpu_speed=1.0),
    )
    p = LeastLoaded().place(job("1"), c, 0)
    assert p.node == "b"
    scores = {v.node: v.score for v in p.verdicts}
    assert scores == {"a": 0.75, "b": 0.5, "c": 1.0}
    assert "lowest normalised load" in p.reason


def test_least_loaded_counts_placements_at_once() -> None:
    c = cluster_of(NodeView("a", cpus=2), NodeView("b", cpus=2))
    s = Scheduler(c, "least_loaded")
    nodes = [s.place(job(str(i)), now=0).node for i in range(4)]
    assert sorted(nodes) == ["a", "a", "b", "b"]
    assert c.load("a") == 2.0 and c.mem_free("a") == 0


def test_least_loaded_node_source_uses_probe_load_plus_pending() -> None:
    c = cluster_of(NodeView("a", cpus=1, load=0.5), NodeView("b", cpus=1, load=0.9))
    ll = LeastLoaded()
    ll.configure(load_source="node")
    assert ll.place(job("1"), c, 0).node == "a"
    c.reserve("a", 1.0, 0)  # a placement a's probe has not seen yet
    assert ll.place(job("2"), c, 0).node == "b"
    c.upsert_node(NodeView("a", cpus=1, load=0.1))  # its next report counts it
    assert ll.place(job("3"), c, 0).node == "a"


def test_filters_and_soft_preferences_explained() -> None:
    c = cluster_of(
        NodeView("a", cpus=4, state=NodeState.DRAINING),
        NodeView("b", cpus=4, background_load=2.0, labels=frozenset({"ssd"})),
        NodeView("c", cpus=4, background_load=3.6, mem_free=8 * G, mem_total=16 * G),
    )
    ll = LeastLoaded()
    p = ll.place(job("1", "prefer node=c"), c, 0)
    assert p.node == "c"  # 3.6+1 / 4 = 1.15 beats 0.75 + 1 (unmet preference)
    by = {v.node: v for v in p.verdicts}
    assert not by["a"].ok and by["a"].rule == "state" and "draining" in by["a"].reason
    assert (
        by["b"].score == pytest.approx(1.75)
        and "prefer node=c +1.000" in by["b"].reason
    )
    p = ll.place(job("2", "label=ssd"), c, 0)
    assert p.node == "b" and p.examined == 1  # the label index narrowed it
    p = ll.place(job("3", "mem>=10G"), c, 0)
    assert p.node is None and "no node fits" in p.reason
    text = p.explain()
    assert "8.0G free < 10.0G requested" in text and "state draining" in text


def test_group_preferences_same_and_spread() -> None:
    c = cluster_of(*(NodeView(n, cpus=8) for n in "abc"))
    s = Scheduler(c, "least_loaded")
    first = s.place(job("g1", "group=g prefer same"), 0).node
    assert s.place(job("g2", "group=g prefer same"), 0).node == first
    spread = [s.place(job(f"s{i}", "group=h prefer spread"), 0).node for i in range(3)]
    assert sorted(spread) == ["a", "b", "c"]


# --- memory aware -------------------------------------------------------------------


def test_memory_aware_docstring_example_and_pressure_filter() -> None:
    c = cluster_of(
        NodeView("a", cpus=4, mem_total=16 * G, mem_free=6 * G),
        NodeView("b", cpus=4, mem_total=8 * G, mem_free=7 * G, mem_pressure=2.0),
        NodeView("c", cpus=4, mem_total=64 * G, mem_free=60 * G, mem_pressure=35.0),
    )
    ma = MemoryAware()
    ma.configure(load_weight=0)
    p = ma.place(job("1", "mem>=4G"), c, 0)
    assert p.node == "b"
    scores = {v.node: v.score for v in p.verdicts if v.ok}
    assert scores["a"] == pytest.approx(0.875) and scores["b"] == pytest.approx(0.645)
    assert p.filtered == {"pressure": 1}


def test_memory_aware_relieves_a_pressured_node() -> None:
    c = cluster_of(
        NodeView("hot", cpus=4, mem_total=16 * G, mem_free=G // 4, mem_pressure=55.0),
        NodeView("cool", cpus=4, mem_total=16 * G, mem_free=12 * G),
    )
    c.upsert_job(JobView("small", "hot", rss=G // 8, started_at=0))
    c.upsert_job(JobView("fits", "hot", rss=2 * G, started_at=0))
    c.upsert_job(JobView("huge", "hot", rss=8 * G, started_at=0))
    plan = MemoryAware().rebalance(c, 100.0)
    # the smallest job that covers the deficit (5% of 16G minus 0.25G free)
    assert [(m.job, m.target) for m in plan.migrations] == [("fits", "cool")]
    assert c.jobs["fits"].node == "cool"


# --- I/O aware ---------------------------------------------------------------------


def test_io_aware_docstring_example() -> None:
    c = cluster_of(
        NodeView("a", cpus=4, io_busy=0.8, io_pressure=30.0),
        NodeView("b", cpus=4, io_busy=0.1, io_pressure=1.0, background_load=3.0),
        NodeView("c", cpus=4, io_busy=0.97),
    )
    p = IoAware().place(job("1"), c, 0)
    assert p.node == "b"
    scores = {v.node: v.score for v in p.verdicts if v.ok}
    assert scores["a"] == pytest.approx(1.225) and scores["b"] == pytest.approx(0.61)
    assert p.filtered == {"io": 1}


# --- availability aware -------------------------------------------------------------


def _history(c: ClusterView, node: str, mtbf: float, failures: int = 40) -> None:
    """A node that failed every `mtbf` seconds, up again at t = 0."""
    m = c.availability
    t = -mtbf * failures - 1
    m.record_kind(node, NodeEventKind.ADDED, t)
    for _ in range(failures):
        t += mtbf
        m.record_kind(node, NodeEventKind.LOST, t)
        m.record_kind(node, NodeEventKind.RETURNED, t + 1)


def test_availability_aware_long_jobs_go_to_stable_nodes() -> None:
    c = cluster_of(
        NodeView("flaky", cpus=4, cpu_speed=1.0),
        NodeView("solid", cpus=4, cpu_speed=1.0, background_load=2.0),
        NodeView("fast", cpus=4, cpu_speed=2.0),
    )
    rng = random.Random(1)
    for name, mtbf in (("flaky", 20 * H), ("solid", 200 * H), ("fast", 20 * H)):
        m = c.availability
        t = -5000 * H
        m.record_kind(name, NodeEventKind.ADDED, t)
        while True:
            t += rng.expovariate(1 / mtbf)
            if t >= -1:
                break
            m.record_kind(name, NodeEventKind.LOST, t)
            m.record_kind(name, NodeEventKind.RETURNED, t + 1)
    aa = AvailabilityAware()
    long = aa.place(job("long", "time=10h"), c, 0.0)
    scores = {v.node: v.score for v in long.verdicts if v.ok}
    # the docstring's example: fast 0.5/0.78, solid 1/0.95, flaky 1/0.61
    assert long.node == "fast"
    assert scores["fast"] < scores["solid"] < scores["flaky"]
    assert scores["solid"] == pytest.approx(1 / 0.95, abs=0.05)
    assert "P(up" in long.explain()
    stable = aa.place(job("st", "time=10h"), c, 0.0)
    assert stable.node == "fast"
    aa.configure(stability_weight=4.0)  # availability first, whatever the speed
    assert aa.place(job("x", "time=10h"), c, 0.0).node == "solid"
    short = aa.place(job("short", "time=5m"), c, 0.0)
    assert short.node == "fast"  # least loaded: capacity 8, idle
    assert "short job" in short.verdicts[0].reason


def test_availability_aware_grows_a_group_inside_its_failure_domain() -> None:
    from schedulers.sim.traces import GroupSpec, generate

    rack = ["r1", "r2", "r3"]
    other = ["o1", "o2", "o3"]
    c = cluster_of(*(NodeView(n, cpus=4) for n in rack + other))
    specs = [GroupSpec(rack, shock_rate=0.05 / H, node_rate=0.01 / H, mean_down=60)]
    specs += [GroupSpec([n], node_rate=0.055 / H, mean_down=60) for n in other]
    m = c.availability
    for n in rack + other:
        m.record_kind(n, NodeEventKind.ADDED, -20000 * H)
    for t, n, kind in generate(specs, 20000 * H - 10, seed=5, start=-20000 * H):
        m.record_kind(n, kind, t)
    for n in rack + other:
        if m.histories[n].up_since is None:
            m.record_kind(n, NodeEventKind.RETURNED, -5.0)
    s = Scheduler(c, "availability_aware")
    s.cluster.note_placement("first", "r1", group="mpi", now=0.0)
    c.upsert_job(replace(c.jobs["first"], cpu_demand=4.0))  # r1 is now full
    p = s.place(job("second", "time=5h group=mpi"), 0.0)
    assert p.node in ("r2", "r3"), p.explain()
    assert "group nodes up" in p.explain()


# --- MOSIX --------------------------------------------------------------------------


def _world(cpus: int = 1, rss: int = 50 * 2**20) -> ClusterView:
    c = cluster_of(*(NodeView(f"node{i}", cpus=cpus) for i in (1, 2, 3)))
    for i in range(6):
        c.upsert_job(JobView(f"j{i}", "node1", started_at=0.0, rss=rss))
    return c


@pytest.mark.parametrize("cpus", [1, 2])
def test_mosix_spreads_six_jobs_over_three_nodes_then_stays_put(cpus: int) -> None:
    c = _world(cpus)
    s = Scheduler(c, "mosix")
    t = 60.0
    moves: list[tuple[float, str, str, str]] = []
    for _ in range(20):
        moves += [(t, m.job, m.source, m.target) for m in s.rebalance(t)]
        t += 2.0
    counts = {n: c.job_count(n) for n in sorted(c.nodes)}
    assert counts == {"node1": 2, "node2": 2, "node3": 2}
    assert len(moves) == 4 and all(src == "node1" for _, _, src, _ in moves)
    assert moves[-1][0] <= 66.0  # one per 2 s round, as Kerrighed's
    assert len({j for _, j, _, _ in moves}) == 4  # no job moved twice
    # ... and then stays put: 1000 more rounds (over half an hour) move nothing.
    for _ in range(1000):
        assert not s.rebalance(t).migrations
        t += 2.0
    assert {n: c.job_count(n) for n in sorted(c.nodes)} == counts
    assert "stays on" in s.why("j0") or "not consider" in s.why("j0")


def test_mosix_rounds_are_at_most_every_interval() -> None:
    c = _world()
    mx = Mosix()
    assert len(mx.rebalance(c, 60.0).migrations) == 1
    plan = mx.rebalance(c, 61.0)
    assert not plan.migrations and "next round in 1.0s" in plan.summary
    assert len(mx.rebalance(c, 62.0).migrations) == 1


def test_mosix_cost_model_keeps_big_young_jobs_home() -> None:
    c = _world(rss=20 * G)  # 20G each at 100 MB/s: ~215 s to move
    plan = Mosix().rebalance(c, 60.0)  # age 60 s: the gain cannot pay for that
    assert not plan.migrations
    assert any("gain" in n.note and "cost" in n.note for n in plan.notes)
    young = _world()
    assert not Mosix().rebalance(young, 3.0).migrations  # younger than min_age


def test_mosix_job_cooldown_and_no_return() -> None:
    c = cluster_of(NodeView("a"), NodeView("b"))
    c.upsert_job(JobView("x", "a", started_at=0.0))
    c.upsert_job(JobView("y", "a", started_at=0.0))
    mx = Mosix()
    mx.configure(job_cooldown=10.0, interval=0)
    plan = mx.rebalance(c, 100.0)
    assert len(plan) == 1
    moved = plan.migrations[0].job
    # Make b look overloaded by outside load: the job may not go back to a
    # within return_cooldown, nor move at all within job_cooldown.
    c.upsert_node(NodeView("b", background_load=5.0))
    plan = mx.rebalance(c, 105.0)
    assert not plan.migrations
    assert any(n.job == moved and "cooldown" in n.note for n in plan.notes)
    plan = mx.rebalance(c, 120.0)
    assert not any(m.job == moved for m in plan.migrations)


def test_eviction_expels_jobs_through_the_policy() -> None:
    c = cluster_of(NodeView("a", cpus=4), NodeView("b", cpus=4), NodeView("c", cpus=4))
    s = Scheduler(c, "least_loaded")
    for i in range(3):
        s.place(job(f"j{i}", "node=a"), 0.0)
    s.place(job("pinned", "node=a migratable=no"), 0.0)
    c.upsert_job(replace(c.jobs["pinned"], migratable=False))
    moves = s.node_event(NodeEvent(NodeEventKind.EVICTED, "a", 10.0, "maintenance"))
    assert sorted(m.job for m in moves) == ["j0", "j1", "j2"]
    assert {m.target for m in moves} == {"b", "c"}
    assert all("evicted: maintenance" in m.reason for m in moves)
    assert c.nodes["a"].state is NodeState.EVICTING
    assert c.jobs["pinned"].node == "a"
    assert s.place(job("new"), 11.0).node != "a"
    # A failed migration puts the job back where it was, in the view.
    s.migration_result(moves[0], False, 12.0)
    assert c.jobs[moves[0].job].node == "a"
    assert "failed" in s.why(moves[0].job)


# --- the Scheduler ------------------------------------------------------------------


def test_policy_switching_and_parameters() -> None:
    c = _world()
    s = Scheduler(c, "least_loaded")
    assert [i.name for i in s.policies()][:3] == [
        "availability_aware",
        "io_aware",
        "least_loaded",
    ]
    assert not s.rebalance(60.0).migrations
    desc = s.set_policy("mosix", {"interval": "5s", "stab_factor": "1.5"}, now=60.0)
    assert desc.name == "mosix" and "MOSIX" in desc.doc
    params = {p.name: p for p in desc.params}
    assert params["interval"].value == 5.0 and params["interval"].default == 2.0
    assert params["stab_factor"].value == 1.5
    assert len(s.rebalance(60.0).migrations) == 1  # takes effect at once
    s.set_policy("mosix", {"hysteresis": "0.1"})  # same policy: others kept
    assert s.policy.params()["interval"] == 5.0
    with pytest.raises(ParamError) as e:
        s.set_policy("mosix", {"intervall": "1s", "stab_factor": "0.5"})
    assert "did you mean interval" in str(e.value) and "below the minimum" in str(
        e.value
    )
    with pytest.raises(ParamError):
        s.set_policy("round_robin", {"nope": 1})
    with pytest.raises(PluginError, match="installed: .*mosix"):
        s.set_policy("no_such_policy")
    assert s.policy_name == "mosix"  # nothing changed on errors


def test_why_explains_placement_and_balancing() -> None:
    c = cluster_of(
        NodeView("a", cpus=1), NodeView("b", cpus=1, state=NodeState.DRAINING)
    )
    s = Scheduler(c, "mosix")
    assert "no scheduling decision" in s.why("7")
    s.place(job("7"), 0.0)
    s.place(job("8"), 0.0)
    text = s.why("7")
    assert text.startswith("job 7 -> a (mosix at 0.0)")
    assert "b " in text and "state draining" in text
    s.rebalance(2.0)  # a is the only online node: nothing to balance
    assert "did not consider it: balanced" in s.why("7")
    c.upsert_node(NodeView("b", cpus=1))
    s.rebalance(4.0)
    assert "younger than 5s" in s.why("7")
    data = s.why_data("7")
    assert data is not None and data["policy"] == "mosix"


# --- the index against a brute-force scan --------------------------------------------


def test_index_agrees_with_a_full_scan_under_churn() -> None:
    rng = random.Random(3)
    c = ClusterView()
    for i in range(2000):
        c.upsert_node(
            NodeView(
                f"n{i}",
                cpus=rng.choice((2, 4, 8)),
                cpu_speed=rng.choice((1.0, 1.5)),
                background_load=rng.uniform(0, 6),
                mem_total=32 * G,
                mem_free=rng.randrange(0, 32) * G,
            )
        )
    ll = LeastLoaded()
    for step in range(300):
        req = job(f"j{step}", rng.choice(("", "mem>=16G", "cpus>=8")))
        p = ll.place(req, c, 0.0)
        feasible = [
            v
            for v in c.nodes.values()
            if v.state is NodeState.ONLINE
            and req.request.check(v, mem_free=c.mem_free(v.name)) is None
        ]
        best = min((c.load(v.name) + req.cpus) / v.capacity for v in feasible)
        assert p.node is not None
        chosen = c.nodes[p.node]
        assert (c.load(p.node) + req.cpus) / chosen.capacity == pytest.approx(best)
        c.note_placement(req.id, p.node, cpus=req.cpus, mem=req.mem)
        for _ in range(3):  # reports arrive, nodes come and go
            name = f"n{rng.randrange(2000)}"
            v = c.nodes[name]
            state = rng.choice([NodeState.ONLINE] * 8 + [NodeState.DRAINING])
            c.upsert_node(replace(v, background_load=rng.uniform(0, 6), state=state))


def test_a_policy_is_a_plugin_like_any_other() -> None:
    for cls in (
        RoundRobin,
        LeastLoaded,
        MemoryAware,
        Mosix,
        IoAware,
        AvailabilityAware,
    ):
        assert issubclass(cls, PolicyBase) and cls.api_version == 1
        assert cls.__doc__ and cls.name


def test_lost_node_jobs_restart_elsewhere_and_history_is_kept() -> None:
    c = cluster_of(NodeView("a", cpus=2), NodeView("b", cpus=2))
    s = Scheduler(c, "least_loaded")
    for n in ("a", "b"):
        s.node_event(NodeEvent(NodeEventKind.ADDED, n, 0.0))
    s.place(job("j", "node in (a,b)"), 1.0)
    lost = c.jobs["j"].node
    assert s.node_event(NodeEvent(NodeEventKind.LOST, lost, 100.0, "heartbeat")) == []
    assert c.nodes[lost].state is NodeState.LOST
    again = s.place(
        JobRequest("j", parse_request("node in (a,b)"), restart=True), 101.0
    )
    assert again.node not in (None, lost) and c.job_count(lost) == 0
    s.node_event(NodeEvent(NodeEventKind.RETURNED, lost, 200.0))
    assert c.nodes[lost].state is NodeState.ONLINE
    info = c.availability_of(lost, 300.0)
    assert info.failures == 1 and info.up and info.age == 100.0
    assert c.history(lost).intervals == [(0.0, 100.0, True)]
