"""The I/O of a live migration: the runtime's lazy checkpoint and restore, the page
server's port, the abort paths. See the package docstring for the flow."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from ssi.checkpoint import PAGE_SIZE, CriuDaemon, CriuError, LazyDump, PageServer
from ssi.jobs.manifest import Manifest
from ssi.jobs.runtime import JobRuntime
from ssi.migration.channel import send_manifest_files
from ssi.migration.state import LiveTunables, Phase, SourceReport, TargetReport
from ssi.proto.errors import Conflict

log = logging.getLogger(__name__)

_TRANSFERRED = re.compile(r"UFFD transferred pages: \((\d+)/(\d+)\)")


class PortPool:
    """The page-server ports of one node: a port stays taken while its dump serves."""

    def __init__(self, first: int, last: int) -> None:
        self._free = list(range(first, last + 1))
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise Conflict("no free page-server port: too many live migrations")
            return self._free.pop(0)

    def give(self, port: int) -> None:
        with self._lock:
            self._free.append(port)


_pools: dict[tuple[int, int], PortPool] = {}
_pools_lock = threading.Lock()


def _pool(ports: tuple[int, int]) -> PortPool:
    with _pools_lock:
        return _pools.setdefault(ports, PortPool(*ports))


class LiveSource:
    """The source half: the job frozen here while CRIU serves its pages."""

    def __init__(
        self,
        rt: JobRuntime,
        job_id: str,
        images_dir: Path,
        address: str,
        tunables: LiveTunables,
        manifest: Manifest,
        dump: LazyDump,
        frozen_at: float,
        channel: socket.socket | None = None,
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.images_dir = images_dir
        self.address = address
        self.tunables = tunables
        self.manifest = manifest
        self.dump = dump
        self.frozen_at = frozen_at  # time.perf_counter() of the dump's start
        self.channel = channel  # connected to the target: CRIU serves on it
        self.phase = Phase.SERVING

    @property
    def port(self) -> int:
        return self.dump.port

    def send_images(self) -> dict[str, str]:
        """Send the images and the manifest on the channel; their digests (name →
        hex), for the target to check them against (through the control channel).
        Unavailable if the connection fails."""
        assert self.channel is not None
        sums = send_manifest_files(self.channel, self.images_dir, self.manifest)
        log.info("op=migrate.live.images job=%s files=%d", self.job_id, len(sums))
        return sums

    def _give_port(self) -> None:
        if self.channel is None:
            _pool(self.tunables.ports).give(self.port)

    def _close_channel(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.close()

    @property
    def page_server(self) -> PageServer:
        """Where the target's lazy-pages daemon fetches the pages."""
        return PageServer(self.address, self.dump.port)

    @classmethod
    def begin(
        cls,
        rt: JobRuntime,
        job_id: str,
        images_dir: Path,
        address: str,
        tunables: LiveTunables | None = None,
        channel: socket.socket | None = None,
    ) -> LiveSource:
        """Freeze the job and dump it lazily into images_dir (must not exist): on
        return the images (no memory pages) are whole, to be sent to the target,
        and CRIU serves the pages on `address` (this node's cluster address),
        port .port, or on `channel` (a socket connected to the target, see
        ssi.migration.channel; then send_images() sends the images on it first).
        The job stays frozen until commit() or abort(); the channel is closed
        then. On failure the job runs on and nothing is left: CriuError,
        CheckpointFailed, Conflict."""
        t = tunables or LiveTunables()
        if channel is not None:
            frozen_at = time.perf_counter()
            m, dump = rt.checkpoint_lazy(
                job_id,
                Path(images_dir),
                port=0,
                ready_timeout=t.ready_timeout,
                ps_fd=channel.fileno(),
            )
            log.info(
                "op=migrate.live.source job=%s serving on its channel images=%sB "
                "ready=%.3fs", job_id, m.total_bytes, time.perf_counter() - frozen_at,
            )  # fmt: skip
            return cls(rt, job_id, Path(images_dir), address, t, m, dump, frozen_at,
                       channel)  # fmt: skip
        pool = _pool(t.ports)
        tried = 0
        while True:
            port = pool.take()
            frozen_at = time.perf_counter()
            try:
                m, dump = rt.checkpoint_lazy(
                    job_id,
                    Path(images_dir),
                    port=port,
                    ready_timeout=t.ready_timeout,
                    address=address or None,
                )
            except CriuError as e:
                pool.give(port)
                tried += 1
                in_use = any("bind" in x.lower() or "in use" in x for x in e.errors)
                if in_use and tried < 3:
                    log.info("op=migrate.live job=%s port %s busy: next", job_id, port)
                    continue
                raise
            except BaseException:
                pool.give(port)
                raise
            break
        log.info(
            "op=migrate.live.source job=%s serving %s:%s images=%sB ready=%.3fs",
            job_id, address, port, m.total_bytes, time.perf_counter() - frozen_at,
        )  # fmt: skip
        return cls(rt, job_id, Path(images_dir), address, t, m, dump, frozen_at)

    def wait_pages(self, timeout: float | None = None) -> SourceReport:
        """Block until CRIU has served every page (the target's daemon is done).
        CriuError if the page server failed; TimeoutError."""
        res = self.dump.wait(
            self.tunables.pages_timeout if timeout is None else timeout
        )
        return SourceReport(
            job_id=self.job_id,
            port=self.port,
            dump_seconds=self.dump.ready_seconds or 0.0,
            serve_seconds=res.seconds,
            image_bytes=self.manifest.total_bytes,
        )

    def commit(self, timeout: float | None = None) -> SourceReport:
        """The target confirmed (job running there, every page arrived): kill the
        frozen copy here (settle moved) and remove the images. If CRIU has not
        ended its page server by `timeout`, it is ended and the copy killed all
        the same: the target has everything."""
        if self.phase is not Phase.SERVING:
            raise Conflict(f"live migration of {self.job_id} is {self.phase.value}")
        try:
            report = self.wait_pages(timeout)
        except (CriuError, TimeoutError) as e:
            log.warning("op=migrate.live.commit job=%s page server: %s", self.job_id, e)
            self.dump.close_page_server(self.address, self.tunables.close_timeout)
            report = SourceReport(
                self.job_id, self.port, self.dump.ready_seconds or 0.0,
                time.perf_counter() - self.frozen_at, self.manifest.total_bytes,
            )  # fmt: skip
        finally:
            self._give_port()
            self._close_channel()
        self.rt.settle(self.job_id, moved=True)
        self.phase = Phase.COMMITTED
        shutil.rmtree(self.images_dir, ignore_errors=True)
        log.info("op=migrate.live.commit job=%s %s", self.job_id, report)
        return report

    def abort(self) -> None:
        """Before the target confirmed: end CRIU's page server, thaw the job here
        (it runs on as before), remove the images. Idempotent."""
        if self.phase is not Phase.SERVING:
            return
        try:
            self.dump.close_page_server(self.address, self.tunables.close_timeout)
        finally:
            self._give_port()
            self._close_channel()
            self.rt.settle(self.job_id, moved=False)
            self.phase = Phase.ABORTED
            shutil.rmtree(self.images_dir, ignore_errors=True)
        log.info("op=migrate.live.abort job=%s: runs on here", self.job_id)


class LiveTarget:
    """The target half: the job restored here, its pages arriving."""

    def __init__(
        self,
        rt: JobRuntime,
        job_id: str,
        images_dir: Path,
        daemon: CriuDaemon,
        pid: int,
        began: float,
        restore_seconds: float,
        channel: socket.socket | None = None,
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.images_dir = images_dir
        self.daemon = daemon
        self.pid = pid
        self.began = began
        self.restore_seconds = restore_seconds
        self.channel = channel  # the daemon's page-server socket: ours to close
        self.confirmed = False

    @classmethod
    def begin(
        cls,
        rt: JobRuntime,
        job_id: str,
        images_dir: Path,
        source: PageServer,
        channel: socket.socket | None = None,
        daemon: CriuDaemon | None = None,
    ) -> LiveTarget:
        """Restore the job from images_dir (LiveSource's images, pushed here) with
        its pages fetched from `source` (LiveSource.page_server), or on `channel`
        (Incoming.wait's socket, whose images arrived checked: not hashed again):
        returns once the job runs here. Call from a long-lived thread (see
        Criu.restore). daemon: a lazy-pages daemon started early for these
        images (see ssi.node.moves). On failure nothing of the job is left here (the
        channel closed, the daemon killed): CriuError, CorruptCheckpoint,
        Conflict."""
        began = time.perf_counter()
        if channel is not None:
            source = PageServer(source.address, source.port, channel.fileno())
        try:
            job, daemon = rt.restore_lazy(
                job_id,
                Path(images_dir),
                source,
                verified=channel is not None,
                daemon=daemon,
            )
        except BaseException:
            if daemon is not None:
                daemon.kill()
            if channel is not None:
                channel.close()
            raise
        took = time.perf_counter() - began
        log.info(
            "op=migrate.live.target job=%s pid=%s from %s:%s restore=%.3fs",
            job_id, job.init_pid, source.address, source.port, took,
        )  # fmt: skip
        return cls(
            rt, job_id, Path(images_dir), daemon, job.init_pid, began, took, channel
        )

    def wait_pages(self, timeout: float = 600.0) -> TargetReport:
        """Block until the last page has arrived (the daemon exited 0): the moment
        to confirm to the source. If the daemon fails, the job here lacks memory:
        it is killed (abort) and CriuError raised. TimeoutError leaves it as is."""
        rc = self.daemon.wait(timeout)
        self._close_channel()
        if rc != 0:
            err = self.daemon.error()
            self.abort()
            raise err
        self.confirmed = True
        shutil.rmtree(self.images_dir, ignore_errors=True)
        report = TargetReport(
            job_id=self.job_id,
            pid=self.pid,
            restore_seconds=self.restore_seconds,
            pages_seconds=time.perf_counter() - self.began,
            page_bytes=page_bytes(self.daemon.log_path),
        )
        log.info("op=migrate.live.pages job=%s %s", self.job_id, report)
        return report

    def abort(self) -> None:
        """Kill the daemon and the job restored here, forget it, remove the images
        (before the confirmation: the source resumes its copy)."""
        self.daemon.kill()
        self._close_channel()
        with contextlib.suppress(Exception):
            self.rt.forget(self.job_id, kill=True)
        shutil.rmtree(self.images_dir, ignore_errors=True)
        log.info("op=migrate.live.target_abort job=%s", self.job_id)

    def _close_channel(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.close()


def page_bytes(log_path: Path) -> int:
    """Bytes the lazy-pages daemon copied in, from its log (one line per process)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(int(m.group(1)) for m in _TRANSFERRED.finditer(text)) * PAGE_SIZE
