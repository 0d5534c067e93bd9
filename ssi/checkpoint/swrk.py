"""`criu swrk` workers: one CRIU process per request, on one end of a socketpair.

    Swrk.start(binary, netns, pass_fds)      criu swrk <fd>: fds inherited by number
    Swrk.start(..., probe=True)              criu swrk <fd> probe: the kernel probed
                                             at once, before any request
    swrk.send(req, fds) ─▶ swrk.recv() ─▶ ... ─▶ swrk.close() (CRIU exits, reaped)
    Spare(binary, netns).take()              one worker started ahead, refilled
                                             REFILL_DELAY s after its request

Why a spare: a CRIU starting up probes the kernel (kerndat) for 20-70 ms here,
because it keeps its cache of that probe only on a tmpfs /run, and this /run is
not one. A request sent to a worker started ahead skips that, and it matters most
inside a freeze (a move's dump and restore). The worker has not inherited the
fds its request names, so they go along with the request (SCM_RIGHTS), in the
order CRIU takes them: ps.fd first, then each inherit_fd (`named_fds`). Stock
CRIU can do neither: packaging/criu's patch 0006 teaches it both, and says so in
its VERSION answer's name (PROBE_AND_FDS); without it Criu keeps no spare.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from typing import Any

from pycriu import rpc_pb2 as rpc

import kernel_shim
from ssi.checkpoint.outcome import SWRK_EXIT_TIMEOUT, reap

log = logging.getLogger(__name__)

PROBE_AND_FDS = "swrk-probe-fds"  # VERSION's name from a CRIU with patch 0006


class Swrk:
    """One `criu swrk` of ours and our end of its RPC socket."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(
        cls,
        binary: str,
        netns: str | None,
        pass_fds: tuple[int, ...] = (),
        *,
        probe: bool = False,
    ) -> Swrk:
        """Start `criu swrk` (spawn_criu), `pass_fds` open in it under their
        numbers. OSError if it cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [binary, "swrk", str(theirs.fileno()), *(["probe"] if probe else [])]
        try:
            pid = spawn_criu(argv, netns, (theirs.fileno(), *pass_fds))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(pid, ours)

    def send(self, req: Any, fds: tuple[int, ...] = ()) -> None:
        """One request (or notification answer), `fds` sent along with it."""
        data = req.SerializeToString()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def recv(self) -> Any:
        """CRIU's next message: its answer, or a notification. OSError if CRIU
        closed its socket instead (ConnectionError) or sent what does not parse."""
        size = len(self.sock.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
        if size == 0:
            raise ConnectionError("CRIU closed its RPC socket without an answer")
        resp = rpc.criu_resp()
        try:
            resp.ParseFromString(self.sock.recv(size))
        except Exception as e:  # protobuf's DecodeError
            raise OSError(errno.EPROTO, f"CRIU's answer does not parse: {e}") from None
        return resp

    def close(self, timeout: float = SWRK_EXIT_TIMEOUT) -> str:
        """Close our end (CRIU exits when it reads that) and reap CRIU; how it
        ended, in words."""
        self.sock.close()
        return reap(self.pid, timeout)


def spawn_criu(argv: list[str], netns: str | None, pass_fds: tuple[int, ...]) -> int:
    """Start a CRIU process (kernel_shim.spawn: no os.fork of our threaded heap; in
    `netns` when set, stdio on /dev/null, `pass_fds` open under their numbers); its
    PID. OSError if it cannot start."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return kernel_shim.spawn(
            argv,
            netns=netns,
            stdin=null,
            stdout=null,
            stderr=null,
            pass_fds=pass_fds,
            new_session=False,
        )
    finally:
        os.close(null)


def named_fds(req: Any) -> tuple[int, ...]:
    """The fds a request names, in the order CRIU takes them from those sent with
    it (patch 0006): the page server's socket (not read by a lazy dump), then
    each inherit_fd."""
    opts = req.opts
    first: tuple[int, ...] = ()
    if opts.HasField("ps") and opts.ps.HasField("fd") and not opts.lazy_pages:
        first = (opts.ps.fd,)
    return (*first, *(i.fd for i in opts.inherit_fd))


class Spare:
    """One worker kept started ahead for a Criu's next request.

    Taken by a request, it is refilled REFILL_DELAY s after that request ended
    (refill_later), so that the next one's probe competes for the CPU with
    neither that request (a dump's job is frozen meanwhile) nor what follows it
    at once (a move's restore on another node of the same machine). A request
    that finds none starts its own, as without a spare.

    Workers are started from a thread of the Spare's own that lives as long as
    it: a restored tree becomes the child of CRIU's parent thread (Criu.restore),
    which must not be a thread about to end.
    """

    REFILL_DELAY = 1.0  # seconds

    def __init__(self, binary: str, netns: str | None) -> None:
        self.binary = binary
        self.netns = netns
        self._worker: Swrk | None = None
        self._due: float | None = None  # time.monotonic() to start the next one
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name="criu-spare", daemon=True
        )
        self._thread.start()

    def take(self) -> Swrk | None:
        with self._cond:
            worker, self._worker = self._worker, None
        return worker

    def refill_later(self) -> None:
        self._schedule(self.REFILL_DELAY)

    def refill(self) -> None:
        """Start the spare now (in the background) if there is none."""
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        with self._cond:
            due = time.monotonic() + delay
            if self._due is None or due < self._due:
                self._due = due
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                wait = None if self._due is None else self._due - time.monotonic()
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
                self._due = None
                if self._worker is not None:
                    continue
                try:
                    self._worker = Swrk.start(self.binary, self.netns, probe=True)
                except OSError as e:  # requests start their own meanwhile
                    log.warning("op=criu.spare: cannot start %s: %s", self.binary, e)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            worker, self._worker = self._worker, None
            self._cond.notify()
        self._thread.join()
        if worker is not None:
            with contextlib.suppress(OSError):
                worker.close()
