"""DRMAA error codes, and the exception that carries one to the C boundary.

SsiError from ssid ──from_ssi_error()──▶ DrmaaError(code, message)
                                             │ _embed: return code, message
                                             ▼ in the caller's diagnosis buffer
"""

from __future__ import annotations

import enum

from ssi.proto import errors as e

__all__ = ["Errno", "DrmaaError", "from_ssi_error"]


class Errno(enum.IntEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    DRM_COMMUNICATION_FAILURE = 2
    AUTH_FAILURE = 3
    INVALID_ARGUMENT = 4
    NO_ACTIVE_SESSION = 5
    NO_MEMORY = 6
    INVALID_CONTACT_STRING = 7
    DEFAULT_CONTACT_STRING_ERROR = 8
    NO_DEFAULT_CONTACT_STRING_SELECTED = 9
    DRMS_INIT_FAILED = 10
    ALREADY_ACTIVE_SESSION = 11
    DRMS_EXIT_ERROR = 12
    INVALID_ATTRIBUTE_FORMAT = 13
    INVALID_ATTRIBUTE_VALUE = 14
    CONFLICTING_ATTRIBUTE_VALUES = 15
    TRY_LATER = 16
    DENIED_BY_DRM = 17
    INVALID_JOB = 18
    RESUME_INCONSISTENT_STATE = 19
    SUSPEND_INCONSISTENT_STATE = 20
    HOLD_INCONSISTENT_STATE = 21
    RELEASE_INCONSISTENT_STATE = 22
    EXIT_TIMEOUT = 23
    NO_RUSAGE = 24
    NO_MORE_ELEMENTS = 25


class DrmaaError(Exception):
    """A DRMAA failure: `code` is what the C function returns, the message what it
    writes into the diagnosis buffer."""

    def __init__(self, code: Errno, message: str = "") -> None:
        super().__init__(message or code.name.lower().replace("_", " "))
        self.code = code
        self.message = str(self.args[0])

    def __str__(self) -> str:
        return self.message


def from_ssi_error(
    err: e.SsiError, *, not_found: Errno = Errno.INVALID_JOB
) -> DrmaaError:
    """The DRMAA error for an error ssid answered with (or the client raised)."""
    if isinstance(err, e.NotFound):
        code = not_found
    elif isinstance(err, e.Denied):
        code = Errno.AUTH_FAILURE
    elif isinstance(err, e.NoReply | e.Unavailable | e.NodeGone | e.ProtocolError):
        code = Errno.DRM_COMMUNICATION_FAILURE
    elif isinstance(err, e.Timeout):
        code = Errno.EXIT_TIMEOUT
    elif isinstance(err, e.BadRequest):
        code = Errno.DENIED_BY_DRM
    elif isinstance(err, e.Conflict):
        code = Errno.TRY_LATER
    else:
        code = Errno.INTERNAL_ERROR
    return DrmaaError(code, f"ssid: {err}")
