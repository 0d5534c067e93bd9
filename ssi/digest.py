"""The digest of image files: a SHA-256 tree hash, read in place, on two cores.

Definition (the only one: manifests, transfers and moves all use it):

    leaves:  the file cut into LEAF = 1 MiB pieces, the last possibly shorter;
             an empty file has no leaves
    digest:  sha256(sha256(leaf_0) ‖ sha256(leaf_1) ‖ …), hex (‖: concatenation of
             the 32-byte digests)

    e.g. 2.5 MiB: sha256(sha256(bytes 0..1M) ‖ sha256(1M..2M) ‖ sha256(2M..2.5M))
         empty:   sha256(b"")

Why not plain sha256: one core hashes ~1.7 GB/s here, slower than CRIU writes
(~2.5 GB/s into the page cache), so a big checkpoint ended hashing the tail of its
pages on one core while the other was idle. Leaves are independent, so they are
hashed on both cores (3.09 GB/s measured for two threads, 1.68 for one); only the
final concatenation is ordered. It stays SHA-256 (same strength: a collision of
the digest is one of sha256 over the leaf digests or of a leaf), a tree hash as
Glacier's (which pairs leaves up level by level; ours has two levels), simple to
compute incrementally (TreeHash) and to state in a test.

    TreeHash                  ─ hashlib-like: update(bytes), hexdigest()
    hash_range(fd, h, …)      ─ mmap (read-only) ─ MADV_POPULATE_READ
                              ─ h.update(whole window, GIL let go)
    hash_spans([Span…])       ─ parts of open files, window by window, on THREADS
    digest_fd(fd)             ─ (size, digest) of a whole file, on THREADS
    digest_path(path), digest_file(path) ─ the same by path; the digest alone

Every copy on the way counts: a mapping of the page cache saves the copy into a
buffer that read() makes (a cached GB hashed at 1.66 GB/s mapped, 1.55 with
readinto, 1.45 with read, 1.76 for sha256 alone), and hashlib lets go of the GIL
for each 1 MiB leaf, so that the threads run on both cores.

An access to a mapped page that cannot be read (past a truncated end, an I/O error
of a network file system) is a SIGBUS, which would kill the daemon: each window is
faulted in first with MADV_POPULATE_READ, which reports that as an OSError instead,
and hashed right after. Only a truncation in between would still hurt: CRIU never
truncates its images, and nothing else writes a checkpoint being hashed. Kernels
before 5.14 lack it (EINVAL): pread() then.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LEAF",
    "THREADS",
    "WINDOW",
    "Span",
    "TreeHash",
    "digest_fd",
    "digest_file",
    "digest_path",
    "hash_range",
    "hash_spans",
]

LEAF = 1 << 20  # bytes per leaf: part of the digest's definition, never change it
WINDOW = 32 << 20  # bytes mapped (or read) and hashed per step; a multiple of LEAF
THREADS = 2  # the cores of our machines; leaves are hashed on this many threads
_WORTH_THREADS = 4 * LEAF  # less than this is hashed by the caller alone

# Linux's MADV_POPULATE_READ (5.14), which Python 3.11's mmap does not name.
_MADV_POPULATE_READ = 22

_READ_CHUNK = LEAF  # bytes per pread() when mapping is not available
_mapping_works = True  # False once the kernel refused MADV_POPULATE_READ

Buffer = bytes | bytearray | memoryview


class TreeHash:
    """The SHA-256 tree hash (module docstring) of the bytes given to update(), in
    any pieces: a leaf may span several calls. Holds 32 bytes per MiB hashed.

    `join` appends another TreeHash's leaves, so that parts of one file hashed on
    other threads are put together in order."""

    name = "sha256-tree"
    digest_size = 32

    __slots__ = ("_leaves", "_leaf", "_filled", "size")

    def __init__(self, data: Buffer = b"") -> None:
        self._leaves = bytearray()  # sha256 of each complete leaf, in order
        self._leaf = hashlib.sha256()  # the leaf being filled
        self._filled = 0  # bytes in it
        self.size = 0  # bytes hashed
        if data:
            self.update(data)

    def update(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        n, pos = len(view), 0
        if self._filled:
            pos = min(LEAF - self._filled, n)
            self._leaf.update(view[:pos])
            self._filled += pos
            if self._filled == LEAF:
                self._leaves += self._leaf.digest()
                self._leaf, self._filled = hashlib.sha256(), 0
        while n - pos >= LEAF:
            self._leaves += hashlib.sha256(view[pos : pos + LEAF]).digest()
            pos += LEAF
        if pos < n:
            self._leaf.update(view[pos:])
            self._filled += n - pos
        self.size += n

    def join(self, after: TreeHash) -> None:
        """Append the bytes `after` hashed to ours (as if given to our update()).
        ValueError unless ours end on a leaf boundary."""
        if self._filled:
            raise ValueError("a tree hash joins others only at a leaf boundary")
        self._leaves += after._leaves
        self._leaf, self._filled = after._leaf.copy(), after._filled
        self.size += after.size

    @property
    def aligned(self) -> bool:
        """Whether the bytes hashed end on a leaf boundary."""
        return self._filled == 0

    def digest(self) -> bytes:
        root = hashlib.sha256(self._leaves)
        if self._filled:
            root.update(self._leaf.digest())
        return root.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def hash_range(fd: int, h: Any, offset: int, length: int) -> int:
    """Feed `length` bytes of the file at `offset` (all there: the caller saw the
    file's size) to the hash object `h`; bytes hashed (fewer only if the file
    shrank, with pread). OSError if a page cannot be read."""
    global _mapping_works
    if length <= 0:
        return 0
    if _mapping_works:
        try:
            _hash_mapped(fd, h, offset, length)
            return length
        except OSError as e:
            if e.errno != errno.EINVAL:  # EFAULT, EIO: the file is unreadable
                raise
            _mapping_works = False
    return _hash_read(fd, h, offset, length)


def _hash_mapped(fd: int, h: Any, offset: int, length: int) -> None:
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    skip = offset - start
    try:
        mapped = mmap.mmap(fd, skip + length, prot=mmap.PROT_READ, offset=start)
    except ValueError:  # Python's own check: the range ends past the file's end
        raise OSError(errno.EIO, "the file is shorter than it was") from None
    with mapped:
        mapped.madvise(_MADV_POPULATE_READ)  # the error here, not a SIGBUS below
        with memoryview(mapped) as view:
            h.update(view[skip:])


def _hash_read(fd: int, h: Any, offset: int, length: int) -> int:
    buf = bytearray(min(length, _READ_CHUNK))
    done = 0
    with memoryview(buf) as view:
        while done < length:
            n = os.preadv(fd, [view[: min(length - done, len(buf))]], offset + done)
            if n == 0:
                break
            h.update(view[:n])
            done += n
    return done


@dataclass(slots=True)
class Span:
    """`length` bytes at `offset` of the file open at `fd`, to be fed to `hash`
    (whose bytes so far are those before `offset`)."""

    fd: int
    hash: TreeHash
    offset: int
    length: int


def hash_spans(spans: Sequence[Span], threads: int = THREADS) -> None:
    """Feed every span's bytes to its hash, the big spans window by window on
    `threads` threads (largest first, so that no big one starts last), the small
    ones by the caller meanwhile; the windows of a span are joined in order.
    OSError if a page cannot be read or a file shrank.

    Windows are cut at leaf boundaries of their file: a hash that holds part of a
    leaf is first completed up to the boundary here."""
    small: list[Span] = []
    work: list[tuple[Span, list[tuple[int, int]]]] = []
    for span in sorted(spans, key=lambda s: -s.length):
        if not span.hash.aligned:
            lead = min(span.length, LEAF - span.hash.size % LEAF)
            _hash_exactly(span.fd, span.hash, span.offset, lead)
            span = Span(span.fd, span.hash, span.offset + lead, span.length - lead)
        if span.length < _WORTH_THREADS or threads <= 1:
            small.append(span)
            continue
        # Windows no bigger than an even share, so that one span uses every thread.
        share = -(-span.length // threads)
        step = min(WINDOW, -(-share // LEAF) * LEAF)
        end = span.offset + span.length
        work.append(
            (span, [(o, min(step, end - o)) for o in range(span.offset, end, step)])
        )
    # Threads start at the first submit: none for small spans alone.
    with ThreadPoolExecutor(max(threads, 1), thread_name_prefix="ssi-hash") as pool:
        try:
            parts = [
                (span, [pool.submit(_hash_part, span.fd, o, n) for o, n in windows])
                for span, windows in work
            ]
            for span in small:
                _hash_exactly(span.fd, span.hash, span.offset, span.length)
            for span, futures in parts:
                for fut in futures:
                    span.hash.join(fut.result())
        finally:
            pool.shutdown(cancel_futures=True)


def _hash_part(fd: int, offset: int, length: int) -> TreeHash:
    h = TreeHash()
    _hash_exactly(fd, h, offset, length)
    return h


def _hash_exactly(fd: int, h: Any, offset: int, length: int) -> None:
    if hash_range(fd, h, offset, length) != length:
        raise OSError(errno.EIO, "the file is shorter than it was")


def digest_fd(fd: int, threads: int = THREADS) -> tuple[int, str]:
    """Size and tree hash (hex) of the whole file open at `fd`, hashed on
    `threads` threads. OSError if the file cannot be read or changed meanwhile."""
    size = os.fstat(fd).st_size
    h = TreeHash()
    hash_spans([Span(fd, h, 0, size)], threads)
    if os.fstat(fd).st_size != size:
        raise OSError("the file changed while it was hashed")
    return size, h.hexdigest()


def digest_path(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Size and tree hash (hex) of the file at `path` (digest_fd)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd)
    finally:
        os.close(fd)


def digest_file(path: str | os.PathLike[str]) -> str:
    """The tree hash (hex) of the file at `path`, as manifests list it."""
    return digest_path(path)[1]
