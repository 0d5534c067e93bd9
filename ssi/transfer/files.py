"""The disk side of transfers: listing and reading a source directory, and the
staging directory a receiver writes into and commits atomically.

    sender:   list_files(src) ─▶ FileReader.read() (read + digest, in a worker thread)
    receiver: Staging(final) ─▶ .<final>.partial-<random>/ ─▶ write() per chunk
              ─▶ file's last chunk: digest check, fchmod, fsync, close
              ─▶ commit(): fsync dirs, rename(partial, final), fsync parent
              ─▶ or abort(): remove the partial dir

Digests: the SHA-256 tree hash of ssi.digest, as in checkpoint manifests.

Nothing under a name without the ".partial-" mark is ever incomplete: a receiver that
dies leaves only a partial dir, which `sweep_partials` removes later.

All functions here block: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssi.digest import TreeHash
from ssi.proto.errors import BadRequest, Conflict, MalformedMessage
from ssi.transfer.errors import ChecksumMismatch, NoSpace, TransferError

__all__ = [
    "SourceFile",
    "list_files",
    "FileReader",
    "read_chunk",
    "BufferPool",
    "Staging",
    "sweep_partials",
    "PARTIAL_MARK",
]

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
_MAX_OPEN = 256  # files open at once in a staging dir (streams interleave a few)

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class SourceFile:
    rel: str  # relative POSIX path inside the transfer
    path: Path
    size: int  # at listing time; the sender sends what it reads, up to EOF
    mode: int  # permission bits


def list_files(src: Path) -> list[SourceFile]:
    """The regular files under `src`, recursively, sorted by relative path.
    BadRequest for anything else there (symlinks, devices, sockets) or when `src`
    is not a directory: a checkpoint image set holds regular files only."""
    if not src.is_dir():
        raise BadRequest(f"{src}: not a directory", details={"path": str(src)})
    out: list[SourceFile] = []

    def walk(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{prefix}{e.name}"
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                walk(Path(e.path), rel + "/")
            elif stat.S_ISREG(st.st_mode):
                out.append(
                    SourceFile(rel, Path(e.path), st.st_size, stat.S_IMODE(st.st_mode))
                )
            else:
                raise BadRequest(
                    f"{e.path}: not a regular file (only files and directories "
                    "are transferred)",
                    details={"path": e.path},
                )

    walk(src, "")
    return out


def read_chunk(fd: int, buf: bytearray, hasher: Any | None) -> memoryview:
    """Fill `buf` from `fd` (less only at end of file) and hash what was read into
    `hasher` (unless None); returns the filled part. A module function so that
    tests can wrap it (e.g. to corrupt data after hashing)."""
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    data = view[:got]
    if hasher is not None:
        hasher.update(data)
    return data


class BufferPool:
    """Reusable read buffers of one size, so a sender does not fault in fresh pages
    for every chunk. A buffer goes back with `put` once the receiver has confirmed
    its chunk: zmq has then long finished reading it (with CURVE it is copied while
    being encrypted; without, every byte was written to the socket)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []

    def get(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        if len(self._free) < self.keep and len(buf) == self.size:
            self._free.append(buf)


class FileReader:
    """Sequential reads of one source file, with its running digest unless the
    caller already knows it (`known_digest`, e.g. from a checkpoint manifest: then
    the receiver checks the data against that, end to end)."""

    def __init__(self, path: Path, known_digest: str | None = None) -> None:
        self.path = path
        self.known_digest = known_digest
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.hasher = TreeHash() if known_digest is None else None

    @classmethod
    def first(
        cls, path: Path, known_digest: str | None, buf: bytearray
    ) -> tuple[FileReader, memoryview]:
        """Open `path` and read its first chunk into `buf`."""
        reader = cls(path, known_digest)
        try:
            return reader, reader.read(buf)
        except BaseException:
            reader.close()
            raise

    def read(self, buf: bytearray) -> memoryview:
        return read_chunk(self.fd, buf, self.hasher)

    def digest(self) -> str:
        if self.hasher is None:
            assert self.known_digest is not None
            return self.known_digest
        return self.hasher.hexdigest()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class _Open:
    fd: int
    written: int = 0
    hasher: TreeHash = field(default_factory=TreeHash)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Staging:
    """A directory being received: written under a partial name beside `final`,
    renamed to `final` by `commit()` once every file is complete and verified.

    Conflict when `final` already exists; NoSpace when the file system is full (or,
    given `expected_bytes`, would be); ChecksumMismatch when a file's digest differs
    from the sender's; MalformedMessage on out-of-order data. After any error the
    caller calls `abort()`.
    """

    def __init__(
        self,
        final: Path,
        *,
        expected_bytes: int | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> None:
        self.final = final
        self.checksums = dict(checksums or {})
        if final.exists():
            raise Conflict(f"{final} already exists", details={"path": str(final)})
        final.parent.mkdir(parents=True, exist_ok=True)
        if expected_bytes is not None:
            avail = free_bytes(final.parent)
            if expected_bytes > avail:
                raise NoSpace(
                    f"no space for {expected_bytes} bytes in {final.parent} "
                    f"({avail} available)",
                    details={
                        "path": str(final.parent),
                        "needed": expected_bytes,
                        "available": avail,
                    },
                )
        self.tmp = final.parent / f".{final.name}{PARTIAL_MARK}{secrets.token_hex(4)}"
        self.tmp.mkdir(mode=0o700)
        self._open: dict[str, _Open] = {}
        self.digests: dict[str, str] = {}  # digest of each file arrived whole
        self._dirs: set[Path] = {self.tmp}
        self.bytes = 0
        self.files = 0
        self._closed = False

    def write(
        self,
        rel: str,
        offset: int,
        data: Buffer,
        *,
        last: bool,
        digest: str | None,
        mode: int | None,
    ) -> None:
        """Write one chunk of `rel` (which must be in order); on the last chunk,
        check the digest and make the file durable."""
        try:
            self._write(rel, offset, data, last=last, digest=digest, mode=mode)
        except OSError as e:
            raise self._os_error(e, rel) from None

    def _write(
        self,
        rel: str,
        offset: int,
        data: Buffer,
        *,
        last: bool,
        digest: str | None,
        mode: int | None,
    ) -> None:
        f = self._open.get(rel)
        if f is None:
            if rel in self.digests:
                raise MalformedMessage(f"{rel}: data after its last chunk")
            if len(self._open) >= _MAX_OPEN:
                raise MalformedMessage(f"more than {_MAX_OPEN} files open at once")
            target = self.tmp / rel
            if target.parent not in self._dirs:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.update(
                    p
                    for p in (target.parent, *target.parent.parents)
                    if p.is_relative_to(self.tmp)
                )
            fd = os.open(
                target,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
            f = self._open[rel] = _Open(fd)
        if offset != f.written:
            raise MalformedMessage(
                f"{rel}: chunk at offset {offset}, expected {f.written}"
            )
        view = memoryview(data)
        f.hasher.update(view)
        done = 0
        while done < len(view):
            done += os.write(f.fd, view[done:])
        f.written += len(view)
        self.bytes += len(view)
        if not last:
            return
        actual = f.hasher.hexdigest()
        if digest != actual:
            raise ChecksumMismatch(
                f"{rel}: digest {actual} on arrival, sender said {digest}",
                details={"file": rel, "expected": digest, "actual": actual},
            )
        want = self.checksums.get(rel)
        if want is not None and want != actual:
            raise ChecksumMismatch(
                f"{rel}: digest {actual}, expected {want} (damaged at the source)",
                details={"file": rel, "expected": want, "actual": actual},
            )
        os.fchmod(f.fd, (mode if mode is not None else 0o600) & 0o777)
        os.fsync(f.fd)
        os.close(f.fd)
        del self._open[rel]
        self.digests[rel] = actual
        self.files += 1

    def _os_error(self, e: OSError, rel: str) -> Exception:
        where = f"{self.final}/{rel}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(
                f"no space left writing {where} ({self.bytes} bytes received)",
                details={"path": str(self.final), "file": rel, "received": self.bytes},
            )
        return TransferError(
            f"cannot write {where}: {e.strerror or e}",
            details={"path": str(self.final), "file": rel, "errno": e.errno},
        )

    @property
    def open_files(self) -> list[str]:
        return sorted(self._open)

    def commit(self, files: int, nbytes: int) -> None:
        """Check the sender's totals, then make the directory appear under its final
        name, durably. Conflict if `final` appeared meanwhile."""
        if self._open:
            raise MalformedMessage(
                f"transfer ended with unfinished files: {', '.join(self.open_files)}"
            )
        missing = sorted(set(self.checksums) - self.digests.keys())
        if missing:
            raise TransferError(
                f"{len(missing)} expected files did not come: {', '.join(missing[:5])}",
                details={"missing": missing[:100]},
            )
        if (files, nbytes) != (self.files, self.bytes):
            raise MalformedMessage(
                f"sender announced {files} files / {nbytes} bytes, "
                f"received {self.files} / {self.bytes}"
            )
        try:
            for d in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(d)
            try:
                os.rename(self.tmp, self.final)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise Conflict(
                        f"{self.final} appeared during the transfer",
                        details={"path": str(self.final)},
                    ) from None
                raise
            _fsync_dir(self.final.parent)
        except OSError as e:
            raise self._os_error(e, ".") from None
        self._closed = True

    def abort(self) -> None:
        """Close and remove everything written; never raises."""
        if self._closed:
            return
        self._closed = True
        for f in self._open.values():
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self._open.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def sweep_partials(root: Path) -> list[Path]:
    """Remove the partial dirs a dead receiver left directly under `root` (and one
    level deeper, for names like "job-7/ckpt-3"); returns what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed

    def is_partial(p: Path) -> bool:
        return p.name.startswith(".") and PARTIAL_MARK in p.name and p.is_dir()

    level1 = list(root.iterdir())
    level2 = [
        q for d in level1 if d.is_dir() and not is_partial(d) for q in d.iterdir()
    ]
    for p in level1 + level2:
        if is_partial(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
