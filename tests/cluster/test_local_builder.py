"""The local cluster builder, for real: namespaces, veths, a bridge, processes.

Each test uses its own prefix and subnet (see conftest), so runs never collide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ssi.local import LocalCluster, LocalClusterError, Naming, SubnetInUse, cleanup
from ssi.local import net as local_net
from ssi.local.naming import owns_link, owns_netns
from ssi.local.procs import with_descendants
from ssi.local.testing import (
    free_subnet,
    leftovers,
    namespace_ids,
    unique_prefix,
    wait_for,
)

F = TypeVar("F", bound=Callable[..., Any])


def needs_root(test: F) -> F:
    """Mark a test as needing root (namespaces), and skip it without."""
    skip = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")
    return pytest.mark.root(skip(test))


REPO = Path(__file__).resolve().parents[2]
PORT = 7007

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen()
    while True:
        c, peer = s.accept()
        with c:
            data = c.recv(1024)
            here = c.getsockname()[0]
            c.sendall(data + f" from {here} to {peer[0]}".encode())
    """
)

ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(b"hi")
        reply = c.recv(1024)
    sys.exit(0 if reply == f"hi from {host} to {me}".encode() else 3)
    """
)


def echo(address: str, port: int = PORT) -> str:
    """Ask the echo server at address:port from the host; returns its reply."""
    with socket.create_connection((address, port), timeout=2) as c:
        c.sendall(b"hi")
        return c.recv(1024).decode()


def start_echo_server(cluster: LocalCluster, node: str) -> int:
    pid = cluster.spawn(node, [sys.executable, "-c", ECHO_SERVER, str(PORT)])
    address = cluster.node(node).address
    wait_for(f"echo server on {node} ({address}:{PORT})", lambda: echo(address))
    return pid


def netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True
    ).stdout


# -- naming: no root needed -------------------------------------------------------


def test_naming_plan() -> None:
    n = Naming.make("ssi", "10.87.0.0/24")
    assert n.bridge == "ssi-br"
    assert n.host_address == "10.87.0.254"
    assert (n.netns(3), n.netns_path(3), n.veth(3)) == (
        "ssi-node3",
        "/run/netns/ssi-node3",
        "ssi-v3",
    )
    assert n.address(1) == "10.87.0.1" and n.address(253) == "10.87.0.253"
    assert n.max_index == 253
    with pytest.raises(ValueError):
        n.address(254)  # the host's
    assert n.node_index("node12") == 12
    with pytest.raises(ValueError):
        n.node_index("node0")


@pytest.mark.parametrize("prefix", ["", "1abc", "a-b", "abcdefghijk", "a b"])
def test_naming_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        Naming.make(prefix, "10.87.0.0/24")


def test_naming_longest_prefix_fits_ifnamsiz() -> None:
    n = Naming.make("abcdefghij", "10.87.0.0/24")
    assert len(n.veth(n.max_index)) == 15


def test_ownership_patterns_do_not_overlap() -> None:
    assert owns_link("ssi", "ssi-br") and owns_link("ssi", "ssi-v12")
    assert not owns_link("ssi", "ssi2-br")
    assert not owns_link("ssi", "ssi-x-br")
    assert not owns_link("ssi", "ssi-v0")
    assert not owns_link("ssi", "eth0")
    assert owns_netns("ssi", "ssi-node1")
    assert not owns_netns("ssi", "ssi2-node1")
    assert not owns_netns("ssi", "ssi-node")


def test_cluster_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError):
        LocalCluster(-1, prefix="x")
    with pytest.raises(ValueError):
        LocalCluster(3, prefix="x", subnet="10.9.9.0/30")  # room for one node


# -- real namespaces ----------------------------------------------------------------


@needs_root
def test_up_three_nodes(netns_cluster: Callable[..., LocalCluster]) -> None:
    c = netns_cluster(3)
    assert [n.name for n in c.nodes] == ["node1", "node2", "node3"]
    listed = ip("netns", "list")
    for k, node in enumerate(c.nodes, start=1):
        assert node.netns == f"{c.prefix}-node{k}"
        assert node.netns in listed
        assert Path(node.netns_path).exists()
        brief = ip("-n", node.netns, "-br", "-4", "addr")
        assert f"{node.address}/24" in brief and "eth0" in brief
        assert "127.0.0.1/8" in brief  # loopback up
        assert f"default via {c.host_address} dev eth0" in ip("-n", node.netns, "route")
        assert c.node_dir(node.name).is_dir()
    assert f"{c.host_address}/24" in ip("-br", "-4", "addr", "show", c.bridge)

    server = start_echo_server(c, "node2")
    # spawn entered the node's network namespace, and only that one.
    assert netns_of(server) == os.stat(c.node("node2").netns_path).st_ino
    assert (
        os.stat(f"/proc/{server}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    )
    assert c.processes("node2") == {server}

    # The host reaches the node, from its bridge address.
    n2 = c.node("node2").address
    assert echo(n2) == f"hi from {n2} to {c.host_address}"
    # The other nodes reach it over the bridge, from their own addresses.
    for name in ("node1", "node3"):
        me = c.node(name).address
        client = c.spawn(name, [sys.executable, "-c", ECHO_CLIENT, n2, str(PORT), me])
        assert c.wait(client, timeout=20) == 0, f"{name} could not reach node2"

    c.kill(server, signal.SIGTERM)
    assert c.wait(server, timeout=10) == -signal.SIGTERM


@needs_root
def test_wait_times_out_and_reaps(netns_cluster: Callable[..., LocalCluster]) -> None:
    c = netns_cluster(1)
    pid = c.spawn("node1", ["sleep", "60"])
    with pytest.raises(TimeoutError):
        c.wait(pid, timeout=0.05)
    c.kill(pid, signal.SIGKILL)
    assert c.wait(pid, timeout=10) == -signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left behind


@needs_root
def test_down_leaves_nothing() -> None:
    c = LocalCluster(3, prefix=unique_prefix(), subnet=free_subnet())
    try:
        c.up()
        ids = namespace_ids(c)
        assert len(ids) == 3
        pids = [c.spawn(n.name, ["sleep", "1000"]) for n in c.nodes]
        # A daemon that left its parent, and a shell that ignores SIGTERM.
        c.spawn("node1", ["sh", "-c", "setsid sleep 1000 & exit 0"])
        c.spawn("node3", ["sh", "-c", "trap '' TERM; sleep 1000"])
        wait_for("the detached sleep", lambda: len(c.processes("node1")) >= 2)
        assert len(c.processes()) >= 5
    finally:
        c.down()
    assert leftovers(c.prefix, ids) == []
    assert c.prefix not in ip("netns", "list")
    assert c.prefix not in ip("link")
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    c.down()  # a second down is harmless


@needs_root
def test_down_kills_what_left_the_namespaces() -> None:
    """Processes that moved to a network namespace of their own (a job with its own
    network, say) are still ours: down() kills them too."""
    c = LocalCluster(2, prefix=unique_prefix(), subnet=free_subnet())
    try:
        c.up()
        own_net = c.spawn("node1", ["unshare", "--net", "sleep", "1000"])
        n1 = os.stat(c.node("node1").netns_path).st_ino
        wait_for("unshare to leave node1's netns", lambda: netns_of(own_net) != n1)
        below = c.spawn("node2", ["sh", "-c", "unshare --net sleep 1000; true"])
        wait_for(
            "a sleep in its own netns below node2's shell",
            lambda: [p for p in with_descendants({below}) if p != below],
        )
        moved = [p for p in with_descendants({below}) if p != below]
        n2 = os.stat(c.node("node2").netns_path).st_ino
        wait_for("unshare to leave node2's netns", lambda: netns_of(moved[0]) != n2)
    finally:
        c.down()
    for pid in [own_net, below, *moved]:
        assert not running(pid), f"pid {pid} survived down()"


@needs_root
def test_custom_state_dir(tmp_path: Path) -> None:
    mine = tmp_path / "state"
    c = LocalCluster(2, prefix=unique_prefix(), subnet=free_subnet(), state_dir=mine)
    with c:
        assert c.node_dir("node2") == mine / "node2" and c.node_dir("node2").is_dir()
        assert LocalCluster.attach(c.prefix).state_dir == mine
    assert not mine.exists()
    assert leftovers(c.prefix) == []

    # A directory with someone's data in it is never adopted (down would remove it).
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data").write_text("keep me")
    other = LocalCluster(
        1, prefix=unique_prefix(), subnet=free_subnet(), state_dir=theirs
    )
    with pytest.raises(LocalClusterError):
        other.up()
    assert (theirs / "data").read_text() == "keep me"
    assert leftovers(other.prefix) == []


CRASHER = textwrap.dedent(
    """
    import sys, time
    from ssi.local import LocalCluster
    prefix, subnet, size, spawn = sys.argv[1:5]
    c = LocalCluster(int(size), prefix=prefix, subnet=subnet).up()
    pids = []
    if spawn == "yes":
        pids = [c.spawn(n.name, ["sleep", "1000"]) for n in c.nodes]
    print("ready", *pids, flush=True)
    time.sleep(1000)
    """
)


def run_crasher(
    prefix: str, subnet: str, size: int, spawn: bool
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CRASHER,
            prefix,
            subnet,
            str(size),
            "yes" if spawn else "no",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def crash_after_ready(prefix: str, subnet: str, size: int) -> list[int]:
    """Build a cluster in another process, with a sleeper in each node, and kill -9
    that process: everything it made is left behind. Returns the sleepers' pids."""
    proc = run_crasher(prefix, subnet, size, spawn=True)
    try:
        assert proc.stdout is not None
        word, *pids = proc.stdout.readline().split()
        assert word == "ready"
    finally:
        proc.kill()
        proc.wait()
    return [int(p) for p in pids]


def running(pid: int) -> bool:
    """Whether pid is a live process (not a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@needs_root
def test_up_after_crash_cleans_and_rebuilds() -> None:
    prefix, subnet = unique_prefix(), free_subnet()
    sleepers = crash_after_ready(prefix, subnet, 3)
    assert len(sleepers) == 3 and all(running(p) for p in sleepers)
    try:
        old = LocalCluster(3, prefix=prefix, subnet=subnet)
        old_ids = namespace_ids(old)
        assert len(old_ids) == 3
        assert len(leftovers(prefix, old_ids)) >= 3 + 4 + 3  # netns, links, sleepers

        c = LocalCluster(3, prefix=prefix, subnet=subnet).up()
        assert not any(running(p) for p in sleepers)  # the crashed run's died
        start_echo_server(c, "node2")
        n2 = c.node("node2").address
        client = c.spawn(
            "node1",
            [sys.executable, "-c", ECHO_CLIENT, n2, str(PORT), c.nodes[0].address],
        )
        assert c.wait(client, timeout=20) == 0
        ids = namespace_ids(c)
        c.down()
        assert leftovers(prefix, ids) == []
    finally:
        cleanup(prefix)


@needs_root
def test_cleanup_alone_removes_a_crashed_run() -> None:
    prefix, subnet = unique_prefix(), free_subnet()
    sleepers = crash_after_ready(prefix, subnet, 2)
    ids = namespace_ids(LocalCluster(2, prefix=prefix, subnet=subnet))
    removed = cleanup(prefix)
    kinds = sorted({r.split()[0] for r in removed})
    assert kinds == ["link", "netns", "process", "record", "state"]
    assert {f"netns {prefix}-node1", f"link {prefix}-br", f"link {prefix}-v2"} <= set(
        removed
    )
    assert {r for r in removed if r.startswith("process")} == {
        f"process {p}" for p in sleepers
    }
    assert not any(running(p) for p in sleepers)
    assert leftovers(prefix, ids) == []
    assert cleanup(prefix) == []  # nothing left to remove


@needs_root
def test_cleanup_after_kill_mid_build() -> None:
    prefix, subnet = unique_prefix(), free_subnet()
    proc = run_crasher(prefix, subnet, 60, spawn=False)
    try:
        wait_for("the first namespace", lambda: local_net.owned_netns(prefix))
    finally:
        proc.kill()
        proc.wait()
    try:
        built = len(local_net.owned_netns(prefix))
        assert 1 <= built
        c = LocalCluster(2, prefix=prefix, subnet=subnet).up()
        assert len(local_net.owned_netns(prefix)) == 2
        assert sorted(local_net.owned_links(prefix)) == sorted(
            [f"{prefix}-br", f"{prefix}-v1", f"{prefix}-v2"]
        )
        c.down()
    finally:
        cleanup(prefix)
    assert leftovers(prefix, set()) == []


@needs_root
def test_two_clusters_coexist(netns_cluster: Callable[..., LocalCluster]) -> None:
    a = netns_cluster(2)
    b = netns_cluster(2)
    assert a.prefix != b.prefix and a.subnet != b.subnet
    for c in (a, b):
        start_echo_server(c, "node1")
        n1 = c.node("node1").address
        assert echo(n1) == f"hi from {n1} to {c.host_address}"
        me = c.node("node2").address
        client = c.spawn(
            "node2", [sys.executable, "-c", ECHO_CLIENT, n1, str(PORT), me]
        )
        assert c.wait(client, timeout=20) == 0

    # A third asking for a's subnet is refused, and a is untouched.
    third = unique_prefix()
    with pytest.raises(SubnetInUse):
        LocalCluster(1, prefix=third, subnet=a.subnet).up()
    assert leftovers(third) == []  # a failed up() leaves nothing, lock included
    # Taking b down leaves a as it was.
    ids_b = namespace_ids(b)
    b.down()
    assert leftovers(b.prefix, ids_b) == []
    assert echo(a.node("node1").address).startswith("hi from")
    assert len(local_net.owned_netns(a.prefix)) == 2


@needs_root
def test_add_and_remove_nodes(netns_cluster: Callable[..., LocalCluster]) -> None:
    c = netns_cluster(2)
    n3 = c.add_node()
    assert (n3.name, n3.netns) == ("node3", f"{c.prefix}-node3")
    assert n3.address == str(Naming.make(c.prefix, c.subnet).address(3))
    assert [n.name for n in c.nodes] == ["node1", "node2", "node3"]
    start_echo_server(c, "node3")
    assert echo(n3.address).startswith(f"hi from {n3.address}")
    me = c.node("node1").address
    client = c.spawn(
        "node1", [sys.executable, "-c", ECHO_CLIENT, n3.address, str(PORT), me]
    )
    assert c.wait(client, timeout=20) == 0

    sleeper = c.spawn("node2", ["sleep", "1000"])
    n2_ns = os.stat(c.node("node2").netns_path).st_ino
    c.remove_node("node2")
    assert [n.name for n in c.nodes] == ["node1", "node3"]
    assert f"{c.prefix}-node2" not in local_net.owned_netns(c.prefix)
    assert f"{c.prefix}-v2" not in local_net.owned_links(c.prefix)
    assert not Path(f"/proc/{sleeper}").exists() or netns_of(sleeper) != n2_ns
    with pytest.raises(KeyError):
        c.node("node2")
    # The rest still works, and names are never reused.
    assert echo(n3.address).startswith("hi from")
    assert c.add_node().name == "node4"


@needs_root
def test_same_prefix_up_replaces_and_attach(
    netns_cluster: Callable[..., LocalCluster],
) -> None:
    c = netns_cluster(2)
    assert c.up() is c  # already up: nothing rebuilt
    seen = LocalCluster.attach(c.prefix)
    assert [n.name for n in seen.nodes] == ["node1", "node2"]
    assert (seen.subnet, seen.state_dir) == (c.subnet, c.state_dir)
    sleeper = c.spawn("node1", ["sleep", "1000"])
    again = LocalCluster(2, prefix=c.prefix, subnet=c.subnet).up()
    assert not Path(f"/proc/{sleeper}").exists()  # the earlier run's process died
    assert again.processes() == set()
    with pytest.raises(LookupError):
        LocalCluster.attach(unique_prefix())
