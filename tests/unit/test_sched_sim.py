"""The simulator: deterministic, bounded below, and failures cost what they should."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from schedulers.sim import (
    GroupSpec,
    JobSpec,
    NodeSpec,
    Simulation,
    cluster,
    failure_domains,
    generate,
    workload,
)
from schedulers.sim.__main__ import compare, table

DAY = 86400.0


def _strip(result: object) -> dict[str, object]:
    d = asdict(result)  # type: ignore[call-overload]
    for k in ("wall_seconds", "place_us_mean", "place_us_p99"):
        d.pop(k)
    return d


def test_same_seed_same_result_and_bounds() -> None:
    a = compare(40, 300, seed=4, policies=("least_loaded", "mosix"))
    b = compare(40, 300, seed=4, policies=("least_loaded", "mosix"))
    assert [_strip(r) for r in a] == [_strip(r) for r in b]
    c = compare(40, 300, seed=5, policies=("least_loaded",))
    assert _strip(c[0]) != _strip(a[0])
    for r in a:
        assert r.completed == r.jobs == 300 and r.unplaced == 0
        assert r.makespan >= r.lower_bound and r.makespan >= r.critical_bound * 0.999
        assert r.mean_slowdown >= 1.0
    assert a[1].migrations > 0 and a[0].migrations == 0
    text = table(a)
    assert "lower bound" in text and "mosix" in text


def test_processor_sharing_on_one_node() -> None:
    node = NodeSpec("n", cpus=2, speed=2.0, mem=8 << 30)
    jobs = [JobSpec(f"j{i}", 0.0, work=100.0) for i in range(4)]
    r = Simulation([node], jobs, policy="least_loaded").run()
    # 4 jobs of 100 s on 2 CPUs of speed 2: all done at 100 s; alone, 50 s each.
    assert r.makespan == pytest.approx(100.0)
    assert r.mean_slowdown == pytest.approx(2.0)
    assert r.lower_bound == pytest.approx(100.0)


def test_failures_restart_jobs_from_their_checkpoints() -> None:
    nodes = [NodeSpec("a", 1, 1.0, 8 << 30), NodeSpec("b", 1, 1.0, 8 << 30)]
    job = JobSpec("long", 0.0, work=1000.0, walltime=1000.0)
    # a dies at t = 650 and comes back at t = 700; b is down from t = 10 on... for
    # a while, so the job runs on a and must restart.
    trace = [
        (5.0, "b", _k("LOST")),
        (650.0, "a", _k("LOST")),
        (700.0, "a", _k("RETURNED")),
    ]
    plain = Simulation(nodes, [job], trace, policy="round_robin").run()
    assert plain.interruptions == 1
    assert plain.work_lost == pytest.approx(650.0)
    assert plain.makespan == pytest.approx(1700.0)  # redone from zero at 700
    ckpt = Simulation(
        nodes, [replace(job, checkpoint_period=300.0)], trace, policy="round_robin"
    ).run()
    assert ckpt.work_lost == pytest.approx(50.0)  # back to the 600 s checkpoint
    assert ckpt.makespan == pytest.approx(700.0 + 400.0)


def test_availability_aware_loses_less_work_on_a_flaky_cluster() -> None:
    nodes = cluster(60, seed=2)
    jobs = [
        replace(j, checkpoint_period=None)
        for j in workload(400, seed=2, mean_interarrival=20.0, work_median=4 * 3600)
    ]
    domains = failure_domains(
        nodes, seed=2, volatile_share=0.5, volatile_mtbf=0.5 * DAY, node_mtbf=40 * DAY
    )
    trace = generate(domains, 120 * DAY, seed=2, start=-60 * DAY)
    ll = Simulation(nodes, jobs, trace, policy="least_loaded", rebalance_every=60).run()
    aa = Simulation(
        nodes, jobs, trace, policy="availability_aware", rebalance_every=60
    ).run()
    assert aa.completed == ll.completed == 400
    assert aa.work_lost < 0.6 * ll.work_lost
    assert aa.interruptions < ll.interruptions


def test_correlated_shocks_hit_whole_groups() -> None:
    trace = generate(
        [GroupSpec(["x", "y"], shock_rate=1 / 3600.0, mean_down=1.0)], 36000.0
    )
    xs = [t for t, n, k in trace if n == "x" and k.value == "lost"]
    ys = [t for t, n, k in trace if n == "y" and k.value == "lost"]
    assert len(xs) > 3 and xs == ys


def _k(name: str):  # type: ignore[no-untyped-def]
    from schedulers.views import NodeEventKind

    return NodeEventKind[name]
