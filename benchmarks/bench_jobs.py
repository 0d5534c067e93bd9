"""Checkpoint, restart and cold migration through ssi, against raw CRIU on an equal
process measured in the same run (both write to tmpfs).

    raw:  criu dump (job killed), criu restore        (benchmarks/_criu_baseline)
    ssi:  checkpoint: dump + manifest + copy to a 2nd node   ─▶ throughput ratio
          checkpoint --stop, restart --node node3           ─▶ vs raw restore
          migrate node1 → node2 (cold)                  ─▶ freeze vs raw dump+restore

Run: .venv/bin/python benchmarks/bench_jobs.py [--sizes 10M,100M,1G] [--json]
Goal (issue 4): ssi checkpoint throughput >= 0.8 x raw dump throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._criu_baseline import format_size, measure, parse_size  # noqa: E402
from benchmarks._workloads import MEMORY  # noqa: E402
from ssi.local.ssids import LocalSsiCluster, wait_for  # noqa: E402
from ssi.proto import messages as m  # noqa: E402


def ssi_once(c: LocalSsiCluster, size: int, work: Path) -> dict[str, float]:
    ready = work / f"ready-{time.monotonic_ns()}"
    job = c.call(
        "node1",
        m.JobSubmit(
            argv=[sys.executable, "-c", MEMORY, str(size), str(ready)],
            cwd=str(work),
            env={"PATH": os.environ["PATH"]},
            node="node1",
        ),
    )["id"]
    try:
        wait_for("the job to hold its memory", ready.exists, 120)
        wait_for(
            "it to run",
            lambda: c.call("node1", m.JobShow(job=job))["state"] == "running",
            30,
        )
        t = time.perf_counter()
        ck = c.call("node1", m.JobCheckpoint(job=job), timeout=600)
        taken = time.perf_counter() - t
        t = time.perf_counter()
        mv = c.call("node1", m.JobMigrate(job=job, node="node2"), timeout=600)
        migrate_total = time.perf_counter() - t
        c.call("node1", m.JobCheckpoint(job=job, stop=True), timeout=600)
        t = time.perf_counter()
        c.call("node1", m.JobRestart(job=job, node="node3"), timeout=600)
        restart = time.perf_counter() - t
        return {
            "checkpoint_s": taken,
            "dump_s": ck["info"]["dump_seconds"],
            "image_bytes": ck["size"],
            "restart_s": restart,
            "migrate_freeze_s": mv["freeze_seconds"],
            "migrate_total_s": migrate_total,
        }
    finally:
        c.call("node1", m.JobKill(job=job, signal=9))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    cluster = LocalSsiCluster(
        3, prefix=f"bj{os.getpid() % 1000}", subnet="10.83.0.0/24"
    )
    try:
        cluster.up()
        with tempfile.TemporaryDirectory(prefix="ssi-bench-jobs-") as work:
            for size in sizes:
                raw = measure([size], repeat=args.repeat)
                ours = [ssi_once(cluster, size, Path(work)) for _ in range(args.repeat)]
                med = {k: statistics.median(o[k] for o in ours) for k in ours[0]}
                raw_dump = statistics.median(s.dump_s for s in raw)
                raw_restore = statistics.median(s.restore_s for s in raw)
                rows.append(
                    {
                        "size": size,
                        "raw_dump_s": raw_dump,
                        "raw_restore_s": raw_restore,
                        **med,
                        "checkpoint_vs_raw": raw_dump / med["checkpoint_s"],
                        "dump_vs_raw": raw_dump / med["dump_s"],
                        "restart_vs_raw": med["restart_s"] / raw_restore,
                        "freeze_vs_raw": med["migrate_freeze_s"]
                        / (raw_dump + raw_restore),
                    }
                )
    finally:
        cluster.down()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'size':>6} {'raw dump':>9} {'ssi ckpt':>9} {'thr ratio':>9} "
        f"{'ssi dump':>9} {'raw rest':>9} {'ssi rest':>9} {'×raw':>6} "
        f"{'mig freeze':>10} {'×raw d+r':>8} {'mig total':>9}"
    )
    for r in rows:
        print(
            f"{format_size(r['size']):>6} {r['raw_dump_s'] * 1e3:8.0f}ms "
            f"{r['checkpoint_s'] * 1e3:8.0f}ms {r['checkpoint_vs_raw']:9.2f} "
            f"{r['dump_s'] * 1e3:8.0f}ms {r['raw_restore_s'] * 1e3:8.0f}ms "
            f"{r['restart_s'] * 1e3:8.0f}ms {r['restart_vs_raw']:6.2f} "
            f"{r['migrate_freeze_s'] * 1e3:9.0f}ms {r['freeze_vs_raw']:8.2f} "
            f"{r['migrate_total_s'] * 1e3:8.0f}ms"
        )
    print(
        "thr ratio: ssi checkpoint throughput (dump + manifest + copy to a 2nd node) "
        "/ raw CRIU dump throughput; goal >= 0.8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
