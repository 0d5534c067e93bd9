"""errno to OSError, one way for the whole shim."""

from __future__ import annotations

import os
from typing import NoReturn

from ._kernel_shim import ffi


def raise_errno(err: int, what: str) -> NoReturn:
    """Raise the OSError subclass for `err`; the message names the call that failed."""
    raise OSError(err, f"{os.strerror(err)}: {what}")


def _check(rc: int, what: str) -> int:
    """Return `rc` if the C call succeeded (rc >= 0), else raise from saved errno."""
    if rc < 0:
        raise_errno(int(ffi.errno), what)
    return rc


def reraise(exc: OSError, what: str) -> NoReturn:
    """Give an OSError from the standard library a message that names the call."""
    err = exc.errno if exc.errno is not None else 0
    raise OSError(err, f"{os.strerror(err)}: {what}") from None
