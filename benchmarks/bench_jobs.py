"""Checkpoint and restart through ssi, against raw CRIU on an equal process measured
in the same run (every image on the file system of the local clusters' spools),
samples interleaved so drift hits all alike.

    raw:     criu dump (job killed), criu restore          (benchmarks/_criu_baseline)
    peer:    3-node local cluster; a checkpoint = CRIU dump + manifest + a copy on a
             2nd node (the copy follows the images as CRIU writes them)
    shared:  the same cluster with a shared spool (`ssi cluster up --shared-spool`:
             one directory every node sees, as NFS or Lustre): written once
    restart: checkpoint --stop on node1, then restart on node1 (its own copy, every
             checksum verified first) and on node3 (peer: no copy there, fetched and
             checked on arrival; shared: read in place)

Run: .venv/bin/python benchmarks/bench_jobs.py [--sizes 10M,100M,1G] [--repeat N]
     [--modes peer,shared] [--json]
Goal (issue 4): ssi checkpoint throughput >= 0.8 x raw CRIU dump throughput.
Migration figures are benchmarks/bench_migration.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._criu_baseline import format_size, measure_once, parse_size  # noqa: E402
from benchmarks._workloads import MEMORY  # noqa: E402
from ssi.local.ssids import LocalSsiCluster, wait_for  # noqa: E402
from ssi.proto import messages as m  # noqa: E402

MODES = ("peer", "shared")


def timed(c: LocalSsiCluster, body: m.Request) -> tuple[float, Any]:
    os.sync()  # no write-back of earlier images charged to this one (/run: ext4)
    t = time.perf_counter()
    out = c.call("node1", body, timeout=600)
    return time.perf_counter() - t, out


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
        taken, ck = timed(c, m.JobCheckpoint(job=job))
        timed(c, m.JobCheckpoint(job=job, stop=True))
        here, _ = timed(c, m.JobRestart(job=job, node="node1"))
        timed(c, m.JobCheckpoint(job=job, stop=True))
        there, _ = timed(c, m.JobRestart(job=job, node="node3"))
        return {
            "checkpoint_s": taken,
            "dump_s": ck["info"]["dump_seconds"],
            "image_bytes": ck["size"],
            "restart_here_s": here,
            "restart_there_s": there,
        }
    finally:
        c.call("node1", m.JobKill(job=job, signal=9))
        for spool in [c.base / "shared", *(c.node_dir(n) / "state" / "checkpoints"
                                          for n in c.node_names)]:  # fmt: skip
            for ckpt in spool.glob(f"{job}-*") if spool.is_dir() else ():
                shutil.rmtree(ckpt, ignore_errors=True)


def median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help="peer, shared or both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    modes = [mode.strip() for mode in args.modes.split(",")]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: a comma-separated choice of {', '.join(MODES)}")
    tag = os.getpid() % 1000
    every = {
        "peer": LocalSsiCluster(3, prefix=f"bjp{tag}", subnet="10.83.0.0/24"),
        "shared": LocalSsiCluster(
            3, prefix=f"bjs{tag}", subnet="10.84.0.0/24", shared_spool=True
        ),
    }
    clusters = {mode: every[mode] for mode in modes}
    rows: list[dict[str, Any]] = []
    try:
        for c in clusters.values():
            c.up()
        # Raw CRIU writes where the clusters' spools are (here /run is not tmpfs:
        # a tmpfs baseline would compare two file systems, not ssi with CRIU).
        same_fs = clusters[modes[0]].base
        with tempfile.TemporaryDirectory(prefix="ssi-bench-jobs-") as work:
            for size in sizes:
                raw: list[dict[str, float]] = []
                ours: dict[str, list[dict[str, float]]] = {k: [] for k in modes}
                for _ in range(args.repeat):
                    os.sync()
                    s = measure_once(size, base=same_fs)
                    raw.append({"dump_s": s.dump_s, "restore_s": s.restore_s})
                    for mode in modes:
                        ours[mode].append(ssi_once(clusters[mode], size, Path(work)))
                base = median(raw)
                for mode in modes:
                    med = median(ours[mode])
                    rows.append(
                        {
                            "size": size,
                            "mode": mode,
                            "raw_dump_s": base["dump_s"],
                            "raw_restore_s": base["restore_s"],
                            **med,
                            "checkpoint_vs_raw": base["dump_s"] / med["checkpoint_s"],
                            "restart_here_vs_raw": med["restart_here_s"]
                            / base["restore_s"],
                            "restart_there_vs_raw": med["restart_there_s"]
                            / base["restore_s"],
                        }
                    )
    finally:
        for c in clusters.values():
            c.down()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'size':>5} {'mode':>6} {'raw dump':>9} {'ssi ckpt':>9} {'thr ratio':>9} "
        f"{'(criu)':>8} {'raw rest':>9} {'rest here':>10} {'×raw':>5} "
        f"{'rest there':>10} {'×raw':>5}"
    )
    for r in rows:
        print(
            f"{format_size(r['size']):>5} {r['mode']:>6} "
            f"{r['raw_dump_s'] * 1e3:7.0f}ms {r['checkpoint_s'] * 1e3:7.0f}ms "
            f"{r['checkpoint_vs_raw']:9.2f} {r['dump_s'] * 1e3:6.0f}ms "
            f"{r['raw_restore_s'] * 1e3:7.0f}ms {r['restart_here_s'] * 1e3:8.0f}ms "
            f"{r['restart_here_vs_raw']:5.2f} {r['restart_there_s'] * 1e3:8.0f}ms "
            f"{r['restart_there_vs_raw']:5.2f}"
        )
    print(
        f"medians of {args.repeat}. thr ratio = ssi checkpoint throughput (taken and "
        "safe: copied to a 2nd node, or in the shared spool) / raw CRIU dump "
        "throughput; goal >= 0.8. (criu) = CRIU's dump inside the ssi checkpoint."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
