"""Checkpoint manifests without CRIU: write, read, and verify() catching every kind of
damage before a restore would reach CRIU."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from ssi.digest import LEAF, TreeHash
from ssi.jobs import CorruptCheckpoint, JobSpec, Manifest, verify
from ssi.jobs import manifest as mf

FILES = {
    "inventory.img": b"inv" * 10,
    "pstree.img": b"tree",
    "pages-1.img": os.urandom(3 * LEAF + 5),
    "pages-2.img": os.urandom(9 * LEAF),  # big: hashed on two threads
    "core-1.img": b"core",
    "stats-dump": b"stats",
}


def make(tmp: Path, **changes: object) -> tuple[Path, Manifest]:
    ckpt = tmp / "ck"
    ckpt.mkdir()
    for name, data in FILES.items():
        (ckpt / name).write_bytes(data)
    (ckpt / "dump.log").write_text("CRIU says things\n")
    names = [p.name for p in ckpt.iterdir() if mf.is_covered(p.name)]
    files = mf.digest_files(ckpt, names)
    m = Manifest(
        job_id="17",
        spec=JobSpec(argv=["sleep", "1"], name="n"),
        node="n1",
        created=1.0,
        criu_version="4.1.1",
        leave_running=True,
        started=0.5,
        cgroup="/ssi/17",
        cgroup_version=1,
        dump_seconds=0.1,
        files=files,
        total_bytes=sum(f.size for f in files.values()),
    )
    for k, v in changes.items():
        m = Manifest(**{**{f: getattr(m, f) for f in m.__struct_fields__}, k: v})  # type: ignore[arg-type]
    mf.write(ckpt, m)
    return ckpt, m


def test_round_trip(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    assert set(m.files) == set(FILES)  # the log and the manifest are not covered
    for name, data in FILES.items():
        assert m.files[name].digest == TreeHash(data).hexdigest()
        assert m.files[name].size == len(data)
    assert m.size == m.total_bytes == sum(len(d) for d in FILES.values())
    assert m.checksums()["pstree.img"] == TreeHash(b"tree").hexdigest()
    assert json.loads((ckpt / "manifest.json").read_text())["format"] == 2
    assert verify(ckpt) == m == mf.read(ckpt)
    data = json.loads((ckpt / "manifest.json").read_text())
    assert data["job_id"] == "17" and data["spec"]["argv"] == ["sleep", "1"]
    assert not (ckpt / "manifest.json.tmp").exists()


def test_files_not_in_the_manifest_are_ignored(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    (ckpt / "restore.log").write_text("x")
    (ckpt / "stats-restore").write_bytes(b"y")
    assert verify(ckpt) == m


def flip(path: Path, at: int | None = None) -> None:
    """Change one bit of one byte (in the middle unless `at`), size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        (lambda c: (c / "pages-1.img").unlink(), "pages-1.img", "missing"),
        (lambda c: os.truncate(c / "pages-1.img", 100), "pages-1.img", "truncated"),
        (lambda c: flip(c / "core-1.img"), "core-1.img", "digest mismatch"),
        (lambda c: flip(c / "pages-1.img"), "pages-1.img", "digest mismatch"),
        (
            lambda c: flip(c / "pages-2.img", 4 * LEAF + 12345),  # a middle leaf
            "pages-2.img",
            "digest mismatch",
        ),
        (lambda c: (c / "manifest.json").unlink(), "manifest.json", "missing"),
        (
            lambda c: (c / "manifest.json").write_text("{"),
            "manifest.json",
            "unreadable",
        ),
        (
            lambda c: (c / "manifest.json").write_text('{"job_id": 1}'),
            "manifest.json",
            "unreadable",
        ),
    ],
)
def test_damage_is_named(
    tmp_path: Path, damage: object, file: str, problem: str
) -> None:
    ckpt, _ = make(tmp_path)
    assert callable(damage)
    damage(ckpt)
    with pytest.raises(CorruptCheckpoint) as err:
        verify(ckpt)
    assert err.value.file == file and problem in err.value.problem
    assert file in str(err.value) and str(ckpt) in str(err.value)
    assert err.value.code == "corrupt_checkpoint"
    assert err.value.details["file"] == file


def test_manifest_must_list_the_images_criu_needs(tmp_path: Path) -> None:
    _, m = make(tmp_path)
    files = dict(m.files)
    del files["pstree.img"]
    (tmp_path / "other").mkdir()
    ckpt, _ = make(tmp_path / "other", files=files)
    with pytest.raises(CorruptCheckpoint, match="pstree.img: not in the manifest"):
        verify(ckpt)


def test_manifest_names_must_be_plain(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _, m = make(tmp_path / "a")
    files = {**m.files, "../etc/passwd": m.files["core-1.img"]}
    (tmp_path / "b").mkdir()
    ckpt, _ = make(tmp_path / "b", files=files)
    with pytest.raises(CorruptCheckpoint, match="not a plain file name"):
        verify(ckpt)


def test_total_and_format_are_checked(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    ckpt, _ = make(tmp_path / "a", total_bytes=1)
    with pytest.raises(CorruptCheckpoint, match="total_bytes"):
        verify(ckpt)
    (tmp_path / "b").mkdir()
    ckpt, _ = make(tmp_path / "b", format=mf.FORMAT + 1)
    with pytest.raises(CorruptCheckpoint, match="newer"):
        verify(ckpt)


def test_pages_a_page_server_wrote_are_checked_by_their_total_size(
    tmp_path: Path,
) -> None:
    """A cold move's pages arrive through CRIU's page server, beside the listed
    files: their total must be what the dump says it sent."""
    ckpt, _ = make(tmp_path, pages_sent=3 * 4096)
    with pytest.raises(CorruptCheckpoint, match="0 bytes, the dump sent 12288"):
        verify(ckpt, digests=False)
    (ckpt / "pages-65537.img").write_bytes(b"p" * 4096)
    (ckpt / "pages-65538.img").write_bytes(b"q" * 4096)
    with pytest.raises(CorruptCheckpoint, match="8192 bytes, the dump sent 12288"):
        verify(ckpt)  # one page short: truncated on the way
    with open(ckpt / "pages-65538.img", "ab") as f:
        f.write(b"q" * 4096)
    assert verify(ckpt).pages_sent == 3 * 4096


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CorruptCheckpoint, match="not a directory"):
        verify(tmp_path / "nothing")


def format_1(ckpt: Path) -> None:
    """Rewrite the manifest as an older ssi wrote it: plain sha256 digests."""
    data = json.loads((ckpt / "manifest.json").read_text())
    data["format"] = 1
    for name, f in data["files"].items():
        f["sha256"] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
        del f["digest"]
    (ckpt / "manifest.json").write_text(json.dumps(data))


def test_format_1_still_verifies(tmp_path: Path) -> None:
    """An upgrade loses no checkpoint: an older ssi's manifest (plain sha256) is
    checked the old way; transfers get no tree digests for its files."""
    ckpt, _ = make(tmp_path)
    format_1(ckpt)
    m = verify(ckpt)
    assert m.format == 1 and m.checksums() == {}
    assert verify(ckpt, digests=False) == m


def test_a_file_without_the_digest_of_its_format_is_refused(tmp_path: Path) -> None:
    ckpt, _ = make(tmp_path)
    data = json.loads((ckpt / "manifest.json").read_text())
    data["files"]["core-1.img"]["digest"] = ""
    (ckpt / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpoint, match="core-1.img.*no digest"):
        verify(ckpt)


@pytest.mark.parametrize("digests", [True, False])
def test_format_1_damage_is_caught(tmp_path: Path, digests: bool) -> None:
    """Even a copy that arrived checked (digests=False): no arrival checked plain
    sha256 digests."""
    ckpt, _ = make(tmp_path)
    format_1(ckpt)
    with open(ckpt / "pages-2.img", "r+b") as f:
        f.seek(4 * LEAF + 7)
        byte = f.read(1)
        f.seek(4 * LEAF + 7)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptCheckpoint, match="pages-2.img.*digest mismatch"):
        verify(ckpt, digests=digests)


def _wait(what: str, ok: object, timeout: float = 10.0) -> None:
    assert callable(ok)
    end = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < end, f"not after {timeout}s: {what}"
        time.sleep(0.002)


def test_tail_hasher_follows_growing_page_images(tmp_path: Path) -> None:
    """Written in steps that end mid-leaf, followed leaf by leaf as it grows, the
    rest (several leaves and a short one) hashed by finish() on two threads: the
    digest of the whole file."""
    whole = os.urandom(13 * LEAF + 4321)
    steps = [LEAF // 3, LEAF, 2 * LEAF + 17, LEAF - 17]  # ends on 4 MiB + 1/3
    hasher = mf.TailHasher(tmp_path)
    try:
        with open(tmp_path / "pages-1.img", "wb", buffering=0) as f:
            written = 0
            for step in steps:  # as CRIU does: front to back, in pieces
                f.write(whole[written : written + step])
                written += step

                def caught_up(at: int = written) -> bool:
                    t = hasher._files.get("pages-1.img")  # its leaves so far
                    return t is not None and t.hash.size == at // LEAF * LEAF

                _wait(f"the hasher at the last whole leaf of {written}", caught_up)
            f.write(whole[written:])  # the rest at once: CRIU's last write
        (tmp_path / "core-1.img").write_bytes(b"not followed")
        done = hasher.finish()
    finally:
        hasher.close()
    assert set(done) == {"pages-1.img"}
    assert done["pages-1.img"] == mf.ImageFile(len(whole), TreeHash(whole).hexdigest())
    files = mf.digest_files(tmp_path, ["pages-1.img", "core-1.img"], done)
    assert files["pages-1.img"] is done["pages-1.img"]
    assert files["core-1.img"].digest == TreeHash(b"not followed").hexdigest()
    assert files == mf.digest_files(tmp_path, ["pages-1.img", "core-1.img"])


def test_tail_hasher_close_without_finish(tmp_path: Path) -> None:
    (tmp_path / "pages-2.img").write_bytes(b"x" * 100)
    hasher = mf.TailHasher(tmp_path)
    hasher.close()
    hasher.close()  # idempotent
