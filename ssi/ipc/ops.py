"""What a home table is asked (ops), what it answers (results), and how it says
"done", "parked" and "these parked callers are now done" (outcomes). No I/O.

Every op is a frozen msgspec struct tagged `ipc.<verb>`, so the daemon can put it on
its wire unchanged and `op_from_args("ipc.msgsnd", id=.., mtype=.., data=..)` builds
one from keyword arguments. A table answers an op with

    Done(value, woken, changed)   the op completed; `woken` parked callers completed
                                  by it; `changed` objects to replicate
    Blocked(waiter)               the caller is parked as `waiter`; a later op's
                                  `woken` (or cancel()) completes it
    raise OSError(errno)          the op failed and changed nothing

A Wakeup carries the parked op's value, or its errno (EIDRM, E2BIG, EACCES, EINTR...).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ssi.ipc.constants import Kind
from ssi.ipc.model import Caller

__all__ = [
    "Op",
    "MsgGet",
    "MsgSnd",
    "MsgRcv",
    "MsgCtl",
    "SemBuf",
    "SemGet",
    "SemOp",
    "SemCtl",
    "SemSize",
    "ShmGet",
    "ShmAt",
    "ShmDt",
    "ShmCtl",
    "ShmRead",
    "ShmWrite",
    "ShmPush",
    "ShmPull",
    "ClientExit",
    "ListObjects",
    "PermSet",
    "Message",
    "PermInfo",
    "MsqidDs",
    "SemidDs",
    "ShmidDs",
    "MsgInfo",
    "SemInfo",
    "ShmInfo",
    "ShmAttach",
    "ShmPage",
    "ShmPages",
    "ShmWritten",
    "ObjectInfo",
    "Ref",
    "Wakeup",
    "Done",
    "Blocked",
    "Outcome",
    "Waiter",
    "OPS",
    "op_from_args",
]


class Op(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of every op; the tag is the op name."""


class PermSet(msgspec.Struct, frozen=True, kw_only=True):
    """IPC_SET's argument: the fields to change (None keeps the current value; the
    interposer always sends all of them, as the kernel reads the whole struct)."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    qbytes: int | None = None  # message queues only


class MsgGet(Op, frozen=True, tag="ipc.msgget"):
    key: int
    flags: int = 0


class MsgSnd(Op, frozen=True, tag="ipc.msgsnd"):
    id: int
    mtype: int
    data: bytes
    flags: int = 0


class MsgRcv(Op, frozen=True, tag="ipc.msgrcv"):
    id: int
    size: int  # msgsz: the largest text the caller takes
    mtype: int = 0
    flags: int = 0


class MsgCtl(Op, frozen=True, tag="ipc.msgctl"):
    id: int
    cmd: int
    set: PermSet | None = None


class SemBuf(msgspec.Struct, frozen=True, array_like=True):
    """struct sembuf: semaphore index, operation, flags (IPC_NOWAIT, SEM_UNDO)."""

    num: int
    op: int
    flags: int = 0


class SemGet(Op, frozen=True, tag="ipc.semget"):
    key: int
    nsems: int
    flags: int = 0


class SemOp(Op, frozen=True, tag="ipc.semop"):
    """semop/semtimedop. `timeout` (seconds) is only validated here: the daemon
    arms the timer and cancels the waiter when it fires."""

    id: int
    sops: tuple[SemBuf, ...]
    timeout: float | None = None


class SemCtl(Op, frozen=True, tag="ipc.semctl"):
    id: int
    cmd: int
    num: int = 0
    value: int = 0  # SETVAL
    values: tuple[int, ...] = ()  # SETALL
    set: PermSet | None = None


class SemSize(Op, frozen=True, tag="ipc.semsize"):
    """nsems of a set, unchecked (as world-readable /proc/sysvipc/sem): what the
    interposer needs to copy a SETALL array of unknown length."""

    id: int


class ShmGet(Op, frozen=True, tag="ipc.shmget"):
    key: int
    size: int
    flags: int = 0


class ShmAt(Op, frozen=True, tag="ipc.shmat"):
    """Counts an attachment of the caller's client. `inherit` re-registers an
    attachment a forked child got from its parent: no permission check, as fork()."""

    id: int
    flags: int = 0
    inherit: bool = False


class ShmDt(Op, frozen=True, tag="ipc.shmdt"):
    id: int


class ShmCtl(Op, frozen=True, tag="ipc.shmctl"):
    id: int
    cmd: int
    set: PermSet | None = None


class ShmRead(Op, frozen=True, tag="ipc.shmread"):
    id: int
    offset: int
    length: int


class ShmWrite(Op, frozen=True, tag="ipc.shmwrite"):
    id: int
    offset: int
    data: bytes


class ShmPush(Op, frozen=True, tag="ipc.shmpush"):
    """Several (offset, bytes) runs written as one atomic write (a mirror's diff)."""

    id: int
    runs: tuple[tuple[int, bytes], ...]


class ShmPull(Op, frozen=True, tag="ipc.shmpull"):
    """Pages written after version `since`, from page `start` on, at most
    `max_pages`, leaving out pages whose version the caller already has (`known`)."""

    id: int
    since: int = 0
    known: dict[int, int] = msgspec.field(default_factory=dict)
    start: int = 0
    max_pages: int = 256


class ClientExit(Op, frozen=True, tag="ipc.exit"):
    """The caller's client (process) is gone: its parked ops end (EINTR, in
    `woken`), its SEM_UNDO adjustments are applied, its segments detached."""


class ListObjects(Op, frozen=True, tag="ipc.list"):
    """Every object of the table (admin view; no permission check, like ipcs -a
    as root). `kind` narrows it."""

    kind: Kind | None = None


OPS: dict[str, type[Op]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        MsgGet,
        MsgSnd,
        MsgRcv,
        MsgCtl,
        SemGet,
        SemOp,
        SemCtl,
        SemSize,
        ShmGet,
        ShmAt,
        ShmDt,
        ShmCtl,
        ShmRead,
        ShmWrite,
        ShmPush,
        ShmPull,
        ClientExit,
        ListObjects,
    )
}


def op_from_args(name: str, args: dict[str, Any]) -> Op:
    """The op `name` from keyword arguments; ValueError for an unknown op or bad
    arguments (the daemon answers those with EINVAL)."""
    cls = OPS.get(name)
    if cls is None:
        raise ValueError(f"unknown ipc op {name!r}")
    try:
        return msgspec.convert(args, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad arguments for {name}: {exc}") from None


# ---- results -------------------------------------------------------------------


class Message(msgspec.Struct, frozen=True, array_like=True):
    mtype: int
    data: bytes


class PermInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    seq: int


class MsqidDs(msgspec.Struct, frozen=True, kw_only=True):
    perm: PermInfo
    stime: int
    rtime: int
    ctime: int
    cbytes: int
    qnum: int
    qbytes: int
    lspid: int
    lrpid: int


class SemidDs(msgspec.Struct, frozen=True, kw_only=True):
    perm: PermInfo
    otime: int
    ctime: int
    nsems: int


class ShmidDs(msgspec.Struct, frozen=True, kw_only=True):
    perm: PermInfo
    segsz: int
    atime: int
    dtime: int
    ctime: int
    cpid: int
    lpid: int
    nattch: int


class MsgInfo(msgspec.Struct, frozen=True, kw_only=True):
    msgmax: int
    msgmnb: int
    msgmni: int


class SemInfo(msgspec.Struct, frozen=True, kw_only=True):
    semmsl: int
    semmns: int
    semopm: int
    semmni: int
    semvmx: int
    semaem: int


class ShmInfo(msgspec.Struct, frozen=True, kw_only=True):
    shmmax: int
    shmmin: int
    shmmni: int
    shmall: int


class ShmAttach(msgspec.Struct, frozen=True, kw_only=True):
    segsz: int
    page_size: int
    version: int


class ShmPage(msgspec.Struct, frozen=True, array_like=True):
    index: int
    version: int
    data: bytes  # page_size bytes, fewer for the last page of the segment


class ShmPages(msgspec.Struct, frozen=True, kw_only=True):
    version: int  # the segment's version when this answer was made
    pages: tuple[ShmPage, ...]
    next: int | None  # the `start` of the next pull, None when complete


class ShmWritten(msgspec.Struct, frozen=True, kw_only=True):
    """After a write: the segment's version, and for each page written its version
    before and after. A mirror that knew `before` may adopt `after` for that page:
    nobody else wrote it in between."""

    version: int
    pages: tuple[tuple[int, int, int], ...]


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One line of `ssi ipc list`."""

    kind: Kind
    id: int
    key: int
    perm: PermInfo
    size: int  # msg: bytes queued; sem: nsems; shm: segsz
    count: int  # msg: messages; sem: 0; shm: nattch
    waiters: int


# ---- outcomes ------------------------------------------------------------------


class Ref(msgspec.Struct, frozen=True, array_like=True):
    """An object an op changed; `removed` when the op destroyed it."""

    kind: Kind
    id: int
    removed: bool = False


class Wakeup(msgspec.Struct, frozen=True, kw_only=True):
    """A parked op completed: its value, or errno != 0."""

    waiter: str
    value: Any = None
    errno: int = 0


class Done(msgspec.Struct, frozen=True, kw_only=True):
    value: Any = None
    woken: tuple[Wakeup, ...] = ()
    changed: tuple[Ref, ...] = ()


class Blocked(msgspec.Struct, frozen=True, kw_only=True):
    waiter: str
    changed: tuple[Ref, ...] = ()


Outcome = Done | Blocked


class Waiter(msgspec.Struct, kw_only=True):
    """A parked op, as it travels in a snapshot: enough to finish it elsewhere.
    `blocking` (semop only) is the (semnum, sem_op) that blocked it last, which
    GETNCNT/GETZCNT count."""

    id: str
    caller: Caller
    op: MsgSnd | MsgRcv | SemOp
    blocking: tuple[int, int] | None = None
