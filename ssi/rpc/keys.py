"""This node's CURVE key pair, kept on disk across restarts.

    <directory>/curve.key   the secret key, Z85, mode 0600 (the one that matters)
    <directory>/curve.pub   the public key, Z85, mode 0644 (for admins; derived)

Keys are Z85-encoded bytes (40 characters), the form pyzmq's CURVE options take.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

__all__ = [
    "KeyPair",
    "load_or_create_keypair",
    "fingerprint",
    "SECRET_FILE",
    "PUBLIC_FILE",
]

SECRET_FILE = "curve.key"
PUBLIC_FILE = "curve.pub"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes  # Z85, 40 bytes

    def __repr__(self) -> str:  # never print the secret by accident
        return (
            f"KeyPair(public={self.public!r}, fingerprint={fingerprint(self.public)})"
        )


def fingerprint(public: bytes | str) -> str:
    """A short, stable name for a public key (Z85 or raw 32 bytes):
    "sha256:" + 16 hex digits."""
    key = public.encode() if isinstance(public, str) else bytes(public)
    if len(key) == 40:
        key = zmq.utils.z85.decode(key)
    if len(key) != 32:
        raise ValueError(f"not a CURVE public key: {len(key)} bytes")
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write `data` to `path` atomically unless `path` already exists; True if written.

    The content goes to a private temporary file first, then is linked into place, so
    a reader never sees a partial key and two processes starting at once agree on one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # umask must not widen or narrow it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        written = True
    except FileExistsError:
        written = False
    finally:
        tmp.unlink()
    if written:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return written


def _read_secret(path: Path) -> bytes:
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "%s was readable by others (mode %o): set to 0600", path, st.st_mode
        )
        os.chmod(path, 0o600)
    secret = path.read_bytes().strip()
    if len(secret) != 40:
        raise ValueError(f"{path}: not a Z85 CURVE secret key ({len(secret)} bytes)")
    return secret


def load_or_create_keypair(directory: str | os.PathLike[str]) -> KeyPair:
    """The key pair stored in `directory`, created (with the directory, 0700) on
    first use. OSError when the directory is unusable, ValueError on a corrupt key."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path, public_path = d / SECRET_FILE, d / PUBLIC_FILE
    if not secret_path.exists():
        _, secret = zmq.curve_keypair()
        if _write_new(secret_path, secret + b"\n", 0o600):
            log.info("created CURVE key %s", secret_path)
    secret = _read_secret(secret_path)
    try:
        public = zmq.curve_public(secret)
    except zmq.ZMQError as e:
        raise ValueError(f"{secret_path}: not a valid CURVE secret key: {e}") from None
    try:
        stored = public_path.read_bytes().strip()
    except FileNotFoundError:
        stored = b""
    if stored != public:
        with contextlib.suppress(FileNotFoundError):
            public_path.unlink()
        _write_new(public_path, public + b"\n", 0o644)
    return KeyPair(public=public, secret=secret)
