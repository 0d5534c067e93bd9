"""Which ssid a client on this machine talks to: one rule for the CLI and libdrmaa.

    --socket PATH | $SSI_SOCKET                      that socket
    --on NODE                                        NODE's ssid in a local cluster
    configured socket (/run/ssi/ssid.sock) exists    it
    local cluster's node1 socket exists              it ($SSI_LOCAL_PREFIX, default ssi)
    else                                             the configured socket (whose
                                                     absence the client then reports)

This module is imported by libdrmaa's embedded interpreter: it stays cheap to import
(no pyroute2, no network namespaces).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ssi import config

__all__ = ["LOCAL_RUN_DIR", "local_socket", "socket_path"]

# Where local clusters keep their state (ssi.local.cluster.RUN_DIR).
LOCAL_RUN_DIR = Path("/run/ssi-local")


def local_socket(prefix: str, node: str) -> Path:
    """The local socket of `node`'s ssid in the local cluster named `prefix`
    (ssi.local.ssids.LocalSsiCluster.socket_of)."""
    return LOCAL_RUN_DIR / prefix / "ssid" / node / "run" / "ssid.sock"


def socket_path(
    socket: str | os.PathLike[str] | None = None,
    *,
    on: str | None = None,
    local_prefix: str | None = None,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The ssid socket to use, by the rule above. `environ` (default os.environ)
    supplies SSI_SOCKET, SSI_LOCAL_PREFIX and SSI_CONFIG when the arguments do not.
    Raises config.ConfigError for an unreadable configuration file."""
    env = os.environ if environ is None else environ
    socket = socket or env.get("SSI_SOCKET") or None
    if socket:
        return str(socket)
    prefix = local_prefix or env.get("SSI_LOCAL_PREFIX") or "ssi"
    if on:
        return str(local_socket(prefix, on))
    if config_path is None:
        config_path = Path(env.get("SSI_CONFIG") or config.DEFAULT_PATH)
    configured = config.load(config_path).socket_path
    if configured.exists():
        return str(configured)
    local = local_socket(prefix, "node1")
    return str(local if local.exists() else configured)
