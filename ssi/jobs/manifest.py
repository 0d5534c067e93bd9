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
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from ssi.jobs.errors import CorruptCheckpoint
from ssi.jobs.filehash import WINDOW, hash_range, sha256_fd
from ssi.jobs.model import JobSpec

MANIFEST = "manifest.json"
FORMAT = 1
REQUIRED = ("inventory.img", "pstree.img")  # CRIU restores nothing without them
_BIG = 4 << 20  # bytes: a file worth a thread of its own when hashed


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
    return _digest(path).sha256


def _digest(path: Path) -> ImageFile:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ImageFile(*sha256_fd(fd))
    finally:
        os.close(fd)


def digest_files(
    directory: Path, names: Iterable[str], done: Mapping[str, ImageFile] | None = None
) -> dict[str, ImageFile]:
    """Size and sha256 of each file. `done`: files hashed already (by a TailHasher),
    taken as they are. Big files are hashed on two threads (hashlib lets go of the
    GIL), so that two big pages images overlap; small ones here, where a thread
    hand-off would cost more than their hashing."""
    done = done or {}
    sizes = {n: (directory / n).stat().st_size for n in names if n not in done}

    def one(name: str) -> tuple[str, ImageFile]:
        return name, _digest(directory / name)

    # Largest first, so the biggest file does not start last.
    big = sorted((n for n in sizes if sizes[n] >= _BIG), key=lambda n: -sizes[n])
    out = [one(n) for n, size in sizes.items() if size < _BIG]
    if len(big) > 1:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssi-sha") as pool:
            out.extend(pool.map(one, big))
    else:
        out.extend(map(one, big))
    return dict(sorted([*out, *done.items()]))


_PAGE_IMAGE = re.compile(r"^pages-\d+\.img$")


def is_page_image(name: str) -> bool:
    """CRIU's page images: the bulk of a dump, each written once, front to back."""
    return _PAGE_IMAGE.match(name) is not None


class _Tail:
    """One followed file: its descriptor, its hash so far, and how far it got."""

    __slots__ = ("fd", "hash", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0  # bytes hashed


class TailHasher:
    """Hashes CRIU's page images while CRIU writes them, so that hashing overlaps the
    dump instead of following it (on another core).

    CRIU writes each pages-N.img once, front to back, never going back: a thread
    follows every such file to its current end, then again as it grows; finish()
    hashes what is left once CRIU is done. The result is checked like any other by
    verify() before every restore.

    sha256 on one core is slower than CRIU's writing: the hash of a big dump ends
    after CRIU, and whatever slows it adds to the checkpoint. So the written part is
    hashed in place (ssi.jobs.filehash), and the directory is looked at only when
    nothing new was found or every LOOK_EVERY seconds, not once per step.
    """

    MIN_STEP = 1 << 20  # bytes worth a step while CRIU still writes
    IDLE = 0.001  # seconds between looks at the files when they did not grow
    LOOK_EVERY = 0.05  # seconds between looks for new page files while hashing

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _Tail] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ssi-tail-sha", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        grew, next_look = False, 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if not grew or now >= next_look:
                self._look()
                next_look = now + self.LOOK_EVERY
            grew = False
            try:
                for tail in self._files.values():
                    grew = self._step(tail, self.MIN_STEP) or grew
            except OSError:  # unreadable: finish() meets it again, and says so
                return
            if not grew:
                self._stop.wait(self.IDLE)

    def _look(self) -> None:
        """Open the page images that appeared since the last look."""
        try:
            names = [e.name for e in os.scandir(self.directory)]
        except OSError:
            return
        for name in names:
            if name not in self._files and is_page_image(name):
                try:
                    fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                self._files[name] = _Tail(fd)

    def _step(self, tail: _Tail, least: int) -> bool:
        """Hash up to WINDOW more bytes of the file if at least `least` are there;
        whether it did."""
        ahead = os.fstat(tail.fd).st_size - tail.size
        if ahead < max(least, 1):
            return False
        got = hash_range(tail.fd, tail.hash, tail.size, min(ahead, WINDOW))
        tail.size += got
        return got > 0

    def finish(self) -> dict[str, ImageFile]:
        """Stop following, hash what is left of each file; name → ImageFile."""
        self._stop.set()
        self._thread.join()
        self._look()  # a file written whole since the thread last looked
        out: dict[str, ImageFile] = {}
        try:
            for name, tail in self._files.items():
                while self._step(tail, 1):
                    pass
                if os.fstat(tail.fd).st_size != tail.size:
                    raise OSError(f"{name} changed while it was hashed")
                out[name] = ImageFile(tail.size, tail.hash.hexdigest())
        finally:
            self.close()
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for tail in self._files.values():
            os.close(tail.fd)
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
