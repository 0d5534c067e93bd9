"""`ssid`: the node daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from ssi import config
from ssi.node.daemon import serve
from ssi.node.sdnotify import setup_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ssid",
        description="The ssi node daemon: runs this node's jobs and, on one node, the "
        "coordinator. Usually started by systemd (ssid.service) or "
        "`ssi cluster up --local`.",
    )
    p.add_argument(
        "--config", type=Path, help="configuration file (default /etc/ssi/ssi.toml)"
    )
    p.add_argument("--name", help="node name (default: host name)")
    p.add_argument(
        "--state-dir", help="keys, cluster database, checkpoints (/var/lib/ssi)"
    )
    p.add_argument("--run-dir", help="where the local socket lives (/run/ssi)")
    p.add_argument("--listen", help="address to bind the cluster sockets to (0.0.0.0)")
    p.add_argument("--advertise", help="address other nodes use to reach this one")
    p.add_argument(
        "--port", type=int, help="cluster port; joins use the next one (7070)"
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    node: dict[str, Any] = {
        k: v
        for k in ("name", "state_dir", "run_dir", "listen", "advertise", "port")
        if (v := getattr(args, k)) is not None
    }
    try:
        cfg = config.load(args.config, {"node": node} if node else None)
    except config.ConfigError as e:
        print(f"ssid: {e}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, cfg.node.name)
    try:
        asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
