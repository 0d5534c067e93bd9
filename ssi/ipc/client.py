"""ssi.ipc for Python programs on a cluster node: a Transport over the node's ssid
socket, so MessageQueue/SemaphoreSet/SharedMemory reach cluster-wide objects.

    from ssi.ipc import client
    from ssi.ipc.api import MessageQueue
    t = client.connect()                      # this node's ssid ($SSI_SOCKET, ...)
    q = MessageQueue.create(t, key=0x5151, mode=0o666)
    q.send(b"hello", mtype=2)                 # on any node of the cluster
    q.receive(mtype=2, timeout=5.0)

Each call is an `ipc.call` request on a connection of its own (none is held
between calls). A blocking op is waited for in rounds of `poll` seconds (the
request, numbered per process, is asked again: ssid answers the same op). A
timeout or an Interrupt sends `ipc.cancel`, whose answer is the op's result if it
completed first; an exception in the waiting thread (KeyboardInterrupt) cancels
too. The process is one IPC client (SEM_UNDO, attachments): ssid ends it when the
process exits; `close()` (or exit_client) ends it earlier. After fork() the child
is a new client, as Linux's SEM_UNDO wants.

Errors are OSError with the kernel's errno; TimeoutError (EAGAIN) after
`timeout`; InterruptedError (EINTR) after an interrupt; EIO when ssid is not there.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import threading
import time
from typing import Any

import msgspec

from ssi.client import socket_path
from ssi.ipc.api import Interrupt
from ssi.ipc.model import ipc_error
from ssi.ipc.remote import Result, unwrap
from ssi.proto import messages as m
from ssi.proto.errors import SsiError
from ssi.rpc.local import LocalClient

__all__ = ["SocketTransport", "connect"]

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
        timeout: float | None = args.pop("timeout", None)
        interrupt: Interrupt | None = args.pop("interrupt", None)
        if timeout is not None and timeout < 0:
            raise ipc_error(errno.EINVAL, f"timeout {timeout}")
        if interrupt is not None and interrupt.is_set():
            raise ipc_error(errno.EINTR, op)
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


def connect(path: str | os.PathLike[str] | None = None, **kw: Any) -> SocketTransport:
    """A transport to this node's ssid (see ssi.client.socket_path)."""
    return SocketTransport(path, **kw)
