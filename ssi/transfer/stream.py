"""Sources for `send_stream`: forward data as it is produced, without a file.

    CRIU ─▶ pipe/FIFO ─▶ pipe_pieces(fd, "pages-1.img") ─┐
    CRIU ─▶ pipe/FIFO ─▶ pipe_pieces(fd, "core-1.img")  ─┴▶ chain(...) ─▶ send_stream

Each piece is a fresh `bytes` (safe to send without a copy) of what the pipe held,
up to `piece_size`. Reads run in a worker thread, one piece ahead of the sender at
most, so a slow network slows the writer down (the pipe fills) instead of growing
memory.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

__all__ = ["pipe_pieces", "chain"]

Piece = tuple[str, bytes, bool]


async def pipe_pieces(
    source: int | str | os.PathLike[str], rel: str, *, piece_size: int = 1 << 20
) -> AsyncIterator[Piece]:
    """The pieces of one file read from `source` (an fd, or the path of a FIFO or
    file, opened for reading in a worker thread: opening a FIFO waits for its
    writer) until end of file: (rel, data, False)... then (rel, b"", True).
    An fd we are given stays open; a path we open is closed."""
    if isinstance(source, int):
        fd, own = source, False
    else:
        path = Path(source)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        own = True
    try:
        while True:
            data, eof = await asyncio.to_thread(_read_some, fd, piece_size)
            if data:
                yield rel, data, False
            if eof:
                break
        yield rel, b"", True
    finally:
        if own:
            os.close(fd)


def _read_some(fd: int, size: int) -> tuple[bytes, bool]:
    """Up to `size` bytes: waits for the first, then takes what is there already
    (a pipe hands out at most its buffer per read; small frames cost credits).
    Returns (data, reached end of file)."""
    first = os.read(fd, size)
    if not first:
        return b"", True
    parts, got = [first], len(first)
    while got < size and select.select([fd], [], [], 0)[0]:
        more = os.read(fd, size - got)
        if not more:
            return b"".join(parts), True
        parts.append(more)
        got += len(more)
    return (b"".join(parts) if len(parts) > 1 else first), False


async def chain(*sources: AsyncIterable[Piece]) -> AsyncIterator[Piece]:
    """The pieces of each source in turn (files one after the other)."""
    for source in sources:
        async for piece in source:
            yield piece
