"""Cold and live migration through ssi (JobMigrate on a 2-node LocalSsiCluster), and
ssi's node-level live mechanics, against raw CRIU between two network namespaces, all
in the same run, for jobs of each size; each job idle or rewriting its memory.

    ssi cold / ssi live:  JobMigrate(job, node2[, live]) to the coordinator (node1)
    node live:            LiveSource/LiveTarget node to node (ssi.migration, no ssid)
    raw cold:             criu dump ─ copy images ─ criu restore
    raw lazy:             criu dump --lazy-pages (page server) ─ copy images
                          ─ criu lazy-pages ─ criu restore --lazy-pages
    "+w": the job rewrites 256 pages every 10 ms (about 100 MB/s) throughout.

freeze = the longest gap between two of the job's ticks (realtime clock, every 10 ms:
what the job itself sees); total = start of the move to the last page arrived (cold:
to the job restored; ssi: the coordinator's clock, from its first request to the
target's answer); bytes = images + pages fetched.
Rows are medians of --repeat runs, the runs of all modes interleaved.

Goals (issue 5): live freeze <= 1.2 x raw lazy; 1G live freeze <= 1.5 x 10M live
freeze; live total of a writing job <= raw lazy's; cold total <= 1.3 x raw cold.

Run as root: .venv/bin/python benchmarks/bench_migration.py
    [--sizes 10M,100M,1G] [--repeat 3] [--modes ...] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._criu_baseline import format_size, parse_size  # noqa: E402
from benchmarks._migration_nodes import (  # noqa: E402
    MEMORY_COUNTER,
    WRITE_PAGES,
    Result,
    Side,
    measure_live,
    measure_raw_cold,
    measure_raw_lazy,
    pause_during,
    two_nodes,
)
from benchmarks._workloads import python_job, read_ticks, wait_ticks  # noqa: E402
from ssi.local.ssids import LocalSsiCluster, wait_for  # noqa: E402
from ssi.local.testing import free_subnet, unique_prefix  # noqa: E402
from ssi.proto import messages as m  # noqa: E402


def measure_ssi(
    c: LocalSsiCluster, size: int, work: Path, *, live: bool, write_pages: int
) -> Result:
    """Submit a MEMORY_COUNTER job on node1, move it to node2 through the
    coordinator, measure, kill it."""
    ticks = work / f"ssi-{secrets.token_hex(3)}.ticks"
    argv = python_job(MEMORY_COUNTER, str(ticks), str(size), str(write_pages))
    job = c.call(
        "node1",
        m.JobSubmit(
            argv=argv,
            cwd=str(work),
            stdout=str(ticks.with_suffix(".out")),
            env={"PATH": os.environ["PATH"]},
            node="node1",
        ),
    )["id"]
    try:
        wait_ticks(ticks, 3, timeout=120)
        wait_for("the job to run", lambda: _state(c, job) == "running", 30)
        before = len(read_ticks(ticks))
        fig = c.call("node1", m.JobMigrate(job=job, node="node2", live=live), 900)
        gap = pause_during(ticks, before)
        pages = int(fig.get("page_bytes", 0))
        # The coordinator's clock, from its first request of the move (the
        # target's preparation) to the target's answer: restored (cold), every
        # page arrived (live).
        moved = fig["last_page_seconds"] if live else fig["freeze_seconds"]
        total = fig["prepare_seconds"] + moved
        restore = fig["freeze_seconds"]  # the coordinator's view of the freeze
        return Result(size, gap, total, restore, int(fig["bytes"]) - pages, pages)
    finally:
        c.call("node1", m.JobKill(job=job, signal=9))
        wait_for("the job to end", lambda: _state(c, job) != "running", 60)
        # Both copies gone, their memory given back, before the next measurement
        # (raw CRIU's jobs are reaped before their measurement returns).
        wait_for("its processes to go", lambda: not _running_with(str(ticks)), 60)


def _state(c: LocalSsiCluster, job: int) -> str:
    return str(c.call("node1", m.JobShow(job=job))["state"])


def _running_with(arg: str) -> list[int]:
    """Processes (not zombies) whose command line holds `arg`."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if arg in (p.info["cmdline"] or []) and p.info["status"] != "zombie":
            found.append(p.pid)
    return found


Measure = Callable[[int, Path], Result]


def modes(c: LocalSsiCluster, a: Side, b: Side) -> dict[str, Measure]:
    w = WRITE_PAGES
    return {
        "raw cold": lambda s, d: measure_raw_cold(s, d, a, b),
        "ssi cold": lambda s, d: measure_ssi(c, s, d, live=False, write_pages=0),
        "raw lazy": lambda s, d: measure_raw_lazy(s, d, a, b),
        "node live": lambda s, d: measure_live(s, d, a, b),
        "ssi live": lambda s, d: measure_ssi(c, s, d, live=True, write_pages=0),
        "raw lazy+w": lambda s, d: measure_raw_lazy(s, d, a, b, w),
        "ssi live+w": lambda s, d: measure_ssi(c, s, d, live=True, write_pages=w),
    }


def median_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, mode): the median of each figure over the repeats."""
    keys: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for s in samples:
        keys.setdefault((s["size"], s["mode"]), []).append(s)
    rows = []
    for (size, mode), group in keys.items():
        row: dict[str, Any] = {"size": size, "mode": mode, "runs": len(group)}
        for k in ("freeze_s", "total_s", "restore_s", "image_bytes", "page_bytes"):
            row[k] = statistics.median(g[k] for g in group)
        moved = (g["image_bytes"] + g["page_bytes"] for g in group)
        row["bytes"] = statistics.median(moved)
        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The goals' ratios, from the medians (absent when a mode was not run)."""
    at = {(r["size"], r["mode"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})
    out: dict[str, float] = {}

    def put(name: str, num: tuple[int, str, str], den: tuple[int, str, str]) -> None:
        a, b = at.get(num[:2]), at.get(den[:2])
        if a and b and b[den[2]]:
            out[name] = a[num[2]] / b[den[2]]

    for s in sizes:
        f = format_size(s)
        put(f"{f} live freeze / raw lazy", (s, "ssi live", "freeze_s"),
            (s, "raw lazy", "freeze_s"))  # fmt: skip
        put(f"{f} node live freeze / raw lazy", (s, "node live", "freeze_s"),
            (s, "raw lazy", "freeze_s"))  # fmt: skip
        put(f"{f} live+w total / raw lazy+w", (s, "ssi live+w", "total_s"),
            (s, "raw lazy+w", "total_s"))  # fmt: skip
        put(f"{f} cold total / raw cold", (s, "ssi cold", "total_s"),
            (s, "raw cold", "total_s"))  # fmt: skip
    if sizes:
        lo, hi = sizes[0], sizes[-1]
        put(f"live freeze {format_size(hi)} / {format_size(lo)}",
            (hi, "ssi live", "freeze_s"), (lo, "ssi live", "freeze_s"))  # fmt: skip
    return out


def print_table(rows: list[dict[str, Any]], ratio: dict[str, float]) -> None:
    print(
        f"{'size':>5} {'mode':11} {'freeze':>9} {'total':>9} {'images':>10} "
        f"{'pages':>10} {'runs':>4}"
    )
    for r in rows:
        print(
            f"{format_size(r['size']):>5} {r['mode']:11} "
            f"{r['freeze_s'] * 1e3:7.1f}ms {r['total_s']:8.3f}s "
            f"{r['image_bytes'] / 1e6:8.2f}MB {r['page_bytes'] / 1e6:8.2f}MB "
            f"{r['runs']:4d}"
        )
    print()
    for name, value in ratio.items():
        print(f"{name:36} {value:6.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="", help="comma-separated subset of modes")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--work",
        default="",
        help="directory for raw CRIU's images and the jobs' ticks (default: on the "
        "file system of the cluster's spools, so that raw CRIU writes where ssi does)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    samples: list[dict[str, Any]] = []
    cluster = LocalSsiCluster(2, prefix=unique_prefix("bm"), subnet=free_subnet())
    work = Path("/nonexistent")
    try:
        cluster.up()
        work = Path(
            tempfile.mkdtemp(prefix="ssi-bench-mig-", dir=args.work or cluster.base)
        )
        os.chmod(work, 0o755)
        with two_nodes(work) as (_nodes, a, b):
            chosen = modes(cluster, a, b)
            if args.modes:
                want = [x.strip() for x in args.modes.split(",")]
                chosen = {k: v for k, v in chosen.items() if k in want}
            for run in range(args.repeat):
                for size in sizes:
                    for mode, measure in chosen.items():
                        os.sync()  # no write-back of the last run's images in this one
                        r = measure(size, work)
                        samples.append({"mode": mode, "run": run, **asdict(r)})
                        if not args.json:
                            print(
                                f"# run {run} {format_size(size):>5} {mode:11}"
                                f" freeze {r.freeze_s * 1e3:7.1f} ms"
                                f" total {r.total_s:7.3f} s",
                                file=sys.stderr,
                                flush=True,
                            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cluster.down()
    rows = median_rows(samples)
    ratio = ratios(rows)
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratio, "samples": samples}, indent=2))
    else:
        print_table(rows, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
