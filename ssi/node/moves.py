"""The agent's halves of a migration, on the move's own connection
(ssi.migration.channel) rather than the bulk server and a CRIU listener:

    target  agent.move_prepare ─▶ Incoming (listens for the source only) ─▶ invitation
  live (post-copy):
    source  agent.migrate_out(live, channel) ─▶ connect ─▶ LiveSource.begin (CRIU
            seizes, dumps, serves on the socket) ─▶ send_images ─▶ digests
    target  on the connection: criu lazy-pages started at once, on FIFOs for the
            two images it reads first: its start (~30-60 ms of probing the kernel
            here) overlaps the source's dump instead of following it
    target  agent.restore(live, digests) ─▶ Incoming.wait (images checked)
            ─▶ LiveTarget.begin (restore, the daemon on the socket) ─▶ wait_pages
    source  agent.settle ─▶ LiveSource.commit / abort
  cold:
    target  on the connection: criu page-server started at once (its probing
            overlaps the freeze's start), writing the pages as the dump sends them
    source  agent.migrate_out(channel) ─▶ connect ─▶ checkpoint(hold, ps_fd: the
            socket): CRIU sends every page to that page server and writes the
            other images here ─▶ send_manifest_files ─▶ digests; nothing kept here
    target  agent.restore(digests) ─▶ Incoming.wait (images checked, pages by
            size) ─▶ restore, frozen until agent.keep
    source  agent.settle ─▶ kill the frozen job, or thaw it

An invitation nobody claims within `claim_timeout` (the coordinator gave up or died)
is dropped with what arrived; a source that goes away drops it too.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ssi.checkpoint import CriuDaemon, PageServer
from ssi.checkpoint.criu import EARLY_IMAGES
from ssi.jobs import JobRuntime
from ssi.jobs.manifest import Manifest
from ssi.migration import LiveSource, LiveTarget
from ssi.migration.channel import Incoming, Invitation, connect, send_manifest_files
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, NotFound

log = logging.getLogger(__name__)


class Moves:
    CONNECT_TIMEOUT = 10.0  # seconds for the source to reach the target
    CLAIM_TIMEOUT = 120.0  # seconds an invitation waits for its restore

    def __init__(self, runtime: JobRuntime, spool: Path, address: str) -> None:
        self.runtime = runtime
        self.spool = spool
        self.address = address  # this node's cluster address
        self.sources: dict[str, LiveSource] = {}  # job id → move out, until settled
        self.incoming: dict[str, Incoming] = {}  # migration → invitation, until claimed
        self._run_dirs: dict[str, Path] = {}  # migration → job dir made for its daemon

    # --- target ---------------------------------------------------------------------

    async def prepare(self, body: m.AgentMovePrepare) -> dict[str, Any]:
        name = body.migration
        if "/" in name or name.startswith(".") or name in self.incoming:
            raise BadRequest(f"bad or busy migration name {name!r}")
        dest = self.spool / name

        def start_page_server(sock: socket.socket) -> CriuDaemon:
            return self.runtime.criu.start_page_server(dest, sock.fileno())

        how: dict[str, Any] = (
            self._early_lazy_pages(name, str(body.job))
            if body.live
            else {"on_accept": start_page_server, "pages_first": True}
        )
        inc = await asyncio.to_thread(
            Incoming, self.address, body.source, dest, self.CLAIM_TIMEOUT, **how
        )
        self.incoming[name] = inc
        asyncio.get_running_loop().call_later(self.CLAIM_TIMEOUT, self.drop, name, inc)
        return inc.invitation.to_wire()

    def _early_lazy_pages(self, name: str, job_id: str) -> dict[str, Any]:
        """Incoming's arguments that start a live move's lazy-pages daemon as soon
        as the source connects, if the job has no run directory here yet (else
        the restore refuses anyway, and starts its own)."""
        run_dir = self.runtime.root / job_id
        if (run_dir / "job.json").exists():
            return {}
        if not run_dir.exists():  # the daemon's work dir, and the restore's
            run_dir.mkdir(mode=0o700)
            self._run_dirs[name] = run_dir

        def start_daemon(sock: socket.socket) -> CriuDaemon:
            return self.runtime.criu.start_lazy_pages(
                self.spool / name, "", 0, ps_fd=sock.fileno(), work_dir=str(run_dir)
            )

        return {"fifos": EARLY_IMAGES, "on_accept": start_daemon}

    def drop(self, name: str, inc: Incoming | None = None) -> None:
        """Forget an unclaimed invitation (`inc`: only if it is still that one)."""
        have = self.incoming.get(name)
        if have is not None and (inc is None or have is inc):
            del self.incoming[name]
            have.close()
            run_dir = self._run_dirs.pop(name, None)
            if run_dir is not None and not (run_dir / "job.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            log.info("op=migrate.drop migration=%s: never claimed", name)

    def _claim(self, name: str) -> Incoming:
        inc = self.incoming.pop(name, None)
        self._run_dirs.pop(name, None)  # the restore's from now on
        if inc is None:
            raise NotFound(f"no migration channel for {name}: expired or never made")
        return inc

    async def arrived(self, name: str, sums: dict[str, str]) -> Path:
        """Where a cold move's images are, once whole and checked against `sums`
        (from the control channel)."""
        inc = self._claim(name)
        sock = await asyncio.to_thread(inc.wait, sums, self.CONNECT_TIMEOUT)
        sock.close()
        return inc.dest

    async def restore(
        self, job_id: str, name: str, local: Path, sums: dict[str, str]
    ) -> tuple[LiveTarget, float]:
        """Restore a live move's job here from what the source sent (checked
        against `sums`, from the control channel); the job runs on return, its
        pages following on the channel. Also the seconds spent waiting for the
        images to be whole."""
        inc = self._claim(name)
        t = time.perf_counter()
        channel = await asyncio.to_thread(inc.wait, sums, self.CONNECT_TIMEOUT)
        waited = time.perf_counter() - t
        target = await asyncio.to_thread(
            LiveTarget.begin,
            self.runtime,
            job_id,
            local,
            PageServer(inc.source, 0),  # where the pages come from, on `channel`
            channel,
            inc.daemon,
        )
        return target, waited

    # --- source ---------------------------------------------------------------------

    async def dump_live(
        self, job_id: str, dest: Path, invitation: dict[str, Any]
    ) -> tuple[LiveSource, dict[str, str]]:
        """Connect to the target (before the freeze), then freeze, dump and send
        the images on that connection in the same worker trip (no hop through
        the event loop while the job is frozen). The images' digests. On failure
        the job runs on here."""
        channel = await self._connect(invitation)

        def begin() -> tuple[LiveSource, dict[str, str]]:
            source = LiveSource.begin(
                self.runtime, job_id, dest, self.address, None, channel
            )
            try:
                return source, source.send_images()
            except BaseException:
                source.abort()
                raise

        try:
            source, sums = await asyncio.to_thread(begin)
        except BaseException:
            channel.close()
            raise
        self.sources[job_id] = source
        return source, sums

    async def _connect(self, invitation: dict[str, Any]) -> socket.socket:
        return await asyncio.to_thread(
            connect,
            Invitation.from_wire(invitation),
            self.address,
            self.CONNECT_TIMEOUT,
        )

    async def dump_cold(
        self, job_id: str, dest: Path, invitation: dict[str, Any]
    ) -> tuple[Manifest, dict[str, str]]:
        """Connect to the target (before the freeze), then freeze, dump (the pages
        to the target's page server) and send the other images, in one worker
        trip: the job stays frozen (held) until settle. The images' digests. On
        failure the job runs on here."""
        channel = await self._connect(invitation)

        def dump_and_send() -> tuple[Manifest, dict[str, str]]:
            manifest = self.runtime.checkpoint(
                job_id, dest, leave_running=True, hold=True, ps_fd=channel.fileno()
            )
            try:
                return manifest, send_manifest_files(channel, dest, manifest)
            except BaseException:
                self.runtime.settle(job_id, moved=False)
                raise

        try:
            return await asyncio.to_thread(dump_and_send)
        finally:
            channel.close()

    async def settle(self, job_id: str, *, moved: bool) -> bool:
        """Commit or abort the move out of `job_id`; False if none is under way."""
        source = self.sources.pop(job_id, None)
        if source is None:
            return False
        await asyncio.to_thread(source.commit if moved else source.abort)
        return True
