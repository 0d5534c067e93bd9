"""ssi.ipc for Python programs on a cluster node: Transports to the node's ssid, so
MessageQueue/SemaphoreSet/SharedMemory reach cluster-wide objects.

    from ssi.ipc import client
    from ssi.ipc.api import MessageQueue
    t = client.connect()                      # this node's ssid
    q = MessageQueue.create(t, key=0x5151, mode=0o666)
    q.send(b"hello", mtype=2)                 # on any node of the cluster
    q.receive(mtype=2, timeout=5.0)

connect() picks, in a job started with --cluster-ipc ($SSI_IPC_SOCKET set), the
node's preload server (PreloadTransport: what the C interposer uses, frames of
ssi.ipc.wire, CALL op), so the job can be checkpointed and moved while it waits:
the server shuts its connections before a dump and the transport reconnects,
wherever the process then runs, and re-sends its call (same request, answered
once). Elsewhere (admin tools, processes outside jobs), ssid's local socket
(SocketTransport, `ipc.call`): each call on a connection of its own, a blocking op
waited for in rounds of `poll` seconds (ssid answers the same request again).

Both: a timeout or an Interrupt cancels the op at its home, whose answer is the
op's result if it completed first; an exception in the waiting thread
(KeyboardInterrupt) cancels too. The process is one IPC client (SEM_UNDO,
attachments): ssid ends it when the process exits; `close()` (or exit_client) ends
it earlier. After fork() the child is a new client, as Linux's SEM_UNDO wants.

Errors are OSError with the kernel's errno; TimeoutError (EAGAIN) after
`timeout`; InterruptedError (EINTR) after an interrupt; EIO when ssid is not there.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import socket
import struct
import threading
import time
from typing import Any

import msgspec

from ssi.client import socket_path
from ssi.ipc import wire
from ssi.ipc.api import Interrupt
from ssi.ipc.model import ipc_error
from ssi.ipc.remote import Result, unwrap
from ssi.proto import messages as m
from ssi.proto.errors import SsiError
from ssi.rpc.local import LocalClient

__all__ = ["SocketTransport", "PreloadTransport", "connect"]

_results = msgspec.msgpack.Decoder(Result)


def _decode_result(raw: bytes) -> Result:
    return _results.decode(raw)


class SocketTransport:
    """Transport (ssi.ipc.api) through a node's ssid."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        poll: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.path = str(path) if path is not None else socket_path()
        self.poll = poll
        self.timeout = timeout  # per round trip, beyond `poll`
        self._lock = threading.Lock()
        self._pid = -1
        self._token = ""
        self._seq = itertools.count(1)

    def _identity(self) -> tuple[str, int]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child is a client of its own
                self._pid = os.getpid()
                self._token = secrets.token_hex(8)
                self._seq = itertools.count(1)
            return self._token, next(self._seq)

    def _ask(self, body: m.Request[Any], wait: float = 0.0) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = LocalClient(
                self.path, timeout=self.timeout + wait
            ).call(body)
        except SsiError as e:
            raise ipc_error(errno.EIO, f"ssid at {self.path}: {e}") from None
        return reply

    def call(self, op: str, /, **args: Any) -> Any:
        timeout, interrupt = _call_options(op, args)
        token, seq = self._identity()
        body = m.IpcCall(name=op, args=args, client=token, request=seq)
        cancelled: list[str] = []
        lock = threading.Lock()

        def cancel(reason: str) -> dict[str, Any]:
            with lock:
                cancelled.append(reason)
            return self._ask(m.IpcCancel(client=token, request=seq, reason=reason))

        unsubscribe = None
        if interrupt is not None:
            unsubscribe = interrupt.subscribe(
                lambda: threading.Thread(
                    target=cancel, args=("interrupt",), daemon=True
                ).start()
            )
        try:
            return self._rounds(op, body, timeout, cancel)
        except BaseException as e:
            if not isinstance(e, OSError):  # KeyboardInterrupt, a handler's raise
                try:
                    cancel("interrupt")
                except OSError:
                    pass
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def _rounds(
        self, op: str, body: m.IpcCall, timeout: float | None, cancel: Any
    ) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.poll
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            reply = self._ask(m.IpcCall(
                name=body.name, args=body.args, client=body.client,
                request=body.request, wait=wait,
            ), wait)  # fmt: skip
            if reply.get("state") == "done":
                return unwrap(_decode_result(reply["result"]), op)
            if deadline is not None and time.monotonic() >= deadline:
                reply = cancel("timeout")
                return unwrap(_decode_result(reply["result"]), op)

    def close(self) -> None:
        """This process is done with cluster IPC (its SEM_UNDO applied now)."""
        self.call("ipc.exit")


class PreloadTransport:
    """Transport through the node's preload server (`address`: a path, or "@name"
    for an abstract socket): one connection per concurrent call, kept for the next
    one; a connection lost or shut is made again and the call re-sent, for up to
    `retry` seconds (then EIO)."""

    def __init__(self, address: str, *, retry: float = 600.0) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.retry = retry
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._pid = -1
        self._token = 0
        self._seq = itertools.count(1)

    def _identity(self) -> tuple[int, int]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child is a client of its own
                for sock in self._idle:
                    sock.close()
                self._idle.clear()
                self._pid = os.getpid()
                self._token = secrets.randbits(64)
                self._seq = itertools.count(1)
            return self._token, next(self._seq)

    @staticmethod
    def _read(sock: socket.socket) -> bytes:
        def exactly(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionResetError("the preload server closed")
                buf += chunk
            return bytes(buf)

        (length,) = wire.LEN.unpack(exactly(wire.LEN.size))
        if length > wire.MAX_FRAME:
            raise ConnectionResetError(f"frame of {length} bytes")
        return exactly(length)

    def _take(self, token: int) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
            hello = struct.pack("<QII", token, os.getpid(), 0)
            sock.sendall(wire.encode_request(wire.Op.HELLO, 0, hello))
            _, _, err, _ = wire.decode_reply(self._read(sock))
            if err:
                raise ConnectionRefusedError(err, "HELLO refused")
        except BaseException:
            sock.close()
            raise
        return sock

    def call(self, op: str, /, **args: Any) -> Any:
        timeout, interrupt = _call_options(op, args)
        token, seq = self._identity()
        frame = wire.encode_request(
            wire.Op.CALL, seq, wire.encode_call(op, args, timeout)
        )
        cancel_frame = wire.encode_request(wire.Op.CANCEL, 0, struct.pack("<Q", seq))
        send_lock = threading.Lock()
        current: list[socket.socket] = []
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            with send_lock:
                for sock in current:
                    try:
                        sock.sendall(cancel_frame)
                    except OSError:
                        pass  # re-sent with the call on the next connection

        unsubscribe = interrupt.subscribe(cancel) if interrupt is not None else None
        deadline = time.monotonic() + self.retry
        delay = 0.01
        try:
            while True:
                try:
                    sock = self._take(token)
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise ipc_error(errno.EIO, f"preload server: {e}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                with send_lock:
                    current[:] = [sock]
                try:
                    with send_lock:
                        sock.sendall(frame)
                        if cancelled.is_set():
                            sock.sendall(cancel_frame)
                    body = self._read(sock)
                except OSError:  # shut for a checkpoint, or ssid restarted
                    sock.close()
                    continue
                except BaseException:  # KeyboardInterrupt: nothing waits any more
                    with contextlib.suppress(OSError):
                        sock.sendall(cancel_frame)
                    sock.close()
                    raise
                with self._lock:
                    self._idle.append(sock)
                break
        finally:
            if unsubscribe is not None:
                unsubscribe()
        _, _, err, payload = wire.decode_reply(body)
        if err:
            if err == errno.EAGAIN and timeout is not None:
                raise TimeoutError(errno.EAGAIN, f"timed out: {op}")
            raise ipc_error(err, op)
        return unwrap(_decode_result(payload), op)

    def close(self) -> None:
        """This process is done with cluster IPC (its SEM_UNDO applied now)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


Transport = SocketTransport | PreloadTransport


def connect(path: str | os.PathLike[str] | None = None, **kw: Any) -> Transport:
    """The transport this process should use: in a --cluster-ipc job (and no
    `path` given) the node's preload server, else the ssid at `path`
    (ssi.client.socket_path)."""
    preload = os.environ.get("SSI_IPC_SOCKET")
    if path is None and preload:
        return PreloadTransport(preload)
    return SocketTransport(path, **kw)


def _call_options(
    op: str, args: dict[str, Any]
) -> tuple[float | None, Interrupt | None]:
    """Take a call's `timeout` and `interrupt` out of its arguments, checked: EINVAL
    for a negative timeout, EINTR if interrupted before it is sent."""
    timeout: float | None = args.pop("timeout", None)
    interrupt: Interrupt | None = args.pop("interrupt", None)
    if timeout is not None and timeout < 0:
        raise ipc_error(errno.EINVAL, f"timeout {timeout}")
    if interrupt is not None and interrupt.is_set():
        raise ipc_error(errno.EINTR, op)
    return timeout, interrupt
