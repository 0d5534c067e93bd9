"""`ssi`: the cluster from the command line, in the idiom of krgadm and Slurm.

Exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 denied, 5 timeout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssi import __version__, config
from ssi.cli import (
    cluster_cmds,
    drmaa_cmds,
    ipc_cmds,
    job_cmds,
    node_cmds,
    policy_cmds,
)
from ssi.cli.output import fail
from ssi.client import socket_path
from ssi.proto import messages as m
from ssi.proto.errors import SsiError
from ssi.rpc.local import LocalClient

EXAMPLES = """\
examples:
  ssi cluster up --local 3        three nodes in network namespaces, one cluster
  ssi node list                   the nodes and their state
  ssi --on node2 node list        ask node2's ssid (local clusters)
  ssi node token                  a single-use join token for a new node
  ssi node join TOKEN             (on the new node) join the cluster
  ssi node drain node3 --reason maintenance
  ssi submit -- python3 sim.py    run a job somewhere; prints its id
  ssi ps                          the cluster's jobs
  ssi checkpoint 7 --stop         dump job 7 (copied to another node), stop it
  ssi restart 7 --node node3      bring it back on node3
  ssi cluster down                stop and remove the local cluster
"""


@dataclass
class Ctx:
    args: argparse.Namespace

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def socket_path(self) -> str:
        a = self.args
        return socket_path(
            a.socket, on=a.on, local_prefix=a.local_prefix, config_path=a.config
        )

    def call(self, body: m.Request, timeout: float | None = None) -> Any:
        client = LocalClient(self.socket_path(), timeout=timeout or self.args.timeout)
        return client.call(body)


Command = Callable[[Ctx], int]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssi",
        description="ssi: many Linux machines seen as one. Run, checkpoint and move "
        "jobs "
        "across the nodes of a cluster.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ssi {__version__}")
    p.add_argument(
        "--socket",
        type=Path,
        default=os.environ.get("SSI_SOCKET"),
        help="ssid's local socket (default: /run/ssi/ssid.sock, else the "
        "local cluster's node1); also $SSI_SOCKET",
    )
    p.add_argument(
        "--on", metavar="NODE", help="talk to NODE's ssid in a local cluster"
    )
    p.add_argument(
        "--local-prefix",
        default=os.environ.get("SSI_LOCAL_PREFIX", "ssi"),
        help="which local cluster --on and `cluster up/down` mean (default ssi)",
    )
    p.add_argument("--config", type=Path, help="configuration file (/etc/ssi/ssi.toml)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for an answer (default 30)",
    )
    groups = p.add_subparsers(dest="group", metavar="GROUP", required=True)
    cluster_cmds.register(groups)
    node_cmds.register(groups)
    job_cmds.register(groups)
    policy_cmds.register(groups)
    drmaa_cmds.register(groups)
    ipc_cmds.register(groups)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.func
    try:
        return command(Ctx(args))
    except SsiError as e:
        fail(str(e), getattr(e, "hint", ""))
        return e.exit_code
    except config.ConfigError as e:
        fail(str(e))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
