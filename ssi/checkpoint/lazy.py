"""CRIU's long-lived side: a lazy dump that serves its pages until a `criu
lazy-pages` daemon has them all (LazyDump), and the CRIU processes that take pages
(CriuDaemon: that daemon, or a `criu page-server` receiving a cold move's pages).
They are started by Criu.dump_lazy / Criu.lazy_pages / Criu.start_page_server
(ssi.checkpoint.criu)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycriu import rpc_pb2 as rpc

from ssi.checkpoint.errors import CriuError
from ssi.checkpoint.outcome import (
    SWRK_EXIT_TIMEOUT,
    DumpResult,
    last_line,
    log_errors,
    stats_of,
)
from ssi.checkpoint.swrk import Swrk

if TYPE_CHECKING:
    from ssi.checkpoint.criu import Criu

log = logging.getLogger(__name__)


def page_server_config(work_dir: Path, address: str | None, fd: int | None) -> Path:
    """A CRIU RPC configuration file for a lazy dump's page server: serve on the
    connected socket `fd` (listen on nothing), else listen on `address` only.
    CRIU 4.1.1's RPC copies ps.address and ps.fd for a plain page server but not
    for a lazy dump (cr-service.c, setup_opts_from_req), which then binds every
    address; options of the request's config_file are applied after the RPC's,
    and `ps-socket` and `address` there are honoured (as on the command line)."""
    if fd is not None:
        line = f"ps-socket {int(fd)}"
    else:
        line = f"address {ipaddress.ip_address(address or '')}"  # ValueError if not
    conf = work_dir / "lazy-dump.conf"
    conf.write_text(line + "\n")
    return conf


# Page server protocol (criu/page-xfer.c): struct page_server_iov {u32 cmd, nr_pages;
# u64 vaddr, dst_id}; PS_IOV_CLOSE ends a lazy dump's page server cleanly.
_PS_IOV = struct.Struct("=IIQQ")
_PS_IOV_CLOSE = 0x1023


class LazyDump:
    """A running post-copy dump (Criu.dump_lazy): CRIU on its RPC socket, answered
    from a thread of ours (notifications), until its final answer."""

    def __init__(
        self,
        criu: Criu,
        req: Any,
        images_dir: Path,
        log_path: Path,
        work_dir: str | None,
        port: int,
        on_ready: Callable[[], None] | None = None,
        ps_fd: int | None = None,
    ) -> None:
        self.images_dir = images_dir
        self._on_ready = on_ready
        self._ps_fd = ps_fd
        self.log_path = log_path
        self.port = port
        self.started = time.perf_counter()
        self.ready_seconds: float | None = None  # start to "images whole, serving"
        self.seconds: float | None = None  # start to CRIU's final answer
        self._ready = threading.Event()
        self._done = threading.Event()
        self._resp: Any = None
        self._failure: str | None = None
        self._criu = criu
        self._dirs: list[int] = []
        try:
            fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._dirs.append(fd)
            req.opts.images_dir_fd = fd
            if work_dir:
                wfd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._dirs.append(wfd)
                req.opts.work_dir_fd = wfd
        except OSError as e:
            self._close_dirs()
            raise CriuError(
                "dump", f"images directory {images_dir}: {e.strerror}"
            ) from None
        try:
            self._swrk = Swrk.start(
                criu.binary,
                criu.netns,
                (*self._dirs, *(() if ps_fd is None else (ps_fd,))),
            )
        except OSError as e:
            self._close_dirs()
            raise CriuError("dump", f"cannot start {criu.binary} swrk: {e}") from None
        self._swrk.send(req)
        self._thread = threading.Thread(
            target=self._converse, name=f"criu-lazy-dump-{port}", daemon=True
        )
        self._thread.start()

    def _converse(self) -> None:
        try:
            while True:
                resp = self._swrk.recv()
                if resp.type != rpc.NOTIFY:
                    self._resp = resp
                    return
                ok = True
                if resp.notify.script == "status-ready":
                    ok = self._ready_now()
                ack = rpc.criu_req()
                ack.type = rpc.NOTIFY
                ack.notify_success = ok
                self._swrk.send(ack)
        except OSError as e:
            self._failure = f"RPC with CRIU failed: {e}"
        finally:
            self.seconds = time.perf_counter() - self.started
            status = self._swrk.close()
            if self._resp is None and self._failure:
                self._failure += f" ({status})"
            self._close_dirs()
            self._done.set()
            self._ready.set()  # wake a waiter: it sees the failure

    def _ready_now(self) -> bool:
        """Images whole, server listening, the tree still held by CRIU: run the
        caller's hook before CRIU goes on (a failing hook fails the dump, and CRIU
        lets the tree run on)."""
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception as e:  # noqa: BLE001 (any failure fails the dump)
                self._failure = f"the ready hook failed: {e}"
                return False
        self.ready_seconds = time.perf_counter() - self.started
        self._ready.set()
        return True

    def _close_dirs(self) -> None:
        for fd in self._dirs:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dirs = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait_ready(self, timeout: float) -> float:
        """Block until the images are whole and the page server listens; seconds
        since the start. CriuError if the dump failed (the tree then runs on, as
        before: CRIU left it), TimeoutError after `timeout` s."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"lazy dump not serving pages after {timeout}s")
        if self.ready_seconds is None:
            self._raise()
        return self.ready_seconds or 0.0

    def wait(self, timeout: float | None = None) -> DumpResult:
        """Block until CRIU has served every page (or failed: CriuError); the
        tree is then left alive but still frozen by the caller's cgroup."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"lazy dump still serving pages after {timeout}s")
        resp = self._resp
        if resp is None or not resp.success:
            self._raise()
        stats = stats_of(self.images_dir / "stats-dump", "dump")
        return DumpResult(self.images_dir, self.log_path, self.seconds or 0.0, stats)

    def _raise(self) -> None:
        resp = self._resp
        raise CriuError(
            "dump",
            f"lazy dump failed{': ' + self._failure if self._failure else ''}",
            errors=log_errors(self.log_path) or last_line(self.log_path),
            errno=int(resp.cr_errno)
            if resp is not None and resp.HasField("cr_errno")
            else None,
            errmsg=resp.cr_errmsg
            if resp is not None and resp.HasField("cr_errmsg")
            else None,
            log_path=self.log_path,
            images_dir=self.images_dir,
        )

    def close_page_server(self, address: str, timeout: float = 10.0) -> None:
        """Abort: end the page server as a lazy-pages daemon would when done (one
        PS_IOV_CLOSE), so that CRIU cures the tree and leaves it (frozen by the
        caller's cgroup) instead of waiting for a daemon that will not come. A
        daemon that is connected already keeps the server busy: kill it first
        (CRIU then sees its connection close and ends too)."""
        if self.done:
            return
        if self._ps_fd is not None:  # its end of the socket reads EOF: CRIU is done
            with contextlib.suppress(OSError):
                with socket.socket(fileno=os.dup(self._ps_fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
        else:
            with contextlib.suppress(OSError):
                with socket.create_connection((address, self.port), timeout) as s:
                    s.sendall(_PS_IOV.pack(_PS_IOV_CLOSE, 0, 0, 0))
                    s.recv(4)
        if not self._done.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """Last resort: SIGKILL CRIU (the tree may keep CRIU's parasite mapped)."""
        with contextlib.suppress(OSError):
            os.kill(self._swrk.pid, signal.SIGKILL)
        self._done.wait(SWRK_EXIT_TIMEOUT)


class CriuDaemon:
    """A `criu lazy-pages` (Criu.lazy_pages) or `criu page-server`
    (Criu.start_page_server) process of ours: `op` names which."""

    def __init__(
        self,
        pid: int,
        log_path: Path,
        status_fd: int = -1,
        images: Path | None = None,
        op: str = "lazy-pages",
    ) -> None:
        self.pid = pid
        self.op = op
        self.log_path = log_path
        self.images = images
        self._status_fd = status_fd  # readable once it listens for the restore
        self.started = time.perf_counter()
        self.seconds: float | None = None  # start to exit
        self.returncode: int | None = None
        self.status = "running"

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the daemon's exit (every page delivered or taken, when 0); its exit
        code (negative: killed by that signal). TimeoutError after `timeout` s."""
        if self.returncode is not None:
            return self.returncode
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            fd = -1
        try:
            if fd >= 0 and not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError(f"{self.op} daemon {self.pid} runs after {timeout}s")
            _, st = os.waitpid(self.pid, 0)
        except ChildProcessError:
            st = 0xFF00  # reaped elsewhere: unknown
        finally:
            if fd >= 0:
                os.close(fd)
        self.seconds = time.perf_counter() - self.started
        self.returncode = os.waitstatus_to_exitcode(st)
        rc = self.returncode
        self.status = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return rc

    def wait_started(self, timeout: float) -> None:
        """Block until it listens for the restore; CriuError (and killed) if it
        ended or did not get there within `timeout` s. Idempotent."""
        if self._status_fd < 0:
            return
        try:
            ready = select.select([self._status_fd], [], [], timeout)[0]
            got = os.read(self._status_fd, 1) if ready else b""
        finally:
            os.close(self._status_fd)
            self._status_fd = -1
        if not got:
            self.kill()
            raise CriuError(
                self.op,
                f"{self.op} daemon did not start ({self.status})",
                errors=log_errors(self.log_path) or last_line(self.log_path),
                log_path=self.log_path,
                images_dir=self.images,
            )

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait(SWRK_EXIT_TIMEOUT)
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1

    def error(self) -> CriuError:
        """What went wrong, as a CriuError (call after a non-zero wait())."""
        return CriuError(
            self.op,
            f"{self.op} daemon ended before every page arrived ({self.status})",
            errors=log_errors(self.log_path) or last_line(self.log_path),
            log_path=self.log_path,
        )
