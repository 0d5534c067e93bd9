"""The two halves of every transfer, whichever side is client or server:

    send_chunks:    for each chunk: wait for credit ─▶ DATA ─▶ ... ─▶ END ─▶ wait DONE
    receive_chunks: DATA ─▶ Staging.write (worker thread) ─▶ CREDIT ─▶ ... END ─▶ commit

Sources of chunks: `dir_chunks` (files read and hashed in a worker thread, one read
ahead) and `stream_chunks` (a caller's async iterator of (path, data, is_last)).
The credit bounds what is in flight to `window` chunks, hence the memory of both sides.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ssi.digest import TreeHash
from ssi.proto.errors import BadRequest, MalformedMessage
from ssi.transfer import files as fs
from ssi.transfer import protocol as p
from ssi.transfer.errors import PeerGone
from ssi.transfer.link import Gone, Link, Message

__all__ = [
    "Chunk",
    "Progress",
    "RunIO",
    "TransferStats",
    "send_chunks",
    "receive_chunks",
    "dir_chunks",
    "stream_chunks",
    "open_staging",
]

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview
Progress = Callable[[int, int | None], None]
"""`progress(done_bytes, total_bytes)`; total is None when unknown (streams). For a
sender, done counts bytes the receiver has written."""
RunIO = Callable[..., Awaitable[Any]]
"""`await run_io(fn, *args)`: run a blocking call in a worker thread."""

_HASH_INLINE = 64 * 1024  # smaller pieces are hashed on the event loop
_BATCH = 16  # most DATA frames written in one trip to the worker thread


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What a finished transfer moved: payload bytes, files, wall-clock seconds
    (connection and handshake included); for a receiver, the digest of each file
    as it arrived (relative path → hex tree hash, ssi.digest)."""

    bytes: int
    files: int
    seconds: float
    peer: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes per second)."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.mb_per_s:.0f} MB/s)"
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    rel: str
    offset: int
    data: Buffer
    last: bool = False
    digest: str | None = None  # of the whole file, on its last chunk
    mode: int | None = None
    buf: bytearray | None = None  # a pool buffer under `data`, reusable once acked


def _gone(
    link: Link, e: Gone, verb: str, rel: str | None, done: int, total: int | None
) -> PeerGone:
    what = f" while {verb} {rel}" if rel else ""
    of = f" of {total}" if total is not None else ""
    return PeerGone(
        f"peer {link.peer} gone{what} ({done}{of} bytes done): {e}",
        details={"peer": link.peer, "file": rel, "done": done, "total": total},
    )


async def send_chunks(
    link: Link,
    chunks: AsyncIterator[Chunk],
    *,
    credit: int,
    progress: Progress | None = None,
    total: int | None = None,
    release: Callable[[bytearray], None] | None = None,
) -> tuple[int, int]:
    """Send every chunk within the receiver's credit, then END, and wait for DONE.
    Each credit returned means one more chunk written by the receiver: its buffer
    goes to `release`. Returns (files, bytes) as the receiver confirmed them."""
    sent = files = acked = 0
    rel: str | None = None
    inflight: collections.deque[bytearray | None] = collections.deque()

    def take(msg: Any) -> int:
        nonlocal acked
        h = msg.header
        if not isinstance(h, p.Credit) or h.n < 0:
            raise MalformedMessage(f"unexpected {type(h).__name__} during a transfer")
        for _ in range(min(h.n, len(inflight))):
            buf = inflight.popleft()
            if buf is not None and release is not None:
                release(buf)
        if h.acked > acked:
            acked = h.acked
            if progress is not None:
                progress(acked, total)
        return h.n

    try:
        async for chunk in chunks:
            rel = chunk.rel
            while credit <= 0:
                credit += take(await link.recv())
            while (msg := link.poll()) is not None:
                credit += take(msg)
            await link.send(
                p.Data(chunk.rel, chunk.offset, chunk.last, chunk.digest, chunk.mode),
                chunk.data,
            )
            inflight.append(chunk.buf)
            credit -= 1
            sent += len(chunk.data)
            if chunk.last:
                files += 1
        rel = None
        await link.send(p.End(files, sent))
        while True:
            msg = await link.recv()
            if isinstance(msg.header, p.Done):
                done = msg.header
                break
            take(msg)
    except Gone as e:
        raise _gone(link, e, "sending", rel, acked, total) from None
    if (done.files, done.bytes) != (files, sent):
        raise MalformedMessage(
            f"peer {link.peer} confirmed {done.files} files / {done.bytes} bytes, "
            f"sent {files} / {sent}"
        )
    if progress is not None and acked != sent:
        progress(sent, total)
    return files, sent


async def receive_chunks(
    link: Link,
    staging: fs.Staging,
    *,
    window: int,
    run_io: RunIO,
    progress: Progress | None = None,
    total: int | None = None,
) -> tuple[int, int]:
    """Receive DATA until END (the sender holds `window` credits already), writing
    into `staging`, then commit it. Returns (files, bytes); the caller sends DONE."""
    outstanding = window
    rel: str | None = None
    held: Message | None = None
    try:
        while True:
            msg = held if held is not None else await link.recv()
            held = None
            h = msg.header
            if isinstance(h, p.Data):
                # What else has arrived goes to the worker in the same trip, and
                # is acknowledged by one CREDIT: small files cost one hop, not n.
                batch: list[tuple[p.Data, memoryview]] = [(h, msg.data)]
                more: Message | None = None
                while len(batch) < _BATCH and (more := link.poll()) is not None:
                    if not isinstance(more.header, p.Data):
                        held = more
                        break
                    batch.append((more.header, more.data))
                if len(batch) > outstanding:
                    raise MalformedMessage(f"peer {link.peer} sent beyond its credit")
                outstanding -= len(batch)
                for d, _ in batch:
                    rel = p.check_relpath(d.p)
                await run_io(_write_batch, staging, batch)
                n = len(batch)
                del msg, batch, more  # the frames' memory goes back before more credit
                await link.send(p.Credit(n, staging.bytes))
                outstanding += n
                if progress is not None:
                    progress(staging.bytes, total)
            elif isinstance(h, p.End):
                rel = None
                await run_io(staging.commit, h.files, h.bytes)
                return staging.files, staging.bytes
            else:
                raise MalformedMessage(
                    f"unexpected {type(h).__name__} from {link.peer} during a transfer"
                )
    except Gone as e:
        raise _gone(link, e, "receiving", rel, staging.bytes, total) from None


def _write_batch(staging: fs.Staging, batch: list[tuple[p.Data, memoryview]]) -> None:
    for d, data in batch:
        staging.write(d.p, d.o, data, last=d.last, digest=d.digest, mode=d.mode)


async def dir_chunks(
    files: list[fs.SourceFile],
    pool: fs.BufferPool,
    run_io: RunIO,
    known: Mapping[str, str] | None = None,
) -> AsyncIterator[Chunk]:
    """The chunks (of `pool.size` bytes) of `files`, read and hashed in a worker
    thread while the previous chunk is on its way. A file is read up to its end,
    whatever its listed size. For files in `known` (relative path → digest, hex)
    that digest is sent instead of one computed here."""
    size = pool.size
    for f in files:
        digest = known.get(f.rel) if known is not None else None
        buf = pool.get()
        # open + first read in one trip to the worker: most image files are small
        reader: fs.FileReader
        data: memoryview
        reader, data = await run_io(fs.FileReader.first, f.path, digest, buf)
        pending: asyncio.Future[memoryview] | None = None
        try:
            offset = 0
            while True:
                if len(data) < size:
                    yield Chunk(f.rel, offset, data, True, reader.digest(), f.mode, buf)
                    break
                nbuf = pool.get()
                pending = asyncio.ensure_future(run_io(reader.read, nbuf))
                yield Chunk(f.rel, offset, data, buf=buf)
                offset += len(data)
                data = await pending
                pending = None
                buf = nbuf
                if not data:
                    pool.put(buf)
                    yield Chunk(f.rel, offset, b"", True, reader.digest(), f.mode)
                    break
        finally:
            if pending is not None and not pending.done():
                # the worker still reads from the fd: close it once it is done
                pending.add_done_callback(functools.partial(_close_after, reader))
            else:
                reader.close()


def _close_after(reader: fs.FileReader, fut: asyncio.Future[memoryview]) -> None:
    reader.close()
    if not fut.cancelled():
        fut.exception()  # retrieved: an error here is moot, the transfer is over


async def stream_chunks(
    items: AsyncIterable[tuple[str, Buffer, bool]], chunk_size: int, run_io: RunIO
) -> AsyncIterator[Chunk]:
    """Chunks of a stream of (relative path, data, is_last) pieces, files possibly
    interleaved; pieces larger than `chunk_size` are split. The data must not change
    once yielded (it is sent without a copy). BadRequest for a bad path, data after
    a file's last piece, or files still open when the stream ends."""
    state: dict[str, tuple[TreeHash, int]] = {}
    closed: set[str] = set()
    async for rel, data, last in items:
        try:
            p.check_relpath(rel)
        except MalformedMessage as e:
            raise BadRequest(str(e)) from None
        if rel in closed:
            raise BadRequest(f"stream: data for {rel} after its last piece")
        hasher, offset = state.get(rel) or (TreeHash(), 0)
        view = memoryview(data).cast("B")
        if not len(view) and not last:
            continue
        pieces = [view[i : i + chunk_size] for i in range(0, len(view), chunk_size)]
        if not pieces:
            pieces = [view]
        for i, piece in enumerate(pieces):
            if len(piece) > _HASH_INLINE:
                await run_io(hasher.update, piece)
            else:
                hasher.update(piece)
            end = last and i == len(pieces) - 1
            yield Chunk(
                rel,
                offset,
                piece,
                end,
                hasher.hexdigest() if end else None,
                0o600 if end else None,
            )
            offset += len(piece)
        if last:
            closed.add(rel)
            state.pop(rel, None)
        else:
            state[rel] = (hasher, offset)
    if state:
        raise BadRequest(
            f"stream ended with unfinished files: {', '.join(sorted(state))}"
        )


async def open_staging(run_io: RunIO, final: Path, **kw: Any) -> fs.Staging:
    """`fs.Staging(final, **kw)` made in a worker thread; if we are cancelled while
    it is being made, it is removed as soon as it exists."""
    fut = asyncio.ensure_future(run_io(lambda: fs.Staging(final, **kw)))
    try:
        staging: fs.Staging = await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_abort_made)
        raise
    return staging


def _abort_made(fut: asyncio.Future[fs.Staging]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().abort()
