"""Raw CRIU dump and restore times of a job holding 10 MB, 100 MB and 1 GB of memory.

Each sample: a job under ssi-init in its own PID/IPC/UTS namespaces allocates and writes
its memory, then idles; CRIU (through ssi.checkpoint.Criu, ssi's default options) dumps
it into a tmpfs directory, killing it, then restores it. Times are the wall time of each
RPC (CRIU's start included); GB/s is touched memory (1e9 bytes) per second.

    .venv/bin/python benchmarks/bench_criu_raw.py [--sizes 10M,100M] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernel_shim  # noqa: E402
from benchmarks._criu_baseline import (  # noqa: E402
    TMPFS,
    Sample,
    default_criu,
    format_size,
    measure_once,
    parse_size,
)
from ssi.checkpoint import DumpOptions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10M,100M,1G", help="comma list, K/M/G = 2^10..")
    ap.add_argument("--repeat", type=int, default=3, help="samples per size")
    ap.add_argument(
        "--warmup", type=int, default=1, help="samples per size run first, not counted"
    )
    ap.add_argument("--dir", type=Path, default=TMPFS, help="tmpfs for the images")
    ap.add_argument("--log-level", type=int, default=DumpOptions().log_level)
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (namespaces, CRIU)")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    kernel_shim.set_child_subreaper()  # whatever a restored job leaves comes to us
    criu = default_criu()
    options = DumpOptions(log_level=args.log_level)
    started = time.monotonic()
    samples: dict[int, list[Sample]] = {}
    for size in sizes:
        for i in range(args.warmup + args.repeat):
            s = measure_once(size, criu=criu, base=args.dir, options=options)
            if i >= args.warmup:
                samples.setdefault(size, []).append(s)
            if not args.json:
                print(
                    f"  {format_size(size):>5}: dump {s.dump_s * 1e3:8.1f} ms"
                    f"  restore {s.restore_s * 1e3:8.1f} ms"
                    + ("  (warm-up)" if i < args.warmup else ""),
                    file=sys.stderr,
                    flush=True,
                )
    if args.json:
        doc = {
            "criu": criu.binary,
            "criu_version": criu.version(),
            "repeat": args.repeat,
            "warmup": args.warmup,
            "log_level": args.log_level,
            "samples": [s.as_dict() for ss in samples.values() for s in ss],
            "summary": [summary(size, ss) for size, ss in samples.items()],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"CRIU {criu.version()} ({criu.binary}), images in {args.dir}, "
        f"{args.repeat} samples per size after {args.warmup} warm-up, median (min):"
    )
    print(
        f"{'size':>6} {'image':>9} {'dump ms':>17} {'GB/s':>6}"
        f" {'restore ms':>17} {'GB/s':>6} {'frozen ms':>10}"
    )
    for size, ss in samples.items():
        r = summary(size, ss)
        print(
            f"{format_size(size):>6} {r['image_mb']:7.1f}MB"
            f" {r['dump_ms']:8.1f} ({r['dump_ms_min']:6.1f}) {r['dump_gbps']:6.2f}"
            f" {r['restore_ms']:8.1f} ({r['restore_ms_min']:6.1f})"
            f" {r['restore_gbps']:6.2f} {r['frozen_ms']:10.1f}"
        )
    print(f"total {time.monotonic() - started:.1f} s")
    return 0


def summary(size: int, ss: list[Sample]) -> dict[str, float | int | str]:
    dump = [s.dump_s for s in ss]
    rest = [s.restore_s for s in ss]
    frozen = [s.dump_stats.get("frozen_time", 0) / 1e3 for s in ss]
    return {
        "size": size,
        "label": format_size(size),
        "image_mb": statistics.median(s.image_bytes for s in ss) / 2**20,
        "dump_ms": statistics.median(dump) * 1e3,
        "dump_ms_min": min(dump) * 1e3,
        "dump_gbps": size / statistics.median(dump) / 1e9,
        "restore_ms": statistics.median(rest) * 1e3,
        "restore_ms_min": min(rest) * 1e3,
        "restore_gbps": size / statistics.median(rest) / 1e9,
        "frozen_ms": statistics.median(frozen),
    }


if __name__ == "__main__":
    sys.exit(main())
