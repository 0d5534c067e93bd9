"""Checkpoint manifests without CRIU: write, read, and verify() catching every kind of
damage before a restore would reach CRIU."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ssi.jobs import CorruptCheckpoint, JobSpec, Manifest, verify
from ssi.jobs import manifest as mf

FILES = {
    "inventory.img": b"inv" * 10,
    "pstree.img": b"tree",
    "pages-1.img": os.urandom(3 << 20),
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
        assert m.files[name].sha256 == hashlib.sha256(data).hexdigest()
        assert m.files[name].size == len(data)
    assert m.size == m.total_bytes == sum(len(d) for d in FILES.values())
    assert m.checksums()["pstree.img"] == hashlib.sha256(b"tree").hexdigest()
    assert verify(ckpt) == m == mf.read(ckpt)
    data = json.loads((ckpt / "manifest.json").read_text())
    assert data["job_id"] == "17" and data["spec"]["argv"] == ["sleep", "1"]
    assert not (ckpt / "manifest.json.tmp").exists()


def test_files_not_in_the_manifest_are_ignored(tmp_path: Path) -> None:
    ckpt, m = make(tmp_path)
    (ckpt / "restore.log").write_text("x")
    (ckpt / "stats-restore").write_bytes(b"y")
    assert verify(ckpt) == m


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        (lambda c: (c / "pages-1.img").unlink(), "pages-1.img", "missing"),
        (lambda c: os.truncate(c / "pages-1.img", 100), "pages-1.img", "truncated"),
        (lambda c: flip(c / "core-1.img"), "core-1.img", "sha256 mismatch"),
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


def test_tail_hasher_follows_growing_page_images(tmp_path: Path) -> None:
    import threading

    chunks = [os.urandom(1 << 20) for _ in range(8)]
    wrote = threading.Event()
    hasher = mf.TailHasher(tmp_path)

    def writer() -> None:  # as CRIU does: front to back, in pieces
        with open(tmp_path / "pages-1.img", "wb", buffering=0) as f:
            for c in chunks:
                f.write(c)
        (tmp_path / "core-1.img").write_bytes(b"not followed")
        wrote.set()

    t = threading.Thread(target=writer)
    t.start()
    assert wrote.wait(10)
    t.join()
    done = hasher.finish()
    assert set(done) == {"pages-1.img"}
    whole = b"".join(chunks)
    assert done["pages-1.img"] == mf.ImageFile(
        len(whole), hashlib.sha256(whole).hexdigest()
    )
    files = mf.digest_files(tmp_path, ["pages-1.img", "core-1.img"], done)
    assert files["pages-1.img"] is done["pages-1.img"]
    assert files["core-1.img"].sha256 == hashlib.sha256(b"not followed").hexdigest()


def test_tail_hasher_close_without_finish(tmp_path: Path) -> None:
    (tmp_path / "pages-2.img").write_bytes(b"x" * 100)
    hasher = mf.TailHasher(tmp_path)
    hasher.close()
    hasher.close()  # idempotent
