"""Typed errors, and their wire form.

Every failure a caller may see is an `SsiError` with a stable `code` (what travels)
and an `exit_code` (what the CLI returns). On the wire an error is a
`WireError(code, message, details)`; `to_wire` and `from_wire` translate, so a
`NotFound` raised by a handler on the coordinator is a `NotFound` again in the
caller's `except` clause. Never pickle.

    SsiError ─┬─ BadRequest ── ProtocolError ─┬─ MessageTooLarge
              │                               ├─ MalformedMessage
              │                               ├─ VersionMismatch
              │                               └─ UnknownOp   (code unknown_op)
              ├─ NotFound · Denied · Timeout · Conflict
              └─ Unavailable · NodeGone · Internal
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

__all__ = [
    "SsiError",
    "BadRequest",
    "UnknownOp",
    "NotFound",
    "Denied",
    "Timeout",
    "NoReply",
    "Conflict",
    "Unavailable",
    "NodeGone",
    "Internal",
    "ProtocolError",
    "MessageTooLarge",
    "MalformedMessage",
    "VersionMismatch",
    "WireError",
    "to_wire",
    "from_wire",
]

# CLI exit codes.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4
EXIT_TIMEOUT = 5


class WireError(msgspec.Struct, frozen=True):
    """An error as it travels in a `Reply`."""

    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


# code -> class: every SsiError subclass that states its own code, wherever it lives
# (ssi.jobs, ssi.checkpoint, ssi.transfer ...), comes back as itself from the wire.
_BY_CODE: dict[str, type[SsiError]] = {}


class SsiError(Exception):
    """Base of every error ssi reports; `details` must be msgpack-encodable."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str = "", *, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "code" in cls.__dict__:
            _BY_CODE.setdefault(cls.code, cls)

    def __str__(self) -> str:
        return self.message or self.code

    def __repr__(self) -> str:
        extra = f", details={self.details!r}" if self.details else ""
        return f"{type(self).__name__}({self.message!r}{extra})"


class BadRequest(SsiError):
    code = "bad_request"
    exit_code = EXIT_USAGE


class NotFound(SsiError):
    code = "not_found"
    exit_code = EXIT_NOT_FOUND


class Denied(SsiError):
    code = "denied"
    exit_code = EXIT_DENIED


class Timeout(SsiError):
    code = "timeout"
    exit_code = EXIT_TIMEOUT


class NoReply(Timeout):
    """The peer did not answer in time (raised by a client; never sent): unlike a
    Timeout that a peer replied with, it says nothing about the request's fate."""


class Conflict(SsiError):
    code = "conflict"


class Unavailable(SsiError):
    """Nobody to answer: no daemon on the local socket, no coordinator reachable."""

    code = "unavailable"


class NodeGone(SsiError):
    code = "node_gone"


class Internal(SsiError):
    """A bug or an unexpected condition on the answering side."""

    code = "internal"


class ProtocolError(BadRequest):
    """A message that cannot be decoded. `request_id` is set when the id could be read,
    so that the error reply can still be addressed."""

    kind: ClassVar[str] = "protocol"

    def __init__(
        self,
        message: str = "",
        *,
        request_id: str = "",
        details: Mapping[str, Any] | None = None,
    ):
        merged = {"protocol": self.kind, **(details or {})}
        super().__init__(message, details=merged)
        self.request_id = request_id


class MessageTooLarge(ProtocolError):
    kind = "too_large"


class MalformedMessage(ProtocolError):
    kind = "malformed"


class VersionMismatch(ProtocolError):
    kind = "version"


class UnknownOp(ProtocolError):
    """An op this side does not know (or does not serve); `op` names it when known."""

    code = "unknown_op"
    kind = "unknown_op"

    def __init__(
        self,
        message: str = "",
        *,
        op: str = "",
        request_id: str = "",
        details: Mapping[str, Any] | None = None,
    ):
        if not op and details and isinstance(details.get("op"), str):
            op = details["op"]
        super().__init__(
            message or f"unknown op {op!r}",
            request_id=request_id,
            details={**(details or {}), "op": op},
        )
        self.op = op


_PROTOCOL_KINDS: dict[str, type[ProtocolError]] = {
    cls.kind: cls
    for cls in (ProtocolError, MessageTooLarge, MalformedMessage, VersionMismatch)
}


_BY_CODE[SsiError.code] = SsiError


def to_wire(exc: BaseException) -> WireError:
    """The wire form of any exception; anything not an SsiError becomes `internal`."""
    if isinstance(exc, SsiError):
        return WireError(code=exc.code, message=str(exc), details=dict(exc.details))
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return WireError(code=Internal.code, message=message)


@functools.lru_cache(maxsize=64)
def _generic(code: str) -> type[SsiError]:
    # An error code this side does not know (a newer peer): keep the code readable.
    return type("RemoteError", (SsiError,), {"code": code, "__module__": __name__})


def from_wire(err: WireError) -> SsiError:
    """The typed exception for a wire error; unknown codes give an SsiError whose
    `code` is the remote one."""
    details = dict(err.details) if isinstance(err.details, dict) else {}
    if err.code == BadRequest.code:
        kind = details.get("protocol")
        if isinstance(kind, str) and kind in _PROTOCOL_KINDS:
            return _PROTOCOL_KINDS[kind](err.message, details=details)
        return BadRequest(err.message, details=details)
    cls = _BY_CODE.get(err.code)
    if cls is None:
        cls = _generic(err.code)
    try:
        return cls(err.message, details=details)
    except TypeError:  # a subclass with a constructor of its own (e.g. CriuError)
        exc = cls.__new__(cls)
        SsiError.__init__(exc, err.message, details=details)
        return exc
