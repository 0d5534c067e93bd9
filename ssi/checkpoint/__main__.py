"""`python -m ssi.checkpoint`: one CRIU operation from the command line, result as JSON.

    python -m ssi.checkpoint dump --pid 4242 --images /var/lib/ssi/ckpt/7
    python -m ssi.checkpoint restore --images /var/lib/ssi/ckpt/7
    python -m ssi.checkpoint check | version

Meant to run in a child that entered another namespace only (kernel_shim.spawn with
netns=...), so that a restore lands in that network namespace while its caller stays
where it is. The restored tree is this process's child; when this process exits it goes
to the nearest child subreaper above (the caller, which must be one), and a job init
with a parent-death signal receives it: restore such jobs with Criu(netns=...) instead.

Prints one JSON object on stdout: the result, or {"error": ..., "errors": [...],
"log_path": ...} with exit status 1 on a CriuError.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ssi import config
from ssi.checkpoint.criu import Criu
from ssi.checkpoint.errors import CriuError


def run(args: argparse.Namespace) -> dict[str, Any]:
    criu = Criu(args.criu or config.resolve_criu(config.load()))
    if args.cmd == "version":
        return {"version": criu.version(), "binary": criu.binary}
    if args.cmd == "check":
        criu.check()
        return {"ok": True, "version": criu.version()}
    if args.cmd == "dump":
        d = criu.dump(
            args.pid,
            args.images,
            leave_running=args.leave_running,
            tcp_established=args.tcp_established,
        )
        return {
            "images_dir": str(d.images_dir),
            "log_path": str(d.log_path),
            "seconds": d.seconds,
            "stats": d.stats,
        }
    r = criu.restore(args.images, tcp_established=args.tcp_established)
    return {
        "pid": r.pid,
        "images_dir": str(r.images_dir),
        "log_path": str(r.log_path),
        "seconds": r.seconds,
        "stats": r.stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssi.checkpoint")
    ap.add_argument("--criu", help="CRIU binary (default: from the configuration)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("check")
    d = sub.add_parser("dump")
    d.add_argument("--pid", type=int, required=True, help="root of the tree (host PID)")
    d.add_argument("--images", required=True)
    d.add_argument("--leave-running", action="store_true")
    d.add_argument("--tcp-established", action="store_true")
    r = sub.add_parser("restore")
    r.add_argument("--images", required=True)
    r.add_argument("--tcp-established", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = run(args)
    except CriuError as e:
        out = {
            "error": str(e),
            "errors": list(e.errors),
            "log_path": str(e.log_path) if e.log_path else None,
        }
        print(json.dumps(out), flush=True)
        return 1
    except config.ConfigError as e:
        print(json.dumps({"error": str(e), "errors": [], "log_path": None}), flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
