"""The node-local transport: clients on this machine talk to ssid over a unix stream
socket; who they are comes from the kernel (SO_PEERCRED), not from what they say.

    ssi CLI ── LocalClient (blocking) ──┐
    ssi.client ── AsyncLocalClient ─────┤ /run/ssi/ssid.sock (0666)
                                        ▼
                  LocalServer ── handler(env, LocalPeer(uid, gid, pid))

A frame is a 4-byte big-endian length and the codec's bytes (Envelope, then Reply).
The server overwrites the envelope's uid/gid with the caller's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ssi.proto.codec import DEFAULT_MAX_SIZE, decode_reply, encode_envelope
from ssi.proto.errors import (
    Conflict,
    MessageTooLarge,
    ProtocolError,
    SsiError,
    Timeout,
    Unavailable,
    from_wire,
)
from ssi.proto.messages import PROTOCOL_VERSION, Envelope, Reply, Request
from ssi.rpc.base import (
    Dispatcher,
    Handler,
    LocalPeer,
    PendingCalls,
    Rejected,
    error_reply,
    new_request_id,
    result_of,
)

__all__ = [
    "DEFAULT_SOCKET",
    "LocalServer",
    "LocalClient",
    "AsyncLocalClient",
    "LocalPeer",
    "peer_credentials",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_SOCKET = "/run/ssi/ssid.sock"
_LEN = struct.Struct(">I")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> LocalPeer:
    """The credentials the kernel recorded for the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return LocalPeer(uid=uid, gid=gid, pid=pid)


def _not_running(path: str, why: str) -> Unavailable:
    return Unavailable(
        f"ssid is not running on this node ({why}): start it with "
        "`systemctl start ssid`, or form a local cluster with "
        "`ssi cluster up --local 3`",
        details={"socket": path},
    )


def _frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


class LocalServer:
    """Serves `handlers` on a unix socket at `path` (parent created, socket mode
    0666: authorization is the handlers' business, from `LocalPeer`).

    `start()` refuses (Conflict) when a live ssid already serves `path` — a lock file
    `path + ".lock"` held for the server's life tells — and replaces a stale socket
    left by a dead one. Oversized or undecodable frames get an error reply; an
    oversized one also closes that connection (the stream cannot be resynchronized).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handlers: Mapping[str, Handler],
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        mode: int = 0o666,
        max_inflight: int = 64,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.max_size = max_size
        self.max_inflight = max_inflight  # per connection
        self.dispatcher = Dispatcher(handlers, max_size=max_size, where=f"local {path}")
        self._server: asyncio.base_events.Server | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._clear_stale()
            self._server = await asyncio.start_unix_server(
                self._connection, path=str(self.path), limit=64 * 1024
            )
            os.chmod(self.path, self.mode)
            self._inode = self.path.stat().st_ino
        except BaseException:
            await self.close()
            raise
        log.info("local socket %s ready", self.path)

    def _take_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise Conflict(
                f"another ssid (pid {holder or '?'}) already serves {self.path}: "
                "stop it first (`systemctl stop ssid`)",
                details={"socket": str(self.path)},
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _clear_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise Conflict(f"{self.path} exists and is not a socket: move it away")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:  # someone answers without holding the lock: do not steal the socket
            pid = peer_credentials(probe).pid
            raise Conflict(
                f"a live process (pid {pid}) serves {self.path}: stop it first",
                details={"socket": str(self.path), "pid": pid},
            )
        finally:
            probe.close()
        log.info("replacing stale socket %s", self.path)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def close(self) -> None:
        """Stop serving: close connections, cancel requests, remove the socket."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:  # still ours
                    self.path.unlink()
            self._inode = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._track(current)
        self._writers.add(writer)
        write_lock = asyncio.Lock()
        inflight: set[asyncio.Task[None]] = set()

        async def send(data: bytes) -> None:
            async with write_lock:
                writer.write(_frame(data))
                await writer.drain()

        async def serve(env: Envelope, peer: LocalPeer) -> None:
            reply = await self.dispatcher.run(env, peer)
            with contextlib.suppress(ConnectionError):
                await send(reply)

        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
            while True:
                header = await reader.readexactly(_LEN.size)
                (size,) = _LEN.unpack(header)
                if size > self.max_size:
                    log.warning(
                        "local %s: %d-byte frame from uid=%d pid=%d over the cap",
                        self.path,
                        size,
                        peer.uid,
                        peer.pid,
                    )
                    err = MessageTooLarge(
                        f"message of {size} bytes exceeds the {self.max_size}-byte cap"
                    )
                    await send(error_reply("", err, self.max_size))
                    return
                data = await reader.readexactly(size)
                decoded = self.dispatcher.decode(data, peer)
                if isinstance(decoded, Rejected):
                    await send(decoded.reply)
                    continue
                env = msgspec.structs.replace(decoded, uid=peer.uid, gid=peer.gid)
                if len(inflight) >= self.max_inflight:
                    busy = Unavailable(
                        "too many requests in progress on this connection"
                    )
                    await send(error_reply(env.id, busy, self.max_size))
                    continue
                task = asyncio.get_running_loop().create_task(serve(env, peer))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                self._track(task)  # runs to its end even if the caller goes away
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("local %s: connection failed", self.path)
        finally:
            self._writers.discard(writer)
            writer.close()


class LocalClient:
    """A blocking client of the local ssid, for the CLI. One request at a time.
    Each call uses its own connection, unless the client is used as a context
    manager (`with LocalClient(path) as c:`), which keeps one open until exit.

    `call` raises the reply's typed SsiError; `Unavailable` (with what to do) when
    no ssid listens at `path`; `Timeout` after the timeout (the connection is then
    dropped, the next call opens a fresh one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SOCKET,
        timeout: float = 30.0,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.max_size = max_size
        self._sock: socket.socket | None = None
        self._keep = False

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise _not_running(self.path, f"no socket at {self.path}") from None
        except ConnectionRefusedError:
            sock.close()
            raise _not_running(
                self.path, f"the socket at {self.path} refuses connections"
            ) from None
        except PermissionError:
            sock.close()
            raise Unavailable(
                f"cannot reach ssid at {self.path}: permission denied",
                details={"socket": self.path},
            ) from None
        except TimeoutError:
            sock.close()
            raise Timeout(f"ssid at {self.path} does not accept connections") from None
        self._sock = sock
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LocalClient:
        self._keep = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._keep = False
        self.close()

    def call(
        self, body: Request[R], timeout: float | None = None, *, cause: str = ""
    ) -> R:
        """Send `body` to ssid and wait for the reply's value (converted to the
        request's declared result type)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        request_id = new_request_id()
        env = Envelope(
            v=PROTOCOL_VERSION,
            id=request_id,
            body=body,
            cause=cause,
            deadline=time.time() + timeout,
        )
        data = encode_envelope(env, self.max_size)
        sock = self._connect()
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(_frame(data))
            while True:
                reply = self._read_reply(sock, deadline)
                if reply.id == request_id:
                    return result_of(body, reply)
                if reply.id == "" and reply.error is not None:
                    # The server could not read our request well enough to address
                    # its answer; it is still the answer to it (one call at a time).
                    self.close()
                    raise from_wire(reply.error)
                log.debug("local client: stale reply %s dropped", reply.id)
        except TimeoutError:
            self.close()
            raise Timeout(
                f"ssid did not answer {body.op} within {timeout:g} s",
                details={"op": body.op, "socket": self.path},
            ) from None
        except (ConnectionError, BrokenPipeError, EOFError) as e:
            self.close()
            raise Unavailable(
                f"ssid at {self.path} closed the connection ({e or 'end of stream'})",
                details={"socket": self.path},
            ) from None
        except ProtocolError:
            self.close()
            raise
        except SsiError:
            raise
        except OSError as e:
            self.close()
            raise Unavailable(f"talking to ssid at {self.path}: {e}") from None
        finally:
            if not self._keep:
                self.close()

    def _read_reply(self, sock: socket.socket, deadline: float) -> Reply:
        (size,) = _LEN.unpack(self._read_exact(sock, _LEN.size, deadline))
        if size > self.max_size:
            raise MessageTooLarge(f"reply of {size} bytes exceeds the cap")
        return decode_reply(self._read_exact(sock, size, deadline), self.max_size)

    @staticmethod
    def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)


class AsyncLocalClient:
    """The asyncio client of the local ssid: concurrent calls on one connection,
    matched by id. Same errors as `LocalClient`."""

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SOCKET,
        timeout: float = 30.0,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.max_size = max_size
        self._pending = PendingCalls()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except FileNotFoundError:
                raise _not_running(self.path, f"no socket at {self.path}") from None
            except ConnectionRefusedError:
                raise _not_running(
                    self.path, f"the socket at {self.path} refuses connections"
                ) from None
            except OSError as e:
                raise Unavailable(f"cannot reach ssid at {self.path}: {e}") from None
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read(reader, writer)
            )
            return writer

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        why: SsiError = Unavailable(f"ssid at {self.path} closed the connection")
        try:
            while True:
                (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
                if size > self.max_size:
                    why = MessageTooLarge(f"reply of {size} bytes exceeds the cap")
                    return
                reply = decode_reply(await reader.readexactly(size), self.max_size)
                if reply.id == "" and reply.error is not None:
                    why = from_wire(reply.error)  # unaddressed: fails what is pending
                    return
                self._pending.resolve(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as e:
            why = e
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            self._pending.fail_all(why)

    async def call(
        self, body: Request[R], *, timeout: float | None = None, cause: str = ""
    ) -> R:
        timeout = self.timeout if timeout is None else timeout
        request_id = new_request_id()
        env = Envelope(
            v=PROTOCOL_VERSION,
            id=request_id,
            body=body,
            cause=cause,
            deadline=time.time() + timeout,
        )
        data = encode_envelope(env, self.max_size)
        try:
            async with asyncio.timeout(timeout):
                writer = await self._connect()
                fut = self._pending.add(request_id)
                writer.write(_frame(data))
                await writer.drain()
                reply = await fut
        except TimeoutError:
            raise Timeout(
                f"ssid did not answer {body.op} within {timeout:g} s",
                details={"op": body.op, "socket": self.path},
            ) from None
        except ConnectionError as e:
            raise Unavailable(
                f"ssid at {self.path} closed the connection: {e}"
            ) from None
        finally:
            self._pending.discard(request_id)
        return result_of(body, reply)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._pending.fail_all(Unavailable("client closed"))

    async def __aenter__(self) -> AsyncLocalClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
