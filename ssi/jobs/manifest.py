"""A checkpoint is a directory of CRIU images plus manifest.json, written last.

    <ckpt>/manifest.json   Manifest: job id and spec, node, time, CRIU version, and
                           size + digest of every other file but the CRIU logs
                           (SHA-256 tree hash: ssi.digest)
    <ckpt>/*.img, stats-dump ...   CRIU's images
    <ckpt>/dump.log        CRIU's log of the dump (not covered: informative only)

verify(ckpt) checks every listed file's size then digest and raises CorruptCheckpoint
naming the first bad one, before CRIU reads anything. Files not in the manifest
(restore.log, stats-restore written by a restore there) are ignored.

Format 2: digests are the tree hash. Format 1 (an older ssi's) lists the plain
sha256 of each file instead (ImageFile.sha256): such a checkpoint is still read,
verified (that way, on one core) and restored, so that no checkpoint is lost to an
upgrade; its files are left out of checksums(), as transfers check tree hashes on
arrival, and are verified after every copy instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from ssi.digest import (
    LEAF,
    WINDOW,
    Span,
    TreeHash,
    digest_path,
    hash_range,
    hash_spans,
)
from ssi.jobs.errors import CorruptCheckpoint
from ssi.jobs.model import JobSpec

MANIFEST = "manifest.json"
FORMAT = 2  # 1: plain sha256 digests (ImageFile.sha256), still read
REQUIRED = ("inventory.img", "pstree.img")  # CRIU restores nothing without them
_BIG = 4 << 20  # bytes: a file hashed on several threads with the other big ones


class ImageFile(msgspec.Struct, frozen=True):
    size: int  # bytes
    digest: str = ""  # hex SHA-256 tree hash, see ssi.digest
    sha256: str = ""  # format 1's plain sha256 instead (hex), digest then empty


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
    files: dict[str, ImageFile]  # name → size and digest
    total_bytes: int  # sum of the files' sizes
    # Bytes of page images CRIU's page server wrote elsewhere during the dump (a
    # cold move's target: ssi.migration.channel); they arrive beside the files,
    # unlisted, and are checked by their total size only.
    pages_sent: int = 0

    @property
    def size(self) -> int:
        return self.total_bytes

    def checksums(self) -> dict[str, str]:
        """name → digest (hex tree hash) of every covered file (a format 1
        manifest's have none)."""
        return {name: f.digest for name, f in self.files.items() if f.digest}


def is_covered(name: str) -> bool:
    """Whether a file of a checkpoint directory belongs in its manifest."""
    return name != MANIFEST and not name.endswith((".log", ".tmp"))


def digest_files(
    directory: Path, names: Iterable[str], done: Mapping[str, ImageFile] | None = None
) -> dict[str, ImageFile]:
    """Size and digest of each file. `done`: files hashed already (by a TailHasher),
    taken as they are. The small files are hashed one by one, where a thread
    hand-off would cost more than their hashing; the big ones together, their
    leaves on two threads (ssi.digest.hash_spans)."""
    done = done or {}
    sizes = {n: (directory / n).stat().st_size for n in names if n not in done}
    out = {
        n: ImageFile(*digest_path(directory / n))
        for n, size in sizes.items()
        if size < _BIG
    }
    fds: dict[str, int] = {}
    try:
        for name in sizes.keys() - out.keys():
            fds[name] = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
        spans = {
            n: Span(fd, TreeHash(), 0, os.fstat(fd).st_size) for n, fd in fds.items()
        }
        hash_spans(list(spans.values()))
        for name, span in spans.items():
            if os.fstat(span.fd).st_size != span.length:
                raise OSError(f"{name} changed while it was hashed")
            out[name] = ImageFile(span.length, span.hash.hexdigest())
    finally:
        for fd in fds.values():
            os.close(fd)
    return dict(sorted([*out.items(), *done.items()]))


_PAGE_IMAGE = re.compile(r"^pages-\d+\.img$")


def is_page_image(name: str) -> bool:
    """CRIU's page images: the bulk of a dump, each written once, front to back."""
    return _PAGE_IMAGE.match(name) is not None


class _Tail:
    """One followed file: its descriptor and its hash so far (of hash.size bytes,
    whole leaves while CRIU writes)."""

    __slots__ = ("fd", "hash")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = TreeHash()


class TailHasher:
    """Hashes CRIU's page images while CRIU writes them, so that hashing overlaps the
    dump instead of following it (on another core).

    CRIU writes each pages-N.img once, front to back, never going back: a thread
    follows every such file, leaf by leaf (ssi.digest) up to its last whole
    leaf written, then again as it grows; finish() hashes what is left once CRIU is
    done, on two threads (leaves are independent). The result is checked like any
    other by verify() before every restore.

    Hashing on one core is slower than CRIU's writing: the hash of a big dump ends
    after CRIU, and whatever slows it adds to the checkpoint. So the written part is
    hashed in place, the directory is looked at only when nothing new was found or
    every LOOK_EVERY seconds, not once per step, and the rest is hashed on both
    cores once CRIU no longer needs one.
    """

    IDLE = 0.001  # seconds between looks at the files when they did not grow
    LOOK_EVERY = 0.05  # seconds between looks for new page files while hashing

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _Tail] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ssi-tail-hash", daemon=True
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
                    grew = self._step(tail) or grew
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

    def _step(self, tail: _Tail) -> bool:
        """Hash the whole leaves written since, up to WINDOW bytes; whether any."""
        ahead = os.fstat(tail.fd).st_size - tail.hash.size
        whole = min(ahead, WINDOW) // LEAF * LEAF
        if whole <= 0:
            return False
        return hash_range(tail.fd, tail.hash, tail.hash.size, whole) > 0

    def finish(self) -> dict[str, ImageFile]:
        """Stop following, hash what is left of the files on two threads;
        name → ImageFile."""
        self._stop.set()
        self._thread.join()
        self._look()  # a file written whole since the thread last looked
        try:
            spans = {
                name: Span(
                    t.fd, t.hash, t.hash.size, os.fstat(t.fd).st_size - t.hash.size
                )
                for name, t in self._files.items()
            }
            hash_spans(list(spans.values()))
            out: dict[str, ImageFile] = {}
            for name, tail in self._files.items():
                if os.fstat(tail.fd).st_size != tail.hash.size:
                    raise OSError(f"{name} changed while it was hashed")
                out[name] = ImageFile(tail.hash.size, tail.hash.hexdigest())
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


class _Format(msgspec.Struct):
    """A manifest's format alone, read before the rest, whose fields it decides."""

    format: int


def read(ckpt: Path) -> Manifest:
    """The manifest, decoded; CorruptCheckpoint if it is missing, unreadable, of a
    format newer than ours, or lacks a file's digest of its format (format 1, an
    older ssi's, is read: module docstring)."""
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
        version = msgspec.json.decode(raw, type=_Format).format
        if version > FORMAT:
            problem = f"format {version} is newer than ours ({FORMAT})"
            raise CorruptCheckpoint(path, MANIFEST, problem)
        m = msgspec.json.decode(raw, type=Manifest)
    except msgspec.DecodeError as e:
        raise CorruptCheckpoint(path, MANIFEST, f"unreadable: {e}") from None
    field = "sha256" if m.format == 1 else "digest"
    for name, f in m.files.items():
        if not getattr(f, field):
            raise CorruptCheckpoint(path, name, f"no {field} in the manifest")
    return m


def verify(ckpt: Path | str, *, digests: bool = True) -> Manifest:
    """The checkpoint's manifest once every file it lists is there, of the listed size
    and digest (hashed on two threads); else CorruptCheckpoint naming the file and
    what is wrong with it. digests=False skips the tree digests: only for a copy
    checked against this very manifest as it arrived, and untouched since (a format
    1 manifest's plain sha256 are checked all the same: no arrival checked them)."""
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
    tree = [n for n, f in m.files.items() if f.digest] if digests else []
    found = digest_files(path, tree)
    for name, f in m.files.items():
        if f.digest:
            bad = name in found and found[name].digest != f.digest
        else:
            bad = _plain_sha256(path / name) != f.sha256
        if bad:
            raise CorruptCheckpoint(path, name, "digest mismatch (corrupt)")
    return m


def _plain_sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        hash_range(fd, h, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return h.hexdigest()
