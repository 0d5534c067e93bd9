"""Configuration: /etc/ssi/ssi.toml, then /etc/ssi/conf.d/*.toml in name order, then
flags.

Every file may hold any of the sections below; later files override earlier ones key
by key.
An unknown key or a value of the wrong type is an error naming the file and the key.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from ssi.net.addresses import AddressPool

DEFAULT_PATH = Path("/etc/ssi/ssi.toml")


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str = msgspec.field(default_factory=socket.gethostname)
    state_dir: str = "/var/lib/ssi"
    run_dir: str = "/run/ssi"
    listen: str = "0.0.0.0"
    advertise: str = (
        ""  # address peers use to reach this node; default: first non-loopback
    )
    port: int = 7070
    cgroup_base: str = "ssi"  # jobs' cgroups: <hierarchy>/<cgroup_base>/<job id>
    # A directory every node mounts at this same path (NFS, Lustre, ...): checkpoints
    # are written there once and count as taken without a copy to another node.
    shared_spool: str = ""


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    heartbeat_interval: float = 1.0  # seconds between an agent's heartbeats
    heartbeat_timeout: float = 6.0  # seconds without one before a node is lost
    admin_group: str = ""  # members may use admin verbs, besides root
    token_ttl: float = 3600.0  # default lifetime of a join token, seconds
    ckpt_keep: int = 3  # checkpoints kept per job; older ones are deleted everywhere


class SchedulerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    policy: str = "least_loaded"  # until `ssi policy set` chooses another
    rebalance_every: float = 2.0  # seconds between rebalancing rounds
    shared_host: bool = False  # nodes share one machine (local clusters): ignore
    # the host-wide load and count only the jobs' demand


class CriuConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str = (
        "criu"  # a name looked up on PATH (the venv's bin first) or an absolute path
    )


class NetConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`--net private` jobs. pool: their addresses, a CIDR inside the nodes'
    cluster subnet, handed out by the coordinator ("": such jobs are refused).
    link: the node's interface on that subnet ("": the one holding its advertised
    address). netns_prefix: their namespaces are /run/netns/<prefix><job id>."""

    pool: str = ""
    link: str = ""
    netns_prefix: str = "ssi-job"

    def __post_init__(self) -> None:
        if self.pool:
            AddressPool.parse(self.pool)  # PoolError is a ValueError: a bad setting
        if not self.netns_prefix or "/" in self.netns_prefix:
            raise ValueError(f"netns_prefix {self.netns_prefix!r}: a file name part")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    criu: CriuConfig = msgspec.field(default_factory=CriuConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    net: NetConfig = msgspec.field(default_factory=NetConfig)

    @property
    def socket_path(self) -> Path:
        return Path(self.node.run_dir) / "ssid.sock"


class ConfigError(Exception):
    pass


class CriuNotFound(ConfigError):
    pass


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the configuration file and its conf.d/ directory; missing files are fine."""
    path = path or Path(os.environ.get("SSI_CONFIG", DEFAULT_PATH))
    files = [path, *sorted((path.parent / "conf.d").glob("*.toml"))] if path else []
    data: dict[str, Any] = {}
    for f in files:
        if not f.is_file():
            continue
        try:
            data = _merge(data, tomllib.loads(f.read_text()))
            msgspec.convert(data, Config)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
            raise ConfigError(f"{f}: {e}") from None
    if overrides:
        data = _merge(data, overrides)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"bad setting: {e}") from None


def resolve_criu(cfg: Config) -> str:
    """Absolute path of the CRIU binary the configuration names, or CriuNotFound."""
    name = cfg.criu.path
    search = os.pathsep.join(
        [str(Path(sys.prefix) / "bin"), os.environ.get("PATH", "")]
    )
    found = name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    found = found or shutil.which(name, path=search)
    if not found:
        raise CriuNotFound(
            f"no CRIU binary found for [criu] path = {name!r}. Remedy: run "
            "`make setup` in the ssi source tree (it builds CRIU 4.1.1), or install "
            "CRIU >= 3.19 and "
            "set [criu] path in /etc/ssi/ssi.toml"
        )
    return found
