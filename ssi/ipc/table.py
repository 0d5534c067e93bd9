"""IpcTable: the System V objects one home node holds, driven op by op. Sans-IO.

    daemon ── apply(op, caller) ──▶ IpcTable ──▶ Done(value, woken, changed)
           ◀──────────────────────────────────   | Blocked(waiter, changed)
                                                  | raise OSError(errno)
    daemon ── cancel(waiter, reason) ─▶ Done(woken=[that waiter: EAGAIN | EINTR])
    daemon ── apply(ClientExit(), caller) ─▶ undo applied, segments detached
    daemon ── snapshot(kind, id) ─▶ bytes ─▶ replica/new home: restore(bytes)

The daemon answers `value` now, parks a Blocked caller under its waiter id and
answers it when a later outcome lists that id in `woken`; it replicates the objects
in `changed` before acknowledging. A failed op changed nothing.

Errors follow the kernel's order of checks (ipc/util.c, msg.c, sem.c, shm.c): e.g.
msgsnd checks size and id sign (EINVAL), the type (EINVAL), the id (EINVAL), write
permission (EACCES), then room (EAGAIN or park).

Ids: one id space per kind, from an IdAllocator (default 0, 1, 2, ...); a cluster
gives each home an allocator whose ids no other home produces (the object keeps its
id when it moves). Removed ids are not reused by the default allocator, so a stale
id gets EINVAL, as the kernel's sequence numbers give.
"""

from __future__ import annotations

import errno
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from ssi.ipc.constants import (
    GETALL,
    GETNCNT,
    GETPID,
    GETVAL,
    GETZCNT,
    INT_MAX,
    IPC_64,
    IPC_CREAT,
    IPC_EXCL,
    IPC_INFO,
    IPC_NOWAIT,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    MSG_COPY,
    MSG_EXCEPT,
    S_IRUGO,
    S_IWUGO,
    S_IXUGO,
    SEM_INFO,
    SETALL,
    SETVAL,
    SHM_DEST,
    SHM_EXEC,
    SHM_INFO,
    SHM_LOCK,
    SHM_LOCKED,
    SHM_RDONLY,
    SHM_UNLOCK,
    CancelReason,
    Kind,
)
from ssi.ipc.model import Caller, Limits, Perm, check_access, check_owner, ipc_error
from ssi.ipc.msg import MessageQueueObject, MessageQueueState
from ssi.ipc.ops import (
    Blocked,
    ClientExit,
    Done,
    ListObjects,
    MsgCtl,
    MsgGet,
    MsgInfo,
    MsgRcv,
    MsgSnd,
    ObjectInfo,
    Op,
    Outcome,
    PermInfo,
    PermSet,
    Ref,
    SemCtl,
    SemGet,
    SemInfo,
    SemOp,
    SemSize,
    ShmAt,
    ShmCtl,
    ShmDt,
    ShmGet,
    ShmInfo,
    ShmPull,
    ShmPush,
    ShmRead,
    ShmWrite,
    Waiter,
    Wakeup,
)
from ssi.ipc.sem import SemaphoreSetObject, SemaphoreSetState
from ssi.ipc.shm import SegmentObject, SegmentState

__all__ = ["IpcTable", "IdAllocator", "SequentialIds", "Snapshot", "SNAPSHOT_VERSION"]

SNAPSHOT_VERSION = 1

IpcObject = MessageQueueObject | SemaphoreSetObject | SegmentObject


class IdAllocator(Protocol):
    def __call__(self, kind: Kind) -> int:
        """A fresh id for a new object of `kind`, in [0, INT_MAX]; raise
        OSError(ENOSPC) when there is none left."""
        ...


class SequentialIds:
    """start, start + step, start + 2 step ... per kind: step N and starts 0..N-1
    give N homes disjoint ids without talking to each other."""

    def __init__(self, start: int = 0, step: int = 1) -> None:
        if start < 0 or step < 1:
            raise ValueError("start >= 0 and step >= 1")
        self._next = dict.fromkeys(Kind, start)
        self._step = step

    def __call__(self, kind: Kind) -> int:
        value = self._next[kind]
        if value > INT_MAX:
            raise ipc_error(errno.ENOSPC, f"no {kind.value} id left")
        self._next[kind] = value + self._step
        return value


class Snapshot(msgspec.Struct, kw_only=True):
    """What snapshot() encodes: one object's whole state, waiters included."""

    v: int
    state: MessageQueueState | SemaphoreSetState | SegmentState


_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_encoder = msgspec.msgpack.Encoder()


def _check_key(key: int) -> None:
    if not -(2**31) <= key < 2**31:
        raise ipc_error(errno.EINVAL, f"key {key} is not a key_t")


def _cmd(cmd: int) -> int:
    return cmd & ~IPC_64


class IpcTable:
    """The objects of one home. Not thread-safe: the daemon serialises calls."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        name: str = "ipc",
        ids: IdAllocator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or Limits()
        self.name = name
        self._ids: IdAllocator = ids or SequentialIds()
        self._clock = clock
        self._objects: dict[Kind, dict[int, Any]] = {k: {} for k in Kind}
        self._keys: dict[Kind, dict[int, int]] = {k: {} for k in Kind}
        self._waiting: dict[str, Ref] = {}
        self._waiter_seq = itertools.count(1)
        self._handlers: dict[type[Op], Callable[[Any, Caller, str | None], Outcome]]
        self._handlers = {
            MsgGet: self._msgget,
            MsgSnd: self._msgsnd,
            MsgRcv: self._msgrcv,
            MsgCtl: self._msgctl,
            SemGet: self._semget,
            SemOp: self._semop,
            SemCtl: self._semctl,
            SemSize: self._semsize,
            ShmGet: self._shmget,
            ShmAt: self._shmat,
            ShmDt: self._shmdt,
            ShmCtl: self._shmctl,
            ShmRead: self._shmread,
            ShmWrite: self._shmwrite,
            ShmPush: self._shmpush,
            ShmPull: self._shmpull,
            ClientExit: self._exit,
            ListObjects: self._list,
        }

    # ---- entry points ----------------------------------------------------------

    def apply(self, op: Op, caller: Caller, *, waiter: str | None = None) -> Outcome:
        """Run one op for `caller`. `waiter` names the caller if it parks (default:
        a fresh `<name>-<n>`); it must not be parked already."""
        handler = self._handlers.get(type(op))
        if handler is None:
            raise ipc_error(errno.EINVAL, f"unknown op {type(op).__name__}")
        if waiter is not None and waiter in self._waiting:
            raise ValueError(f"waiter {waiter!r} is already parked")
        outcome = handler(op, caller, waiter)
        if isinstance(outcome, Blocked):
            self._waiting[outcome.waiter] = outcome.changed[0]
        else:
            for w in outcome.woken:
                self._waiting.pop(w.waiter, None)
        return outcome

    def cancel(
        self, waiter: str, reason: CancelReason = CancelReason.INTERRUPT
    ) -> Done | None:
        """Stop a parked op: its Wakeup carries EAGAIN (timeout) or EINTR; None when
        `waiter` is not parked here (it completed, or never was)."""
        ref = self._waiting.pop(waiter, None)
        if ref is None:
            return None
        obj = self._objects[ref.kind][ref.id]
        dropped = obj.drop_waiter(waiter)
        assert dropped is not None, waiter
        err = errno.EAGAIN if reason is CancelReason.TIMEOUT else errno.EINTR
        return Done(woken=(Wakeup(waiter=waiter, errno=err),), changed=(ref,))

    def exit(self, client: str) -> Done:
        """The process `client` is gone (see ClientExit)."""
        outcome = self._exit(ClientExit(), Caller(uid=0, gid=0, client=client), None)
        assert isinstance(outcome, Done)
        return outcome

    def waiter(self, waiter: str) -> Waiter | None:
        ref = self._waiting.get(waiter)
        if ref is None:
            return None
        for w in self._objects[ref.kind][ref.id].waiters():
            if w.id == waiter:
                result: Waiter = w
                return result
        return None

    def waiters(self) -> list[Waiter]:
        return [w for objs in self._objects.values() for o in objs.values()
                for w in o.waiters()]  # fmt: skip

    def find(self, kind: Kind, key: int) -> int | None:
        """The id of the live object with `key`, if this table holds it."""
        return self._keys[kind].get(key)

    def has(self, kind: Kind, id: int) -> bool:
        return id in self._objects[kind]

    def refs(self) -> list[Ref]:
        return [Ref(k, i) for k, objs in self._objects.items() for i in sorted(objs)]

    def objects(self, kind: Kind | None = None) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        for k, objs in self._objects.items():
            if kind is not None and k is not kind:
                continue
            for obj in objs.values():
                out.append(self._info(obj))
        return out

    def message_queue(self, id: int) -> MessageQueueObject:
        obj = self._get(Kind.MSG, id)
        assert isinstance(obj, MessageQueueObject)
        return obj

    def semaphore_set(self, id: int) -> SemaphoreSetObject:
        obj = self._get(Kind.SEM, id)
        assert isinstance(obj, SemaphoreSetObject)
        return obj

    def segment(self, id: int) -> SegmentObject:
        obj = self._get(Kind.SHM, id)
        assert isinstance(obj, SegmentObject)
        return obj

    # ---- snapshots -------------------------------------------------------------

    def snapshot(self, kind: Kind, id: int, *, since: int | None = None) -> bytes:
        """One object's whole state (msgpack), parked waiters included. For a
        segment, `since` makes it a delta of the pages written after that version."""
        obj = self._get(kind, id)
        state = obj.state(since) if isinstance(obj, SegmentObject) else obj.state()
        return _encoder.encode(Snapshot(v=SNAPSHOT_VERSION, state=state))

    def restore(self, data: bytes) -> Ref:
        """Install (or refresh: a replica) the object a snapshot holds, its waiters
        parked here under their ids. ValueError for a bad snapshot or a clash
        with another object's key or with a waiter id parked elsewhere."""
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"bad ipc snapshot: {exc}") from None
        if snap.v != SNAPSHOT_VERSION:
            raise ValueError(f"ipc snapshot version {snap.v}")
        state = snap.state
        obj: IpcObject
        if isinstance(state, MessageQueueState):
            obj = MessageQueueObject.from_state(state)
        elif isinstance(state, SemaphoreSetState):
            obj = SemaphoreSetObject.from_state(state)
        else:
            old = self._objects[Kind.SHM].get(state.id)
            if state.since is not None:
                if old is None:
                    raise ValueError(f"delta of segment {state.id}, not held here")
                old.merge(state)
                self._index_key(old)
                return Ref(Kind.SHM, state.id)
            obj = SegmentObject.from_state(state)
        ref = Ref(obj.kind, obj.id)
        old_obj = self._objects[obj.kind].get(obj.id)
        key = obj.perm.key
        holder = self._keys[obj.kind].get(key)
        if key != IPC_PRIVATE and holder is not None and holder != obj.id:
            raise ValueError(f"key {key} is held by {obj.kind.value} {holder}")
        for w in obj.waiters():
            where = self._waiting.get(w.id)
            if where is not None and where != ref:
                raise ValueError(f"waiter {w.id} is parked on another object")
        if old_obj is not None:
            self._unindex(old_obj)
        self._objects[obj.kind][obj.id] = obj
        self._index_key(obj)
        for w in obj.waiters():
            self._waiting[w.id] = ref
        return ref

    def evict(self, kind: Kind, id: int) -> bytes:
        """snapshot() and forget the object without waking anyone: its new home
        restores it, waiters included."""
        data = self.snapshot(kind, id)
        self.drop(kind, id)
        return data

    def drop(self, kind: Kind, id: int) -> None:
        """Forget an object silently (a replica that is no longer one)."""
        obj = self._objects[kind].pop(id, None)
        if obj is not None:
            self._unindex(obj)

    # ---- internals -------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock())

    def _park(self, waiter: str | None) -> Callable[[], str]:
        def name() -> str:
            return (
                waiter
                if waiter is not None
                else f"{self.name}-{next(self._waiter_seq)}"
            )

        return name

    def _get(self, kind: Kind, id: int) -> Any:
        obj = self._objects[kind].get(id)
        if obj is None:
            raise ipc_error(errno.EINVAL, f"no {kind.value} object with id {id}")
        return obj

    def _index_key(self, obj: IpcObject) -> None:
        if obj.perm.key != IPC_PRIVATE:
            self._keys[obj.kind][obj.perm.key] = obj.id

    def _unindex(self, obj: IpcObject) -> None:
        if self._keys[obj.kind].get(obj.perm.key) == obj.id:
            del self._keys[obj.kind][obj.perm.key]
        for w in obj.waiters():
            self._waiting.pop(w.id, None)

    def _new_id(self, kind: Kind) -> int:
        while True:
            id = self._ids(kind)
            if id not in self._objects[kind]:
                return id

    def _ipcget(
        self,
        kind: Kind,
        key: int,
        flags: int,
        caller: Caller,
        more_checks: Callable[[Any], None],
        create: Callable[[], IpcObject],
    ) -> Done:
        """ipc/util.c:ipcget: create, or find by key and check."""
        _check_key(key)
        if key != IPC_PRIVATE:
            id = self._keys[kind].get(key)
            if id is not None:
                if flags & IPC_CREAT and flags & IPC_EXCL:
                    raise ipc_error(errno.EEXIST, f"{kind.value} key {key:#x}")
                obj = self._objects[kind][id]
                more_checks(obj)
                check_access(obj.perm, caller, flags, f"{kind.value} key {key:#x}")
                return Done(value=id)
            if not flags & IPC_CREAT:
                raise ipc_error(errno.ENOENT, f"{kind.value} key {key:#x}")
        obj = create()
        self._objects[kind][obj.id] = obj
        self._index_key(obj)
        return Done(value=obj.id, changed=(Ref(kind, obj.id),))

    def _remove(self, obj: IpcObject) -> tuple[Wakeup, ...]:
        """IPC_RMID's end: parked callers get EIDRM, the id is gone."""
        woken: tuple[Wakeup, ...] = ()
        if not isinstance(obj, SegmentObject):
            woken = tuple(obj.remove_all_waiters(errno.EIDRM))
        self._unindex(obj)
        del self._objects[obj.kind][obj.id]
        return woken

    def _info(self, obj: IpcObject) -> ObjectInfo:
        perm = PermInfo(**msgspec.structs.asdict(obj.perm))
        if isinstance(obj, MessageQueueObject):
            size, count = obj.cbytes, obj.qnum
        elif isinstance(obj, SemaphoreSetObject):
            size, count = obj.nsems, 0
        else:
            size, count = obj.segsz, obj.nattch
        return ObjectInfo(
            kind=obj.kind,
            id=obj.id,
            key=obj.perm.key,
            perm=perm,
            size=size,
            count=count,
            waiters=len(obj.waiters()),
        )

    @staticmethod
    def _set_fields(change: PermSet | None) -> PermSet:
        if change is None:
            raise ipc_error(errno.EINVAL, "IPC_SET without values")
        for name in ("uid", "gid"):
            value = getattr(change, name)
            if value is not None and not 0 <= value < 2**32 - 1:
                raise ipc_error(errno.EINVAL, f"IPC_SET {name} {value}")
        return change

    # ---- message queues --------------------------------------------------------

    def _msgget(self, op: MsgGet, caller: Caller, _: str | None) -> Outcome:
        def create() -> IpcObject:
            if len(self._objects[Kind.MSG]) >= self.limits.msgmni:
                raise ipc_error(errno.ENOSPC, "msgmni queues exist")
            perm = Perm.create(op.key, op.flags, caller)
            return MessageQueueObject(
                self._new_id(Kind.MSG), perm, self.limits.msgmnb, self._now()
            )

        return self._ipcget(Kind.MSG, op.key, op.flags, caller, lambda o: None, create)

    def _msgsnd(self, op: MsgSnd, caller: Caller, waiter: str | None) -> Outcome:
        if len(op.data) > self.limits.msgmax or op.id < 0:
            raise ipc_error(
                errno.EINVAL,
                f"message of {len(op.data)} bytes (msgmax {self.limits.msgmax})",
            )
        if op.mtype < 1:
            raise ipc_error(errno.EINVAL, f"message type {op.mtype}")
        q = self._get(Kind.MSG, op.id)
        ref = Ref(Kind.MSG, q.id)
        result = q.send(caller, op, self._now(), self._park(waiter))
        if isinstance(result, Waiter):
            return Blocked(waiter=result.id, changed=(ref,))
        return Done(woken=tuple(result), changed=(ref,))

    def _msgrcv(self, op: MsgRcv, caller: Caller, waiter: str | None) -> Outcome:
        if op.id < 0 or op.size < 0:
            raise ipc_error(errno.EINVAL, f"msgrcv size {op.size}")
        if op.flags & MSG_COPY and (op.flags & MSG_EXCEPT or not op.flags & IPC_NOWAIT):
            raise ipc_error(errno.EINVAL, "MSG_COPY needs IPC_NOWAIT, not MSG_EXCEPT")
        q = self._get(Kind.MSG, op.id)
        ref = Ref(Kind.MSG, q.id)
        result = q.receive(caller, op, self.limits, self._now(), self._park(waiter))
        if isinstance(result, Waiter):
            return Blocked(waiter=result.id, changed=(ref,))
        message, woken = result
        changed = () if op.flags & MSG_COPY else (ref,)
        return Done(value=message, woken=tuple(woken), changed=changed)

    def _msgctl(self, op: MsgCtl, caller: Caller, _: str | None) -> Outcome:
        cmd = _cmd(op.cmd)
        if op.id < 0 or cmd < 0:
            raise ipc_error(errno.EINVAL, f"msgctl id {op.id} cmd {op.cmd}")
        if cmd == IPC_INFO:
            lim = self.limits
            return Done(
                value=MsgInfo(msgmax=lim.msgmax, msgmnb=lim.msgmnb, msgmni=lim.msgmni)
            )
        if cmd not in (IPC_STAT, IPC_SET, IPC_RMID):
            raise ipc_error(errno.EINVAL, f"msgctl command {op.cmd}")
        q = self._get(Kind.MSG, op.id)
        ref = Ref(Kind.MSG, q.id)
        if cmd == IPC_STAT:
            check_access(q.perm, caller, S_IRUGO, f"IPC_STAT of queue {q.id}")
            return Done(value=q.stat())
        check_owner(q.perm, caller, f"msgctl of queue {q.id}")
        if cmd == IPC_RMID:
            return Done(
                woken=self._remove(q), changed=(Ref(Kind.MSG, q.id, removed=True),)
            )
        change = self._set_fields(op.set)
        if change.qbytes is not None:
            if change.qbytes < 0:
                raise ipc_error(errno.EINVAL, f"qbytes {change.qbytes}")
            if change.qbytes > self.limits.msgmnb and not caller.privileged:
                raise ipc_error(
                    errno.EPERM, f"qbytes above msgmnb {self.limits.msgmnb}"
                )
        return Done(woken=tuple(q.set(change, self._now())), changed=(ref,))

    # ---- semaphore sets --------------------------------------------------------

    def _semget(self, op: SemGet, caller: Caller, _: str | None) -> Outcome:
        lim = self.limits
        if op.nsems < 0 or op.nsems > lim.semmsl:
            raise ipc_error(errno.EINVAL, f"nsems {op.nsems} (semmsl {lim.semmsl})")

        def more_checks(s: SemaphoreSetObject) -> None:
            if op.nsems > s.nsems:
                raise ipc_error(errno.EINVAL, f"set {s.id} has {s.nsems} semaphores")

        def create() -> IpcObject:
            if op.nsems == 0:
                raise ipc_error(errno.EINVAL, "a new set needs nsems > 0")
            used = sum(s.nsems for s in self._objects[Kind.SEM].values())
            if used + op.nsems > lim.semmns:
                raise ipc_error(errno.ENOSPC, "semmns semaphores exist")
            if len(self._objects[Kind.SEM]) >= lim.semmni:
                raise ipc_error(errno.ENOSPC, "semmni sets exist")
            perm = Perm.create(op.key, op.flags, caller)
            return SemaphoreSetObject(
                self._new_id(Kind.SEM), perm, op.nsems, self._now()
            )

        return self._ipcget(Kind.SEM, op.key, op.flags, caller, more_checks, create)

    def _semop(self, op: SemOp, caller: Caller, waiter: str | None) -> Outcome:
        if len(op.sops) > self.limits.semopm:
            raise ipc_error(
                errno.E2BIG, f"{len(op.sops)} operations (semopm {self.limits.semopm})"
            )
        if len(op.sops) < 1 or op.id < 0:
            raise ipc_error(errno.EINVAL, "semop needs an operation and an id >= 0")
        if op.timeout is not None and not (
            math.isfinite(op.timeout) and op.timeout >= 0
        ):
            raise ipc_error(errno.EINVAL, f"timeout {op.timeout}")
        for sop in op.sops:
            if not -32768 <= sop.op <= 32767:
                raise ipc_error(errno.EINVAL, f"sem_op {sop.op} is not a short")
        s = self._get(Kind.SEM, op.id)
        top = max(sop.num if sop.num >= 0 else 65536 for sop in op.sops)
        if top >= s.nsems:
            raise ipc_error(errno.EFBIG, f"semaphore {top} of a set of {s.nsems}")
        alter = any(sop.op != 0 for sop in op.sops)
        check_access(
            s.perm, caller, S_IWUGO if alter else S_IRUGO, f"semop on set {s.id}"
        )
        ref = Ref(Kind.SEM, s.id)
        result = s.semop(caller, op, self.limits, self._now(), self._park(waiter))
        if isinstance(result, Waiter):
            return Blocked(waiter=result.id, changed=(ref,))
        return Done(woken=tuple(result), changed=(ref,))

    def _semsize(self, op: SemSize, caller: Caller, _: str | None) -> Outcome:
        if op.id < 0:
            raise ipc_error(errno.EINVAL, f"semaphore set id {op.id}")
        return Done(value=self._get(Kind.SEM, op.id).nsems)

    def _semctl(self, op: SemCtl, caller: Caller, _: str | None) -> Outcome:
        cmd = _cmd(op.cmd)
        lim = self.limits
        if op.id < 0:
            raise ipc_error(errno.EINVAL, f"semaphore set id {op.id}")
        if cmd in (IPC_INFO, SEM_INFO):
            return Done(
                value=SemInfo(
                    semmsl=lim.semmsl,
                    semmns=lim.semmns,
                    semopm=lim.semopm,
                    semmni=lim.semmni,
                    semvmx=lim.semvmx,
                    semaem=lim.semaem,
                )
            )
        if cmd == SETVAL and not 0 <= op.value <= lim.semvmx:
            raise ipc_error(errno.ERANGE, f"value {op.value} (semvmx {lim.semvmx})")
        if cmd not in (
            IPC_STAT, IPC_SET, IPC_RMID, GETALL, GETVAL, GETPID, GETNCNT, GETZCNT,
            SETALL, SETVAL,
        ):  # fmt: skip
            raise ipc_error(errno.EINVAL, f"semctl command {op.cmd}")
        s = self._get(Kind.SEM, op.id)
        ref = Ref(Kind.SEM, s.id)
        what = f"semctl on set {s.id}"
        now = self._now()
        if cmd == IPC_STAT:
            check_access(s.perm, caller, S_IRUGO, what)
            return Done(value=s.stat())
        if cmd in (IPC_SET, IPC_RMID):
            check_owner(s.perm, caller, what)
            if cmd == IPC_RMID:
                removed = Ref(Kind.SEM, s.id, removed=True)
                return Done(woken=self._remove(s), changed=(removed,))
            s.set(self._set_fields(op.set), now)
            return Done(changed=(ref,))
        if cmd == SETVAL:
            if not 0 <= op.num < s.nsems:
                raise ipc_error(errno.EINVAL, f"semaphore {op.num} of {s.nsems}")
            check_access(s.perm, caller, S_IWUGO, what)
            s.setval(caller, op.num, op.value, now)
            return Done(woken=tuple(s.update(lim, now)), changed=(ref,))
        check_access(s.perm, caller, S_IWUGO if cmd == SETALL else S_IRUGO, what)
        if cmd == GETALL:
            return Done(value=list(s.values))
        if cmd == SETALL:
            if len(op.values) != s.nsems:
                raise ipc_error(
                    errno.EINVAL, f"{len(op.values)} values for {s.nsems} semaphores"
                )
            if any(not 0 <= v <= lim.semvmx for v in op.values):
                raise ipc_error(errno.ERANGE, f"a value above semvmx {lim.semvmx}")
            s.setall(caller, op.values, now)
            return Done(woken=tuple(s.update(lim, now)), changed=(ref,))
        if not 0 <= op.num < s.nsems:
            raise ipc_error(errno.EINVAL, f"semaphore {op.num} of {s.nsems}")
        if cmd == GETVAL:
            return Done(value=s.values[op.num])
        if cmd == GETPID:
            return Done(value=s.pids[op.num])
        return Done(value=s.count(op.num, zero=cmd == GETZCNT))

    # ---- shared memory ---------------------------------------------------------

    def _shmget(self, op: ShmGet, caller: Caller, _: str | None) -> Outcome:
        lim = self.limits

        def more_checks(seg: SegmentObject) -> None:
            if op.size > seg.segsz:
                raise ipc_error(errno.EINVAL, f"segment {seg.id} is {seg.segsz} bytes")

        def create() -> IpcObject:
            if not lim.shmmin <= op.size <= lim.shmmax:
                raise ipc_error(
                    errno.EINVAL, f"size {op.size} outside [{lim.shmmin}, {lim.shmmax}]"
                )
            pages = -(-op.size // lim.page_size)
            used = sum(s.npages for s in self._objects[Kind.SHM].values())
            if used + pages > lim.shmall:
                raise ipc_error(errno.ENOSPC, f"shmall {lim.shmall} pages in use")
            if len(self._objects[Kind.SHM]) >= lim.shmmni:
                raise ipc_error(errno.ENOSPC, "shmmni segments exist")
            perm = Perm.create(op.key, op.flags, caller)
            return SegmentObject(
                self._new_id(Kind.SHM),
                perm,
                op.size,
                lim.page_size,
                caller.pid,
                self._now(),
            )

        return self._ipcget(Kind.SHM, op.key, op.flags, caller, more_checks, create)

    def _segment(self, id: int) -> SegmentObject:
        if id < 0:
            raise ipc_error(errno.EINVAL, f"segment id {id}")
        seg: SegmentObject = self._get(Kind.SHM, id)
        return seg

    def _shmat(self, op: ShmAt, caller: Caller, _: str | None) -> Outcome:
        seg = self._segment(op.id)
        if not op.inherit:
            access = S_IRUGO if op.flags & SHM_RDONLY else S_IRUGO | S_IWUGO
            if op.flags & SHM_EXEC:
                access |= S_IXUGO
            check_access(seg.perm, caller, access, f"shmat of segment {seg.id}")
        seg.attaches[caller.client] = seg.attaches.get(caller.client, 0) + 1
        seg.atime = self._now()
        seg.lpid = caller.pid
        return Done(value=seg.attach_info(), changed=(Ref(Kind.SHM, seg.id),))

    def _detach(self, seg: SegmentObject, client: str, count: int, pid: int) -> Ref:
        left = seg.attaches.get(client, 0) - count
        if left > 0:
            seg.attaches[client] = left
        else:
            seg.attaches.pop(client, None)
        seg.dtime = self._now()
        seg.lpid = pid
        if seg.nattch == 0 and seg.removed:
            self._remove(seg)
            return Ref(Kind.SHM, seg.id, removed=True)
        return Ref(Kind.SHM, seg.id)

    def _shmdt(self, op: ShmDt, caller: Caller, _: str | None) -> Outcome:
        seg = self._segment(op.id)
        if seg.attaches.get(caller.client, 0) < 1:
            raise ipc_error(errno.EINVAL, f"segment {seg.id} is not attached")
        return Done(changed=(self._detach(seg, caller.client, 1, caller.pid),))

    def _shmctl(self, op: ShmCtl, caller: Caller, _: str | None) -> Outcome:
        cmd = _cmd(op.cmd)
        if op.id < 0 or cmd < 0:
            raise ipc_error(errno.EINVAL, f"shmctl id {op.id} cmd {op.cmd}")
        lim = self.limits
        if cmd in (IPC_INFO, SHM_INFO):
            return Done(
                value=ShmInfo(
                    shmmax=lim.shmmax,
                    shmmin=lim.shmmin,
                    shmmni=lim.shmmni,
                    shmall=lim.shmall,
                )
            )
        if cmd not in (IPC_STAT, IPC_SET, IPC_RMID, SHM_LOCK, SHM_UNLOCK):
            raise ipc_error(errno.EINVAL, f"shmctl command {op.cmd}")
        seg = self._segment(op.id)
        ref = Ref(Kind.SHM, seg.id)
        what = f"shmctl on segment {seg.id}"
        if cmd == IPC_STAT:
            check_access(seg.perm, caller, S_IRUGO, what)
            return Done(value=seg.stat())
        check_owner(seg.perm, caller, what)
        if cmd == SHM_LOCK:
            seg.perm.mode |= SHM_LOCKED
            return Done(changed=(ref,))
        if cmd == SHM_UNLOCK:
            seg.perm.mode &= ~SHM_LOCKED
            return Done(changed=(ref,))
        if cmd == IPC_SET:
            seg.set(self._set_fields(op.set), self._now())
            return Done(changed=(ref,))
        if seg.nattch == 0:
            self._remove(seg)
            return Done(changed=(Ref(Kind.SHM, seg.id, removed=True),))
        # removed but attached: private key, destroyed at the last detach
        self._unindex(seg)
        seg.perm.mode |= SHM_DEST
        seg.perm.key = IPC_PRIVATE
        return Done(changed=(ref,))

    def _shmread(self, op: ShmRead, caller: Caller, _: str | None) -> Outcome:
        seg = self._segment(op.id)
        check_access(seg.perm, caller, S_IRUGO, f"read of segment {seg.id}")
        return Done(value=seg.read(op.offset, op.length))

    def _shmwrite(self, op: ShmWrite, caller: Caller, _: str | None) -> Outcome:
        return self._shmpush(ShmPush(id=op.id, runs=((op.offset, op.data),)), caller, _)

    def _shmpush(self, op: ShmPush, caller: Caller, _: str | None) -> Outcome:
        seg = self._segment(op.id)
        check_access(seg.perm, caller, S_IWUGO, f"write of segment {seg.id}")
        written = seg.write(op.runs)
        changed = (Ref(Kind.SHM, seg.id),) if written.pages else ()
        return Done(value=written, changed=changed)

    def _shmpull(self, op: ShmPull, caller: Caller, _: str | None) -> Outcome:
        seg = self._segment(op.id)
        check_access(seg.perm, caller, S_IRUGO, f"read of segment {seg.id}")
        return Done(value=seg.pull(op.since, op.known, op.start, op.max_pages))

    # ---- clients and admin -----------------------------------------------------

    def _exit(self, op: ClientExit, caller: Caller, _: str | None) -> Outcome:
        client = caller.client
        woken: list[Wakeup] = []
        changed: list[Ref] = []
        now = self._now()
        for obj in list(self._objects[Kind.SEM].values()):
            mine = any(w.caller.client == client for w in obj.pending)
            if client in obj.undo or mine:
                woken.extend(obj.apply_undo(client, self.limits, now))
                changed.append(Ref(Kind.SEM, obj.id))
        for q in self._objects[Kind.MSG].values():
            for w in q.waiters():
                if w.caller.client == client:
                    q.drop_waiter(w.id)
                    woken.append(Wakeup(waiter=w.id, errno=errno.EINTR))
                    if Ref(Kind.MSG, q.id) not in changed:
                        changed.append(Ref(Kind.MSG, q.id))
        for seg in list(self._objects[Kind.SHM].values()):
            count = seg.attaches.get(client, 0)
            if count:
                changed.append(self._detach(seg, client, count, caller.pid))
        for w in woken:
            self._waiting.pop(w.waiter, None)
        return Done(woken=tuple(woken), changed=tuple(changed))

    def _list(self, op: ListObjects, caller: Caller, _: str | None) -> Outcome:
        return Done(value=self.objects(op.kind))
