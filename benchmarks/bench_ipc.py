"""Message round-trip latency and throughput through a cluster System V queue
between two nodes, against a kernel System V queue on one node, in the same run.

    cluster: ping (node1) ─msgsnd─▶ queue homed on node1 (replica node2) ─▶ pong
             (node2), and back; unmodified C programs under the interposer, each
             talking to its node's ssid (@ssi-ipc), which routes to the home
    kernel:  the same programs without the interposer, both on node1

Throughput: a sender on node1 and a receiver on node2 (kernel: both on node1),
N messages of SIZE bytes, from the first send to the last receive.

Run: .venv/bin/python benchmarks/bench_ipc.py [-n 2000] [--size 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssi.ipc import interposer  # noqa: E402
from ssi.ipc.service import SOCKET_NAME  # noqa: E402
from ssi.local.ssids import LocalSsiCluster  # noqa: E402
from ssi.local.testing import free_subnet, unique_prefix  # noqa: E402

PROGRAM = r"""
/* ipcbench MODE KEY N SIZE
 *   ping: N round trips (send type 1, receive type 2); prints every one's ns
 *   pong: N times receive type 1, send it back as type 2
 *   send: N messages of type 1; prints the realtime ns of the first send
 *   recv: N messages; prints the realtime ns of the last receive
 * The queue is created by whoever comes first; ping and recv remove it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ipc.h>
#include <sys/msg.h>
struct msg { long mtype; char text[65536]; };
static long long now(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static void snd(int q, struct msg *m, size_t n)
{
    while (msgsnd(q, m, n, 0) < 0)
        if (errno != EINTR) { perror("msgsnd"); exit(1); }
}
static void rcv(int q, struct msg *m, size_t n, long type)
{
    while (msgrcv(q, m, n, type, 0) < 0)
        if (errno != EINTR) { perror("msgrcv"); exit(1); }
}
int main(int argc, char **argv)
{
    const char *mode = argv[1];
    key_t key = (key_t)strtol(argv[2], NULL, 0);
    long n = atol(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    static struct msg m;
    memset(m.text, 'x', size);
    int q = msgget(key, IPC_CREAT | 0600);
    if (q < 0) { perror("msgget"); return 1; }
    if (!strcmp(mode, "ping")) {
        for (long i = 0; i < n; i++) {
            long long t = now(CLOCK_MONOTONIC);
            m.mtype = 1; snd(q, &m, size);
            rcv(q, &m, size, 2);
            printf("%lld\n", now(CLOCK_MONOTONIC) - t);
        }
        msgctl(q, IPC_RMID, NULL);
    } else if (!strcmp(mode, "pong")) {
        for (long i = 0; i < n; i++) {
            rcv(q, &m, size, 1);
            m.mtype = 2; snd(q, &m, size);
        }
    } else if (!strcmp(mode, "send")) {
        printf("%lld\n", now(CLOCK_REALTIME));
        fflush(stdout);
        for (long i = 0; i < n; i++) { m.mtype = 1; snd(q, &m, size); }
    } else {
        for (long i = 0; i < n; i++) rcv(q, &m, size, 1);
        printf("%lld\n", now(CLOCK_REALTIME));
        msgctl(q, IPC_RMID, NULL);
    }
    return 0;
}
"""


def build(work: Path) -> tuple[Path, Path]:
    src = work / "ipcbench.c"
    src.write_text(PROGRAM)
    exe = work / "ipcbench"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    lib = interposer.library_path() or interposer.build_interposer(work)
    return exe, lib


def run_pair(
    cluster: LocalSsiCluster,
    first: tuple[str, list[str]],
    second: tuple[str, list[str]],
    env: dict[str, str] | None,
    work: Path,
) -> tuple[str, str]:
    """Start `second` (the waiting side), then `first`; both outputs."""
    outs = []
    pids = []
    for i, (node, argv) in enumerate((second, first)):
        out = work / f"out{i}"
        with open(out, "w") as f:
            pids.append(
                cluster.topology.spawn(
                    node, argv, env=env or {"PATH": "/usr/bin:/bin"}, stdout=f.fileno()
                )
            )
        outs.append(out)
    for pid in pids:
        code = cluster.topology.wait(pid, 600)
        if code != 0:
            raise RuntimeError(f"benchmark program failed with {code}")
    return outs[1].read_text(), outs[0].read_text()


def measure(
    cluster: LocalSsiCluster,
    exe: Path,
    env: dict[str, str] | None,
    nodes: tuple[str, str],
    n: int,
    size: int,
    key: int,
    work: Path,
) -> dict[str, float]:
    a, b = nodes
    ping, _ = run_pair(
        cluster,
        (a, [str(exe), "ping", hex(key), str(n), str(size)]),
        (b, [str(exe), "pong", hex(key), str(n), str(size)]),
        env,
        work,
    )
    rtts = sorted(int(x) / 1e3 for x in ping.split())
    sent, received = run_pair(
        cluster,
        (a, [str(exe), "send", hex(key + 1), str(n), str(size)]),
        (b, [str(exe), "recv", hex(key + 1), str(n), str(size)]),
        env,
        work,
    )
    seconds = (int(received) - int(sent)) / 1e9
    return {
        "rtt_median_us": statistics.median(rtts),
        "rtt_p99_us": rtts[int(len(rtts) * 0.99) - 1],
        "msgs_per_s": n / seconds,
        "mib_per_s": n * size / seconds / 2**20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=2000, help="messages per measurement")
    ap.add_argument("--size", type=int, default=64, help="message text bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cluster = LocalSsiCluster(2, prefix=unique_prefix("bi"), subnet=free_subnet())
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe, lib = build(work)
        key = 0x1B000000 + os.getpid() % 0x10000 * 16
        try:
            cluster.up()
            cluster_env = {
                "PATH": "/usr/bin:/bin",
                "LD_PRELOAD": str(lib),
                "SSI_IPC_SOCKET": SOCKET_NAME,
            }
            results["kernel System V queue, one node"] = measure(
                cluster, exe, None, ("node1", "node1"), args.n, args.size, key, work
            )
            results["cluster queue, node1 <-> node2"] = measure(
                cluster,
                exe,
                cluster_env,
                ("node1", "node2"),
                args.n,
                args.size,
                key + 2,
                work,
            )
        finally:
            cluster.down()
    if args.json:
        print(json.dumps({"n": args.n, "size": args.size, "results": results}))
        return 0
    print(f"{args.n} messages of {args.size} bytes")
    print(f"{'path':36} {'RTT median µs':>14} {'RTT p99 µs':>11} {'msg/s':>9}")
    for name, r in results.items():
        print(
            f"{name:36} {r['rtt_median_us']:14.0f} {r['rtt_p99_us']:11.0f} "
            f"{r['msgs_per_s']:9.0f}"
        )
    kernel, ours = results.values()
    print(
        f"cluster/kernel: RTT x{ours['rtt_median_us'] / kernel['rtt_median_us']:.0f}, "
        f"throughput x{ours['msgs_per_s'] / kernel['msgs_per_s']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
