"""The Python face of cluster IPC: MessageQueue, SemaphoreSet, SharedMemory.

Written against a Transport: `call(op, **args) -> value`, where `op` is an op name of
ssi.ipc.ops (`ipc.msgsnd`, ...) and `args` its fields, plus two local-only keywords
for blocking ops: `timeout` (seconds, None: forever) and `interrupt` (an Interrupt).
A transport raises OSError with the kernel's errno; TimeoutError (errno EAGAIN) when
`timeout` expired; InterruptedError (EINTR) when `interrupt` was set. An exception
raised in the waiting thread (KeyboardInterrupt, an exception from a signal handler)
cancels the parked op at its home before it propagates.

    q = MessageQueue.create(transport, key=0x5151, mode=0o600)
    q.send(b"job 1", mtype=2)
    m = q.receive(mtype=-2, timeout=5.0)      # Message(mtype=2, data=b"job 1")
    s = SemaphoreSet.create(transport, 1); s.release(); s.acquire(undo=True)
    shm = SharedMemory.create(transport, 4096); shm.write(0, b"hi"); shm.read(0, 2)
    with shm.attach() as a: a.buf[0:2] = b"yo"; a.sync()
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ssi.ipc.constants import (
    GETALL,
    GETNCNT,
    GETPID,
    GETVAL,
    GETZCNT,
    INT_MAX,
    IPC_CREAT,
    IPC_EXCL,
    IPC_NOWAIT,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    MSG_COPY,
    MSG_EXCEPT,
    MSG_NOERROR,
    SEM_UNDO,
    SETALL,
    SETVAL,
    SHM_LOCK,
    SHM_RDONLY,
    SHM_UNLOCK,
)
from ssi.ipc.ops import (
    Message,
    MsqidDs,
    PermSet,
    SemBuf,
    SemidDs,
    ShmAttach,
    ShmidDs,
    ShmPages,
    ShmWritten,
)
from ssi.ipc.shm import Mirror

__all__ = [
    "Transport",
    "AsyncTransport",
    "Interrupt",
    "MessageQueue",
    "SemaphoreSet",
    "SharedMemory",
    "Attachment",
    "exit_client",
]


class Interrupt:
    """Set it (from any thread) to make the blocked calls given it fail with EINTR.
    Not for signal handlers: raise an exception there instead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb()

    def clear(self) -> None:
        with self._lock:
            self._set = False

    def is_set(self) -> bool:
        return self._set

    def subscribe(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Call `cb` when set (now, if already set); returns the unsubscriber."""
        with self._lock:
            self._callbacks.append(cb)
            already = self._set
        if already:
            cb()

        def unsubscribe() -> None:
            with self._lock:
                if cb in self._callbacks:
                    self._callbacks.remove(cb)

        return unsubscribe


class Transport(Protocol):
    def call(self, op: str, /, **args: Any) -> Any:
        """Run one op at its home and return its value (see the module doc)."""
        ...


class AsyncTransport(Protocol):
    async def call(self, op: str, /, **args: Any) -> Any:
        """As Transport.call, awaited."""
        ...


def exit_client(transport: Transport) -> None:
    """This client (process) is done: its SEM_UNDO adjustments are applied and its
    attachments detached, as at a process's exit."""
    transport.call("ipc.exit")


def _set_args(
    uid: int | None, gid: int | None, mode: int | None, qbytes: int | None = None
) -> PermSet:
    return PermSet(uid=uid, gid=gid, mode=mode, qbytes=qbytes)


def _get_flags(mode: int, exclusive: bool) -> int:
    return IPC_CREAT | (IPC_EXCL if exclusive else 0) | (mode & 0o777)


class MessageQueue:
    def __init__(self, transport: Transport, id: int) -> None:
        self.transport = transport
        self.id = id

    def __repr__(self) -> str:
        return f"MessageQueue(id={self.id})"

    @classmethod
    def get(cls, transport: Transport, key: int, flags: int = 0) -> MessageQueue:
        """msgget(key, flags)."""
        return cls(transport, transport.call("ipc.msgget", key=key, flags=flags))

    @classmethod
    def create(
        cls,
        transport: Transport,
        key: int = IPC_PRIVATE,
        mode: int = 0o600,
        *,
        exclusive: bool = False,
    ) -> MessageQueue:
        """The queue of `key`, created if missing (FileExistsError if `exclusive`)."""
        return cls.get(transport, key, _get_flags(mode, exclusive))

    def send(
        self,
        data: bytes,
        mtype: int = 1,
        *,
        block: bool = True,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        """msgsnd. A full queue blocks (BlockingIOError with block=False)."""
        self.transport.call(
            "ipc.msgsnd",
            id=self.id,
            mtype=mtype,
            data=bytes(data),
            flags=0 if block else IPC_NOWAIT,
            timeout=timeout,
            interrupt=interrupt,
        )

    def receive(
        self,
        mtype: int = 0,
        size: int = INT_MAX,
        *,
        block: bool = True,
        except_type: bool = False,
        truncate: bool = False,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> Message:
        """msgrcv: mtype 0 the first message, > 0 the first of that type (or, with
        except_type, the first of another), < 0 the lowest type <= |mtype|.
        A message longer than `size` is an OSError E2BIG unless `truncate`. No
        message: blocks (with block=False: OSError ENOMSG)."""
        flags = (
            (0 if block else IPC_NOWAIT)
            | (MSG_EXCEPT if except_type else 0)
            | (MSG_NOERROR if truncate else 0)
        )
        message: Message = self.transport.call(
            "ipc.msgrcv",
            id=self.id,
            size=size,
            mtype=mtype,
            flags=flags,
            timeout=timeout,
            interrupt=interrupt,
        )
        return message

    def peek(self, index: int, size: int = INT_MAX) -> Message:
        """The message at position `index` (from 0), left in the queue (MSG_COPY)."""
        message: Message = self.transport.call(
            "ipc.msgrcv",
            id=self.id,
            size=size,
            mtype=index,
            flags=MSG_COPY | IPC_NOWAIT,
        )
        return message

    def stat(self) -> MsqidDs:
        ds: MsqidDs = self.transport.call("ipc.msgctl", id=self.id, cmd=IPC_STAT)
        return ds

    def set(
        self,
        *,
        uid: int | None = None,
        gid: int | None = None,
        mode: int | None = None,
        qbytes: int | None = None,
    ) -> None:
        """IPC_SET: the fields given."""
        self.transport.call(
            "ipc.msgctl", id=self.id, cmd=IPC_SET, set=_set_args(uid, gid, mode, qbytes)
        )

    def remove(self) -> None:
        self.transport.call("ipc.msgctl", id=self.id, cmd=IPC_RMID)


SemOpArg = SemBuf | tuple[int, int] | tuple[int, int, int]


class SemaphoreSet:
    def __init__(self, transport: Transport, id: int) -> None:
        self.transport = transport
        self.id = id

    def __repr__(self) -> str:
        return f"SemaphoreSet(id={self.id})"

    @classmethod
    def get(
        cls, transport: Transport, key: int, nsems: int = 0, flags: int = 0
    ) -> SemaphoreSet:
        """semget(key, nsems, flags)."""
        return cls(
            transport, transport.call("ipc.semget", key=key, nsems=nsems, flags=flags)
        )

    @classmethod
    def create(
        cls,
        transport: Transport,
        nsems: int,
        key: int = IPC_PRIVATE,
        mode: int = 0o600,
        *,
        exclusive: bool = False,
    ) -> SemaphoreSet:
        return cls.get(transport, key, nsems, _get_flags(mode, exclusive))

    def op(
        self,
        *ops: SemOpArg,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        """semop/semtimedop: (num, op[, flags]) operations applied atomically."""
        sops = [op if isinstance(op, SemBuf) else SemBuf(*op) for op in ops]
        self.transport.call(
            "ipc.semop",
            id=self.id,
            sops=sops,
            timeout=timeout,
            interrupt=interrupt,
        )

    def acquire(
        self,
        num: int = 0,
        n: int = 1,
        *,
        undo: bool = True,
        block: bool = True,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        """Take `n` from semaphore `num` (P), given back at exit if `undo`."""
        flags = (SEM_UNDO if undo else 0) | (0 if block else IPC_NOWAIT)
        self.op((num, -n, flags), timeout=timeout, interrupt=interrupt)

    def release(self, num: int = 0, n: int = 1, *, undo: bool = True) -> None:
        """Give `n` to semaphore `num` (V); `undo` balances an acquire's undo."""
        self.op((num, n, SEM_UNDO if undo else 0))

    def wait_zero(
        self,
        num: int = 0,
        *,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        self.op((num, 0, 0), timeout=timeout, interrupt=interrupt)

    def _ctl(self, cmd: int, **args: Any) -> Any:
        return self.transport.call("ipc.semctl", id=self.id, cmd=cmd, **args)

    def value(self, num: int = 0) -> int:
        value: int = self._ctl(GETVAL, num=num)
        return value

    def set_value(self, num: int, value: int) -> None:
        self._ctl(SETVAL, num=num, value=value)

    def values(self) -> list[int]:
        values: list[int] = self._ctl(GETALL)
        return values

    def set_values(self, values: Iterable[int]) -> None:
        self._ctl(SETALL, values=list(values))

    def pid(self, num: int = 0) -> int:
        pid: int = self._ctl(GETPID, num=num)
        return pid

    def ncount(self, num: int = 0) -> int:
        n: int = self._ctl(GETNCNT, num=num)
        return n

    def zcount(self, num: int = 0) -> int:
        n: int = self._ctl(GETZCNT, num=num)
        return n

    def stat(self) -> SemidDs:
        ds: SemidDs = self._ctl(IPC_STAT)
        return ds

    def set(
        self, *, uid: int | None = None, gid: int | None = None, mode: int | None = None
    ) -> None:
        self._ctl(IPC_SET, set=_set_args(uid, gid, mode))

    def remove(self) -> None:
        self._ctl(IPC_RMID)


class SharedMemory:
    """A segment, read and written explicitly at its home (sequentially consistent),
    or attached as a local copy kept coherent at `sync()` (see ssi.ipc.shm)."""

    def __init__(self, transport: Transport, id: int) -> None:
        self.transport = transport
        self.id = id

    def __repr__(self) -> str:
        return f"SharedMemory(id={self.id})"

    @classmethod
    def get(
        cls, transport: Transport, key: int, size: int = 0, flags: int = 0
    ) -> SharedMemory:
        """shmget(key, size, flags)."""
        return cls(
            transport, transport.call("ipc.shmget", key=key, size=size, flags=flags)
        )

    @classmethod
    def create(
        cls,
        transport: Transport,
        size: int,
        key: int = IPC_PRIVATE,
        mode: int = 0o600,
        *,
        exclusive: bool = False,
    ) -> SharedMemory:
        return cls.get(transport, key, size, _get_flags(mode, exclusive))

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.stat().segsz - offset
        data: bytes = self.transport.call(
            "ipc.shmread", id=self.id, offset=offset, length=length
        )
        return data

    def write(self, offset: int, data: bytes) -> int:
        """Write atomically; returns the segment's version after the write."""
        written: ShmWritten = self.transport.call(
            "ipc.shmwrite", id=self.id, offset=offset, data=bytes(data)
        )
        return written.version

    def attach(self, *, readonly: bool = False) -> Attachment:
        """shmat: a local copy filled from the home (see Attachment)."""
        flags = SHM_RDONLY if readonly else 0
        info: ShmAttach = self.transport.call("ipc.shmat", id=self.id, flags=flags)
        attachment = Attachment(self, info, readonly)
        try:
            attachment.pull()
        except BaseException:
            self.transport.call("ipc.shmdt", id=self.id)
            raise
        return attachment

    def stat(self) -> ShmidDs:
        ds: ShmidDs = self.transport.call("ipc.shmctl", id=self.id, cmd=IPC_STAT)
        return ds

    def set(
        self, *, uid: int | None = None, gid: int | None = None, mode: int | None = None
    ) -> None:
        self.transport.call(
            "ipc.shmctl", id=self.id, cmd=IPC_SET, set=_set_args(uid, gid, mode)
        )

    def lock(self, locked: bool = True) -> None:
        cmd = SHM_LOCK if locked else SHM_UNLOCK
        self.transport.call("ipc.shmctl", id=self.id, cmd=cmd)

    def remove(self) -> None:
        """IPC_RMID: destroyed now, or at the last detach."""
        self.transport.call("ipc.shmctl", id=self.id, cmd=IPC_RMID)


class Attachment:
    """An attached segment: `buf` is a private bytearray; `sync()` publishes the
    bytes this process changed and takes the ones others published (explicit-sync,
    see ssi.ipc.shm). Not coherent between syncs; `detach()` syncs first."""

    def __init__(self, segment: SharedMemory, info: ShmAttach, readonly: bool) -> None:
        self.segment = segment
        self.readonly = readonly
        self._mirror = Mirror(info.segsz, info.page_size)
        self.attached = True

    @property
    def buf(self) -> bytearray:
        return self._mirror.buf

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.attached:
            self.detach()

    def _check(self) -> None:
        if not self.attached:
            raise OSError(errno.EINVAL, "segment is detached")

    def push(self) -> None:
        self._check()
        if self.readonly:
            if self._mirror.dirty():
                raise PermissionError(errno.EACCES, "write to a read-only attachment")
            return
        call = self.segment.transport.call
        while runs := self._mirror.push_runs():
            written: ShmWritten = call(
                "ipc.shmpush", id=self.segment.id, runs=[list(r) for r in runs]
            )
            self._mirror.pushed(runs, written)

    def pull(self) -> None:
        self._check()
        start: int | None = 0
        while start is not None:
            answer: ShmPages = self.segment.transport.call(
                "ipc.shmpull", id=self.segment.id, **self._mirror.pull_args(start)
            )
            start = self._mirror.pulled(answer)

    def sync(self) -> None:
        """Publish this copy's changes, then take everyone else's."""
        self.push()
        self.pull()

    def detach(self) -> None:
        self._check()
        try:
            if not self.readonly:
                self.push()
        finally:
            self.attached = False
            self.segment.transport.call("ipc.shmdt", id=self.segment.id)
