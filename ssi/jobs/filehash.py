"""sha256 of image files, read in place: the bound of a big checkpoint.

    hash_range(fd, h, offset, length) ─ mmap (read-only) ─ MADV_POPULATE_READ
                                       ─ h.update(whole window, GIL let go)
    sha256_fd(fd)                      ─ hash_range window by window

One core hashes ~1.7 GB/s here, slower than CRIU writes (~2.5 GB/s into the page
cache), so every copy on the way counts: a mapping of the page cache saves the copy
into a buffer that read() makes (a cached GB hashed at 1.66 GB/s mapped, 1.55 with
readinto, 1.45 with read, 1.76 for sha256 alone), and one hashlib call per window
lets go of the GIL once per WINDOW bytes, not once per small chunk.

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
from typing import Any

__all__ = ["WINDOW", "hash_range", "sha256_fd"]

WINDOW = 32 << 20  # bytes mapped (or read) and hashed per step

# Linux's MADV_POPULATE_READ (5.14), which Python 3.11's mmap does not name.
_MADV_POPULATE_READ = 22

_READ_CHUNK = 1 << 20  # bytes per pread() when mapping is not available
_mapping_works = True  # False once the kernel refused MADV_POPULATE_READ


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


def sha256_fd(fd: int) -> tuple[int, str]:
    """Size and sha256 (hex) of the whole file open at `fd`."""
    h = hashlib.sha256()
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        want = min(WINDOW, size - offset)
        got = hash_range(fd, h, offset, want)
        offset += got
        if got < want:
            break
    if os.fstat(fd).st_size != offset:
        raise OSError("the file changed while it was hashed")
    return offset, h.hexdigest()
