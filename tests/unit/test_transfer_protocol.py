"""ssi.transfer without sockets: frame codec, path rules, options, the staging
directory (ordering, checksums, atomic commit, abort), partial-dir sweeping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ssi.digest import TreeHash
from ssi.proto.errors import (
    BadRequest,
    Conflict,
    MalformedMessage,
    VersionMismatch,
)
from ssi.transfer import files as fs
from ssi.transfer import protocol as p
from ssi.transfer.errors import (
    ChecksumMismatch,
    NoSpace,
    PeerGone,
    TransferError,
    error_from_wire,
    error_to_wire,
)


def digest(data: bytes) -> str:
    return TreeHash(data).hexdigest()


# --- frames ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        p.Put(p.VERSION, "job-1/ckpt-2", False, 1 << 20, 3, 12345),
        p.Put(p.VERSION, "s", True, 1 << 20),
        p.Get(p.VERSION, "x", 8, 1 << 20),
        p.Accept(8, 1 << 20),
        p.Manifest(2, 99),
        p.Data("pages-1.img", 4096, True, "ab" * 32, 0o600),
        p.Data("a/b", 0),
        p.Credit(1, 1 << 30),
        p.End(3, 10),
        p.Done(3, 10),
        p.Err("no_space", "full", {"path": "/x"}),
        p.Ping(),
    ],
)
def test_frames_round_trip(header: p.Header) -> None:
    kind, body = p.encode(header)
    assert p.KINDS[kind] is type(header)
    assert p.decode(kind, body) == header


def test_decode_refuses_garbage() -> None:
    with pytest.raises(MalformedMessage, match="unknown bulk frame kind"):
        p.decode(b"NOPE", b"\x80")
    with pytest.raises(MalformedMessage, match="bad bulk DATA header"):
        p.decode(b"DATA", b"\xc1")
    with pytest.raises(MalformedMessage, match="bad bulk DATA header"):
        p.decode(b"DATA", p.encode(p.Credit(1, 2))[1])  # wrong fields
    with pytest.raises(MalformedMessage, match="header of"):
        p.decode(b"DATA", b"\x00" * (p.MAX_HEADER + 1))
    with pytest.raises(VersionMismatch):
        p.decode(*p.encode(p.Put(99, "x", False, 4096)))


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/./b", ".", "a/"]
)
def test_bad_relpaths(path: str) -> None:
    with pytest.raises(MalformedMessage):
        p.check_relpath(path)


@pytest.mark.parametrize("path", ["a", "pages-1.img", "a/b/c", "..a", "a.."])
def test_good_relpaths(path: str) -> None:
    assert p.check_relpath(path) == path


def test_names_refuse_hidden_parts() -> None:
    assert p.check_name("job-7/ckpt-3") == "job-7/ckpt-3"
    for bad in (".x", "a/.partial-1", "a/.b"):
        with pytest.raises(MalformedMessage):
            p.check_name(bad)


def test_options_validated() -> None:
    p.Options(chunk_size=4096, window=1)
    with pytest.raises(ValueError):
        p.Options(chunk_size=100)
    with pytest.raises(ValueError):
        p.Options(window=0)
    with pytest.raises(ValueError):
        p.Options(idle_timeout=0)
    assert p.Options().replace(window=3).window == 3


def test_errors_keep_their_class_over_the_wire() -> None:
    for exc in (
        NoSpace("full", details={"path": "/x"}),
        ChecksumMismatch("bad", details={"file": "a"}),
        TransferError("io"),
        Conflict("exists"),
    ):
        back = error_from_wire(error_to_wire(exc))
        assert type(back) is type(exc)
        assert str(back) == str(exc)
        assert back.details == exc.details
    assert isinstance(PeerGone("x"), Exception)


# --- reading --------------------------------------------------------------------------


def test_list_files(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"bb")
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_bytes(b"f")
    os.chmod(tmp_path / "b", 0o640)
    got = fs.list_files(tmp_path)
    assert [(f.rel, f.size) for f in got] == [("a", 0), ("b", 2), ("d/e/f", 1)]
    assert got[1].mode == 0o640
    os.symlink("b", tmp_path / "link")
    with pytest.raises(BadRequest, match="not a regular file"):
        fs.list_files(tmp_path)
    with pytest.raises(BadRequest, match="not a directory"):
        fs.list_files(tmp_path / "b")


def test_reader_hashes_and_pool_reuses(tmp_path: Path) -> None:
    data = os.urandom(10000)
    (tmp_path / "f").write_bytes(data)
    pool = fs.BufferPool(4096, 2)
    r = fs.FileReader(tmp_path / "f")
    parts = []
    while True:
        buf = pool.get()
        got = r.read(buf)
        parts.append(bytes(got))
        pool.put(buf)
        if len(got) < 4096:
            break
    r.close()
    assert b"".join(parts) == data
    assert r.digest() == digest(data)
    assert len(pool._free) == 1  # one buffer served every read
    known = fs.FileReader(tmp_path / "f", known_digest="k" * 64)
    assert known.digest() == "k" * 64
    known.close()


# --- staging --------------------------------------------------------------------------


def put_file(st: fs.Staging, rel: str, data: bytes, step: int = 3) -> None:
    for off in range(0, len(data), step):
        piece = data[off : off + step]
        last = off + step >= len(data)
        st.write(
            rel,
            off,
            piece,
            last=last,
            digest=digest(data) if last else None,
            mode=0o640,
        )
    if not data:
        st.write(rel, 0, b"", last=True, digest=digest(b""), mode=0o640)


def test_staging_commit(tmp_path: Path) -> None:
    final = tmp_path / "in" / "job" / "ckpt"
    st = fs.Staging(final, expected_bytes=100)
    assert st.tmp.name.startswith(".ckpt.partial-")
    put_file(st, "a", b"hello world")
    put_file(st, "sub/b", b"")
    assert not final.exists()
    st.commit(2, 11)
    assert (final / "a").read_bytes() == b"hello world"
    assert (final / "sub" / "b").read_bytes() == b""
    assert (final / "a").stat().st_mode & 0o777 == 0o640
    assert os.listdir(final.parent) == ["ckpt"]
    st.abort()  # after commit: a no-op
    assert final.exists()


def test_staging_interleaved_files(tmp_path: Path) -> None:
    st = fs.Staging(tmp_path / "x")
    st.write("a", 0, b"aa", last=False, digest=None, mode=None)
    st.write("b", 0, b"bb", last=False, digest=None, mode=None)
    st.write("a", 2, b"a", last=True, digest=digest(b"aaa"), mode=None)
    st.write("b", 2, b"", last=True, digest=digest(b"bb"), mode=None)
    st.commit(2, 5)
    assert (tmp_path / "x" / "a").read_bytes() == b"aaa"
    assert (tmp_path / "x" / "a").stat().st_mode & 0o777 == 0o600


def only_final(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path))


def test_staging_refuses_disorder_and_leaves_nothing(tmp_path: Path) -> None:
    st = fs.Staging(tmp_path / "x")
    st.write("a", 0, b"aa", last=False, digest=None, mode=None)
    with pytest.raises(MalformedMessage, match="offset 5, expected 2"):
        st.write("a", 5, b"aa", last=False, digest=None, mode=None)
    st.abort()
    assert only_final(tmp_path) == []


def test_staging_checksum_mismatch(tmp_path: Path) -> None:
    st = fs.Staging(tmp_path / "x")
    with pytest.raises(ChecksumMismatch, match="a: digest") as ei:
        st.write("a", 0, b"data", last=True, digest=digest(b"other"), mode=None)
    assert ei.value.details["file"] == "a"
    st.abort()
    assert only_final(tmp_path) == []


def test_staging_expected_checksums(tmp_path: Path) -> None:
    st = fs.Staging(tmp_path / "x", checksums={"a": digest(b"A"), "b": digest(b"B")})
    with pytest.raises(ChecksumMismatch, match="damaged at the source"):
        st.write("a", 0, b"X", last=True, digest=digest(b"X"), mode=None)
    st.abort()
    st = fs.Staging(tmp_path / "y", checksums={"a": digest(b"A"), "b": digest(b"B")})
    st.write("a", 0, b"A", last=True, digest=digest(b"A"), mode=None)
    with pytest.raises(TransferError, match="did not come: b"):
        st.commit(1, 1)
    st.abort()
    assert only_final(tmp_path) == []


def test_staging_refuses_reopen_and_unfinished(tmp_path: Path) -> None:
    st = fs.Staging(tmp_path / "x")
    st.write("a", 0, b"", last=True, digest=digest(b""), mode=None)
    with pytest.raises(MalformedMessage, match="after its last chunk"):
        st.write("a", 0, b"", last=True, digest=digest(b""), mode=None)
    st.write("b", 0, b"b", last=False, digest=None, mode=None)
    with pytest.raises(MalformedMessage, match="unfinished files: b"):
        st.commit(1, 1)
    st.abort()
    st = fs.Staging(tmp_path / "y")
    st.write("a", 0, b"a", last=True, digest=digest(b"a"), mode=None)
    with pytest.raises(MalformedMessage, match="announced 2 files"):
        st.commit(2, 1)
    st.abort()
    assert only_final(tmp_path) == []


def test_staging_conflict_and_space(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(Conflict, match="already exists"):
        fs.Staging(tmp_path / "x")
    with pytest.raises(NoSpace, match="no space for") as ei:
        fs.Staging(tmp_path / "y", expected_bytes=1 << 62)
    assert ei.value.details["needed"] == 1 << 62
    st = fs.Staging(tmp_path / "z")
    st.write("a", 0, b"a", last=True, digest=digest(b"a"), mode=None)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "other").write_bytes(b"")
    with pytest.raises(Conflict, match="appeared during the transfer"):
        st.commit(1, 1)
    st.abort()
    assert only_final(tmp_path) == ["x", "z"]


def test_sweep_partials(tmp_path: Path) -> None:
    fs.Staging(tmp_path / "a")  # left behind as a dead receiver would
    fs.Staging(tmp_path / "job" / "b")
    (tmp_path / "kept").mkdir()
    removed = fs.sweep_partials(tmp_path)
    assert len(removed) == 2
    assert sorted(os.listdir(tmp_path)) == ["job", "kept"]
    assert os.listdir(tmp_path / "job") == []
