"""A migration's own TCP connection, made before the freeze, on which CRIU's page
traffic and the other images travel: handed to both CRIUs as their page-server
socket (`--ps-socket`), so that no CRIU listens at all.

    target (agent.move_prepare)       coordinator             source (agent.migrate_out)
    Incoming: listen on its cluster ── Invitation ──────────▶ connect(invitation)
      address, one connection,         (address, port,          from its cluster
      from the source's address,        one-time token)         address, token first
      starting with the token ◀──────────────────────────────── (before the freeze)

  live (post-copy):                                          freeze, CRIU lazy dump
      images written, digest each ◀──── send_images ────────── (ps_fd: this socket)
      criu lazy-pages --ps-socket ◀──── pages on demand ─────── CRIU page server
  cold:                                                      freeze, CRIU dump
      criu page-server --ps-socket ◀─── every page ──────────── (ps_fd: this socket)
      (exits at the dump's end)
      images written, digest each ◀──── send_images ────────── the other images
  then agent.restore: digests == the manifest's (CURVE control channel, via the
      coordinator); cold: the pages' total size == what the dump sent

Integrity: the images are checked against digests that came over the authenticated
control channel; the token keeps a third party from taking the source's place, the
peer address check from taking the target's. The pages themselves travel in clear,
as with CRIU's own page server (CRIU's TLS needs a GnuTLS build and certificates),
and are checked by size (cold) or by CRIU's own accounting (live).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssi.checkpoint import CriuDaemon
from ssi.digest import TreeHash, digest_file
from ssi.jobs.manifest import MANIFEST, Manifest
from ssi.proto.errors import BadRequest, Denied, Timeout, Unavailable

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
TOKEN_TIMEOUT = 1.0  # seconds a connection has to send the token
# How long sent data may stay unacknowledged (or the peer's window shut) before
# the connection fails: a peer that died, or whose process holding the socket
# takes nothing any more, must not hold a frozen job and a CRIU blocked in a
# send (which has no timeout of its own) for ever.
STALL_TIMEOUT_MS = 20_000
_HEAD = struct.Struct("!HQ")  # name length (0: no more files), file size
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Invitation:
    """Where and how the source connects: the target's address and port, and the
    token it must send first (hex)."""

    address: str
    port: int
    token: str

    def to_wire(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "token": self.token}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Invitation:
        return cls(str(d["address"]), int(d["port"]), str(d["token"]))


def connect(invitation: Invitation, bind: str, timeout: float) -> socket.socket:
    """The source's end: connected from `bind` (its cluster address, which the
    target checks), the token sent. Blocking (as CRIU needs it). Unavailable."""
    try:
        sock = socket.create_connection(
            (invitation.address, invitation.port), timeout, source_address=(bind, 0)
        )
        _bound_stalls(sock)
        sock.sendall(bytes.fromhex(invitation.token))
    except (OSError, ValueError) as e:
        raise Unavailable(
            f"move channel to {invitation.address}:{invitation.port}: {e}"
        ) from None
    sock.setblocking(True)
    return sock


def send_manifest_files(
    sock: socket.socket, directory: Path, manifest: Manifest
) -> dict[str, str]:
    """Send the files `manifest` (that of `directory`) lists and manifest.json;
    their digests (name → hex, ssi.digest), for the target to check them against
    (through the control channel). Unavailable if the connection fails."""
    sums = manifest.checksums()
    sums[MANIFEST] = digest_file(directory / MANIFEST)
    try:
        send_images(sock, directory, sorted(sums))
    except OSError as e:
        raise Unavailable(f"images to the target: {e}") from None
    return sums


def send_images(sock: socket.socket, directory: Path, names: list[str]) -> int:
    """Send the files `names` of `directory`, then the end mark; bytes sent."""
    total = 0
    for name in names:
        with open(directory / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = name.encode()
            sock.sendall(_HEAD.pack(len(raw), size) + raw)
            if size:
                sock.sendfile(f, 0, size)
            total += size
    sock.sendall(_HEAD.pack(0, 0))
    # Push the tail out now: CRIU's page server may have corked the socket already
    # (it does once it serves), which would hold it for 200 ms. Setting NODELAY
    # pushes pending data even through the cork, as CRIU does after each reply.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return total


class Incoming:
    """The target's end: accepts one connection from `source` that starts with
    the token, then writes the images it brings into `dest` (made here, must not
    exist), hashing each. A failed or abandoned transfer leaves nothing."""

    def __init__(
        self,
        address: str,
        source: str,
        dest: Path,
        timeout: float,
        *,
        fifos: tuple[str, ...] = (),
        on_accept: Callable[[socket.socket], CriuDaemon] | None = None,
        pages_first: bool = False,
    ) -> None:
        """Listen on `address` (this node's cluster address), port chosen by the
        kernel. `timeout`: seconds for the source to connect and for each read.
        fifos: images made FIFOs in `dest` until they arrive, so that a reader may
        open them early and block until then (then they are regular files).
        on_accept(socket): run once the source is connected, before the images
        come; what it returns (a lazy-pages daemon reading `dest`) is .daemon,
        killed by close() unless wait() handed it over.
        pages_first: what on_accept returns is a page server writing into `dest`
        (a cold move): the images are read once it ended well."""
        self.source = source
        self.dest = Path(dest)
        self.timeout = timeout
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.digests: dict[str, str] = {}
        self.bytes = 0
        self.sock: socket.socket | None = None
        self.daemon: CriuDaemon | None = None
        self._on_accept = on_accept
        self._pages_first = pages_first
        self._error: Exception | None = None
        self._done = threading.Event()
        self._closed = False
        self._fifos: dict[str, int] = {}  # name → our end (read-write: never blocks)
        self.dest.mkdir(mode=0o700)
        try:
            for name in fifos:
                os.mkfifo(self.dest / name, 0o600)
                self._fifos[name] = os.open(
                    self.dest / name, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
                )
            self._listener = socket.create_server((address, 0))
        except OSError:
            self._close_fifos()
            shutil.rmtree(self.dest, ignore_errors=True)
            raise
        self.invitation = Invitation(
            address, self._listener.getsockname()[1], self.token.hex()
        )
        threading.Thread(
            target=self._run, name=f"move-incoming-{dest.name}", daemon=True
        ).start()

    def _run(self) -> None:
        try:
            sock = self._accept()
            self.sock = sock
            if self._pages_first:
                self._take_pages(sock)
            elif self._on_accept is not None:
                try:
                    self.daemon = self._on_accept(sock)
                except Exception as e:  # noqa: BLE001 (the restore starts its own)
                    log.warning("op=migrate.channel early start failed: %s", e)
            self._receive(sock)
            sock.setblocking(True)  # CRIU's now
        except Exception as e:  # noqa: BLE001 (the waiter gets it)
            self._error = e
            self.close()
        finally:
            self._done.set()

    def _accept(self) -> socket.socket:
        """The first connection from the source that sends the token; others are
        closed at once (and logged)."""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"the source did not connect within {self.timeout}s")
                self._listener.settimeout(left)
                try:
                    conn, (host, port) = self._listener.accept()[:2]
                except TimeoutError:
                    continue
                conn.settimeout(min(left, TOKEN_TIMEOUT))
                got = b""
                with contextlib.suppress(OSError, Unavailable):  # a silent intruder
                    got = _recv_exact(conn, TOKEN_BYTES)
                if host == self.source and hmac.compare_digest(got, self.token):
                    conn.settimeout(self.timeout)
                    _bound_stalls(conn)
                    return conn
                log.warning(
                    "op=migrate.channel refused %s:%s (want %s with the token)",
                    host, port, self.source,
                )  # fmt: skip
                conn.close()
        finally:
            self._listener.close()

    def _take_pages(self, sock: socket.socket) -> None:
        """Run the page server on the connection until the dump closed its session
        (it fails if the source goes away before that)."""
        assert self._on_accept is not None
        sock.setblocking(True)  # CRIU's: a timeout would make it non-blocking
        self.daemon = self._on_accept(sock)
        if self.daemon.wait() != 0:
            raise self.daemon.error()
        sock.settimeout(self.timeout)

    def _receive(self, sock: socket.socket) -> None:
        while True:
            n, size = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
            if n == 0:
                return
            name = _recv_exact(sock, n).decode(errors="replace")
            if not _NAME.match(name) or name in self.digests:
                raise BadRequest(f"move channel: bad file name {name!r}")
            fifo = self._fifos.pop(name, None)
            target = self.dest / (name + ".part" if fifo is not None else name)
            h = TreeHash()
            fd = os.open(
                target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            try:
                left = size
                while left:
                    data = sock.recv(min(left, _CHUNK))
                    if not data:
                        raise Unavailable("move channel: the source went away")
                    h.update(data)
                    os.write(fd, data)
                    left -= len(data)
            finally:
                os.close(fd)
            if fifo is not None:
                _fill_fifo(fifo, target, self.dest / name)
            self.digests[name] = h.hexdigest()
            self.bytes += size

    def wait(self, expected: dict[str, str], timeout: float) -> socket.socket:
        """Once every image arrived: the socket, for CRIU (`--ps-socket`), if the
        images are exactly `expected` (name → digest, from the control channel);
        else Denied (and everything dropped). Timeout, or what the transfer hit."""
        if not self._done.wait(timeout):
            self.close()
            raise Timeout(f"the move's images not arrived after {timeout}s")
        if self._error is not None or self.sock is None:
            raise self._error or Unavailable("move channel closed")
        if self.digests != expected:
            bad = sorted(set(self.digests.items()) ^ set(expected.items()))
            self.close()
            raise Denied(f"the move's images differ from their manifest: {bad[:3]}")
        self._closed = True  # the caller's now: socket, images, daemon
        return self.sock

    def close(self) -> None:
        """Drop the connection and the images (before or instead of a restore).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept
        with contextlib.suppress(OSError):
            self._listener.close()
        self._close_fifos()
        if self.daemon is not None:
            self.daemon.kill()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        shutil.rmtree(self.dest, ignore_errors=True)

    def _close_fifos(self) -> None:
        """A reader blocked on a FIFO not filled reads its end and gives up."""
        for fd in self._fifos.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fifos.clear()


def _fill_fifo(fifo: int, data_file: Path, path: Path) -> None:
    """The image that arrived in `data_file` replaces the FIFO at `path` (a later
    open gets the file), and goes into the FIFO for a reader that opened it
    already; then our end closes (that reader sees the end of the image)."""
    try:
        data = data_file.read_bytes()
        os.rename(data_file, path)
        if len(data) > 65536:
            fcntl.fcntl(fifo, fcntl.F_SETPIPE_SZ, len(data))  # one write, no wait
        view = memoryview(data)
        while view:
            view = view[os.write(fifo, view) :]
    finally:
        os.close(fifo)


def _bound_stalls(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, STALL_TIMEOUT_MS)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise Unavailable("move channel: the peer went away")
        buf += data
    return bytes(buf)
