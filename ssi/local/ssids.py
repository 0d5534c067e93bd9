"""An ssid in each node of a LocalCluster, formed into one cluster exactly as an admin
would: `cluster init` on node1, then a join token for each other node.

    LocalSsiCluster.up():  topology up ─▶ ssid per node ─▶ node1: cluster.init
                            ─▶ nodeK: node.token (node1) + cluster.join (nodeK)
                           ─▶ all online
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ssi.client import local_socket
from ssi.jobs.cgroups import detect, mounts
from ssi.local import procs
from ssi.local.cluster import RUN_DIR, LocalCluster, cleanup
from ssi.proto import messages as m
from ssi.proto.errors import SsiError
from ssi.proto.errors import Timeout as SsiTimeout
from ssi.rpc.local import LocalClient

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """Polls `check` until it returns something truthy, else SsiTimeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (SsiError, OSError) as e:
            last_error = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise SsiTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


class LocalSsiCluster:
    """A LocalCluster whose nodes each run an ssid. Node names: node1 … nodeN."""

    def __init__(
        self,
        size: int,
        *,
        prefix: str = "ssi",
        subnet: str = "10.87.0.0/24",
        port: int = 7070,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 6.0,
        log_level: str = "info",
        shared_spool: bool = False,
        net_pool: str | None = None,
    ) -> None:
        """net_pool: the [net] pool of `--net private` jobs; None: a quarter of
        the subnet (see job_pool); "/N": the first /N of that quarter; "": none
        (such jobs are refused)."""
        self.prefix = prefix
        self.shared_spool = shared_spool  # one checkpoint directory for all nodes
        self.net_pool = net_pool
        self.topology = LocalCluster(size, prefix=prefix, subnet=subnet)
        self.port = port
        self.heartbeat = (heartbeat_interval, heartbeat_timeout)
        self.log_level = log_level
        self.pids: dict[str, int] = {}

    # --- where things are ---

    @staticmethod
    def base_of(prefix: str) -> Path:
        return RUN_DIR / prefix / "ssid"

    @staticmethod
    def socket_of(prefix: str, node: str) -> Path:
        return local_socket(prefix, node)  # clients find it by the same rule

    @property
    def base(self) -> Path:
        return self.base_of(self.prefix)

    def node_dir(self, node: str) -> Path:
        return self.base / node

    def socket(self, node: str) -> Path:
        return self.socket_of(self.prefix, node)

    def log_path(self, node: str) -> Path:
        return self.node_dir(node) / "ssid.log"

    @property
    def job_pool(self) -> str:
        """The addresses of `--net private` jobs: net_pool, by default the third
        quarter of the subnet (10.87.0.128/26 of a /24), clear of the nodes (low)
        and of the host (high)."""
        if self.net_pool is not None and not self.net_pool.startswith("/"):
            return self.net_pool
        subnet = ipaddress.IPv4Network(self.topology.subnet)
        quarter = list(subnet.subnets(prefixlen_diff=2))[2]
        if self.net_pool:
            return str(next(quarter.subnets(new_prefix=int(self.net_pool[1:]))))
        return str(quarter)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.topology.nodes]

    def client(self, node: str = "node1", timeout: float = 10.0) -> LocalClient:
        return LocalClient(str(self.socket(node)), timeout=timeout)

    def call(self, node: str, body: m.Request, timeout: float = 10.0) -> Any:
        return self.client(node, timeout).call(body)

    # --- life cycle ---

    def write_config(self, node: str, name: str | None = None) -> Path:
        """ssid's configuration for a node; `name` is the node name ssid claims
        (another one than its namespace's only to test impostors)."""
        d = self.node_dir(node)
        (d / "run").mkdir(parents=True, exist_ok=True)
        interval, timeout = self.heartbeat
        shared = self.base / "shared"
        shared_line = f'shared_spool = "{shared}"\n' if self.shared_spool else ""
        cfg = d / "ssi.toml"
        cfg.write_text(
            f'[node]\nname = "{name or node}"\nstate_dir = "{d / "state"}"\n'
            f'run_dir = "{d / "run"}"\n'
            f'advertise = "{self.topology.node(node).address}"\n'
            f"port = {self.port}\n"
            f'cgroup_base = "ssi-{self.prefix}-{node}"\n'
            f"{shared_line}\n"
            f"[cluster]\nheartbeat_interval = {interval}\n"
            f"heartbeat_timeout = {timeout}\n\n"
            "[scheduler]\nshared_host = true\n\n"
            f'[net]\npool = "{self.job_pool}"\n'
            f'netns_prefix = "{self.topology.job_netns_prefix(node)}"\n'
        )
        return cfg

    def start(
        self, node: str, timeout: float = 20.0, *, name: str | None = None
    ) -> int:
        """Starts the node's ssid and waits until it says it is ready (its local
        socket answers before it has joined its cluster)."""
        cfg = self.write_config(node, name)
        with open(self.log_path(node), "ab") as logf:
            pid = self.topology.spawn(
                node,
                [
                    sys.executable,
                    "-m",
                    "ssi.node.main",
                    "--config",
                    str(cfg),
                    "--log-level",
                    self.log_level,
                ],
                stdin=os.open(os.devnull, os.O_RDONLY),
                stdout=logf.fileno(),
                stderr=logf.fileno(),
            )
        self.pids[node] = pid
        self._save()
        wait_for(
            f"ssid of {node} to be ready",
            lambda: self.call(node, m.Ping(), 1.0).ready,
            timeout,
        )
        return pid

    def stop(self, node: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stops (SIGTERM) or kills (SIGKILL) a node's ssid and reaps it."""
        pid = self.pids.pop(node, None)
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        wait_for(f"ssid of {node} (pid {pid}) to exit", lambda: _gone(pid), timeout)
        self._save()

    def kill_node(self, node: str, timeout: float = 10.0) -> set[int]:
        """Kills every process in the node's network namespace (ssid, its helpers,
        the jobs it runs, frozen or not), as a power cut would; returns their pids.
        The namespace stays, so start(node) brings the node back."""
        self.stop(node, signal.SIGKILL, timeout)
        kill_jobs(self.prefix, node)
        ns = procs.ns_id(self.topology.node(node).netns_path)
        return procs.kill_all({ns}, timeout=timeout)

    def online(self) -> list[str]:
        nodes = self.call("node1", m.NodeList())
        return sorted(n["name"] for n in nodes if n["state"] == "online")

    def up(self, timeout: float = 60.0) -> LocalSsiCluster:
        self.topology.up()
        for node in self.node_names:
            self.start(node)
        self.call("node1", m.ClusterInit(name=self.prefix))
        for node in self.node_names[1:]:
            self.join(node)
        want = sorted(self.node_names)
        wait_for("every node online", lambda: self.online() == want, timeout)
        return self

    def add_node(self, *, name: str | None = None) -> str:
        """A new namespace with a running ssid that is not in the cluster yet."""
        node = self.topology.add_node().name
        self.start(node, name=name)
        return node

    def join(self, node: str) -> Any:
        token = self.call("node1", m.NodeToken())["token"]
        return self.call(node, m.ClusterJoin(token=token), timeout=15.0)

    def down(self) -> None:
        for node in list(self.pids):
            try:
                self.stop(node)
            except SsiError:
                self.stop(node, signal.SIGKILL)
        for node in self.node_names:  # a frozen job (a move cut short) ignores KILL
            kill_jobs(self.prefix, node)
        self.topology.down()  # also kills anything left in the namespaces
        remove_cgroups(self.prefix)

    @classmethod
    def teardown(cls, prefix: str) -> list[str]:
        """Stops the ssids a local cluster recorded and removes all it left behind,
        from any process (the one that ran `up` may be long gone)."""
        removed: list[str] = []
        record = cls.base_of(prefix) / "ssids.json"
        pids: dict[str, int] = (
            json.loads(record.read_text())["pids"] if record.exists() else {}
        )
        for node, pid in pids.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                removed.append(f"ssid {node} (pid {pid})")
        for pid in pids.values():
            try:
                wait_for(f"pid {pid} to exit", functools.partial(_gone, pid), 10.0)
            except SsiError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return removed + cleanup(prefix) + remove_cgroups(prefix)

    def _save(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        record = {
            "prefix": self.prefix,
            "pids": self.pids,
            "port": self.port,
            "size": len(self.topology.nodes),
            "subnet": self.topology.subnet,
        }
        (self.base / "ssids.json").write_text(json.dumps(record))

    def __enter__(self) -> LocalSsiCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _gone(pid: int) -> bool:
    """True once pid has exited; reaps it when it is our child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: look for it (a zombie counts as gone)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True


def kill_jobs(prefix: str, node: str) -> None:
    """SIGKILLs every process in the node's job cgroups; frozen ones too (they die
    once thawed, without running another instruction)."""
    with contextlib.suppress(OSError):
        cgroups = detect(f"ssi-{prefix}-{node}")
        for job_id in cgroups.job_ids():
            with contextlib.suppress(OSError):
                cgroups.kill(job_id)


def remove_cgroups(prefix: str) -> list[str]:
    """The job cgroups the cluster's nodes made (ssi-<prefix>-<node>/...), in every
    hierarchy; called once their processes are gone."""
    removed = []
    for mount in mounts():
        if mount.fstype not in ("cgroup", "cgroup2"):
            continue
        for base in Path(mount.point).glob(f"ssi-{prefix}-node*"):
            for d in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
                removed.append(f"cgroup {base}")
    return removed
