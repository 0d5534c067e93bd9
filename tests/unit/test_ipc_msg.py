"""ssi.ipc message queues: msgget/msgsnd/msgrcv/msgctl rules and errnos, sans-IO."""

from __future__ import annotations

import errno

import pytest

from ssi.ipc import Blocked, Caller, CancelReason, Done, IpcTable, Limits
from ssi.ipc.constants import (
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
    MSG_NOERROR,
    MSG_STAT,
)
from ssi.ipc.ops import (
    ClientExit,
    Message,
    MsgCtl,
    MsgGet,
    MsgInfo,
    MsgRcv,
    MsgSnd,
    MsqidDs,
    PermSet,
)

OWNER = Caller(uid=1000, gid=100, pid=11, client="owner")
OTHER = Caller(uid=2000, gid=200, pid=22, client="other")
ROOT = Caller(uid=0, gid=0, pid=1, client="root")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> IpcTable:
    return IpcTable(Limits(msgmax=64, msgmnb=128), clock=Clock())


def errno_of(table: IpcTable, op: object, caller: Caller = OWNER) -> int:
    with pytest.raises(OSError) as info:
        table.apply(op, caller)  # type: ignore[arg-type]
    assert info.value.errno is not None
    return info.value.errno


def new_queue(table: IpcTable, key: int = IPC_PRIVATE, mode: int = 0o600) -> int:
    out = table.apply(MsgGet(key=key, flags=IPC_CREAT | mode), OWNER)
    assert isinstance(out, Done) and isinstance(out.value, int)
    return out.value


def send(table: IpcTable, q: int, mtype: int, data: bytes, flags: int = 0) -> Done:
    out = table.apply(MsgSnd(id=q, mtype=mtype, data=data, flags=flags), OWNER)
    assert isinstance(out, Done)
    return out


def recv(
    table: IpcTable, q: int, mtype: int = 0, size: int = 64, flags: int = 0
) -> Message:
    out = table.apply(MsgRcv(id=q, size=size, mtype=mtype, flags=flags), OWNER)
    assert isinstance(out, Done) and isinstance(out.value, Message)
    return out.value


# ---- msgget ----------------------------------------------------------------------


def test_msgget_create_find_and_flags(table: IpcTable) -> None:
    q = new_queue(table, key=0x1234)
    assert table.apply(MsgGet(key=0x1234), OWNER) == Done(value=q)
    assert table.apply(MsgGet(key=0x1234, flags=IPC_CREAT), OWNER) == Done(value=q)
    assert errno_of(table, MsgGet(key=0x1234, flags=IPC_CREAT | IPC_EXCL)) == (
        errno.EEXIST
    )
    assert errno_of(table, MsgGet(key=0x999)) == errno.ENOENT
    # IPC_PRIVATE always creates, even with IPC_EXCL; its key is never found
    a = table.apply(MsgGet(key=IPC_PRIVATE, flags=IPC_EXCL), OWNER).value
    b = table.apply(MsgGet(key=IPC_PRIVATE), OWNER).value
    assert len({q, a, b}) == 3
    assert table.find(table.message_queue(a).kind, IPC_PRIVATE) is None


def test_msgget_stat_fields(table: IpcTable) -> None:
    q = new_queue(table, key=77, mode=0o640 | 0o7000)
    ds = table.apply(MsgCtl(id=q, cmd=IPC_STAT), OWNER).value
    assert isinstance(ds, MsqidDs)
    assert ds.perm.key == 77 and ds.perm.mode == 0o640
    assert (ds.perm.uid, ds.perm.gid, ds.perm.cuid, ds.perm.cgid) == (1000, 100) * 2
    assert (ds.qbytes, ds.qnum, ds.cbytes, ds.ctime, ds.stime) == (128, 0, 0, 1000, 0)


def test_msgget_permission_on_existing_key(table: IpcTable) -> None:
    new_queue(table, key=5, mode=0o640)
    assert errno_of(table, MsgGet(key=5, flags=0o600), OTHER) == errno.EACCES
    assert table.apply(MsgGet(key=5, flags=0), OTHER).value >= 0  # asks nothing
    grouped = Caller(uid=3000, gid=300, groups=(100,), client="g")
    assert table.apply(MsgGet(key=5, flags=0o040), grouped).value >= 0
    assert errno_of(table, MsgGet(key=5, flags=0o020), grouped) == errno.EACCES


def test_msgget_msgmni_and_bad_key() -> None:
    table = IpcTable(Limits(msgmni=2))
    new_queue(table)
    new_queue(table)
    assert errno_of(table, MsgGet(key=IPC_PRIVATE, flags=IPC_CREAT)) == errno.ENOSPC
    assert errno_of(table, MsgGet(key=2**31, flags=IPC_CREAT)) == errno.EINVAL


# ---- msgsnd / msgrcv ---------------------------------------------------------------


def test_receive_rules_by_type(table: IpcTable) -> None:
    q = new_queue(table)
    for mtype, data in [(2, b"A"), (1, b"B"), (3, b"C"), (1, b"D")]:
        send(table, q, mtype, data)
    assert recv(table, q, 2, flags=MSG_COPY | IPC_NOWAIT) == Message(3, b"C")
    assert recv(table, q, -2) == Message(1, b"B")  # lowest type <= 2, first of it
    assert recv(table, q, 1, flags=MSG_EXCEPT) == Message(2, b"A")  # first not 1
    assert recv(table, q, 1) == Message(1, b"D")
    assert recv(table, q, 0) == Message(3, b"C")
    assert errno_of(table, MsgRcv(id=q, size=8, flags=IPC_NOWAIT)) == errno.ENOMSG


def test_receive_any_is_fifo_and_types_keep_order(table: IpcTable) -> None:
    q = new_queue(table)
    sent = [(1 + i % 3, bytes([i])) for i in range(12)]
    for mtype, data in sent:
        send(table, q, mtype, data)
    assert [recv(table, q, 2).data for _ in range(4)] == [d for t, d in sent if t == 2]
    rest = [(t, d) for t, d in sent if t != 2]
    assert [(m.mtype, m.data) for m in (recv(table, q) for _ in rest)] == rest


def test_msg_except_with_zero_and_negative_types(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 5, b"x")
    send(table, q, 2, b"y")
    # MSG_EXCEPT only changes a positive type
    assert recv(table, q, -3, flags=MSG_EXCEPT).data == b"y"
    assert recv(table, q, 0, flags=MSG_EXCEPT).data == b"x"


def test_noerror_truncates_e2big_otherwise(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"0123456789")
    assert errno_of(table, MsgRcv(id=q, size=4)) == errno.E2BIG
    assert table.message_queue(q).qnum == 1  # still queued
    assert recv(table, q, size=4, flags=MSG_NOERROR) == Message(1, b"0123")
    assert table.message_queue(q).qnum == 0 and table.message_queue(q).cbytes == 0


def test_msg_copy_rules(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"abcdef")
    assert errno_of(table, MsgRcv(id=q, size=8, flags=MSG_COPY)) == errno.EINVAL
    bad = MsgRcv(id=q, size=8, flags=MSG_COPY | IPC_NOWAIT | MSG_EXCEPT)
    assert errno_of(table, bad) == errno.EINVAL
    out_of_range = MsgRcv(id=q, size=8, mtype=1, flags=MSG_COPY | IPC_NOWAIT)
    assert errno_of(table, out_of_range) == errno.ENOMSG
    truncated = MsgRcv(id=q, size=2, flags=MSG_COPY | IPC_NOWAIT | MSG_NOERROR)
    assert errno_of(table, truncated) == errno.EINVAL
    assert table.message_queue(q).qnum == 1


def test_send_argument_errors(table: IpcTable) -> None:
    q = new_queue(table)
    assert errno_of(table, MsgSnd(id=q, mtype=1, data=b"x" * 65)) == errno.EINVAL
    assert errno_of(table, MsgSnd(id=q, mtype=0, data=b"x")) == errno.EINVAL
    assert errno_of(table, MsgSnd(id=-1, mtype=1, data=b"x")) == errno.EINVAL
    assert errno_of(table, MsgSnd(id=q + 100, mtype=1, data=b"x")) == errno.EINVAL
    assert errno_of(table, MsgRcv(id=q, size=-1)) == errno.EINVAL
    assert errno_of(table, MsgRcv(id=-5, size=1)) == errno.EINVAL
    # msgsz above msgmax is EINVAL even before the id is looked at
    assert errno_of(table, MsgSnd(id=-1, mtype=0, data=b"x" * 65)) == errno.EINVAL
    send(table, q, 1, b"x" * 64)  # exactly msgmax


def test_limits_qbytes_and_message_count(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"x" * 64)
    send(table, q, 1, b"x" * 64)
    send(table, q, 1, b"")  # a full queue still takes an empty message
    assert errno_of(table, MsgSnd(id=q, mtype=1, data=b"x", flags=IPC_NOWAIT)) == (
        errno.EAGAIN
    )
    # the number of messages is bounded by qbytes as well
    table2 = IpcTable(Limits(msgmnb=3))
    q2 = new_queue(table2)
    for _ in range(3):
        send(table2, q2, 1, b"")
    assert errno_of(table2, MsgSnd(id=q2, mtype=1, data=b"", flags=IPC_NOWAIT)) == (
        errno.EAGAIN
    )


# ---- blocking ----------------------------------------------------------------------


def test_blocked_receivers_are_served_in_arrival_order(table: IpcTable) -> None:
    q = new_queue(table)
    w1 = table.apply(MsgRcv(id=q, size=8), OWNER)
    w2 = table.apply(MsgRcv(id=q, size=8, mtype=7), OWNER)
    w3 = table.apply(MsgRcv(id=q, size=8), OWNER)
    assert isinstance(w1, Blocked) and isinstance(w2, Blocked)
    assert isinstance(w3, Blocked)
    out = send(table, q, 7, b"first")
    assert [(w.waiter, w.value) for w in out.woken] == [
        (w1.waiter, Message(7, b"first"))
    ]
    out = send(table, q, 7, b"second")
    assert out.woken[0].waiter == w2.waiter
    out = send(table, q, 1, b"third")
    assert out.woken[0].waiter == w3.waiter
    assert table.message_queue(q).qnum == 0
    ds = table.apply(MsgCtl(id=q, cmd=IPC_STAT), OWNER).value
    assert ds.lrpid == OWNER.pid and ds.lspid == OWNER.pid


def test_blocked_receiver_too_small_gets_e2big_and_message_moves_on(
    table: IpcTable,
) -> None:
    q = new_queue(table)
    small = table.apply(MsgRcv(id=q, size=2), OWNER)
    big = table.apply(MsgRcv(id=q, size=8), OWNER)
    trunc = table.apply(MsgRcv(id=q, size=2, flags=MSG_NOERROR), OWNER)
    assert isinstance(small, Blocked) and isinstance(big, Blocked)
    assert isinstance(trunc, Blocked)
    out = send(table, q, 1, b"hello")
    assert [(w.waiter, w.errno, w.value) for w in out.woken] == [
        (small.waiter, errno.E2BIG, None),
        (big.waiter, 0, Message(1, b"hello")),
    ]
    out = send(table, q, 1, b"world")
    assert out.woken[0].value == Message(1, b"wo")
    assert table.waiters() == []


def test_blocked_sender_woken_by_receive(table: IpcTable) -> None:
    q = new_queue(table, mode=0o666)
    send(table, q, 1, b"a" * 64)
    send(table, q, 2, b"b" * 64)
    big = table.apply(MsgSnd(id=q, mtype=3, data=b"c" * 64), OWNER)
    small = table.apply(MsgSnd(id=q, mtype=4, data=b"d" * 10), OTHER)
    assert isinstance(big, Blocked) and isinstance(small, Blocked)
    # OTHER loses write permission; parked senders that do not fit stay parked
    out = table.apply(MsgCtl(id=q, cmd=IPC_SET, set=PermSet(mode=0o600)), OWNER)
    assert out.woken == ()
    # ... and recheck it when they fit: EACCES
    out = table.apply(MsgRcv(id=q, size=64), OWNER)
    assert isinstance(out, Done)
    assert [(w.waiter, w.errno) for w in out.woken] == [
        (big.waiter, 0),
    ]
    assert table.message_queue(q).qnum == 2
    out = table.apply(MsgRcv(id=q, size=64, mtype=2), OWNER)
    assert [(w.waiter, w.errno) for w in out.woken] == [(small.waiter, errno.EACCES)]
    assert [m.mtype for m in table.message_queue(q).messages()] == [3]


def test_blocked_sender_message_goes_to_blocked_receiver(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"a" * 64)
    send(table, q, 1, b"b" * 64)
    sender = table.apply(MsgSnd(id=q, mtype=9, data=b"nine"), OWNER)
    receiver = table.apply(MsgRcv(id=q, size=8, mtype=9), OWNER)
    assert isinstance(sender, Blocked) and isinstance(receiver, Blocked)
    out = table.apply(MsgRcv(id=q, size=64), OWNER)
    assert {w.waiter: w.value for w in out.woken} == {
        receiver.waiter: Message(9, b"nine"),
        sender.waiter: None,
    }


def test_smaller_later_sender_passes_a_larger_one(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"a" * 60)
    send(table, q, 2, b"b" * 64)
    send(table, q, 3, b"c" * 4)  # 128 bytes: full
    big = table.apply(MsgSnd(id=q, mtype=4, data=b"d" * 64), OWNER)
    small = table.apply(MsgSnd(id=q, mtype=5, data=b"e" * 4), OWNER)
    assert isinstance(big, Blocked) and isinstance(small, Blocked)
    out = table.apply(MsgRcv(id=q, size=64, mtype=3), OWNER)  # frees 4 bytes
    assert [w.waiter for w in out.woken] == [small.waiter]  # big does not fit yet
    out = table.apply(MsgRcv(id=q, size=64, mtype=2), OWNER)  # frees 64
    assert [w.waiter for w in out.woken] == [big.waiter]
    assert [m.mtype for m in table.message_queue(q).messages()] == [1, 5, 4]


def test_cancel_timeout_and_interrupt(table: IpcTable) -> None:
    q = new_queue(table)
    r = table.apply(MsgRcv(id=q, size=8), OWNER)
    assert isinstance(r, Blocked)
    out = table.cancel(r.waiter, CancelReason.TIMEOUT)
    assert out is not None and out.woken[0].errno == errno.EAGAIN
    assert table.cancel(r.waiter) is None
    r = table.apply(MsgRcv(id=q, size=8), OWNER, waiter="req-17")
    assert isinstance(r, Blocked) and r.waiter == "req-17"
    out = table.cancel("req-17", CancelReason.INTERRUPT)
    assert out is not None and out.woken[0].errno == errno.EINTR
    # a cancelled receiver takes nothing
    send(table, q, 1, b"kept")
    assert table.message_queue(q).qnum == 1


def test_rmid_wakes_everyone_with_eidrm_and_id_goes_stale(table: IpcTable) -> None:
    q = new_queue(table, key=42)
    send(table, q, 1, b"a" * 64)
    send(table, q, 1, b"a" * 64)
    s = table.apply(MsgSnd(id=q, mtype=1, data=b"x"), OWNER)
    r = table.apply(MsgRcv(id=q, size=8, mtype=5), OWNER)
    assert errno_of(table, MsgCtl(id=q, cmd=IPC_RMID), OTHER) == errno.EPERM
    out = table.apply(MsgCtl(id=q, cmd=IPC_RMID), OWNER)
    assert isinstance(out, Done) and out.changed[0].removed
    assert isinstance(s, Blocked) and isinstance(r, Blocked)
    assert {(w.waiter, w.errno) for w in out.woken} == {
        (s.waiter, errno.EIDRM),
        (r.waiter, errno.EIDRM),
    }
    assert errno_of(table, MsgSnd(id=q, mtype=1, data=b"x")) == errno.EINVAL
    assert errno_of(table, MsgGet(key=42)) == errno.ENOENT
    q2 = new_queue(table, key=42)
    assert q2 != q  # ids are not reused


def test_ipc_set(table: IpcTable) -> None:
    q = new_queue(table, mode=0o666)
    change = PermSet(uid=2000, gid=200, mode=0o7604, qbytes=64)
    assert errno_of(table, MsgCtl(id=q, cmd=IPC_SET, set=change), OTHER) == (
        errno.EPERM
    )
    table.apply(MsgCtl(id=q, cmd=IPC_SET | IPC_64, set=change), OWNER)
    ds = table.apply(MsgCtl(id=q, cmd=IPC_STAT), OTHER).value
    assert (ds.perm.uid, ds.perm.gid, ds.perm.mode, ds.qbytes) == (2000, 200, 0o604, 64)
    assert (ds.perm.cuid, ds.perm.cgid) == (1000, 100)
    # the creator keeps control; qbytes above msgmnb needs privilege
    above = PermSet(qbytes=129)
    assert errno_of(table, MsgCtl(id=q, cmd=IPC_SET, set=above)) == errno.EPERM
    table.apply(MsgCtl(id=q, cmd=IPC_SET, set=above), ROOT)
    assert table.message_queue(q).qbytes == 129


def test_ipc_set_rechecks_parked_callers(table: IpcTable) -> None:
    q = new_queue(table, mode=0o666)
    r_other = table.apply(MsgRcv(id=q, size=8), OTHER)
    r_owner = table.apply(MsgRcv(id=q, size=8), OWNER)
    out = table.apply(MsgCtl(id=q, cmd=IPC_SET, set=PermSet(mode=0o600)), OWNER)
    assert isinstance(r_other, Blocked) and isinstance(r_owner, Blocked)
    assert [(w.waiter, w.errno) for w in out.woken] == [(r_other.waiter, errno.EACCES)]
    assert [w.id for w in table.waiters()] == [r_owner.waiter]


def test_ipc_set_larger_qbytes_lets_senders_in(table: IpcTable) -> None:
    q = new_queue(table)
    send(table, q, 1, b"a" * 64)
    send(table, q, 1, b"a" * 64)
    s = table.apply(MsgSnd(id=q, mtype=1, data=b"x"), OWNER)
    out = table.apply(MsgCtl(id=q, cmd=IPC_SET, set=PermSet(qbytes=200)), ROOT)
    assert isinstance(s, Blocked)
    assert [w.waiter for w in out.woken] == [s.waiter]
    assert table.message_queue(q).qnum == 3


def test_msgctl_errors_and_info(table: IpcTable) -> None:
    q = new_queue(table, mode=0o600)
    assert errno_of(table, MsgCtl(id=q, cmd=IPC_STAT), OTHER) == errno.EACCES
    assert errno_of(table, MsgCtl(id=q, cmd=99)) == errno.EINVAL
    assert errno_of(table, MsgCtl(id=q, cmd=MSG_STAT)) == errno.EINVAL
    assert errno_of(table, MsgCtl(id=-1, cmd=IPC_STAT)) == errno.EINVAL
    assert errno_of(table, MsgCtl(id=q + 9, cmd=IPC_STAT)) == errno.EINVAL
    assert errno_of(table, MsgCtl(id=q, cmd=IPC_SET)) == errno.EINVAL  # no values
    info = table.apply(MsgCtl(id=0, cmd=IPC_INFO), OTHER).value
    assert info == MsgInfo(msgmax=64, msgmnb=128, msgmni=32000)


def test_permissions_on_send_and_receive(table: IpcTable) -> None:
    q = new_queue(table, mode=0o620)  # group may write only
    group = Caller(uid=5, gid=100, client="g")
    table.apply(MsgSnd(id=q, mtype=1, data=b"x"), group)
    assert errno_of(table, MsgRcv(id=q, size=8), group) == errno.EACCES
    assert errno_of(table, MsgSnd(id=q, mtype=1, data=b"x"), OTHER) == errno.EACCES
    assert table.apply(MsgRcv(id=q, size=8), ROOT).value == Message(1, b"x")


def test_exit_drops_parked_ops_of_the_client(table: IpcTable) -> None:
    q = new_queue(table, mode=0o666)
    gone = table.apply(MsgRcv(id=q, size=8), OTHER)
    kept = table.apply(MsgRcv(id=q, size=8), OWNER)
    out = table.apply(ClientExit(), OTHER)
    assert isinstance(out, Done) and isinstance(gone, Blocked)
    assert [(w.waiter, w.errno) for w in out.woken] == [(gone.waiter, errno.EINTR)]
    assert isinstance(kept, Blocked)
    assert [w.id for w in table.waiters()] == [kept.waiter]
    out = send(table, q, 1, b"to-owner")
    assert out.woken[0].waiter == kept.waiter
