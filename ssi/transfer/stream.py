"""Sources for `send_stream`: forward data as it is produced, without a file.

    CRIU ─▶ pipe/FIFO ─▶ pipe_pieces(fd, "pages-1.img") ─┐
    CRIU ─▶ pipe/FIFO ─▶ pipe_pieces(fd, "core-1.img")  ─┴▶ merge(...) ─▶ send_stream

`merge` reads all sources at once (a writer filling several FIFOs in turn never
blocks on one we do not read); `chain` reads them one after the other.

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

__all__ = ["pipe_pieces", "chain", "merge"]

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


async def merge(*sources: AsyncIterable[Piece]) -> AsyncIterator[Piece]:
    """The pieces of all sources as they come, each source's in its own order. A
    source that raises ends the merge with its error (the others are cancelled)."""
    queue: asyncio.Queue[Piece | BaseException | None] = asyncio.Queue(maxsize=2)

    async def pump(source: AsyncIterable[Piece]) -> None:
        try:
            async for piece in source:
                await queue.put(piece)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await queue.put(e)
        else:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(s)) for s in sources]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
