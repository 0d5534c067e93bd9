"""sha256 of files read in place (ssi.jobs.filehash): the same digests as hashlib
over the bytes, at any offset, through the mapping and through its pread fallback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssi.jobs import filehash

DATA = os.urandom((3 << 20) + 12345)  # not a whole number of pages


@pytest.fixture(params=["mapped", "pread"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(filehash, "_mapping_works", request.param == "mapped")
    return str(request.param)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "pages-1.img"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    "offset,length",
    [(0, len(DATA)), (1, 4095), (4095, 70000), (5000, len(DATA) - 5000)],
)
def test_hash_range_is_hashlib_over_those_bytes(
    way: str, fd: int, offset: int, length: int
) -> None:
    h = hashlib.sha256()
    assert filehash.hash_range(fd, h, offset, length) == length
    assert h.hexdigest() == hashlib.sha256(DATA[offset : offset + length]).hexdigest()


def test_ranges_in_a_row_make_the_whole(way: str, fd: int) -> None:
    h, offset = hashlib.sha256(), 0
    for step in (1, 4096, 33333, 1 << 20, len(DATA)):
        offset += filehash.hash_range(fd, h, offset, min(step, len(DATA) - offset))
    assert offset == len(DATA)
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_sha256_fd(way: str, fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filehash, "WINDOW", 1 << 20)  # several windows
    assert filehash.sha256_fd(fd) == (len(DATA), hashlib.sha256(DATA).hexdigest())


def test_empty_file(way: str, tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    fd = os.open(tmp_path / "e", os.O_RDONLY)
    try:
        assert filehash.sha256_fd(fd) == (0, hashlib.sha256(b"").hexdigest())
    finally:
        os.close(fd)


def test_bytes_past_the_end_are_an_error_not_a_crash(fd: int) -> None:
    """A mapped page past the end of the file would be a SIGBUS on access: it is an
    OSError instead (as for a file truncated while it was hashed)."""
    with pytest.raises(OSError):
        filehash.hash_range(fd, hashlib.sha256(), len(DATA) - 10, 1 << 20)
