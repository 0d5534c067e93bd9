"""Errors of bulk transfers, and how they travel in an ERR frame.

    SsiError ─┬─ TransferError ─┬─ ChecksumMismatch     codes: transfer_failed,
              │                 └─ NoSpace              checksum_mismatch, no_space
              └─ NodeGone ── PeerGone   (the connection or the peer died; node_gone)

Every message names the peer (endpoint and key fingerprint) and, when one was moving,
the file. Errors the peer reports arrive as the same class on this side.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ssi.proto.errors import NodeGone, SsiError, WireError, from_wire, to_wire

__all__ = [
    "TransferError",
    "ChecksumMismatch",
    "NoSpace",
    "PeerGone",
    "error_to_wire",
    "error_from_wire",
]


class TransferError(SsiError):
    """A transfer failed for a reason that is neither the peer's death nor a refusal
    (e.g. an I/O error on either side); nothing was committed."""

    code: ClassVar[str] = "transfer_failed"


class ChecksumMismatch(TransferError):
    """A file's digest on arrival differs from the sender's; details: file, expected,
    actual."""

    code: ClassVar[str] = "checksum_mismatch"


class NoSpace(TransferError):
    """The receiver's file system is full (or would be: refused before any byte);
    details: path, needed, available when known."""

    code: ClassVar[str] = "no_space"


class PeerGone(NodeGone):
    """The peer vanished (connection lost, or silent for longer than the idle
    timeout) in the middle of a transfer; details: peer, file, done, total."""


_BY_CODE: dict[str, type[SsiError]] = {
    cls.code: cls for cls in (TransferError, ChecksumMismatch, NoSpace)
}


def error_to_wire(exc: BaseException) -> WireError:
    return to_wire(exc)


def error_from_wire(err: WireError) -> SsiError:
    cls = _BY_CODE.get(err.code)
    if cls is None:
        return from_wire(err)
    details: dict[str, Any] = dict(err.details) if isinstance(err.details, dict) else {}
    return cls(err.message, details=details)
