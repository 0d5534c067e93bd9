"""One side's view of one transfer's connection: send a message, receive the next
one, know when the peer is gone.

    ClientLink  own DEALER socket (CURVE client) + its monitor socket:
                handshake refused → Denied; connection lost → gone
    ServerLink  one session of the BulkServer's ROUTER socket: messages come from the
                server's reader; a silent peer is probed with PING, and ROUTER_MANDATORY
                makes a send to a vanished peer fail at once → gone

`recv()` raises the peer's ERR as its typed SsiError, and `Gone` (internal; the engine
turns it into a PeerGone that names the file) when the peer died or stayed silent for
the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.monitor

from ssi.proto.errors import (
    Denied,
    MalformedMessage,
    ProtocolError,
    SsiError,
    Unavailable,
    WireError,
)
from ssi.rpc.keys import KeyPair, fingerprint
from ssi.transfer import protocol as p
from ssi.transfer.errors import error_from_wire, error_to_wire

__all__ = ["Message", "Gone", "Link", "ClientLink", "ServerLink", "peer_name"]

log = logging.getLogger(__name__)

HEARTBEAT_IVL_MS = 1_000  # ZMTP pings: a vanished host is noticed in seconds
HEARTBEAT_TIMEOUT_MS = 5_000
MAX_MESSAGE = p.MAX_CHUNK + p.MAX_HEADER + 1024
_MAX_QUEUED_MESSAGES = 2 * p.MAX_WINDOW + 64

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class Message:
    header: p.Header
    payload: zmq.Frame | None = None

    @property
    def data(self) -> memoryview:
        return self.payload.buffer if self.payload is not None else memoryview(b"")


class Gone(Exception):
    """The peer is gone; `str()` says how we know."""


def peer_name(endpoint: str, key: bytes | str) -> str:
    try:
        fp = fingerprint(key)
    except ValueError:
        fp = "?"
    return f"{endpoint} (key {fp})"


class Link:
    """What both sides share: an inbox and the idle-timeout logic."""

    def __init__(self, peer: str, options: p.Options) -> None:
        self.peer = peer
        self.options = options
        self.inbox: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self.remote_failed = False  # the peer sent ERR: do not answer with one
        self.gone: Gone | None = None
        self._loop = asyncio.get_running_loop()
        self.last_heard = self._loop.time()
        self._gone_waiter: asyncio.Future[None] = self._loop.create_future()
        self.max_queued = 0  # payload bytes the inbox may hold (expect_data)
        self.queued = 0
        self.overflow = False

    # -- receiving ----------------------------------------------------------------

    def expect_data(self, window: int, chunk: int) -> None:
        """We receive DATA: queue at most `window` chunks of `chunk` bytes (what the
        credit allows; a peer sending more is cut off). Senders queue none."""
        self.max_queued = (window + 1) * chunk

    def deliver(self, item: Message | BaseException) -> None:
        self.last_heard = self._loop.time()
        if self.overflow:
            return  # the engine fails on the error already queued
        if isinstance(item, Message) and item.payload is not None:
            size = len(item.payload.buffer)
            if (
                self.queued + size > self.max_queued
                or self.inbox.qsize() > _MAX_QUEUED_MESSAGES
            ):
                self.overflow = True
                item = MalformedMessage(
                    f"peer {self.peer} sent more data than its credit allows"
                )
            else:
                self.queued += size
        self.inbox.put_nowait(item)

    def heard(self) -> None:
        """The peer showed it is alive (without a message for the engine)."""
        self.last_heard = self._loop.time()

    def set_gone(self, why: str) -> None:
        if self.gone is None:
            self.gone = Gone(why)
            if not self._gone_waiter.done():
                self._gone_waiter.set_result(None)
            self.inbox.put_nowait(self.gone)

    def poll(self) -> Message | None:
        """The next message if one is waiting, else None (never blocks)."""
        try:
            item = self.inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._unwrap(item)

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; Gone after `timeout` (default: the idle timeout)
        seconds without hearing from the peer, or when it died."""
        limit = self.options.idle_timeout if timeout is None else timeout
        while True:
            try:
                item = self.inbox.get_nowait()
            except asyncio.QueueEmpty:
                pass
            else:
                return self._unwrap(item)
            silent = self._loop.time() - self.last_heard
            if silent >= limit:
                self.set_gone(f"no message for {limit:g} s")
                continue
            wait = min(self.options.probe_interval, limit - silent)
            try:
                # Not wait_for: on 3.11 it loses a cancel that comes as the
                # get completes (and here messages keep completing it).
                async with asyncio.timeout(wait):
                    item = await self.inbox.get()
            except TimeoutError:
                await self.probe()
                continue
            return self._unwrap(item)

    def _unwrap(self, item: Message | BaseException) -> Message:
        if isinstance(item, BaseException):
            raise item
        if item.payload is not None:
            self.queued -= len(item.payload.buffer)
        if isinstance(item.header, p.Err):
            self.remote_failed = True
            h = item.header
            raise error_from_wire(WireError(h.code, h.message, dict(h.details)))
        return item

    async def probe(self) -> None:
        """Called after `probe_interval` seconds of silence."""

    # -- sending ------------------------------------------------------------------

    async def send(self, header: p.Header, payload: Buffer | None = None) -> None:
        if self.gone is not None:
            raise self.gone
        frames: list[Any] = p.encode(header)
        if payload is not None:
            frames.append(payload)
        try:
            fut = self._send(frames)
            if not fut.done():
                await asyncio.wait(
                    [fut, self._gone_waiter], return_when=asyncio.FIRST_COMPLETED
                )
                if not fut.done():
                    fut.cancel()
                    raise self.gone or Gone("connection lost")
            fut.result()
        except zmq.ZMQError as e:
            if e.errno == errno.EHOSTUNREACH:
                self.set_gone("connection lost")
                raise self.gone or Gone("connection lost") from None
            raise Unavailable(f"cannot send to {self.peer}: {e}") from None

    def _send(self, frames: Sequence[Any]) -> asyncio.Future[Any]:
        raise NotImplementedError

    async def fail(self, exc: BaseException) -> None:
        """Tell the peer this transfer is over because of `exc` (best effort; not
        when the peer itself failed or is gone)."""
        if self.remote_failed or self.gone is not None:
            return
        if isinstance(exc, asyncio.CancelledError):
            wire = WireError("cancelled", "transfer cancelled by the other side")
        else:
            wire = error_to_wire(exc)
        err = p.Err(wire.code, wire.message[:2000], _plain(wire.details))
        with contextlib.suppress(Exception):
            fut = self._send(p.encode(err))
            if not fut.done():
                async with asyncio.timeout(1.0):
                    await fut


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in details.items()
        if isinstance(v, str | int | float | bool | None) and len(str(v)) < 1000
    }


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a lost PING answer does not matter


class ClientLink(Link):
    """A DEALER connection to a BulkServer, one per transfer."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        server_key: bytes | str,
        keypair: KeyPair,
        options: p.Options,
    ) -> None:
        if isinstance(server_key, str):
            server_key = server_key.encode()
        super().__init__(peer_name(endpoint, server_key), options)
        self.endpoint = endpoint
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._sock = sock
        self._monitor = sock.get_monitor_socket()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False

    async def open(self) -> None:
        """Connect and finish the CURVE handshake: Denied when the server refuses our
        key, Unavailable when it cannot be reached within the connect timeout."""
        handshake = self._loop.create_future()
        self._tasks.append(
            self._loop.create_task(self._watch(handshake), name="ssi-bulk-monitor")
        )
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            raise ValueError(f"bad endpoint {self.endpoint!r}: {e}") from None
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await asyncio.shield(handshake)
        except TimeoutError:
            raise Unavailable(
                f"cannot reach the bulk server {self.peer} within "
                f"{self.options.connect_timeout:g} s (down, firewalled, or "
                "another server key)",
                details={"endpoint": self.endpoint},
            ) from None
        self._connected = True
        self.last_heard = self._loop.time()
        self._tasks.append(self._loop.create_task(self._read(), name="ssi-bulk-read"))

    async def _watch(self, handshake: asyncio.Future[None]) -> None:
        while True:
            try:
                frames = await self._monitor.recv_multipart()
            except zmq.ZMQError:
                return
            ev = zmq.utils.monitor.parse_monitor_message(frames)
            event = ev["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if not handshake.done():
                    handshake.set_result(None)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                err = Denied(
                    f"the bulk server {self.peer} refused our key "
                    f"(ZAP status {ev['value']})",
                    details={"endpoint": self.endpoint},
                )
                if not handshake.done():
                    handshake.set_exception(err)
                else:
                    self.deliver(err)
            elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_MONITOR_STOPPED):
                if handshake.done():
                    self.set_gone("connection lost")
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return

    async def _read(self) -> None:
        sock = self._sock
        while True:
            try:
                frames = await sock.recv_multipart(copy=False)
            except zmq.ZMQError:
                return
            try:
                if len(frames) not in (2, 3):
                    raise ProtocolError(f"bulk message of {len(frames)} frames")
                header = p.decode(frames[0].buffer, frames[1].buffer)
            except SsiError as e:
                self.deliver(e)
                return
            if isinstance(header, p.Ping):
                # Answer, so that a server waiting for a slow producer of ours
                # (a stream) knows we are alive.
                self.last_heard = self._loop.time()
                answer = sock.send_multipart(p.encode(header), flags=zmq.NOBLOCK)
                answer.add_done_callback(_retrieve)  # type: ignore[attr-defined]
                continue
            self.deliver(Message(header, frames[2] if len(frames) == 3 else None))

    def _send(self, frames: Sequence[Any]) -> asyncio.Future[Any]:
        return self._sock.send_multipart(frames, copy=False)  # type: ignore[return-value]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(linger=0)
        # A pending ERR gets a moment to leave; nothing else is ever pending.
        self._sock.close(linger=0 if self.gone is not None else 500)


class ServerLink(Link):
    """One client's session on the BulkServer's ROUTER socket."""

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        ident: bytes,
        peer: str,
        options: p.Options,
    ) -> None:
        super().__init__(peer, options)
        self._sock = sock
        self._ident = ident

    def _send(self, frames: Sequence[Any]) -> asyncio.Future[Any]:
        return self._sock.send_multipart(  # type: ignore[return-value]
            [self._ident, *frames], copy=False
        )

    async def probe(self) -> None:
        with contextlib.suppress(Gone, SsiError):
            await self.send(p.Ping())
