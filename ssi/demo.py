"""`make demo`: a local 3-node cluster, shown working, then taken down again.

form the cluster ─▶ ssi node list ─▶ a counting job on node1 ─▶ CRIU dump there
  ─▶ restore on node2: the count goes on, same PIDs ─▶ node3's ssid killed: lost
  ─▶ restarted: online again ─▶ cluster down (unless --keep)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

import kernel_shim
from kernel_shim import NsType
from ssi import config
from ssi.checkpoint import Criu
from ssi.local.ssids import LocalSsiCluster, wait_for
from ssi.proto import messages as m

console = Console(highlight=False)
COUNTER = (
    "import os, sys, time\nn = 0\n"
    "with open(sys.argv[1], 'a', buffering=1) as out:\n"
    "    while True:\n"
    "        out.write(f'{os.getpid()} {n}\\n'); n += 1; time.sleep(0.1)\n"
)


def step(text: str) -> None:
    console.print(f"\n[bold cyan]▶ {text}[/]")


def ssi_cli(prefix: str, *args: str) -> None:
    cmd = ["ssi", "--local-prefix", prefix, *args]
    console.print(f"[dim]$ {' '.join(cmd)}[/]")
    subprocess.run([sys.executable, "-m", "ssi.cli.main", *cmd[1:]], check=True)


def last_count(path: Path) -> tuple[int, int]:
    pid, n = path.read_text().splitlines()[-1].split()
    return int(pid), int(n)


def job_demo(cluster: LocalSsiCluster, work: Path) -> None:
    criu_bin = config.resolve_criu(config.load())
    node1, node2 = cluster.topology.node("node1"), cluster.topology.node("node2")
    out = work / "counter.out"
    init = Path(__file__).parent / "jobs" / "bin" / "ssi-init"
    step(
        "a job on node1: a Python counter under ssi-init, in its own PID/IPC/UTS "
        "namespaces"
    )
    devnull = os.open(os.devnull, os.O_RDWR)
    pid = kernel_shim.spawn(
        [str(init), "--", sys.executable, "-c", COUNTER, str(out)],
        namespaces=NsType.PID | NsType.IPC | NsType.UTS,
        netns=node1.netns_path,
        hostname="counter",
        stdin=devnull,
        stdout=devnull,
        stderr=devnull,
    )
    wait_for(
        "the counter to reach 10", lambda: out.exists() and last_count(out)[1] >= 10, 15
    )
    inner, n = last_count(out)
    console.print(
        f"counting: pid {inner} inside its namespace (host pid of its init {pid}), "
        f"n={n}"
    )
    step("checkpoint it with CRIU on node1 (the job stops), restore it on node2")
    images = work / "images"
    images.mkdir()
    dump = Criu(criu_bin, netns=node1.netns_path).dump(pid, images)
    os.waitpid(pid, 0)  # the dumped job's init, now gone from node1
    _, stopped_at = last_count(out)
    console.print(
        f"dumped {dump.image_bytes / 2**20:.1f} MiB in {dump.seconds * 1000:.0f} ms; "
        f"stopped at n={stopped_at}"
    )
    restored = Criu(criu_bin, netns=node2.netns_path).restore(images)
    console.print(
        f"restored on node2 in {restored.seconds * 1000:.0f} ms "
        f"(new host pid {restored.pid}, network namespace {node2.netns})"
    )
    wait_for("the count to go on", lambda: last_count(out)[1] >= stopped_at + 10, 15)
    inner_after, n_after = last_count(out)
    counts = [int(line.split()[1]) for line in out.read_text().splitlines()]
    gapless = counts == list(range(len(counts)))
    console.print(
        f"still counting on node2: n={n_after}, pid inside {inner_after} "
        f"(was {inner}); no gap, no repeat: {gapless}"
    )
    os.kill(restored.pid, signal.SIGKILL)
    os.waitpid(restored.pid, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ssi-demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--keep", action="store_true", help="leave the cluster up at the end"
    )
    p.add_argument("--prefix", default="demo", help="local cluster name (default demo)")
    p.add_argument("--subnet", default="10.86.0.0/24")
    args = p.parse_args(argv)
    kernel_shim.set_child_subreaper()  # restored jobs become our children, and we reap
    cluster = LocalSsiCluster(
        3,
        prefix=args.prefix,
        subnet=args.subnet,
        heartbeat_interval=0.5,
        heartbeat_timeout=3.0,
    )
    step(
        f"forming local cluster {args.prefix!r}: 3 network namespaces, an ssid in each"
    )
    started = time.monotonic()
    with console.status(
        "starting ssids, joining node2 and node3 with single-use tokens"
    ):
        cluster.up()
    console.print(f"3 nodes online in {time.monotonic() - started:.1f} s")
    try:
        ssi_cli(args.prefix, "node", "list")
        ssi_cli(args.prefix, "--on", "node3", "cluster", "status")
        with tempfile.TemporaryDirectory(prefix="ssi-demo-") as work:
            job_demo(cluster, Path(work))
        step("node3's ssid is killed (kill -9): the coordinator notices its silence")
        cluster.stop("node3", signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(
            "node3 lost",
            lambda: cluster.call("node1", m.NodeShow(name="node3"))["state"] == "lost",
            15,
        )
        console.print(f"node3 declared lost after {time.monotonic() - t0:.1f} s")
        ssi_cli(args.prefix, "node", "list")
        step("node3's ssid restarts: it says hello with its key and is back")
        cluster.start("node3")
        wait_for(
            "node3 online",
            lambda: (
                cluster.call("node1", m.NodeShow(name="node3"))["state"] == "online"
            ),
            15,
        )
        ssi_cli(args.prefix, "node", "list")
    finally:
        if args.keep:
            console.print(
                f"\nleft up; remove with: ssi --local-prefix {args.prefix} cluster down"
            )
        else:
            step("cluster down: daemons, namespaces, links and state removed")
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
