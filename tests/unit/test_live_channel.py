"""The live migration's own connection (ssi.migration.channel) on loopback: only the
source's address with the token gets in; the images arrive whole and checked, or
nothing is left; an image made a FIFO reaches a reader that opened it early."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ssi.digest import TreeHash
from ssi.migration.channel import Incoming, Invitation, connect, send_images
from ssi.proto.errors import Denied, Unavailable

HOST = "127.0.0.1"


def images(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pstree.img").write_bytes(b"tree" * 10)
    (src / "core-1.img").write_bytes(os.urandom(300_000))
    (src / "empty.img").write_bytes(b"")
    sums = {p.name: TreeHash(p.read_bytes()).hexdigest() for p in src.iterdir()}
    return src, sums


def incoming(tmp_path: Path, **kw: object) -> Incoming:
    return Incoming(HOST, HOST, tmp_path / "in", 5.0, **kw)  # type: ignore[arg-type]


def test_images_arrive_checked_and_the_socket_stays_open(tmp_path: Path) -> None:
    src, sums = images(tmp_path)
    inc = incoming(tmp_path)
    with connect(inc.invitation, HOST, 5.0) as s:
        assert send_images(s, src, sorted(sums)) == sum(
            (src / n).stat().st_size for n in sums
        )
        got = inc.wait(sums, 5.0)
        for name in sums:
            assert (inc.dest / name).read_bytes() == (src / name).read_bytes()
        got.sendall(b"after")  # what follows is CRIU's: still connected
        assert s.recv(5) == b"after"
        got.close()


def test_a_wrong_token_is_refused_and_the_source_still_gets_in(
    tmp_path: Path,
) -> None:
    src, sums = images(tmp_path)
    inc = incoming(tmp_path)
    wrong = Invitation(HOST, inc.invitation.port, "00" * 32)
    with connect(wrong, HOST, 5.0) as intruder:
        intruder.settimeout(5.0)
        assert intruder.recv(1) == b""  # closed on us
    socket.create_connection((HOST, inc.invitation.port), 5.0).close()  # no token
    with connect(inc.invitation, HOST, 5.0) as s:
        send_images(s, src, sorted(sums))
        inc.wait(sums, 5.0).close()


def test_images_that_differ_from_the_manifest_are_refused(tmp_path: Path) -> None:
    src, sums = images(tmp_path)
    inc = incoming(tmp_path)
    with connect(inc.invitation, HOST, 5.0) as s:
        send_images(s, src, sorted(sums))
        with pytest.raises(Denied, match="differ"):
            inc.wait({**sums, "core-1.img": "0" * 64}, 5.0)
    assert not inc.dest.exists()


def test_a_source_gone_midway_leaves_nothing(tmp_path: Path) -> None:
    inc = incoming(tmp_path)
    with connect(inc.invitation, HOST, 5.0) as s:
        s.sendall(b"\x00\x08" + (1000).to_bytes(8, "big") + b"core.img" + b"x" * 10)
    with pytest.raises(Unavailable):
        inc.wait({}, 5.0)
    assert not inc.dest.exists()


def test_an_early_reader_of_a_fifo_image_gets_it(tmp_path: Path) -> None:
    src, sums = images(tmp_path)
    read: list[bytes] = []
    opened = threading.Event()
    accepted: list[socket.socket] = []

    def reader() -> None:  # as criu lazy-pages: opens its image before it came
        with open(tmp_path / "in" / "pstree.img", "rb") as f:
            opened.set()
            read.append(f.read())

    inc = incoming(tmp_path, fifos=("pstree.img",), on_accept=accepted.append)
    assert (inc.dest / "pstree.img").is_fifo()
    t = threading.Thread(target=reader)
    t.start()
    assert opened.wait(5.0)
    with connect(inc.invitation, HOST, 5.0) as s:
        send_images(s, src, sorted(sums))
        inc.wait(sums, 5.0).close()
    t.join(5.0)
    assert read == [(src / "pstree.img").read_bytes()]
    assert len(accepted) == 1
    assert (inc.dest / "pstree.img").is_file()  # a later open gets the file
