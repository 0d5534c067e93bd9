"""What both transports share: who is calling (`Peer`, `LocalPeer`), the handler type,
the dispatch of one request (bytes in, reply bytes out), and the client side's
matching of replies to calls by id."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ssi.proto.codec import decode_envelope, encode_reply
from ssi.proto.errors import (
    Denied,
    Internal,
    ProtocolError,
    SsiError,
    UnknownOp,
    from_wire,
    to_wire,
)
from ssi.proto.messages import PROTOCOL_VERSION, Envelope, Reply, Request, result_type

__all__ = ["Peer", "LocalPeer", "PeerInfo", "Handler", "Dispatcher", "new_request_id"]

log = logging.getLogger("ssi.rpc")

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Peer:
    """A caller over the network: its CURVE public key (Z85, 40 bytes), as checked by
    ZAP during the handshake, and the ZAP domain of the socket it came through
    ("cluster" or "join")."""

    public_key: bytes
    domain: str


@dataclass(frozen=True, slots=True)
class LocalPeer:
    """A caller on this machine, from the kernel's SO_PEERCRED of its connection."""

    uid: int
    gid: int
    pid: int


PeerInfo = Peer | LocalPeer
Handler = Callable[[Envelope, Any], Awaitable[Any]]
"""`async def handler(env: Envelope, peer: Peer | LocalPeer) -> value` — the value is
anything msgpack-encodable (builtins, msgspec Structs); raise SsiError subclasses."""


def new_request_id() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not be decoded; `request_id` is "" when unreadable."""

    request_id: str
    reply: bytes


def error_reply(request_id: str, exc: BaseException, max_size: int) -> bytes:
    reply = Reply(v=PROTOCOL_VERSION, id=request_id, ok=False, error=to_wire(exc))
    try:
        return encode_reply(reply, max_size)
    except Exception:  # details not encodable or too large: drop them
        wire = to_wire(exc)
        slim = msgspec.structs.replace(wire, message=wire.message[:1000], details={})
        return encode_reply(
            Reply(v=PROTOCOL_VERSION, id=request_id, ok=False, error=slim)
        )


class Dispatcher:
    """Decodes one request, routes it to its handler, encodes the reply.

    Never raises for anything a peer sends; a handler's SsiError becomes its wire
    error, any other exception an `internal` error (logged with its traceback).
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_size: int,
        allowed_ops: Collection[str] | None = None,
        where: str = "",
    ) -> None:
        self.handlers = handlers
        self.max_size = max_size
        self.allowed_ops = None if allowed_ops is None else frozenset(allowed_ops)
        self.where = where

    def decode(self, data: bytes | memoryview, peer: PeerInfo) -> Envelope | Rejected:
        """The request, or the error reply to send back for bad bytes."""
        try:
            return decode_envelope(data, self.max_size)
        except ProtocolError as e:
            log.warning(
                "%s: bad message from %s (%d bytes, id %r): %s",
                self.where,
                describe(peer),
                len(data),
                e.request_id,
                e,
            )
            return Rejected(e.request_id, error_reply(e.request_id, e, self.max_size))

    async def run(self, env: Envelope, peer: PeerInfo) -> bytes:
        """Run the handler of a decoded request; the reply's bytes."""
        op = env.body.op
        try:
            if self.allowed_ops is not None and op not in self.allowed_ops:
                served = ", ".join(sorted(self.allowed_ops))
                raise Denied(f"op {op} is not served on this socket (only {served})")
            handler = self.handlers.get(op)
            if handler is None:
                raise UnknownOp(f"op {op} is not served here", op=op, request_id=env.id)
            value = await handler(env, peer)
        except asyncio.CancelledError:
            raise
        except SsiError as e:
            log.debug(
                "%s: %s id=%s cause=%s -> %s: %s",
                self.where,
                op,
                env.id,
                env.cause,
                e.code,
                e,
            )
            return error_reply(env.id, e, self.max_size)
        except Exception as e:
            log.exception(
                "%s: handler of %s failed (id=%s cause=%s peer=%s)",
                self.where,
                op,
                env.id,
                env.cause,
                describe(peer),
            )
            return error_reply(env.id, e, self.max_size)
        try:
            reply = Reply(v=PROTOCOL_VERSION, id=env.id, ok=True, value=value)
            return encode_reply(reply, self.max_size)
        except Exception as e:
            log.error(
                "%s: reply to %s (id=%s) cannot be sent: %s", self.where, op, env.id, e
            )
            err = Internal(f"the reply to {op} cannot be encoded: {e}")
            return error_reply(env.id, err, self.max_size)

    async def handle(self, data: bytes | memoryview, peer: PeerInfo) -> bytes:
        decoded = self.decode(data, peer)
        if isinstance(decoded, Rejected):
            return decoded.reply
        return await self.run(decoded, peer)


def describe(peer: PeerInfo) -> str:
    if isinstance(peer, LocalPeer):
        return f"uid={peer.uid} pid={peer.pid}"
    return f"key={peer.public_key.decode(errors='replace')} ({peer.domain})"


def result_of(body: Request[R], reply: Reply) -> R:
    """A reply's value as the request's declared result type, or its typed error."""
    if not reply.ok:
        assert reply.error is not None  # decode_reply guarantees it
        raise from_wire(reply.error)
    rtype = result_type(type(body))
    if rtype is Any:
        value: R = reply.value
        return value
    try:
        converted: R = msgspec.convert(reply.value, rtype)
        return converted
    except msgspec.ValidationError as e:
        raise Internal(f"the reply to {body.op} does not fit {rtype!r}: {e}") from None


class PendingCalls:
    """Futures of the calls in flight, by request id; late replies are dropped."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Reply]] = {}

    def __len__(self) -> int:
        return len(self._futures)

    def add(self, request_id: str) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    def discard(self, request_id: str) -> None:
        self._futures.pop(request_id, None)

    def resolve(self, reply: Reply) -> bool:
        fut = self._futures.pop(reply.id, None)
        if fut is None or fut.done():
            return False
        fut.set_result(reply)
        return True

    def fail_all(self, exc: BaseException) -> None:
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(exc)
