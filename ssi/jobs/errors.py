"""Errors of the job runtime; the SsiError family, so they travel as themselves.

Also raised here: NotFound (no such job), Conflict (a job in the wrong state for the
operation), BadRequest (a spec or request the caller can fix), and CriuError (CRIU
refused; `.blocker` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ssi.proto.errors import SsiError


class CorruptCheckpoint(SsiError):
    """A checkpoint fails verification: a manifest or image file is missing, of the
    wrong size, or has the wrong checksum. Raised before CRIU reads anything, so the
    caller can fall back to a replica or an older checkpoint.

    details: path (the checkpoint), file (the bad one, relative), problem.
    """

    code: ClassVar[str] = "corrupt_checkpoint"

    def __init__(self, path: Path, file: str, problem: str) -> None:
        self.path = path
        self.file = file
        self.problem = problem
        super().__init__(
            f"checkpoint {path} is unusable: {file}: {problem}",
            details={"path": str(path), "file": file, "problem": problem},
        )


class CheckpointFailed(SsiError):
    """A checkpoint could not be written (after CRIU's dump: hashing, manifest,
    rename), e.g. the disk is full. Nothing of it is left, and the job runs on."""

    code: ClassVar[str] = "checkpoint_failed"
