"""A System V semaphore set as its home holds it: ipc/sem.c's rules, sans-IO.

semop applies its operations in order and atomically: all or none. Example: values
[1, 0]; ops [(0, -1), (1, -1)] cannot take semaphore 1, so semaphore 0 keeps its 1
and the caller parks (or gets EAGAIN if *that* operation, (1, -1), has IPC_NOWAIT).
An operation 0 waits until the value is 0; a result above semvmx, or an undo
adjustment outside [-semaem-1, semaem], is ERANGE.

Parked operations are retried after every change (a semop, SETVAL, SETALL, an undo
at exit), in arrival order, restarting from the first after each one that
completes: an earlier waiter always gets the first chance, a later one whose
operation fits is not held back by an earlier one that does not (Linux does the
same; it is FIFO, not starvation-proof).

SEM_UNDO: each successful operation with SEM_UNDO subtracts sem_op from the client's
adjustment of that semaphore; `exit(client)` adds the adjustments back, clamped to
[0, semvmx]. SETVAL clears every client's adjustment of that semaphore, SETALL all
of them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import msgspec

from ssi.ipc.constants import IPC_NOWAIT, SEM_UNDO, Kind
from ssi.ipc.model import Caller, Limits, Perm, ipc_error
from ssi.ipc.ops import PermInfo, PermSet, SemBuf, SemidDs, SemOp, Waiter, Wakeup

__all__ = ["SemaphoreSetObject", "SemaphoreSetState", "Undo"]


class Undo(msgspec.Struct, kw_only=True):
    """One client's SEM_UNDO adjustments on one set; `pid` is the process that
    gets the sempid when they are applied."""

    pid: int
    adj: list[int]


class SemaphoreSetState(msgspec.Struct, kw_only=True, tag="sem"):
    id: int
    perm: Perm
    otime: int
    ctime: int
    values: list[int]
    pids: list[int]
    undo: dict[str, Undo]
    pending: list[Waiter]


Park = Callable[[], str]


class _Blocks(Exception):
    """Internal: the operation at `index` cannot proceed now."""

    def __init__(self, index: int) -> None:
        self.index = index


class SemaphoreSetObject:
    kind = Kind.SEM

    def __init__(self, id: int, perm: Perm, nsems: int, now: int) -> None:
        self.id = id
        self.perm = perm
        self.otime = 0
        self.ctime = now
        self.values = [0] * nsems
        self.pids = [0] * nsems
        self.undo: dict[str, Undo] = {}
        self.pending: list[Waiter] = []

    @property
    def nsems(self) -> int:
        return len(self.values)

    # ---- the atomic step -------------------------------------------------------

    def _attempt(
        self, caller: Caller, sops: tuple[SemBuf, ...], limits: Limits
    ) -> tuple[dict[int, int], dict[int, int]]:
        """The new values and undo adjustments if all of `sops` apply now, in
        order (an operation sees the ones before it); raises _Blocks or ERANGE.
        Changes nothing."""
        values: dict[int, int] = {}
        record = self.undo.get(caller.client)
        adj: dict[int, int] = {}
        for index, sop in enumerate(sops):
            current = values.get(sop.num, self.values[sop.num])
            if sop.op == 0:
                if current != 0:
                    raise _Blocks(index)
                continue
            result = current + sop.op
            if result < 0:
                raise _Blocks(index)
            if result > limits.semvmx:
                raise ipc_error(
                    errno.ERANGE, f"semaphore {sop.num} would exceed {limits.semvmx}"
                )
            if sop.flags & SEM_UNDO:
                before = adj.get(
                    sop.num, record.adj[sop.num] if record is not None else 0
                )
                undo = before - sop.op
                if undo < -limits.semaem - 1 or undo > limits.semaem:
                    raise ipc_error(
                        errno.ERANGE, f"undo adjustment of semaphore {sop.num}"
                    )
                adj[sop.num] = undo
            values[sop.num] = result
        return values, adj

    def _commit(
        self,
        caller: Caller,
        sops: tuple[SemBuf, ...],
        values: dict[int, int],
        adj: dict[int, int],
        now: int,
    ) -> None:
        for num, value in values.items():
            self.values[num] = value
        for sop in sops:
            self.pids[sop.num] = caller.pid
        if adj:
            record = self.undo.get(caller.client)
            if record is None:
                record = self.undo[caller.client] = Undo(
                    pid=caller.pid, adj=[0] * self.nsems
                )
            record.pid = caller.pid
            for num, value in adj.items():
                record.adj[num] = value
        self.otime = now

    # ---- operations ------------------------------------------------------------

    def semop(
        self, caller: Caller, op: SemOp, limits: Limits, now: int, park: Park
    ) -> list[Wakeup] | Waiter:
        """semop after the table's checks (sizes, EFBIG, EACCES): the wakeups it
        caused, or the parked caller (`park()` names it)."""
        try:
            values, adj = self._attempt(caller, op.sops, limits)
        except _Blocks as b:
            blocking = op.sops[b.index]
            if blocking.flags & IPC_NOWAIT:
                raise ipc_error(
                    errno.EAGAIN, f"semaphore {blocking.num} of set {self.id}"
                ) from None
            waiter = Waiter(
                id=park(), caller=caller, op=op, blocking=(blocking.num, blocking.op)
            )
            self.pending.append(waiter)
            return waiter
        self._commit(caller, op.sops, values, adj, now)
        return self.update(limits, now)

    def update(self, limits: Limits, now: int) -> list[Wakeup]:
        """Retry the parked operations after a change (ipc/sem.c:update_queue):
        first to last, from the first again after each that completes."""
        woken: list[Wakeup] = []
        progress = True
        while progress:
            progress = False
            for waiter in list(self.pending):
                op = waiter.op
                assert isinstance(op, SemOp)
                try:
                    values, adj = self._attempt(waiter.caller, op.sops, limits)
                except _Blocks as b:
                    sop = op.sops[b.index]
                    if sop.flags & IPC_NOWAIT:
                        # now blocked by an operation that may not wait: as Linux
                        self.pending.remove(waiter)
                        woken.append(Wakeup(waiter=waiter.id, errno=errno.EAGAIN))
                    else:
                        waiter.blocking = (sop.num, sop.op)
                    continue
                except OSError as exc:
                    self.pending.remove(waiter)
                    woken.append(Wakeup(waiter=waiter.id, errno=exc.errno or 0))
                    continue
                self.pending.remove(waiter)
                self._commit(waiter.caller, op.sops, values, adj, now)
                woken.append(Wakeup(waiter=waiter.id, value=None))
                progress = True
                break
        return woken

    def count(self, num: int, zero: bool) -> int:
        """GETZCNT (zero) or GETNCNT: parked callers whose blocking operation is a
        wait-for-zero, resp. a decrement, on semaphore `num` (SUSv3, Linux >= 3.16)."""
        n = 0
        for w in self.pending:
            if w.blocking is None or w.blocking[0] != num:
                continue
            if (w.blocking[1] == 0) if zero else (w.blocking[1] < 0):
                n += 1
        return n

    def setval(self, caller: Caller, num: int, value: int, now: int) -> None:
        for record in self.undo.values():
            record.adj[num] = 0
        self.values[num] = value
        self.pids[num] = caller.pid
        self.ctime = now

    def setall(self, caller: Caller, values: tuple[int, ...], now: int) -> None:
        for record in self.undo.values():
            record.adj = [0] * self.nsems
        self.values = list(values)
        self.pids = [caller.pid] * self.nsems
        self.ctime = now

    def apply_undo(self, client: str, limits: Limits, now: int) -> list[Wakeup]:
        """exit(): the client's parked operations end (EINTR), its adjustments are
        added back, clamped to [0, semvmx] (ipc/sem.c:exit_sem), and the parked
        operations of others are retried."""
        gone = [w for w in self.pending if w.caller.client == client]
        self.pending = [w for w in self.pending if w.caller.client != client]
        woken = [Wakeup(waiter=w.id, errno=errno.EINTR) for w in gone]
        record = self.undo.pop(client, None)
        if record is None:
            return woken
        for num, delta in enumerate(record.adj):
            if delta:
                self.values[num] = min(max(self.values[num] + delta, 0), limits.semvmx)
                self.pids[num] = record.pid
        return woken + self.update(limits, now)

    def set(self, change: PermSet, now: int) -> None:
        if change.uid is not None:
            self.perm.uid = change.uid
        if change.gid is not None:
            self.perm.gid = change.gid
        if change.mode is not None:
            self.perm.mode = (self.perm.mode & ~0o777) | (change.mode & 0o777)
        self.ctime = now

    def remove_all_waiters(self, err: int) -> list[Wakeup]:
        woken = [Wakeup(waiter=w.id, errno=err) for w in self.pending]
        self.pending.clear()
        return woken

    def waiters(self) -> list[Waiter]:
        return list(self.pending)

    def drop_waiter(self, waiter_id: str) -> Waiter | None:
        for w in self.pending:
            if w.id == waiter_id:
                self.pending.remove(w)
                return w
        return None

    def stat(self) -> SemidDs:
        return SemidDs(
            perm=PermInfo(**msgspec.structs.asdict(self.perm)),
            otime=self.otime,
            ctime=self.ctime,
            nsems=self.nsems,
        )

    # ---- snapshots -------------------------------------------------------------

    def state(self) -> SemaphoreSetState:
        return SemaphoreSetState(
            id=self.id,
            perm=msgspec.structs.replace(self.perm),
            otime=self.otime,
            ctime=self.ctime,
            values=list(self.values),
            pids=list(self.pids),
            undo={c: Undo(pid=u.pid, adj=list(u.adj)) for c, u in self.undo.items()},
            pending=list(self.pending),
        )

    @classmethod
    def from_state(cls, s: SemaphoreSetState) -> SemaphoreSetObject:
        if len(s.pids) != len(s.values) or any(
            len(u.adj) != len(s.values) for u in s.undo.values()
        ):
            raise ValueError("semaphore set snapshot with inconsistent sizes")
        obj = cls(s.id, msgspec.structs.replace(s.perm), len(s.values), s.ctime)
        obj.otime = s.otime
        obj.values = list(s.values)
        obj.pids = list(s.pids)
        obj.undo = {c: Undo(pid=u.pid, adj=list(u.adj)) for c, u in s.undo.items()}
        obj.pending = list(s.pending)
        return obj
