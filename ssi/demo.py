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


def job_demo(cluster: LocalSsiCluster, prefix: str, work: Path) -> None:
    out = work / "counter.out"
    step(
        "a job: a Python counter, submitted on node1 (it runs under ssi-init in its "
        "own PID/IPC/UTS namespaces)"
    )
    job = cluster.call(
        "node1",
        m.JobSubmit(
            argv=[sys.executable, "-c", COUNTER, str(out)],
            cwd=str(work),
            name="counter",
            env={"PATH": os.environ.get("PATH", "")},
            node="node1",
        ),
    )["id"]
    wait_for(
        "the counter to reach 10", lambda: out.exists() and last_count(out)[1] >= 10, 15
    )
    ssi_cli(prefix, "ps")
    step("ssi migrate: freeze, dump straight into node2's CRIU, restore, resume")
    ssi_cli(prefix, "migrate", str(job), "node2")
    inner, n = last_count(out)
    wait_for("the count to go on", lambda: last_count(out)[1] >= n + 10, 15)
    counts = [int(line.split()[1]) for line in out.read_text().splitlines()]
    console.print(
        f"still counting on node2: n={last_count(out)[1]}, pid inside "
        f"{last_count(out)[0]}; no gap, no repeat: "
        f"{counts == list(range(len(counts)))}"
    )
    step("ssi checkpoint --stop: a CRIU image set, copied to a second node")
    ssi_cli(prefix, "checkpoint", str(job), "--stop")
    step("ssi restart --node node3: fetched, verified, restored")
    ssi_cli(prefix, "restart", str(job), "--node", "node3")
    wait_for("the count to go on", lambda: last_count(out)[1] >= n + 30, 15)
    ssi_cli(prefix, "show", str(job))
    ssi_cli(prefix, "kill", str(job), "-s", "KILL")


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
            job_demo(cluster, args.prefix, Path(work))
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
