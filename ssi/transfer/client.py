"""The client side: push a directory, push a stream, fetch a directory.

    send_dir(src) ──PUT──▶ server                 fetch_dir(dest) ──GET──▶ server
      list_files → dir_chunks → send_chunks         Staging(dest) ← receive_chunks
    send_stream(items) ──PUT(stream)──▶ server
      stream_chunks → send_chunks
    send_following(dir being written) ──PUT(stream)──▶ server
      follow_chunks → send_chunks

Each call opens its own connection (a DEALER socket, CURVE with our key pair and the
server's public key) and closes it when done. On any failure the peer is told (ERR)
so that it drops what it received; a fetch leaves nothing at `dest`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ssi.proto.errors import MalformedMessage
from ssi.rpc.keys import KeyPair
from ssi.transfer import files as fs
from ssi.transfer import protocol as p
from ssi.transfer.engine import (
    Chunk,
    Progress,
    TransferStats,
    dir_chunks,
    open_staging,
    receive_chunks,
    send_chunks,
    stream_chunks,
)
from ssi.transfer.errors import PeerGone
from ssi.transfer.follow import Finished, follow_chunks
from ssi.transfer.link import ClientLink, Gone

__all__ = ["send_dir", "send_stream", "send_following", "fetch_dir"]

Buffer = bytes | bytearray | memoryview


class _Session:
    """A connected ClientLink plus a worker thread pool, for one transfer."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context | None,
        endpoint: str,
        server_key: bytes | str,
        keypair: KeyPair,
        options: p.Options,
    ) -> None:
        self._own_ctx = ctx is None
        # A context of our own gives the transfer its own I/O thread for CURVE.
        self.ctx = ctx if ctx is not None else zmq.asyncio.Context(io_threads=1)
        self.options = options
        self.link = ClientLink(self.ctx, endpoint, server_key, keypair, options)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssi-bulk")
        self.started = asyncio.get_running_loop().time()

    async def run_io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        if kw:
            return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))
        return await loop.run_in_executor(self.pool, fn, *args)

    def stats(
        self, files: int, nbytes: int, digests: Mapping[str, str] | None = None
    ) -> TransferStats:
        elapsed = asyncio.get_running_loop().time() - self.started
        return TransferStats(nbytes, files, elapsed, self.link.peer, digests or {})

    async def close(self) -> None:
        await self.link.close()
        self.pool.shutdown(wait=False)
        if self._own_ctx:
            await asyncio.to_thread(self.ctx.term)


@contextlib.asynccontextmanager
async def _session(
    ctx: zmq.asyncio.Context | None,
    endpoint: str,
    server_key: bytes | str,
    keypair: KeyPair,
    options: p.Options,
) -> AsyncIterator[_Session]:
    s = _Session(ctx, endpoint, server_key, keypair, options)
    try:
        await s.link.open()
        yield s
    except BaseException as e:
        await s.link.fail(e)
        raise
    finally:
        await s.close()


async def _first(s: _Session, want: type[Any]) -> Any:
    """The server's answer to our first message."""
    try:
        msg = await s.link.recv()
    except Gone as e:
        raise PeerGone(
            f"peer {s.link.peer} gone before the transfer started: {e}",
            details={"peer": s.link.peer},
        ) from None
    if not isinstance(msg.header, want):
        raise MalformedMessage(
            f"{s.link.peer} answered {type(msg.header).__name__}, not {want.__name__}"
        )
    return msg.header


async def send_dir(
    endpoint: str,
    server_key: bytes | str,
    keypair: KeyPair,
    src: Path,
    dest_name: str,
    *,
    progress: Progress | None = None,
    checksums: Mapping[str, str] | None = None,
    options: p.Options | None = None,
    ctx: zmq.asyncio.Context | None = None,
) -> TransferStats:
    """Push the directory `src` (regular files, recursively) to the BulkServer at
    `endpoint`, which stores it where its policy puts `dest_name`; returns once the
    server has verified every file's digest and renamed the directory into place.

    `checksums` (relative path → digest, e.g. a checkpoint manifest's) saves
    hashing here: the server checks the data against those digests, so a file
    damaged on this disk since the manifest was written is refused too.

    Errors (SsiError): Denied (our key or the name refused), Unavailable (server
    unreachable), Conflict (the name exists there), NoSpace, ChecksumMismatch,
    PeerGone (the server died mid-transfer; nothing complete is left there),
    BadRequest (`src` holds something other than files and directories).
    """
    opts = options or p.Options()
    p.check_name(dest_name)
    files = await asyncio.to_thread(fs.list_files, Path(src))
    total = sum(f.size for f in files)
    async with _session(ctx, endpoint, server_key, keypair, opts) as s:
        await s.link.send(
            p.Put(p.VERSION, dest_name, False, opts.chunk_size, len(files), total)
        )
        accept: p.Accept = await _first(s, p.Accept)
        window = _window(accept.window)
        pool = fs.BufferPool(_chunk(accept.chunk), window + 2)
        chunks = dir_chunks(files, pool, s.run_io, checksums)
        try:
            nfiles, nbytes = await send_chunks(
                s.link,
                chunks,
                credit=window,
                progress=progress,
                total=total,
                release=pool.put,
            )
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return s.stats(nfiles, nbytes)


async def send_stream(
    endpoint: str,
    server_key: bytes | str,
    keypair: KeyPair,
    items: AsyncIterable[tuple[str, Buffer, bool]],
    dest_name: str,
    *,
    progress: Progress | None = None,
    options: p.Options | None = None,
    ctx: zmq.asyncio.Context | None = None,
) -> TransferStats:
    """Push files as they are produced: `items` yields (relative path, data,
    is_last) pieces, files possibly interleaved, each file ending with one piece
    whose is_last is true (its data may be empty). Data is sent without a copy: do
    not change a buffer after yielding it. The server commits the directory as
    `dest_name` when the iterator ends with every file finished; if the iterator
    raises, or ends with a file unfinished (BadRequest), the server keeps nothing.
    Files arrive with mode 0600. Same errors as `send_dir`.
    """
    opts = options or p.Options()
    p.check_name(dest_name)
    async with _session(ctx, endpoint, server_key, keypair, opts) as s:
        return await _push_stream(
            s,
            dest_name,
            lambda chunk, _pool: stream_chunks(items, chunk, s.run_io),
            progress,
        )


async def send_following(
    endpoint: str,
    server_key: bytes | str,
    keypair: KeyPair,
    start: Path,
    grows: Callable[[str], bool],
    done: asyncio.Future[Finished],
    dest_name: str,
    *,
    progress: Progress | None = None,
    options: p.Options | None = None,
    ctx: zmq.asyncio.Context | None = None,
) -> TransferStats:
    """Push the directory `start` while its writer still fills it: the files
    `grows` names as they grow, the rest once `done` says the writer finished
    (ssi.transfer.follow). The server commits it as `dest_name` when all arrived
    and verified against the writer's checksums; if `done` fails, the server keeps
    nothing. Same errors as `send_dir`."""
    opts = options or p.Options()
    p.check_name(dest_name)
    async with _session(ctx, endpoint, server_key, keypair, opts) as s:
        return await _push_stream(
            s,
            dest_name,
            lambda _chunk, pool: follow_chunks(start, grows, done, pool, s.run_io),
            progress,
        )


async def _push_stream(
    s: _Session,
    dest_name: str,
    make_chunks: Callable[[int, fs.BufferPool], AsyncIterator[Chunk]],
    progress: Progress | None,
) -> TransferStats:
    """PUT a stream (files and size not known in advance), send its chunks."""
    await s.link.send(p.Put(p.VERSION, dest_name, True, s.options.chunk_size))
    accept: p.Accept = await _first(s, p.Accept)
    window = _window(accept.window)
    pool = fs.BufferPool(_chunk(accept.chunk), window + 2)
    chunks = make_chunks(pool.size, pool)
    try:
        nfiles, nbytes = await send_chunks(
            s.link, chunks, credit=window, progress=progress, release=pool.put
        )
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return s.stats(nfiles, nbytes)


async def fetch_dir(
    endpoint: str,
    server_key: bytes | str,
    keypair: KeyPair,
    name: str,
    dest: Path,
    *,
    progress: Progress | None = None,
    checksums: Mapping[str, str] | None = None,
    options: p.Options | None = None,
    ctx: zmq.asyncio.Context | None = None,
) -> TransferStats:
    """Pull the directory the server's policy serves as `name` into `dest` (which
    must not exist; its parent is created). Files are written under a partial name
    beside `dest`, verified (digest) and made durable, then renamed to `dest`: on any
    error nothing is left at `dest`. With `checksums` (relative path → digest, hex,
    e.g. from a checkpoint manifest) each file must also match its digest there,
    and every file named there must come.

    Errors: NotFound or Denied (from the server's policy), Conflict (`dest` exists),
    NoSpace (checked against the announced size before any byte, and while
    writing), ChecksumMismatch, PeerGone, Unavailable.
    """
    opts = options or p.Options()
    p.check_name(name)
    dest = Path(dest)
    async with _session(ctx, endpoint, server_key, keypair, opts) as s:
        s.link.expect_data(opts.window, opts.chunk_size)
        await s.link.send(p.Get(p.VERSION, name, opts.window, opts.chunk_size))
        manifest: p.Manifest = await _first(s, p.Manifest)
        staging = await open_staging(
            s.run_io, dest, expected_bytes=manifest.bytes, checksums=checksums
        )
        committed = False
        try:
            nfiles, nbytes = await receive_chunks(
                s.link,
                staging,
                window=opts.window,
                run_io=s.run_io,
                progress=progress,
                total=manifest.bytes,
            )
            committed = True
        finally:
            if not committed:
                await asyncio.shield(s.run_io(staging.abort))
        with contextlib.suppress(Exception):  # the data is here and verified
            await s.link.send(p.Done(nfiles, nbytes))
        return s.stats(nfiles, nbytes, staging.digests)


def _chunk(n: int) -> int:
    if not 4096 <= n <= p.MAX_CHUNK:
        raise MalformedMessage(f"server asked for chunks of {n} bytes")
    return n


def _window(n: int) -> int:
    if not 1 <= n <= p.MAX_WINDOW:
        raise MalformedMessage(f"server granted a window of {n}")
    return n
