"""ssid and the cluster, for real: an ssid per network namespace, CURVE over TCP on
the namespaces' bridge, SQLite on disk, the CLI as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from ssi.local.ssids import LocalSsiCluster, wait_for
from ssi.proto import messages as m
from ssi.proto.errors import Conflict, Denied, NotFound, SsiError, Timeout, Unavailable
from ssi.rpc.keys import KeyPair
from ssi.rpc.local import LocalClient
from ssi.rpc.zmq_rpc import RpcClient

from .conftest import HB_TIMEOUT, free_subnet, leftovers_of, unique_prefix


@pytest.fixture
def cluster(ssi_cluster: Callable[..., LocalSsiCluster]) -> LocalSsiCluster:
    return ssi_cluster(3)


def states(c: LocalSsiCluster) -> dict[str, str]:
    return {n["name"]: n["state"] for n in c.call("node1", m.NodeList())}


def test_three_nodes_online_and_status_everywhere(cluster: LocalSsiCluster) -> None:
    assert states(cluster) == {"node1": "online", "node2": "online", "node3": "online"}
    for node in cluster.node_names:
        st = cluster.call(node, m.ClusterStatus())
        assert st["cluster"] == cluster.prefix and st["coordinator"] == "node1"
        assert st["this_node"]["node"] == node
        assert st["this_node"]["role"] == (
            "coordinator" if node == "node1" else "member"
        )


def test_killed_agent_is_lost_then_rejoins_with_its_key(
    cluster: LocalSsiCluster,
) -> None:
    killed_at = time.monotonic()
    cluster.stop("node2", signal.SIGKILL)
    wait_for("node2 lost", lambda: states(cluster)["node2"] == "lost", HB_TIMEOUT + 5)
    assert time.monotonic() - killed_at < HB_TIMEOUT + 3
    rec = cluster.call("node1", m.NodeShow(name="node2"))
    assert "no heartbeat" in rec["reason"]
    cluster.start("node2")  # same state dir: same key, same membership
    wait_for("node2 back", lambda: states(cluster)["node2"] == "online", 10)
    assert (
        cluster.call("node1", m.NodeShow(name="node2"))["public_key"]
        == rec["public_key"]
    )


def test_node_with_a_new_key_is_refused(cluster: LocalSsiCluster) -> None:
    cluster.stop("node3", signal.SIGKILL)
    keys = cluster.node_dir("node3") / "state" / "keys"
    for f in keys.iterdir():
        f.unlink()  # node3 comes back with a key the cluster never saw
    cluster.start("node3")
    wait_for("node3 lost", lambda: states(cluster)["node3"] == "lost", HB_TIMEOUT + 5)
    time.sleep(HB_TIMEOUT)  # several heartbeat rounds: it must stay out
    assert states(cluster)["node3"] == "lost"
    st = cluster.call("node3", m.ClusterStatus(), timeout=30)
    assert (
        st["this_node"]["connected"] is False and "did not answer" in st["unreachable"]
    )


def test_stranger_key_gets_nothing(cluster: LocalSsiCluster) -> None:
    import asyncio

    addr = cluster.topology.node("node1").address
    server_key = cluster.call("node1", m.NodeShow(name="node1"))["public_key"].encode()

    async def attempt() -> None:
        ctx = zmq.asyncio.Context()
        pub, sec = zmq.curve_keypair()
        client = RpcClient(
            ctx, f"tcp://{addr}:{cluster.port}", server_key, KeyPair(pub, sec)
        )
        try:
            with pytest.raises(Exception) as info:
                await client.call(m.NodeList(), timeout=1.5)
            assert isinstance(info.value, Timeout)  # no answer at all
        finally:
            client.close()
            ctx.destroy(linger=0)

    # the host reaches the bridge, so this is a real stranger on the cluster network
    asyncio.run(attempt())


def test_expired_reused_tokens_and_duplicate_names_are_refused(
    cluster: LocalSsiCluster,
) -> None:
    node4 = cluster.add_node()
    short = cluster.call("node1", m.NodeToken(ttl=0.3))["token"]
    time.sleep(0.5)
    with pytest.raises(Denied, match="expired"):
        cluster.call(node4, m.ClusterJoin(token=short))
    token = cluster.call("node1", m.NodeToken())["token"]
    cluster.call(node4, m.ClusterJoin(token=token))
    wait_for("node4 online", lambda: states(cluster).get(node4) == "online", 10)
    node5 = cluster.add_node()
    with pytest.raises(Denied, match="used"):
        cluster.call(node5, m.ClusterJoin(token=token))
    impostor = cluster.add_node(name="node2")  # a second machine calling itself node2
    with pytest.raises(Conflict, match="already in use"):
        cluster.call(
            impostor, m.ClusterJoin(token=cluster.call("node1", m.NodeToken())["token"])
        )
    with pytest.raises(Conflict, match="already in cluster"):
        cluster.call("node2", m.ClusterJoin(token=token))


def test_coordinator_kill_9_keeps_the_node_table(cluster: LocalSsiCluster) -> None:
    cluster.call("node1", m.NodeDrain(name="node3", reason="disk swap"))
    before = {n["name"]: n for n in cluster.call("node1", m.NodeList())}
    cluster.stop("node1", signal.SIGKILL)
    cluster.start("node1")
    after = {n["name"]: n for n in cluster.call("node1", m.NodeList())}
    assert after.keys() == before.keys()
    for name, rec in after.items():
        assert rec["public_key"] == before[name]["public_key"]
    assert (
        after["node3"]["state"] == "draining"
        and after["node3"]["reason"] == "disk swap"
    )
    wait_for(
        "agents heard again",
        lambda: all(
            n["last_heard_ago"] is not None and n["last_heard_ago"] < HB_TIMEOUT
            for n in cluster.call("node1", m.NodeList())
        ),
        10,
    )
    assert states(cluster) == {
        "node1": "online",
        "node2": "online",
        "node3": "draining",
    }


def test_drain_resume_evict(cluster: LocalSsiCluster) -> None:
    drained = cluster.call("node2", m.NodeDrain(name="node3", reason="maintenance"))
    assert drained["state"] == "draining" and drained["reason"] == "maintenance"
    assert cluster.call("node1", m.NodeResume(name="node3"))["state"] == "online"
    with pytest.raises(NotFound):
        cluster.call("node1", m.NodeDrain(name="node9"))
    with pytest.raises(Conflict, match="coordinator"):
        cluster.call("node1", m.NodeEvict(name="node1"))
    assert cluster.call("node1", m.NodeEvict(name="node3"))["evicted"] == "node3"
    assert "node3" not in states(cluster)
    # the evicted node hears it and forgets its cluster; its key gets nothing any more
    wait_for(
        "node3 out",
        lambda: cluster.call("node3", m.ClusterStatus())["cluster"] is None,
        10,
    )
    with pytest.raises(Unavailable):
        cluster.call("node3", m.NodeList())


def run_cli(c: LocalSsiCluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ssi.cli.main", "--local-prefix", c.prefix, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def exit_code_as_nobody(c: LocalSsiCluster, body: m.Request) -> int:
    """The CLI exit code an unprivileged user gets for a request (forked, setuid).

    The child makes the request with the already imported client: this Python lives
    under /root (0700), so `nobody` could not import anything new."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            LocalClient(str(c.socket("node1")), timeout=10).call(body)
            code = 0
        except SsiError as e:
            code = e.exit_code
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_cli_json_exit_codes_and_admin_verbs(cluster: LocalSsiCluster) -> None:
    r = run_cli(cluster, "node", "list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == 1
    assert sorted((n["name"], n["state"]) for n in doc["nodes"]) == [
        ("node1", "online"),
        ("node2", "online"),
        ("node3", "online"),
    ]
    r = run_cli(cluster, "--on", "node3", "node", "show", "nope")
    assert r.returncode == 3 and "no node named" in r.stderr
    r = run_cli(cluster, "node", "drain")
    assert r.returncode == 2 and "usage" in r.stderr
    # an ordinary user reads, but may not use admin verbs
    assert exit_code_as_nobody(cluster, m.NodeList()) == 0
    assert exit_code_as_nobody(cluster, m.NodeDrain(name="node2")) == 4
    assert states(cluster)["node2"] == "online"


def test_garbage_on_the_local_socket_never_kills_ssid(cluster: LocalSsiCluster) -> None:
    import socket
    import struct

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path = str(cluster.socket("node2"))

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.one_of(
            st.binary(max_size=256),
            st.binary(max_size=256).map(lambda b: struct.pack(">I", len(b)) + b),
            st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
        )
    )
    def send(frame: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(frame)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    send()
    assert cluster.call("node2", m.Ping()).node == "node2"
    assert states(cluster)["node2"] == "online"


def test_cluster_up_and_down_through_the_cli() -> None:
    prefix, subnet = unique_prefix(), free_subnet()
    cli = [sys.executable, "-m", "ssi.cli.main", "--local-prefix", prefix]
    try:
        up = subprocess.run(
            [*cli, "cluster", "up", "--local", "3", "--subnet", subnet],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, up.stderr + up.stdout
        assert "ssi node list" in up.stdout
        r = subprocess.run(
            [*cli, "node", "list", "--json"], capture_output=True, text=True
        )
        nodes = json.loads(r.stdout)["nodes"]
        assert [(n["name"], n["state"]) for n in nodes] == [
            ("node1", "online"),
            ("node2", "online"),
            ("node3", "online"),
        ]
        sock = Path(LocalSsiCluster.socket_of(prefix, "node1"))
        assert sock.exists()
    finally:
        down = subprocess.run(
            [*cli, "cluster", "down"], capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
    assert leftovers_of(prefix) == []
    assert not sock.exists()
