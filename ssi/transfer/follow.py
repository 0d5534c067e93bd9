"""Chunks of a directory its writer is still filling (a CRIU dump), so that the
copy overlaps the writing instead of following it.

    writer (CRIU) ─▶ start/pages-1.img grows ──▶ follow_chunks sends what is new
    writer done:  done.set_result(Finished(path, checksums))
                  ─▶ the rest of each followed file, its last frame carrying the
                     digest the writer computed (the receiver checks it: end to end)
                  ─▶ every other file now at `path` (CRIU's small images, manifest)

Only files the `grows` predicate names are followed: they must be written once,
front to back, never rewritten (CRIU's page images). Everything else is read only
once the writer is done. The directory may be renamed by the writer when it is done
(`Finished.path`): followed files stay open across the rename.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ssi.proto.errors import BadRequest
from ssi.transfer import files as fs
from ssi.transfer.engine import Chunk, RunIO, dir_chunks

__all__ = ["Finished", "follow_chunks"]

POLL = 0.005  # seconds between looks at the directory when nothing new was there
LOOK_EVERY = 0.05  # seconds between looks for new files while data flows


@dataclass(frozen=True, slots=True)
class Finished:
    """What the writer says when done: where the directory is now, and the digest
    (relative path → hex tree hash, ssi.digest) of at least every file that
    was followed."""

    path: Path
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Followed:
    fd: int
    offset: int = 0


def _open_new(
    start: Path, grows: Callable[[str], bool], followed: dict[str, _Followed]
) -> None:
    """Open the growing files that appeared in `start` since the last look."""
    try:
        names = [e.name for e in os.scandir(start) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:  # renamed by a writer that is done: nothing new
        return
    for name in names:
        if name not in followed and grows(name):
            try:
                fd = os.open(start / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            followed[name] = _Followed(fd)


async def follow_chunks(
    start: Path,
    grows: Callable[[str], bool],
    done: asyncio.Future[Finished],
    pool: fs.BufferPool,
    run_io: RunIO,
) -> AsyncIterator[Chunk]:
    """The chunks of the directory `start` while its writer fills it, then of the
    rest (see the module's doc). If `done` fails, so does this (the transfer is
    abandoned: the receiver keeps nothing). BadRequest if the writer's checksums
    lack a followed file."""
    followed: dict[str, _Followed] = {}
    fresh, next_look = False, 0.0
    loop = asyncio.get_running_loop()
    try:
        while not done.done():
            # A look at the directory when idle, or now and then while data flows:
            # not one scandir per chunk.
            if not fresh or loop.time() >= next_look:
                await run_io(_open_new, start, grows, followed)
                next_look = loop.time() + LOOK_EVERY
            fresh = False
            for rel, f in followed.items():
                buf = pool.get()
                data = await run_io(fs.read_chunk, f.fd, buf, None)
                if not data:
                    pool.put(buf)
                    continue
                fresh = True
                yield Chunk(rel, f.offset, data, buf=buf)
                f.offset += len(data)
            if not fresh:
                await asyncio.wait([done], timeout=POLL)
        finished = done.result()
        for rel, f in followed.items():
            digest = finished.checksums.get(rel)
            if digest is None:
                raise BadRequest(f"no checksum for {rel}, a file sent while written")
            while True:
                buf = pool.get()
                data = await run_io(fs.read_chunk, f.fd, buf, None)
                if len(data) < pool.size:
                    mode = stat.S_IMODE(os.fstat(f.fd).st_mode)
                    yield Chunk(rel, f.offset, data, True, digest, mode, buf)
                    break
                yield Chunk(rel, f.offset, data, buf=buf)
                f.offset += len(data)
        rest = [
            sf
            for sf in await run_io(fs.list_files, finished.path)
            if sf.rel not in followed
        ]
        async for chunk in dir_chunks(rest, pool, run_io, finished.checksums):
            yield chunk
    finally:
        for f in followed.values():
            os.close(f.fd)
