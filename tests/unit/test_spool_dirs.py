"""SpoolDirs: a copy checked against its manifest as it arrived is not hashed again
before a restore, if untouched since and recent; anything else is (a copy that sat
on a disk, one touched since, one whose digests were not its manifest's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_jobs_manifest import make

from ssi.jobs import CorruptCheckpoint
from ssi.node import copying
from ssi.node.copying import SpoolDirs


def damage_quietly(path: Path) -> None:
    """Flip a byte without changing size, inode or mtime: only a hash can tell."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_copy_checked_on_arrival_is_not_hashed_again(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    spool = SpoolDirs(tmp_path / "spool")
    spool.arrived("ck", ckpt, m.checksums())
    damage_quietly(ckpt / "pages-1.img")  # after the check: not seen, by design
    assert spool.verify("ck", ckpt) == m
    # the mark is used once: the next restore hashes, and finds the damage
    with pytest.raises(CorruptCheckpoint, match="digest mismatch"):
        spool.verify("ck", ckpt)


def test_a_copy_touched_since_is_hashed(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    spool = SpoolDirs(tmp_path / "spool")
    spool.arrived("ck", ckpt, m.checksums())
    data = bytearray((ckpt / "core-1.img").read_bytes())
    data[0] ^= 1
    (ckpt / "core-1.img").write_bytes(bytes(data))  # new mtime
    with pytest.raises(CorruptCheckpoint, match="core-1.img"):
        spool.verify("ck", ckpt)


def test_digests_other_than_the_manifests_mark_nothing(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    spool = SpoolDirs(tmp_path / "spool")
    sums = {**m.checksums(), "pages-1.img": "0" * 64}
    spool.arrived("ck", ckpt, sums)
    damage_quietly(ckpt / "pages-1.img")
    with pytest.raises(CorruptCheckpoint, match="digest mismatch"):
        spool.verify("ck", ckpt)


def test_an_old_mark_counts_for_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, m = make(tmp_path)
    spool = SpoolDirs(tmp_path / "spool")
    spool.arrived("ck", ckpt, m.checksums())
    damage_quietly(ckpt / "pages-1.img")
    monkeypatch.setattr(copying, "FRESH_FOR", 0.0)
    with pytest.raises(CorruptCheckpoint, match="digest mismatch"):
        spool.verify("ck", ckpt)
