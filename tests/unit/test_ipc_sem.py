"""ssi.ipc semaphore sets: semget/semop/semctl rules, atomicity, undo, errnos."""

from __future__ import annotations

import errno

import pytest

from ssi.ipc import Blocked, Caller, CancelReason, Done, IpcTable, Limits
from ssi.ipc.constants import (
    GETALL,
    GETNCNT,
    GETPID,
    GETVAL,
    GETZCNT,
    IPC_CREAT,
    IPC_EXCL,
    IPC_INFO,
    IPC_NOWAIT,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    SEM_STAT,
    SEM_UNDO,
    SETALL,
    SETVAL,
)
from ssi.ipc.ops import ClientExit, PermSet, SemBuf, SemCtl, SemGet, SemidDs, SemOp

A = Caller(uid=1000, gid=100, pid=11, client="a")
B = Caller(uid=1000, gid=100, pid=22, client="b")
OTHER = Caller(uid=2000, gid=200, pid=33, client="other")
ROOT = Caller(uid=0, gid=0, pid=1, client="root")


@pytest.fixture
def table() -> IpcTable:
    return IpcTable(Limits(semmsl=8, semopm=4, semvmx=100, semaem=100))


def errno_of(table: IpcTable, op: object, caller: Caller = A) -> int:
    with pytest.raises(OSError) as info:
        table.apply(op, caller)  # type: ignore[arg-type]
    assert info.value.errno is not None
    return info.value.errno


def new_set(table: IpcTable, nsems: int = 2, mode: int = 0o600, key: int = 0) -> int:
    out = table.apply(SemGet(key=key, nsems=nsems, flags=IPC_CREAT | mode), A)
    assert isinstance(out.value, int)
    return out.value


def ops(*triples: tuple[int, int, int] | tuple[int, int]) -> tuple[SemBuf, ...]:
    return tuple(SemBuf(*t) for t in triples)


def semop(table: IpcTable, s: int, *sops: SemBuf, caller: Caller = A) -> Done:
    out = table.apply(SemOp(id=s, sops=sops), caller)
    assert isinstance(out, Done)
    return out


def values(table: IpcTable, s: int) -> list[int]:
    out = table.apply(SemCtl(id=s, cmd=GETALL), A).value
    assert isinstance(out, list)
    return out


def test_semget_rules(table: IpcTable) -> None:
    s = new_set(table, 3, key=9)
    assert table.apply(SemGet(key=9, nsems=2), A).value == s  # fewer is fine
    assert table.apply(SemGet(key=9, nsems=0), A).value == s
    assert errno_of(table, SemGet(key=9, nsems=4)) == errno.EINVAL
    assert errno_of(table, SemGet(key=9, nsems=1, flags=IPC_CREAT | IPC_EXCL)) == (
        errno.EEXIST
    )
    assert errno_of(table, SemGet(key=10, nsems=1)) == errno.ENOENT
    assert errno_of(table, SemGet(key=10, nsems=9, flags=IPC_CREAT)) == errno.EINVAL
    assert errno_of(table, SemGet(key=10, nsems=-1, flags=IPC_CREAT)) == errno.EINVAL
    assert errno_of(table, SemGet(key=IPC_PRIVATE, nsems=0)) == errno.EINVAL
    assert errno_of(table, SemGet(key=9, nsems=1, flags=0o600), OTHER) == (errno.EACCES)
    ds = table.apply(SemCtl(id=s, cmd=IPC_STAT), A).value
    assert isinstance(ds, SemidDs) and ds.nsems == 3 and ds.perm.mode == 0o600


def test_semmns_limit() -> None:
    table = IpcTable(Limits(semmns=5))
    new_set(table, 3)
    assert errno_of(table, SemGet(key=0, nsems=3, flags=IPC_CREAT)) == errno.ENOSPC
    new_set(table, 2)


def test_semop_atomic_all_or_none(table: IpcTable) -> None:
    s = new_set(table, 2)
    semop(table, s, *ops((0, 1)))
    out = table.apply(SemOp(id=s, sops=ops((0, -1), (1, -1))), A)
    assert isinstance(out, Blocked)
    assert values(table, s) == [1, 0]  # nothing applied
    # IPC_NOWAIT on the operation that blocks decides EAGAIN
    nowait_blocking = SemOp(id=s, sops=ops((0, -1), (1, -1, IPC_NOWAIT)))
    assert errno_of(table, nowait_blocking) == errno.EAGAIN
    nowait_elsewhere = SemOp(id=s, sops=ops((0, -1, IPC_NOWAIT), (1, -1)))
    second = table.apply(nowait_elsewhere, A)
    assert isinstance(second, Blocked)
    # one increment of semaphore 1 completes the first waiter (FIFO); the second is
    # then blocked by its IPC_NOWAIT operation: EAGAIN, as Linux
    done = semop(table, s, *ops((1, 1)))
    assert [(w.waiter, w.errno) for w in done.woken] == [
        (out.waiter, 0),
        (second.waiter, errno.EAGAIN),
    ]
    assert values(table, s) == [0, 0]


def test_semop_sequential_within_one_call(table: IpcTable) -> None:
    s = new_set(table, 1)
    semop(table, s, *ops((0, 2), (0, -1)))  # sees its own +2
    assert values(table, s) == [1]
    # a wait-for-zero after a decrement in the same call
    semop(table, s, *ops((0, -1), (0, 0)))
    assert values(table, s) == [0]


def test_semop_erange_and_limits(table: IpcTable) -> None:
    s = new_set(table, 2)
    semop(table, s, *ops((0, 100)))
    assert errno_of(table, SemOp(id=s, sops=ops((0, 1)))) == errno.ERANGE
    assert errno_of(table, SemOp(id=s, sops=ops((1, 5), (0, 1)))) == errno.ERANGE
    assert values(table, s) == [100, 0]  # the +5 did not stick
    assert errno_of(table, SemOp(id=s, sops=ops(*[(0, 0)] * 5))) == errno.E2BIG
    assert errno_of(table, SemOp(id=s, sops=())) == errno.EINVAL
    assert errno_of(table, SemOp(id=s, sops=ops((2, 1)))) == errno.EFBIG
    assert errno_of(table, SemOp(id=-1, sops=ops((0, 1)))) == errno.EINVAL
    assert errno_of(table, SemOp(id=s + 5, sops=ops((0, 1)))) == errno.EINVAL
    bad_timeout = SemOp(id=s, sops=ops((0, 1)), timeout=-1.0)
    assert errno_of(table, bad_timeout) == errno.EINVAL
    # EFBIG is checked before permission; both after the id
    assert errno_of(table, SemOp(id=s, sops=ops((7, 1))), OTHER) == errno.EFBIG
    assert errno_of(table, SemOp(id=s, sops=ops((0, 1))), OTHER) == errno.EACCES


def test_undo_range(table: IpcTable) -> None:
    s = new_set(table, 1)
    semop(table, s, *ops((0, 100, SEM_UNDO)))  # adjustment -100 = -semaem
    semop(table, s, *ops((0, -100)))
    assert errno_of(table, SemOp(id=s, sops=ops((0, 2, SEM_UNDO)))) == errno.ERANGE
    semop(table, s, *ops((0, 1, SEM_UNDO)))  # -101 = -semaem - 1 is allowed


def test_wait_for_zero(table: IpcTable) -> None:
    s = new_set(table, 1)
    semop(table, s, *ops((0, 2)))
    z = table.apply(SemOp(id=s, sops=ops((0, 0))), B)
    assert isinstance(z, Blocked)
    assert table.apply(SemCtl(id=s, cmd=GETZCNT, num=0), A).value == 1
    assert semop(table, s, *ops((0, -1))).woken == ()
    out = semop(table, s, *ops((0, -1)))
    assert [w.waiter for w in out.woken] == [z.waiter]
    assert table.apply(SemCtl(id=s, cmd=GETZCNT, num=0), A).value == 0
    semop(table, s, *ops((0, 1)))
    assert errno_of(table, SemOp(id=s, sops=ops((0, 0, IPC_NOWAIT)))) == errno.EAGAIN


def test_wake_order_is_fifo_and_restarts(table: IpcTable) -> None:
    s = new_set(table, 1)
    w1 = table.apply(SemOp(id=s, sops=ops((0, -2))), A)
    w2 = table.apply(SemOp(id=s, sops=ops((0, -1))), B)
    w3 = table.apply(SemOp(id=s, sops=ops((0, -1))), Caller(uid=1000, gid=1))
    assert all(isinstance(w, Blocked) for w in (w1, w2, w3))
    out = semop(table, s, *ops((0, 1)))
    # w1 cannot take 2, w2 (next in line) takes the 1
    assert [w.waiter for w in out.woken] == [w2.waiter]  # type: ignore[union-attr]
    out = semop(table, s, *ops((0, 3)))
    # w1 first (-2), then from the start again: w3 (-1)
    assert [w.waiter for w in out.woken] == [
        w1.waiter,  # type: ignore[union-attr]
        w3.waiter,  # type: ignore[union-attr]
    ]
    assert values(table, s) == [0]


def test_getncnt_counts_the_blocking_operation(table: IpcTable) -> None:
    s = new_set(table, 2)
    table.apply(SemOp(id=s, sops=ops((0, -1), (1, -1))), A)  # blocks on sem 0
    table.apply(SemOp(id=s, sops=ops((1, -1))), B)
    ncnt = [table.apply(SemCtl(id=s, cmd=GETNCNT, num=n), A).value for n in (0, 1)]
    assert ncnt == [1, 1]
    semop(table, s, *ops((0, 1)))  # now the first blocks on sem 1
    ncnt = [table.apply(SemCtl(id=s, cmd=GETNCNT, num=n), A).value for n in (0, 1)]
    assert ncnt == [0, 2]


def test_parked_op_blocked_later_by_a_nowait_operation_fails_eagain(
    table: IpcTable,
) -> None:
    s = new_set(table, 2)
    w = table.apply(SemOp(id=s, sops=ops((0, -1), (1, -1, IPC_NOWAIT))), A)
    assert isinstance(w, Blocked)
    out = semop(table, s, *ops((0, 1)), caller=B)
    assert [(x.waiter, x.errno) for x in out.woken] == [(w.waiter, errno.EAGAIN)]
    assert values(table, s) == [1, 0]


def test_parked_op_that_would_overflow_gets_erange(table: IpcTable) -> None:
    s = new_set(table, 2)
    w = table.apply(SemOp(id=s, sops=ops((0, -1), (1, 100))), A)
    semop(table, s, *ops((1, 1)))
    out = semop(table, s, *ops((0, 1)))
    assert isinstance(w, Blocked)
    assert [(x.waiter, x.errno) for x in out.woken] == [(w.waiter, errno.ERANGE)]


def test_sem_undo_on_exit(table: IpcTable) -> None:
    s = new_set(table, 2, mode=0o666)
    semop(table, s, *ops((0, 5)))
    semop(table, s, *ops((0, -2, SEM_UNDO), (1, 3, SEM_UNDO)), caller=B)
    semop(table, s, *ops((0, -1, SEM_UNDO)), caller=B)
    assert values(table, s) == [2, 3]
    waiter = table.apply(SemOp(id=s, sops=ops((0, -5))), A)
    out = table.apply(ClientExit(), B)
    assert isinstance(out, Done) and isinstance(waiter, Blocked)
    # [2, 3] + B's adjustments [3, -3] = [5, 0], then A's parked -5 completes
    assert [w.waiter for w in out.woken] == [waiter.waiter]
    assert values(table, s) == [0, 0]
    pids = [table.apply(SemCtl(id=s, cmd=GETPID, num=n), A).value for n in (0, 1)]
    assert pids == [A.pid, B.pid]
    # a second exit is harmless
    assert table.apply(ClientExit(), B).woken == ()


def test_sem_undo_clamps_at_zero_and_semvmx(table: IpcTable) -> None:
    s = new_set(table, 1, mode=0o666)
    semop(table, s, *ops((0, 10, SEM_UNDO)), caller=B)  # adjustment -10
    table.apply(SemCtl(id=s, cmd=SETVAL, num=0, value=4), A)  # clears it
    semop(table, s, *ops((0, -4, SEM_UNDO)), caller=B)  # adjustment +4
    semop(table, s, *ops((0, 99)))
    table.exit("b")
    assert values(table, s) == [100]  # 99 + 4 clamped to semvmx
    semop(table, s, *ops((0, -50, SEM_UNDO)), caller=B)  # +50 ... then
    semop(table, s, *ops((0, -50)))
    semop(table, s, *ops((0, 10, SEM_UNDO)), caller=B)  # adjustment 40
    table.apply(SemCtl(id=s, cmd=SETALL, values=(0,)), A)
    semop(table, s, *ops((0, 5, SEM_UNDO)), caller=B)  # adjustment -5
    table.exit("b")
    assert values(table, s) == [0]  # 5 - 5, SETALL forgot the 40


def test_semctl_commands(table: IpcTable) -> None:
    s = new_set(table, 3)
    table.apply(SemCtl(id=s, cmd=SETALL, values=(1, 2, 3)), B)
    assert values(table, s) == [1, 2, 3]
    assert table.apply(SemCtl(id=s, cmd=GETVAL, num=2), A).value == 3
    assert table.apply(SemCtl(id=s, cmd=GETPID, num=0), A).value == B.pid
    table.apply(SemCtl(id=s, cmd=SETVAL, num=1, value=100), A)
    assert errno_of(table, SemCtl(id=s, cmd=SETVAL, num=1, value=101)) == errno.ERANGE
    assert errno_of(table, SemCtl(id=s, cmd=SETVAL, num=1, value=-1)) == errno.ERANGE
    # ERANGE comes before the id is even looked at
    assert errno_of(table, SemCtl(id=99, cmd=SETVAL, value=101)) == errno.ERANGE
    assert errno_of(table, SemCtl(id=s, cmd=SETVAL, num=3, value=1)) == errno.EINVAL
    assert errno_of(table, SemCtl(id=s, cmd=GETVAL, num=-1)) == errno.EINVAL
    assert errno_of(table, SemCtl(id=s, cmd=SETALL, values=(1, 2))) == errno.EINVAL
    assert errno_of(table, SemCtl(id=s, cmd=SETALL, values=(1, 2, 101))) == (
        errno.ERANGE
    )
    assert errno_of(table, SemCtl(id=s, cmd=SEM_STAT)) == errno.EINVAL
    assert errno_of(table, SemCtl(id=s, cmd=1234)) == errno.EINVAL
    assert errno_of(table, SemCtl(id=-1, cmd=GETVAL)) == errno.EINVAL
    info = table.apply(SemCtl(id=0, cmd=IPC_INFO), OTHER).value
    assert info.semvmx == 100 and info.semopm == 4


def test_semctl_permissions(table: IpcTable) -> None:
    s = new_set(table, 1, mode=0o640)
    group = Caller(uid=7, gid=100, client="g")
    assert table.apply(SemCtl(id=s, cmd=GETVAL), group).value == 0
    assert errno_of(table, SemCtl(id=s, cmd=SETVAL, value=1), group) == errno.EACCES
    assert errno_of(table, SemCtl(id=s, cmd=SETALL, values=(1,)), group) == (
        errno.EACCES
    )
    assert errno_of(table, SemCtl(id=s, cmd=GETVAL), OTHER) == errno.EACCES
    assert errno_of(table, SemCtl(id=s, cmd=IPC_STAT), OTHER) == errno.EACCES
    # read-only operations need read permission, altering ones write
    assert table.apply(SemOp(id=s, sops=ops((0, 0))), group).value is None
    assert errno_of(table, SemOp(id=s, sops=ops((0, 1))), group) == errno.EACCES
    assert errno_of(table, SemCtl(id=s, cmd=IPC_RMID), group) == errno.EPERM
    change = PermSet(uid=7, gid=7, mode=0o600)
    assert errno_of(table, SemCtl(id=s, cmd=IPC_SET, set=change), group) == (
        errno.EPERM
    )
    table.apply(SemCtl(id=s, cmd=IPC_SET, set=change), A)
    # the new owner may now do anything, the creator keeps IPC_SET/IPC_RMID
    table.apply(SemCtl(id=s, cmd=SETVAL, value=3), group)
    assert errno_of(table, SemCtl(id=s, cmd=GETVAL), OTHER) == errno.EACCES
    table.apply(SemCtl(id=s, cmd=IPC_SET, set=PermSet(mode=0o666)), A)
    assert table.apply(SemCtl(id=s, cmd=GETVAL), OTHER).value == 3


def test_rmid_wakes_eidrm(table: IpcTable) -> None:
    s = new_set(table, 1)
    w = table.apply(SemOp(id=s, sops=ops((0, -1))), A)
    out = table.apply(SemCtl(id=s, cmd=IPC_RMID), ROOT)
    assert isinstance(w, Blocked) and isinstance(out, Done)
    assert [(x.waiter, x.errno) for x in out.woken] == [(w.waiter, errno.EIDRM)]
    assert errno_of(table, SemOp(id=s, sops=ops((0, 1)))) == errno.EINVAL


def test_cancel_and_timeout(table: IpcTable) -> None:
    s = new_set(table, 1)
    w = table.apply(SemOp(id=s, sops=ops((0, -1)), timeout=0.5), A, waiter="t1")
    assert isinstance(w, Blocked) and w.waiter == "t1"
    assert table.apply(SemCtl(id=s, cmd=GETNCNT), A).value == 1
    out = table.cancel("t1", CancelReason.TIMEOUT)
    assert out is not None and out.woken[0].errno == errno.EAGAIN
    assert table.apply(SemCtl(id=s, cmd=GETNCNT), A).value == 0
    assert semop(table, s, *ops((0, 1))).woken == ()
    assert values(table, s) == [1]
    with pytest.raises(ValueError):
        table.apply(SemOp(id=s, sops=ops((0, -2))), A, waiter="x")
        table.apply(SemOp(id=s, sops=ops((0, -2))), A, waiter="x")


def test_exit_drops_parked_op_of_the_exiting_client(table: IpcTable) -> None:
    s = new_set(table, 1, mode=0o666)
    parked = table.apply(SemOp(id=s, sops=ops((0, -1))), B)
    out = table.exit("b")
    assert isinstance(parked, Blocked)
    assert [(w.waiter, w.errno) for w in out.woken] == [(parked.waiter, errno.EINTR)]
    assert table.waiters() == []
    assert semop(table, s, *ops((0, 1))).woken == ()
