"""Checkpoints between nodes: one copied to another node while CRIU writes it, so
that the copy overlaps the dump instead of following it; and the spool as the bulk
server sees it, which remembers the copies it checked as they arrived.

    worker thread: runtime.checkpoint ─ staging dir ─ CRIU dump ─ manifest ─ rename
                        │ on_staging                                  │ returns
    event loop:    send_following(staging) ── pages as they grow ── the rest ──▶ peer

A failed dump abandons the copy (the peer keeps nothing); a failed copy leaves the
checkpoint whole here, and the caller decides what that means.

A copy is checked against its manifest as it arrives (every file's digest, computed
by the receiver). A restore right after it (a migration, a restart that fetched its
images) then need not hash a gigabyte again, as long as the files are untouched
since (same size, mtime and inode) and it arrived moments ago: SpoolDirs.verify. Any
older copy is hashed again before a restore (what sat on a disk may have rotted).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssi.jobs import JobRuntime
from ssi.jobs import manifest as mf
from ssi.jobs.manifest import Manifest, is_page_image
from ssi.proto.errors import SsiError
from ssi.rpc.keys import KeyPair
from ssi.transfer import Finished, RootDirs, TransferStats, send_following

__all__ = ["BULK_PORT_OFFSET", "SpoolDirs", "bulk_endpoint", "checkpoint_copied"]

BULK_PORT_OFFSET = 2  # cluster port, join port, bulk port


def bulk_endpoint(peer: Mapping[str, Any]) -> str:
    return f"tcp://{peer['address']}:{int(peer['port']) + BULK_PORT_OFFSET}"


async def checkpoint_copied(
    runtime: JobRuntime,
    keypair: KeyPair,
    job_id: str,
    dest: Path,
    peer: Mapping[str, Any] | None,
    name: str,
    *,
    leave_running: bool,
) -> tuple[Manifest, TransferStats | SsiError | None]:
    """runtime.checkpoint(job_id, dest) with a copy of it pushed to `peer` (a node
    record: name, address, port, key) as `name` meanwhile. Returns the manifest
    and the copy's outcome (its stats, its error, or None without a peer). The
    checkpoint's own errors are raised."""
    loop = asyncio.get_running_loop()
    staging: asyncio.Future[Path] = loop.create_future()
    finished: asyncio.Future[Finished] = loop.create_future()

    def on_staging(tmp: Path) -> None:  # in the dump's thread
        loop.call_soon_threadsafe(_resolve, staging, tmp)

    async def copy(to: Mapping[str, Any]) -> TransferStats:
        start = await staging
        return await send_following(
            bulk_endpoint(to), to["key"], keypair, start, is_page_image, finished, name
        )

    task = asyncio.create_task(copy(peer)) if peer is not None else None
    try:
        manifest = await asyncio.to_thread(
            runtime.checkpoint,
            job_id,
            dest,
            leave_running=leave_running,
            on_staging=on_staging if task is not None else None,
        )
    except BaseException:
        if task is not None:
            task.cancel()  # the peer is told, and drops what it has
            await asyncio.gather(task, return_exceptions=True)
        raise
    if task is None:
        return manifest, None
    finished.set_result(Finished(dest, manifest.checksums()))
    try:
        return manifest, await task
    except SsiError as e:
        return manifest, e


def _resolve(fut: asyncio.Future[Path], value: Path) -> None:
    if not fut.done():  # the copy may be over (cancelled) already
        fut.set_result(value)


Fingerprint = frozenset[tuple[str, int, int, int]]
FRESH_FOR = 60.0  # seconds a copy checked on arrival counts as checked


def _fingerprint(path: Path) -> Fingerprint:
    return frozenset(
        (e.name, st.st_size, st.st_mtime_ns, st.st_ino)
        for e in os.scandir(path)
        for st in [e.stat(follow_symlinks=False)]
    )


class SpoolDirs(RootDirs):
    """The node's checkpoint spool for its bulk server: pushes land there; fetches
    are served with the manifest's digests (so the fetcher checks the copy against
    the manifest, end to end); copies that arrived matching their manifest are
    remembered with their files' fingerprint."""

    def __init__(self, spool: Path) -> None:
        super().__init__(spool, [spool])
        self._checked: dict[str, tuple[Fingerprint, float]] = {}

    def known_checksums(self, name: str, path: Path) -> Mapping[str, str] | None:
        try:
            return mf.read(path).checksums()
        except (SsiError, OSError):
            return None  # not a checkpoint (or a broken one): digests computed

    async def received(
        self, name: str, path: Path, peer: bytes, stats: TransferStats
    ) -> None:
        await asyncio.to_thread(self.arrived, name, path, stats.digests)

    def arrived(self, name: str, path: Path, digests: Mapping[str, str]) -> None:
        """`path` came as `name` with these digests: remember it as checked if they
        are its manifest's. Blocks (stat, manifest read)."""
        try:
            sums = mf.read(path).checksums()
        except (SsiError, OSError):
            return
        now = time.monotonic()
        self._checked = {  # replicas that were never restored: forgotten in time
            n: (fp, at) for n, (fp, at) in self._checked.items() if now - at < FRESH_FOR
        }
        if all(digests.get(rel) == sha for rel, sha in sums.items()):
            self._checked[name] = (_fingerprint(path), now)

    def verify(self, name: str, path: Path) -> Manifest:
        """manifest.verify(path), without hashing a copy checked on arrival less
        than FRESH_FOR ago and untouched since. Blocks."""
        fingerprint, at = self._checked.pop(name, (None, 0.0))
        fresh = time.monotonic() - at < FRESH_FOR and fingerprint == _fingerprint(path)
        return mf.verify(path, digests=not fresh)
