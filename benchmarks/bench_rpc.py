"""Request round trips through ssid against bare pyzmq, measured in the same run.

    ssi path:   client ─unix─▶ ssid(node2) ─CURVE tcp─▶ coordinator ssid(node1) ─▶ back
    baselines:  REQ ─tcp─▶ REP echo in node1's netns (plain, and with CURVE)

Also the idle CPU and RSS of one ssid. Run: .venv/bin/python benchmarks/bench_rpc.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssi.local.ssids import LocalSsiCluster, wait_for  # noqa: E402
from ssi.proto import messages as m  # noqa: E402
from ssi.rpc.local import AsyncLocalClient, LocalClient  # noqa: E402

ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.REP)
if sys.argv[2] == "curve":
    s.curve_server = True; s.curve_secretkey = sys.argv[3].encode()
s.bind(f"tcp://0.0.0.0:{sys.argv[1]}")
while True:
    s.send(s.recv())
"""


def timed(n: int, fn: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_us": statistics.median(samples) * 1e6,
        "p99_us": samples[int(len(samples) * 0.99) - 1] * 1e6,
        "per_s": len(samples) / sum(samples),
    }


def bare_zmq(cluster: LocalSsiCluster, n: int, curve: bool) -> dict[str, float]:
    node1 = cluster.topology.node("node1")
    pub, sec = zmq.curve_keypair()
    port = 7990 + int(curve)
    pid = cluster.topology.spawn(
        "node1",
        [
            sys.executable,
            "-c",
            ECHO,
            str(port),
            "curve" if curve else "plain",
            sec.decode(),
        ],
    )
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    if curve:
        cpub, csec = zmq.curve_keypair()
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = pub, cpub, csec
    s.connect(f"tcp://{node1.address}:{port}")
    payload = b"x" * 64

    def rt() -> None:
        s.send(payload)
        s.recv()

    timed(200, rt)  # warm up (connection, CURVE handshake)
    res = summary(timed(n, rt))
    s.close(linger=0)
    ctx.term()
    cluster.topology.kill(pid)
    cluster.topology.wait(pid, 5)
    return res


async def concurrent(path: str, total: int, width: int) -> float:
    clients = [AsyncLocalClient(path) for _ in range(width)]

    async def worker(c: AsyncLocalClient, k: int) -> None:
        for _ in range(k):
            await c.call(m.NodeList())

    t = time.perf_counter()
    await asyncio.gather(*(worker(c, total // width) for c in clients))
    elapsed = time.perf_counter() - t
    for c in clients:
        await c.close()
    return (total // width * width) / elapsed


def idle(pid: int, seconds: float) -> dict[str, float]:
    p = psutil.Process(pid)
    before = p.cpu_times()
    time.sleep(seconds)
    after = p.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"cpu_percent": 100 * cpu / seconds, "rss_mib": p.memory_info().rss / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=2000, help="round trips per measurement")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cluster = LocalSsiCluster(
        2, prefix=f"bq{os.getpid() % 1000}", subnet="10.85.0.0/24"
    )
    results: dict[str, dict[str, float]] = {}
    try:
        cluster.up()
        results["bare zmq REQ/REP (tcp)"] = bare_zmq(cluster, args.n, curve=False)
        results["bare zmq REQ/REP (tcp, CURVE)"] = bare_zmq(cluster, args.n, curve=True)
        with LocalClient(str(cluster.socket("node2"))) as c:
            timed(100, lambda: c.call(m.NodeList()))
            results["ssid local only (sys.ping)"] = summary(
                timed(args.n, lambda: c.call(m.Ping()))
            )
            results["ssid via coordinator (node.list)"] = summary(
                timed(args.n, lambda: c.call(m.NodeList()))
            )
        rate = asyncio.run(concurrent(str(cluster.socket("node2")), args.n * 2, 16))
        results["ssid via coordinator, 16 concurrent"] = {"per_s": rate}
        wait_for("an idle moment", lambda: True, 1)
        results["ssid idle (coordinator)"] = idle(
            cluster.pids["node1"], args.idle_seconds
        )
        results["ssid idle (agent)"] = idle(cluster.pids["node2"], args.idle_seconds)
    finally:
        cluster.down()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    base = results["bare zmq REQ/REP (tcp, CURVE)"]["median_us"]
    print(f"{'path':40} {'median µs':>10} {'p99 µs':>10} {'req/s':>10} {'× CURVE':>8}")
    for name, r in results.items():
        if "median_us" in r:
            print(
                f"{name:40} {r['median_us']:10.0f} {r['p99_us']:10.0f} "
                f"{r['per_s']:10.0f} "
                f"{r['median_us'] / base:8.2f}"
            )
        elif "per_s" in r:
            print(f"{name:40} {'':10} {'':10} {r['per_s']:10.0f}")
        else:
            print(
                f"{name:40} cpu {r['cpu_percent']:.2f} %   rss {r['rss_mib']:.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
