"""Digests of files read in place (ssi.digest): the SHA-256 tree hash as its
definition states it, computed here with hashlib alone, whatever the pieces fed to
TreeHash, the threads, and the way the file is read (the mapping or its pread
fallback)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssi import digest
from ssi.digest import LEAF, Span, TreeHash

DATA = random.Random(7).randbytes(3 * LEAF + 12345)  # not a whole number of pages


def by_definition(data: bytes) -> str:
    """sha256 over the sha256 of each 1 MiB leaf (the last may be shorter; none for
    an empty file)."""
    leaves = [data[i : i + LEAF] for i in range(0, len(data), LEAF)]
    return hashlib.sha256(
        b"".join(hashlib.sha256(leaf).digest() for leaf in leaves)
    ).hexdigest()


@pytest.fixture(params=["mapped", "pread"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(digest, "_mapping_works", request.param == "mapped")
    return str(request.param)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of one leaf, and threads for anything over one: several windows per
    file, and files of a few MiB hashed on both threads."""
    monkeypatch.setattr(digest, "WINDOW", LEAF)
    monkeypatch.setattr(digest, "_WORTH_THREADS", LEAF + 1)


def open_with(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = open_with(tmp_path / "pages-1.img", DATA)
    yield fd
    os.close(fd)


def test_the_definition_by_its_known_values() -> None:
    """The definition itself, against values written down: an empty file has no
    leaves, and a short one is one leaf."""
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert by_definition(b"") == TreeHash().hexdigest() == empty
    one_leaf = hashlib.sha256(hashlib.sha256(b"abc").digest()).hexdigest()
    assert by_definition(b"abc") == TreeHash(b"abc").hexdigest() == one_leaf
    assert one_leaf != hashlib.sha256(b"abc").hexdigest()  # not plain sha256


@pytest.mark.parametrize(
    "size",
    [0, 1, 4096, LEAF - 1, LEAF, LEAF + 1, 2 * LEAF, len(DATA)],
    ids=lambda n: f"{n}B",
)
@pytest.mark.parametrize("threads", [1, 2])
def test_digest_fd_is_the_definition(
    way: str, small_windows: None, tmp_path: Path, size: int, threads: int
) -> None:
    data = DATA[:size]
    fd = open_with(tmp_path / "f", data)
    try:
        assert digest.digest_fd(fd, threads) == (size, by_definition(data))
    finally:
        os.close(fd)
    assert TreeHash(data).hexdigest() == by_definition(data)


def test_update_in_odd_pieces_is_the_definition() -> None:
    """Leaves spanning update() calls, pieces of one byte, of more than a leaf, and
    ending exactly on a leaf boundary."""
    steps = [1, 4095, 33333, LEAF - 1, LEAF + 7, 3, LEAF]
    h, offset, i = TreeHash(), 0, 0
    while offset < len(DATA):
        piece = DATA[offset : offset + steps[i % len(steps)]]
        h.update(memoryview(piece) if i % 2 else piece)
        offset, i = offset + len(piece), i + 1
    assert h.size == len(DATA)
    assert h.hexdigest() == by_definition(DATA)
    h.update(b"")
    assert h.hexdigest() == by_definition(DATA)  # nothing changed


def test_the_same_through_every_way(way: str, small_windows: None, fd: int) -> None:
    incremental = TreeHash()
    for i in range(0, len(DATA), 777_777):
        incremental.update(DATA[i : i + 777_777])
    one = digest.digest_fd(fd, threads=1)
    two = digest.digest_fd(fd, threads=2)
    assert one == two == (len(DATA), incremental.hexdigest())


def test_spans_of_several_files_and_a_hash_begun_mid_leaf(
    way: str, small_windows: None, tmp_path: Path
) -> None:
    """Spans hashed together on two threads, one continuing a hash that holds part
    of a leaf: each file's digest as if hashed alone, front to back."""
    datas = [DATA, DATA[: 2 * LEAF + 5], b"small", b""]
    fds = [open_with(tmp_path / f"f{i}", d) for i, d in enumerate(datas)]
    try:
        begun = TreeHash(DATA[:1000])
        spans = [Span(fds[0], begun, 1000, len(DATA) - 1000)]
        spans += [
            Span(fd, TreeHash(), 0, len(d))
            for fd, d in zip(fds[1:], datas[1:], strict=True)
        ]
        digest.hash_spans(spans)
        assert [s.hash.hexdigest() for s in spans] == [by_definition(d) for d in datas]
        assert [s.hash.size for s in spans] == [len(d) for d in datas]
    finally:
        for fd in fds:
            os.close(fd)


def test_join_only_on_a_leaf_boundary() -> None:
    whole = TreeHash(DATA[:LEAF])
    whole.join(TreeHash(DATA[LEAF:]))
    assert whole.hexdigest() == by_definition(DATA)
    with pytest.raises(ValueError, match="leaf boundary"):
        TreeHash(b"x").join(TreeHash(b"y"))


@pytest.mark.parametrize(
    "offset,length",
    [(0, len(DATA)), (1, 4095), (4095, 70000), (5000, len(DATA) - 5000)],
)
def test_hash_range_feeds_those_bytes(
    way: str, fd: int, offset: int, length: int
) -> None:
    h = hashlib.sha256()  # any hash object
    assert digest.hash_range(fd, h, offset, length) == length
    assert h.hexdigest() == hashlib.sha256(DATA[offset : offset + length]).hexdigest()


def test_ranges_in_a_row_make_the_whole(way: str, fd: int) -> None:
    h, offset = TreeHash(), 0
    for step in (1, 4096, 33333, LEAF, len(DATA)):
        offset += digest.hash_range(fd, h, offset, min(step, len(DATA) - offset))
    assert offset == len(DATA)
    assert h.hexdigest() == by_definition(DATA)


def test_bytes_past_the_end_are_an_error_not_a_crash(fd: int) -> None:
    """A mapped page past the end of the file would be a SIGBUS on access: it is an
    OSError instead (as for a file truncated while it was hashed)."""
    with pytest.raises(OSError):
        digest.hash_range(fd, TreeHash(), len(DATA) - 10, LEAF)


def test_a_span_past_the_end_is_an_error(
    way: str, small_windows: None, fd: int
) -> None:
    """A file shorter than its span (truncated since it was measured) fails on the
    threads too, whichever way it is read."""
    with pytest.raises(OSError):
        digest.hash_spans([Span(fd, TreeHash(), 0, len(DATA) + 2 * LEAF)])
