"""A checkpoint is a directory of CRIU images plus manifest.json, written last.

    <ckpt>/manifest.json   Manifest: job id and spec, node, time, CRIU version, and
                           size + sha256 of every other file but the CRIU logs
    <ckpt>/*.img, stats-dump ...   CRIU's images
    <ckpt>/dump.log        CRIU's log of the dump (not covered: informative only)

verify(ckpt) checks every listed file's size then checksum and raises CorruptCheckpoint
naming the first bad one, before CRIU reads anything. Files not in the manifest
(restore.log, stats-restore written by a restore there) are ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from ssi.jobs.errors import CorruptCheckpoint
from ssi.jobs.model import JobSpec

MANIFEST = "manifest.json"
FORMAT = 1
REQUIRED = ("inventory.img", "pstree.img")  # CRIU restores nothing without them
_CHUNK = 1 << 20


class ImageFile(msgspec.Struct, frozen=True):
    size: int  # bytes
    sha256: str  # hex


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    job_id: str
    spec: JobSpec
    node: str  # where the dump was taken
    created: float  # unix time the dump ended
    criu_version: str
    leave_running: bool  # False: the job was stopped by this checkpoint
    suspended: bool = False  # the job was suspended: a restore leaves it suspended
    started: float  # unix time the job first started
    cgroup: str  # the job's cgroup when dumped, e.g. "/ssi/17"
    cgroup_version: int
    dump_seconds: float  # CRIU's dump, freeze to images on disk
    files: dict[str, ImageFile]  # name → size and checksum
    total_bytes: int  # sum of the files' sizes
    # Bytes of page images CRIU's page server wrote elsewhere during the dump (a
    # cold move's target: ssi.migration.channel); they arrive beside the files,
    # unlisted, and are checked by their total size only.
    pages_sent: int = 0

    @property
    def size(self) -> int:
        return self.total_bytes

    def checksums(self) -> dict[str, str]:
        """name → sha256 of every covered file."""
        return {name: f.sha256 for name, f in self.files.items()}


def is_covered(name: str) -> bool:
    """Whether a file of a checkpoint directory belongs in its manifest."""
    return name != MANIFEST and not name.endswith((".log", ".tmp"))


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_files(
    directory: Path, names: Iterable[str], done: Mapping[str, ImageFile] | None = None
) -> dict[str, ImageFile]:
    """Size and sha256 of each file, hashed on two threads (hashlib lets go of the
    GIL), so a big pages image and the many small ones overlap. `done`: files hashed
    already (by a TailHasher), taken as they are."""
    done = done or {}
    names = sorted(n for n in names if n not in done)

    def one(name: str) -> tuple[str, ImageFile]:
        path = directory / name
        size = path.stat().st_size
        return name, ImageFile(size, sha256_file(path))

    # Largest first, so the big pages file does not start last.
    by_size = sorted(names, key=lambda n: -(directory / n).stat().st_size)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssi-sha") as pool:
        return dict(sorted([*pool.map(one, by_size), *done.items()]))


_PAGE_IMAGE = re.compile(r"^pages-\d+\.img$")


def is_page_image(name: str) -> bool:
    """CRIU's page images: the bulk of a dump, each written once, front to back."""
    return _PAGE_IMAGE.match(name) is not None


class TailHasher:
    """Hashes CRIU's page images while CRIU writes them, so that hashing overlaps the
    dump instead of following it (on another core).

    CRIU writes each pages-N.img once, front to back, never going back: a thread
    follows every such file to its current end, then again as it grows; finish()
    reads what is left once CRIU is done. The result is checked like any other by
    verify() before every restore.
    """

    CHUNK = 4 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, tuple[int, Any, list[int]]] = {}  # fd, hash, [size]
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ssi-tail-sha", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._poll():
                self._stop.wait(0.002)

    def _poll(self) -> bool:
        progressed = False
        try:
            names = [e.name for e in os.scandir(self.directory)]
        except OSError:
            return False
        for name in names:
            if name not in self._files and is_page_image(name):
                try:
                    fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                self._files[name] = (fd, hashlib.sha256(), [0])
        for fd, h, size in self._files.values():
            data = os.read(fd, self.CHUNK)
            if data:
                h.update(data)
                size[0] += len(data)
                progressed = True
        return progressed

    def finish(self) -> dict[str, ImageFile]:
        """Stop following, hash what is left of each file; name → ImageFile."""
        self._stop.set()
        self._thread.join()
        self._poll()  # a file written whole since the thread last looked
        out: dict[str, ImageFile] = {}
        try:
            for name, (fd, h, size) in self._files.items():
                while data := os.read(fd, self.CHUNK):
                    h.update(data)
                    size[0] += len(data)
                if os.fstat(fd).st_size != size[0]:
                    raise OSError(f"{name} changed while it was hashed")
                out[name] = ImageFile(size[0], h.hexdigest())
        finally:
            self.close()
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files.clear()


def write(directory: Path, manifest: Manifest, *, fsync: bool = True) -> None:
    """Write manifest.json into `directory` (tmp [+ fsync] + rename)."""
    data = msgspec.json.format(msgspec.json.encode(manifest), indent=1) + b"\n"
    tmp = directory / (MANIFEST + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / MANIFEST)


def read(ckpt: Path) -> Manifest:
    """The manifest, decoded; CorruptCheckpoint if it is missing or unreadable."""
    path = Path(ckpt)
    if not path.is_dir():
        raise CorruptCheckpoint(path, ".", "not a directory")
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpoint(path, MANIFEST, "missing") from None
    except OSError as e:
        raise CorruptCheckpoint(path, MANIFEST, e.strerror or str(e)) from None
    try:
        m = msgspec.json.decode(raw, type=Manifest)
    except msgspec.DecodeError as e:
        raise CorruptCheckpoint(path, MANIFEST, f"unreadable: {e}") from None
    if m.format > FORMAT:
        raise CorruptCheckpoint(path, MANIFEST, f"format {m.format} is newer than ours")
    return m


def verify(ckpt: Path | str, *, digests: bool = True) -> Manifest:
    """The checkpoint's manifest once every file it lists is there, of the listed size
    and checksum; else CorruptCheckpoint naming the file and what is wrong with it.
    digests=False skips the checksums: only for a copy checked against this very
    manifest as it arrived, and untouched since."""
    path = Path(ckpt)
    m = read(path)
    for req in REQUIRED:
        if req not in m.files:
            raise CorruptCheckpoint(path, req, "not in the manifest")
    bad_names = [n for n in m.files if "/" in n or n in (".", "..", "") or n[0] == "."]
    if bad_names:
        raise CorruptCheckpoint(path, bad_names[0], "not a plain file name")
    # Sizes first: cheap, and they catch truncation and missing files at once.
    for name, f in m.files.items():
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpoint(path, name, "missing") from None
        if size != f.size:
            raise CorruptCheckpoint(
                path, name, f"{size} bytes, the manifest says {f.size} (truncated?)"
            )
    if sum(f.size for f in m.files.values()) != m.total_bytes:
        raise CorruptCheckpoint(path, MANIFEST, "total_bytes does not add up")
    if m.pages_sent:
        got = sum(
            e.stat().st_size
            for e in os.scandir(path)
            if is_page_image(e.name) and e.name not in m.files
        )
        if got != m.pages_sent:
            raise CorruptCheckpoint(
                path, "pages-*.img", f"{got} bytes, the dump sent {m.pages_sent}"
            )
    if not digests:
        return m
    found = digest_files(path, m.files)
    for name, f in m.files.items():
        if found[name].sha256 != f.sha256:
            raise CorruptCheckpoint(path, name, "sha256 mismatch (corrupt)")
    return m
