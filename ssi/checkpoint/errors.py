"""Errors of checkpoint and restore."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ssi.proto.errors import SsiError


class CriuError(SsiError):
    """CRIU refused or failed an operation.

    str() says what blocked it, from the "Error (...)" lines of CRIU's log, and where
    the log is, e.g. "dump of pid 812 failed: Can't dump half of stream unix
    connection. (CRIU log: /var/lib/ssi/ckpt/7/dump.log)".

    On the wire: code "criu_failed", the whole text as message, and details with op,
    errors, errno, log_path, images_dir.
    """

    code: ClassVar[str] = "criu_failed"

    def __init__(
        self,
        op: str,
        message: str,
        *,
        errors: Sequence[str] = (),
        errno: int | None = None,
        errmsg: str | None = None,
        log_path: Path | None = None,
        images_dir: Path | None = None,
    ) -> None:
        self.op = op  # "dump", "restore", "check", "version", "features"
        self.summary = message
        self.errors = tuple(errors)  # distinct CRIU log errors, first (the cause) first
        self.errno = errno  # CRIU's cr_errno, when it gave one
        self.errmsg = errmsg  # CRIU's cr_errmsg, when it gave one
        self.log_path = log_path
        self.images_dir = images_dir
        super().__init__(
            self._text(),
            details={
                "op": op,
                "errors": list(self.errors),
                "errno": errno,
                "log_path": str(log_path) if log_path else None,
                "images_dir": str(images_dir) if images_dir else None,
            },
        )

    @property
    def blocker(self) -> str | None:
        """The first error CRIU logged: usually what made the rest fail."""
        return self.errors[0] if self.errors else None

    def _text(self) -> str:
        text = self.summary
        detail = list(self.errors[:3])
        if len(self.errors) > 3:
            detail.append(f"… {len(self.errors) - 3} more")
        if not detail and self.errmsg:
            detail.append(self.errmsg)
        if not detail and self.errno:
            detail.append(f"errno {self.errno} ({os.strerror(self.errno)})")
        if detail:
            text += ": " + "; ".join(detail)
        if self.log_path is not None:
            text += f" (CRIU log: {self.log_path})"
        return text
