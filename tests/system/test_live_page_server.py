"""Who can reach a live migration's pages, between real network namespaces: the
target's channel lets in the source's address with the token only (a third node
with the token is turned away); a lazy dump with its own page server listens on
the address it was given only (CRIU's RPC alone would bind every address)."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._migration_nodes import MEMORY_COUNTER, NodeThread, two_nodes
from benchmarks._workloads import python_job, start_job, wait_ticks
from ssi.digest import digest_file
from ssi.local import LocalCluster
from ssi.local.testing import make_cluster
from ssi.migration.channel import Incoming, connect, send_images


@pytest.fixture
def three() -> Iterator[tuple[LocalCluster, list[NodeThread]]]:
    cluster = make_cluster(3)
    threads = [NodeThread(n.netns_path) for n in cluster.nodes]
    try:
        yield cluster, threads
    finally:
        for t in threads:
            t.close()
        cluster.down()


def test_a_third_node_with_the_token_is_turned_away(
    three: tuple[LocalCluster, list[NodeThread]], tmp_path: Path
) -> None:
    cluster, (t_src, t_dst, t_other) = three
    src, dst, other = cluster.nodes
    images = tmp_path / "images"
    images.mkdir()
    (images / "pstree.img").write_bytes(secrets.token_bytes(1000))
    digests = {"pstree.img": digest_file(images / "pstree.img")}
    inc = t_dst.run(Incoming, dst.address, src.address, tmp_path / "in", 10.0)
    try:
        intruder = t_other.run(connect, inc.invitation, other.address, 5.0)
        with intruder:
            intruder.settimeout(5.0)
            assert intruder.recv(1) == b""  # the right token, the wrong address
        s = t_src.run(connect, inc.invitation, src.address, 5.0)
        with s:
            send_images(s, images, ["pstree.img"])
            inc.wait(digests, 5.0).close()
    finally:
        inc.close()


def test_a_lazy_dump_listens_on_its_address_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o755)
    tmp_path.chmod(0o755)
    with two_nodes(work) as (_cluster, a, _b):
        out = work / "ticks"
        argv = python_job(MEMORY_COUNTER, str(out), str(1 << 20))
        job = a.thread.run(start_job, argv, work)
        try:
            wait_ticks(out, 3, timeout=30)
            images = work / "images"
            images.mkdir()
            dump = a.rt.criu.dump_lazy(job.pid, images, 27177, address=a.address)
            try:
                dump.wait_ready(30)
                # loopback is an address of the same namespace: nothing there
                with pytest.raises(ConnectionRefusedError):
                    a.thread.run(socket.create_connection, ("127.0.0.1", 27177), 5)
                a.thread.run(socket.create_connection, (a.address, 27177), 5).close()
            finally:
                dump.close_page_server(a.address)
        finally:
            job.kill()
