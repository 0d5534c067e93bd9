"""ssi.transfer between two network namespaces of a LocalCluster, as two ssids would
use it: the bulk server runs in node2's netns, the client in node1's, each a process
that entered only its node's network namespace (LocalCluster.spawn). 100 MB go to
node2 and come back, verified byte for byte; a stranger's key on node1 gets nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ssi.local import LocalCluster
from ssi.rpc.keys import load_or_create_keypair

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PORT = 7072  # a node's cluster port + 2


def read_line(fd: int, timeout: float, what: str) -> str:
    """One line from a pipe, within `timeout` seconds (the fd is then closed)."""
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            more = os.read(fd, 4096)
            if not more:
                raise AssertionError(f"{what}: the process ended without a line")
            buf += more
    finally:
        os.close(fd)
    return buf.decode()


def spawn_py(cluster: LocalCluster, node: str, args: list[str]) -> tuple[int, int]:
    """`python -m ssi.transfer ARGS` in the node's netns; (pid, fd of its stdout)."""
    r, w = os.pipe()
    try:
        pid = cluster.spawn(
            node,
            [sys.executable, "-m", "ssi.transfer", *args],
            cwd=str(REPO),
            stdout=w,
        )
    finally:
        os.close(w)
    return pid, r


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def test_100mb_between_namespaces(
    netns_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = netns_cluster(2)
    node2 = cluster.node("node2")
    work = cluster.node_dir("node1")  # removed by down()
    src = work / "ckpt" / "img"
    src.mkdir(parents=True)
    block = os.urandom(MiB)
    with open(src / "pages-1.img", "wb") as f:
        for _ in range(100):
            f.write(block[::-1] if f.tell() % (3 * MiB) == 0 else block)
    (src / "core-1.img").write_bytes(os.urandom(5000))
    (src / "empty.img").write_bytes(b"")
    want = {p.name: sha256(p) for p in src.iterdir()}
    total = sum(p.stat().st_size for p in src.iterdir())
    assert total >= 100 * MiB

    client_keys = work / "keys"
    server_keys = cluster.node_dir("node2") / "keys"
    client = load_or_create_keypair(client_keys)
    stranger_keys = work / "stranger"
    load_or_create_keypair(stranger_keys)
    incoming = cluster.node_dir("node2") / "spool"

    server, out = spawn_py(
        cluster,
        "node2",
        [
            "serve",
            "--listen",
            f"tcp://0.0.0.0:{PORT}",
            "--key-dir",
            str(server_keys),
            f"--allow={client.public.decode()}",
            "--incoming",
            str(incoming),
            "--outgoing",
            str(incoming),
        ],
    )
    ready = json.loads(read_line(out, 30, "the bulk server in node2"))
    key = ready["key"]
    endpoint = f"tcp://{node2.address}:{PORT}"

    def client_run(*args: str, keys: Path = client_keys) -> dict[str, object]:
        pid, fd = spawn_py(
            cluster,
            "node1",
            [*args, f"--server-key={key}", "--key-dir", str(keys)],
        )
        result: dict[str, object] = json.loads(read_line(fd, 120, f"client {args[0]}"))
        status = cluster.wait(pid, 30)
        assert status == (0 if "error" not in result else 1), result
        return result

    try:
        pushed = client_run("send", endpoint, str(src), "job-1/ckpt-1")
        assert pushed["bytes"] == total and pushed["files"] == 3, pushed
        landed = incoming / "job-1" / "ckpt-1"
        assert {p.name: sha256(p) for p in landed.iterdir()} == want

        back = work / "fetched"
        fetched = client_run("fetch", endpoint, "job-1/ckpt-1", str(back))
        assert fetched["bytes"] == total, fetched
        assert {p.name: sha256(p) for p in back.iterdir()} == want

        refused = client_run(
            "fetch", endpoint, "job-1/ckpt-1", str(work / "x"), keys=stranger_keys
        )
        assert refused["error"] == "denied", refused
        assert not (work / "x").exists()
        print(
            f"node1 → node2: {pushed['mb_per_s']:.0f} MB/s, "
            f"node2 → node1: {fetched['mb_per_s']:.0f} MB/s"
        )
    finally:
        cluster.kill(server)
        assert cluster.wait(server, 10) in (0, -15)
