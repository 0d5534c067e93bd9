"""msgpack encoding of envelopes and replies, with a size cap.

Decoding never raises anything but a `ProtocolError` subclass, whatever the bytes:

    bytes ─▶ size cap ─▶ header (v, id) ─▶ version ─▶ body by op (tagged union)
             TooLarge          Malformed          VersionMismatch   UnknownOp, Malformed

Errors carry the request id whenever it could be read, so the reply can be addressed.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ssi.proto.errors import (
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    UnknownOp,
    VersionMismatch,
)
from ssi.proto.messages import (
    PROTOCOL_VERSION,
    Envelope,
    Reply,
    Request,
    registry,
    request_union,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "encode_envelope",
    "encode_reply",
    "decode_envelope",
    "decode_reply",
    "encode",
]

DEFAULT_MAX_SIZE = 4 * 1024 * 1024

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

_encoder = msgspec.msgpack.Encoder()


class _Header(msgspec.Struct):
    # Lenient: only used to say what is wrong with a message that failed to decode.
    v: Any = None
    id: Any = None
    body: Any = None


class _RawEnvelope(msgspec.Struct, kw_only=True):
    v: int
    id: str
    body: msgspec.Raw
    cause: str = ""
    sender: str = ""
    uid: int | None = None
    gid: int | None = None
    deadline: float | None = None


_raw_envelope_decoder = msgspec.msgpack.Decoder(_RawEnvelope)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_header_decoder = msgspec.msgpack.Decoder(_Header)
_body_decoder: tuple[Any, msgspec.msgpack.Decoder[Any] | None] = (None, None)


def _body_decoder_now() -> msgspec.msgpack.Decoder[Any]:
    global _body_decoder
    union = request_union()
    cached_union, decoder = _body_decoder
    if decoder is None or cached_union is not union:
        decoder = msgspec.msgpack.Decoder(union)
        _body_decoder = (union, decoder)
    return decoder


def encode(obj: Any, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """msgpack bytes of any encodable object; MessageTooLarge over the cap, TypeError
    when something in it cannot be encoded."""
    data = _encoder.encode(obj)
    if len(data) > max_size:
        raise MessageTooLarge(
            f"message of {len(data)} bytes exceeds the {max_size}-byte cap"
        )
    return data


def encode_envelope(env: Envelope, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    return encode(env, max_size)


def encode_reply(reply: Reply, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    return encode(reply, max_size)


def _check_size(data: Buffer, max_size: int) -> None:
    if len(data) > max_size:
        raise MessageTooLarge(
            f"message of {len(data)} bytes exceeds the {max_size}-byte cap"
        )


def _probe(data: Buffer) -> _Header | None:
    try:
        return _header_decoder.decode(data)
    except Exception:  # any failure means "not even a header"
        return None


def _diagnose(data: Buffer, what: str, exc: Exception) -> ProtocolError:
    """The most precise ProtocolError for bytes that failed the strict decode."""
    header = _probe(data)
    if header is None:
        return MalformedMessage(f"{what} is not a msgpack map: {exc}")
    request_id = header.id if isinstance(header.id, str) else ""
    if header.v != PROTOCOL_VERSION and isinstance(header.v, int):
        return VersionMismatch(
            f"protocol version {header.v} (this side speaks {PROTOCOL_VERSION})",
            request_id=request_id,
            details={"got": header.v, "expected": PROTOCOL_VERSION},
        )
    return MalformedMessage(f"bad {what}: {exc}", request_id=request_id)


def _decode_body(raw: msgspec.Raw, request_id: str) -> Request[Any]:
    try:
        body: Request[Any] = _body_decoder_now().decode(raw)
        return body
    except Exception as exc:  # mapped to a ProtocolError below
        failure = exc
    op: Any = None
    try:
        probe = msgspec.msgpack.decode(raw)
        if isinstance(probe, dict):
            op = probe.get("op")
    except Exception:
        pass
    if isinstance(op, str) and op not in registry():
        return_error: ProtocolError = UnknownOp(op=op, request_id=request_id)
    elif op is None:
        return_error = MalformedMessage(
            f"request body has no op: {failure}", request_id=request_id
        )
    else:
        return_error = MalformedMessage(
            f"bad request body for op {op!r}: {failure}",
            request_id=request_id,
            details={"op": op} if isinstance(op, str) else None,
        )
    raise return_error


def decode_envelope(data: Buffer, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """An Envelope from bytes; raises ProtocolError subclasses only."""
    try:
        _check_size(data, max_size)
        try:
            raw = _raw_envelope_decoder.decode(data)
        except Exception as exc:
            raise _diagnose(data, "envelope", exc) from None
        if raw.v != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"protocol version {raw.v} (this side speaks {PROTOCOL_VERSION})",
                request_id=raw.id,
                details={"got": raw.v, "expected": PROTOCOL_VERSION},
            )
        body = _decode_body(raw.body, raw.id)
        return Envelope(
            v=raw.v,
            id=raw.id,
            body=body,
            cause=raw.cause,
            sender=raw.sender,
            uid=raw.uid,
            gid=raw.gid,
            deadline=raw.deadline,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # the contract: nothing else escapes
        log.debug("unexpected decode failure", exc_info=True)
        raise MalformedMessage(f"undecodable envelope: {type(exc).__name__}") from None


def decode_reply(data: Buffer, max_size: int = DEFAULT_MAX_SIZE) -> Reply:
    """A Reply from bytes; raises ProtocolError subclasses only."""
    try:
        _check_size(data, max_size)
        try:
            reply = _reply_decoder.decode(data)
        except Exception as exc:
            raise _diagnose(data, "reply", exc) from None
        if reply.v != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"protocol version {reply.v} (this side speaks {PROTOCOL_VERSION})",
                request_id=reply.id,
                details={"got": reply.v, "expected": PROTOCOL_VERSION},
            )
        if not reply.ok and reply.error is None:
            raise MalformedMessage("error reply without an error", request_id=reply.id)
        return reply
    except ProtocolError:
        raise
    except Exception as exc:
        log.debug("unexpected decode failure", exc_info=True)
        raise MalformedMessage(f"undecodable reply: {type(exc).__name__}") from None
