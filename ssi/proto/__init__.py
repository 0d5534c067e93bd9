"""ssi.proto: what travels between ssi processes: messages, codec, errors. No I/O.

    caller:   Request (messages.py) ─▶ Envelope ─▶ encode_envelope ─▶ bytes ─┐
    answerer: handler(env, peer) ◀─ Envelope ◀─ decode_envelope ◀────────────┘
              value | SsiError ─▶ Reply(ok, value | to_wire(exc)) ─▶ bytes ─┐
    caller:   value | raise from_wire(error) ◀─ decode_reply ◀──────────────┘

Adding an op: add a `class X(Request[ReplyType], tag="area.verb")` to messages.py.
"""

from ssi.proto.codec import (
    DEFAULT_MAX_SIZE,
    decode_envelope,
    decode_reply,
    encode_envelope,
    encode_reply,
)
from ssi.proto.errors import (
    BadRequest,
    Conflict,
    Denied,
    Internal,
    MalformedMessage,
    MessageTooLarge,
    NodeGone,
    NotFound,
    ProtocolError,
    SsiError,
    Timeout,
    Unavailable,
    UnknownOp,
    VersionMismatch,
    WireError,
    from_wire,
    to_wire,
)
from ssi.proto.messages import PROTOCOL_VERSION, Envelope, Reply, Request

__all__ = [
    "DEFAULT_MAX_SIZE",
    "PROTOCOL_VERSION",
    "BadRequest",
    "Conflict",
    "Denied",
    "Envelope",
    "Internal",
    "MalformedMessage",
    "MessageTooLarge",
    "NodeGone",
    "NotFound",
    "ProtocolError",
    "Reply",
    "Request",
    "SsiError",
    "Timeout",
    "Unavailable",
    "UnknownOp",
    "VersionMismatch",
    "WireError",
    "decode_envelope",
    "decode_reply",
    "encode_envelope",
    "encode_reply",
    "from_wire",
    "to_wire",
]
