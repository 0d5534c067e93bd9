"""Who calls (Caller), what an object's ipc_perm holds (Perm), the per-table limits, and
the kernel's permission rules.

Permission check, as ipc/util.c:ipcperms does it. Example: mode 0640 owned by uid 1000
gid 100; uid 1000 asks for write: granted (owner bits 6); uid 1001 in group 100 asks
for write: EACCES (group bits 4); uid 0 always passes (CAP_IPC_OWNER).

Failures are `OSError(errno, "strerror: what")`, which Python maps to its subclasses
(FileExistsError for EEXIST, PermissionError for EACCES and EPERM, ...).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import msgspec

from ssi.ipc.constants import INT_MAX

__all__ = [
    "Caller",
    "Perm",
    "Limits",
    "ipc_error",
    "denied",
    "check_access",
    "check_owner",
]


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """The credentials an operation runs with, as the kernel would see them.

    `uid`/`gid` are the effective ids, `groups` the supplementary groups, `pid` the
    process as its own namespace numbers it (for lspid/sempid/...), `client` the
    identity SEM_UNDO records and shm attachments belong to: one per process.
    Nobody checks these here: the daemon vouches for them (peer credentials)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    pid: int = 0
    client: str = ""

    @property
    def privileged(self) -> bool:
        """uid 0 has CAP_IPC_OWNER, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_IPC_LOCK."""
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


class Perm(msgspec.Struct, kw_only=True):
    """struct ipc_perm: key, owner, creator, mode bits (low 9 bits; shm adds
    SHM_DEST and SHM_LOCKED above them)."""

    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    seq: int = 0

    @classmethod
    def create(cls, key: int, flags: int, caller: Caller) -> Perm:
        return cls(
            key=key,
            uid=caller.uid,
            gid=caller.gid,
            cuid=caller.uid,
            cgid=caller.gid,
            mode=flags & 0o777,
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-table limits, Linux's defaults unless said otherwise. `shmmax` and
    `shmall` are bounded here (a segment lives in the home daemon's memory);
    `page_size` is the granularity of shm versions and of the interposer's syncs."""

    msgmax: int = 8192  # largest message, bytes (EINVAL above)
    msgmnb: int = 16384  # default queue capacity, bytes (qbytes)
    msgmni: int = 32000  # queues per table (ENOSPC above)
    semmsl: int = 32000  # semaphores per set
    semmns: int = 1024000000  # semaphores per table
    semopm: int = 500  # operations per semop (E2BIG above)
    semmni: int = 32000  # sets per table
    semvmx: int = 32767  # largest semaphore value (ERANGE above)
    semaem: int = 32767  # largest undo adjustment
    shmmax: int = 1 << 30  # largest segment, bytes
    shmmin: int = 1
    shmmni: int = 4096  # segments per table
    shmall: int = 1 << 20  # pages of all segments together
    page_size: int = 4096

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value > 2**62:
                raise ValueError(f"limit {name}={value!r} must be a positive int")
        if self.semvmx > INT_MAX or self.msgmax > INT_MAX:
            raise ValueError("semvmx and msgmax must fit a C int")


def ipc_error(err: int, what: str) -> OSError:
    """The OSError (with its Python subclass) for an errno, saying what failed."""
    return OSError(err, f"{os.strerror(err)}: {what}")


def denied(perm: Perm, caller: Caller, flag: int) -> bool:
    """True when `caller` lacks the access `flag` asks (rwx bits in any triplet,
    e.g. S_IRUGO, S_IWUGO or a get's mode argument): ipc/util.c:ipcperms."""
    requested = (flag >> 6) | (flag >> 3) | flag
    granted = perm.mode
    if caller.uid in (perm.cuid, perm.uid):
        granted >>= 6
    elif caller.in_group(perm.cgid) or caller.in_group(perm.gid):
        granted >>= 3
    return bool(requested & ~granted & 0o7) and not caller.privileged


def check_access(perm: Perm, caller: Caller, flag: int, what: str) -> None:
    """EACCES unless `caller` has the access `flag` asks."""
    if denied(perm, caller, flag):
        raise ipc_error(errno.EACCES, what)


def check_owner(perm: Perm, caller: Caller, what: str) -> None:
    """EPERM unless `caller` is the owner, the creator or privileged (IPC_SET,
    IPC_RMID, SHM_LOCK): ipc/util.c:ipcctl_obtain_check."""
    if not (caller.uid in (perm.uid, perm.cuid) or caller.privileged):
        raise ipc_error(errno.EPERM, what)
