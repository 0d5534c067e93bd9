"""`--net private` jobs on a real 3-node cluster: a job serving TCP keeps its address
and a client's established connection across a checkpoint and cold and live moves
(the client sees its counter go on, no number lost or repeated), is reachable on
its new node by new connections, restarts from a stopping checkpoint with its
listener, gets its network back when a move fails, and comes back with its address
when its node is lost. The refusals: no pool, a full pool, a pool outside the
nodes' subnet, cluster IPC (served on the node's network namespace)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Conflict, SsiError

from .conftest import wait_for

PORT = 7500

# One thread per connection; each line "N" from the client is answered "N K", K
# counting that connection's lines: a lost or repeated byte shows in K.
SERVER = f"""
import os, socket, threading
print(os.environ["SSI_JOB_ADDRESS"], flush=True)
def serve(c):
    k = 0
    f = c.makefile("rwb", buffering=0)
    for line in f:
        k += 1
        f.write(b"%s %d\\n" % (line.strip(), k))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(8)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# A new connection from wherever it runs: one exchange, exit 0 if answered.
PROBE = f"""
import socket, sys
with socket.create_connection((sys.argv[1], {PORT}), timeout=5) as s:
    s.sendall(b"7\\n")
    sys.exit(0 if s.makefile("rb").readline() == b"7 1\\n" else 1)
"""


class Client(threading.Thread):
    """An established connection from the host (on the cluster's bridge): sends
    1, 2, 3, ... and checks each answer; records when each came."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((address, PORT), timeout=30)
        self.answers: list[tuple[float, int]] = []
        self.error: str = ""
        self.stop = threading.Event()

    def run(self) -> None:
        f = self.sock.makefile("rwb", buffering=0)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                f.write(b"%d\n" % n)
                got = f.readline().split()
                if got != [str(n).encode(), str(n).encode()]:
                    self.error = f"sent {n}, got {got!r}"
                    return
                self.answers.append((time.time(), n))
                time.sleep(0.01)
        except OSError as e:
            self.error = f"after {n - 1} answers: {e!r}"
        finally:
            self.sock.close()

    def count(self) -> int:
        return len(self.answers)

    def longest_pause(self) -> float:
        times = [t for t, _ in self.answers]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def submit_server(c: LocalSsiCluster, cwd: Path, node: str) -> tuple[int, str]:
    j = c.call(
        "node1",
        m.JobSubmit(
            argv=[sys.executable, "-c", SERVER],
            cwd=str(cwd),
            env={"PATH": os.environ["PATH"]},
            node=node,
            net="private",
        ),
    )
    address = j["spec"]["net"]["address"]
    wait_for("the job to run", lambda: job(c, j["id"])["state"] == "running", 20)
    wait_for(f"{address}:{PORT} to answer", lambda: probe_from_host(address), 20)
    return j["id"], address


def job(c: LocalSsiCluster, job_id: int) -> dict[str, Any]:
    return c.call("node1", m.JobShow(job=job_id))


def probe_from_host(address: str) -> bool:
    try:
        with socket.create_connection((address, PORT), timeout=2) as s:
            s.sendall(b"7\n")
            return s.makefile("rb").readline() == b"7 1\n"
    except OSError:
        return False


def probe_from(c: LocalSsiCluster, node: str, address: str) -> int:
    """Exit status of a new connection made from inside `node`'s namespace."""
    pid = c.topology.spawn(node, [sys.executable, "-c", PROBE, address])
    return c.topology.wait(pid, timeout=20)


def job_namespaces(c: LocalSsiCluster, job_id: int) -> list[str]:
    return sorted(
        n
        for n in os.listdir("/run/netns")
        if n.startswith(c.prefix + "-") and n.endswith(f"-job{job_id}")
    )


def keeps_talking(client: Client, more: int = 20, timeout: float = 20) -> None:
    n = client.count()
    wait_for(
        f"{more} more answers on the connection ({client.error or 'no error'})",
        lambda: client.count() >= n + more or client.error,
        timeout,
    )
    assert client.error == ""


def test_connection_survives_cold_then_live_moves(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(3)
    job_id, address = submit_server(c, workdir, "node1")
    assert job_namespaces(c, job_id) == [f"{c.prefix}-node1-job{job_id}"]
    assert (workdir / f"ssi-{job_id}.out").read_text() == address + "\n"
    client = Client(address)
    client.start()
    try:
        keeps_talking(client)
        c.call("node1", m.JobCheckpoint(job=job_id), timeout=120)  # it runs on
        keeps_talking(client)
        moved = c.call("node2", m.JobMigrate(job=job_id, node="node2"), timeout=120)
        assert (moved["from"], moved["to"], moved["mode"]) == ("node1", "node2", "cold")
        keeps_talking(client)
        assert job_namespaces(c, job_id) == [f"{c.prefix}-node2-job{job_id}"]
        moved = c.call(
            "node1", m.JobMigrate(job=job_id, node="node3", live=True), timeout=120
        )
        assert (moved["from"], moved["to"], moved["mode"]) == ("node2", "node3", "live")
        keeps_talking(client)
    finally:
        client.stop.set()
        client.join(10)
    assert client.error == ""
    # Every answer in order, none lost or repeated, on one connection throughout.
    assert [n for _, n in client.answers] == list(range(1, client.count() + 1))
    assert client.longest_pause() < 10.0  # TCP retransmits back off: 0.2 s, 0.4 s, ...
    j = job(c, job_id)
    assert (j["node"], j["state"]) == ("node3", "running")
    assert j["spec"]["net"]["address"] == address
    assert job_namespaces(c, job_id) == [f"{c.prefix}-node3-job{job_id}"]
    # Reachable anew, from a node that once ran it as from the host.
    assert probe_from(c, "node1", address) == 0
    assert probe_from_host(address)


def test_stopping_checkpoint_then_restart_elsewhere_keeps_the_listener(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(3)
    job_id, address = submit_server(c, workdir, "node2")
    c.call("node1", m.JobCheckpoint(job=job_id, stop=True), timeout=120)
    wait_for("it to stop", lambda: job(c, job_id)["state"] == "stopped", 20)
    assert job_namespaces(c, job_id) == []
    assert not probe_from_host(address)
    c.call("node1", m.JobRestart(job=job_id, node="node3"), timeout=120)
    wait_for("it to run again", lambda: job(c, job_id)["state"] == "running", 30)
    assert job(c, job_id)["node"] == "node3"
    assert job_namespaces(c, job_id) == [f"{c.prefix}-node3-job{job_id}"]
    wait_for(f"{address} to answer on node3", lambda: probe_from_host(address), 20)
    assert probe_from(c, "node1", address) == 0


def submit_private(c: LocalSsiCluster, cwd: Path) -> dict[str, Any]:
    return c.call(
        "node1",
        m.JobSubmit(argv=["sleep", "600"], cwd=str(cwd), net="private", name="sleeper"),
    )


def test_no_pool_is_refused_with_the_setting_to_fix(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(1, net_pool="")
    with pytest.raises(
        BadRequest, match=r"--net private is not available.*\[net\] pool"
    ):
        submit_private(c, workdir)
    assert c.call("node1", m.JobList()) == []


def test_a_full_pool_refuses_and_an_ended_job_gives_its_address_back(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(1, net_pool="/30")  # two addresses
    with pytest.raises(BadRequest, match="--cluster-ipc and --net private"):
        c.call(
            "node1",
            m.JobSubmit(
                argv=["true"], cwd=str(workdir), net="private", cluster_ipc=True
            ),
        )
    first, second = submit_private(c, workdir), submit_private(c, workdir)
    held = {first["spec"]["net"]["address"], second["spec"]["net"]["address"]}
    assert len(held) == 2
    with pytest.raises(Conflict, match=r"no free address in \[net\] pool"):
        submit_private(c, workdir)
    assert len(c.call("node1", m.JobList())) == 2  # the refused one left nothing
    for j in (first, second):
        wait_for("it to run", lambda j=j: job(c, j["id"])["state"] == "running", 20)
    c.call("node1", m.JobKill(job=first["id"], signal=9))
    wait_for("it to end", lambda: job(c, first["id"])["state"] == "killed", 20)
    again = submit_private(c, workdir)
    assert again["spec"]["net"]["address"] == first["spec"]["net"]["address"]
    wait_for("it to run", lambda: job(c, again["id"])["state"] == "running", 20)


def test_a_pool_outside_the_nodes_subnet_fails_the_start_and_says_why(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(1, net_pool="192.0.2.0/28")  # TEST-NET-1: no node is on it
    j = submit_private(c, workdir)
    wait_for("it to fail", lambda: job(c, j["id"])["state"] == "failed", 20)
    reason = job(c, j["id"])["reason"]
    assert "outside the cluster network" in reason and "[net] pool" in reason
    assert job_namespaces(c, j["id"]) == []


def test_a_failed_move_gives_the_job_its_network_back_on_its_node(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(3)
    job_id, address = submit_server(c, workdir, "node1")
    client = Client(address)
    client.start()
    # The target's disk is full: its page server fails in the middle of the dump.
    spool = c.node_dir("node2") / "state" / "checkpoints"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)], check=True
    )
    try:
        keeps_talking(client)
        with pytest.raises(SsiError, match="node2 failed at dump or transfer"):
            c.call("node1", m.JobMigrate(job=job_id, node="node2"), timeout=120)
        keeps_talking(client)  # cut off from its dump on, then reconnected
    finally:
        subprocess.run(["umount", str(spool)], check=True)
        client.stop.set()
        client.join(10)
    assert client.error == ""
    assert [n for _, n in client.answers] == list(range(1, client.count() + 1))
    j = job(c, job_id)
    assert (j["node"], j["state"]) == ("node1", "running")
    assert job_namespaces(c, job_id) == [f"{c.prefix}-node1-job{job_id}"]
    assert probe_from(c, "node3", address) == 0


def test_a_lost_nodes_job_restarts_elsewhere_with_its_address(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    c = ssi_cluster(3)
    job_id, address = submit_server(c, workdir, "node2")
    c.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
    c.topology.remove_node("node2")  # the machine is gone, and its jobs with it
    wait_for(
        "the job running again elsewhere",
        lambda: (j := job(c, job_id))["node"] != "node2" and j["state"] == "running",
        30,
    )
    node = job(c, job_id)["node"]
    wait_for(f"{address} to answer on {node}", lambda: probe_from_host(address), 20)
    assert job_namespaces(c, job_id) == [f"{c.prefix}-{node}-job{job_id}"]
