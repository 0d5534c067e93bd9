"""ssi.ipc table: the permission matrix, ids, ops from arguments, and snapshots (a
moved object keeps its messages, counts, pages and parked callers)."""

from __future__ import annotations

import errno
import itertools

import msgspec
import pytest

from ssi.ipc import Blocked, Caller, Done, IpcTable, Kind, Limits, SequentialIds
from ssi.ipc.constants import (
    GETALL,
    IPC_CREAT,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    SEM_UNDO,
)
from ssi.ipc.model import Perm, denied
from ssi.ipc.ops import (
    OPS,
    ListObjects,
    Message,
    MsgCtl,
    MsgGet,
    MsgRcv,
    MsgSnd,
    PermSet,
    SemBuf,
    SemCtl,
    SemGet,
    SemOp,
    ShmAt,
    ShmGet,
    ShmRead,
    ShmWrite,
    op_from_args,
)

OWNER = Caller(uid=1000, gid=100, pid=11, client="owner")


# ---- the permission matrix ----------------------------------------------------------

# perm: owner 1000/100, creator 1001/101
PERM = dict(key=1, uid=1000, gid=100, cuid=1001, cgid=101)
WHO = {
    "owner": (Caller(uid=1000, gid=999), 6),
    "creator": (Caller(uid=1001, gid=999), 6),
    "group": (Caller(uid=5, gid=100), 3),
    "creator-group": (Caller(uid=5, gid=101), 3),
    "supplementary": (Caller(uid=5, gid=999, groups=(7, 100)), 3),
    "other": (Caller(uid=5, gid=999), 0),
    # the owner triplet wins even when the group triplet would grant more
    "owner-in-group": (Caller(uid=1000, gid=100), 6),
}


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("bits", range(8))
@pytest.mark.parametrize("want", [0o4, 0o2, 0o6, 0o1])
def test_permission_matrix(who: str, bits: int, want: int) -> None:
    caller, shift = WHO[who]
    for other_shift in (0, 3, 6):
        if other_shift == shift:
            continue
        # the other triplets grant everything: only the caller's triplet counts
        mode = (bits << shift) | (0o7 << other_shift if other_shift < shift else 0)
        perm = Perm(mode=mode, **PERM)
        expected_denied = bool(want & ~bits)
        assert denied(perm, caller, want << 6 | want << 3 | want) == expected_denied
        assert not denied(perm, Caller(uid=0, gid=0), want * 0o111)


def test_permission_applies_to_every_kind() -> None:
    table = IpcTable()
    stranger = Caller(uid=5, gid=5, client="s")
    q = table.apply(MsgGet(key=1, flags=IPC_CREAT | 0o600), OWNER).value
    s = table.apply(SemGet(key=1, nsems=1, flags=IPC_CREAT | 0o600), OWNER).value
    m = table.apply(ShmGet(key=1, size=10, flags=IPC_CREAT | 0o600), OWNER).value
    for op in (
        MsgSnd(id=q, mtype=1, data=b""),
        MsgRcv(id=q, size=1),
        MsgCtl(id=q, cmd=IPC_STAT),
        SemOp(id=s, sops=(SemBuf(0, 1),)),
        SemCtl(id=s, cmd=GETALL),
        ShmAt(id=m),
        ShmRead(id=m, offset=0, length=1),
        ShmWrite(id=m, offset=0, data=b"x"),
    ):
        with pytest.raises(PermissionError) as info:
            table.apply(op, stranger)
        assert info.value.errno == errno.EACCES, op
    for op in (
        MsgCtl(id=q, cmd=IPC_RMID),
        MsgCtl(id=q, cmd=IPC_SET, set=PermSet(mode=0o666)),
        SemCtl(id=s, cmd=IPC_RMID),
    ):
        with pytest.raises(PermissionError) as info:
            table.apply(op, stranger)
        assert info.value.errno == errno.EPERM, op


# ---- ids, keys, ops ------------------------------------------------------------------


def test_sequential_ids_are_disjoint_between_homes() -> None:
    a, b = SequentialIds(0, 2), SequentialIds(1, 2)
    ids_a = {a(Kind.MSG) for _ in range(50)}
    ids_b = {b(Kind.MSG) for _ in range(50)}
    assert not ids_a & ids_b
    assert a(Kind.SEM) == 0  # one space per kind
    full = SequentialIds(2**31 - 1)
    full(Kind.SHM)
    with pytest.raises(OSError) as info:
        full(Kind.SHM)
    assert info.value.errno == errno.ENOSPC


def test_kinds_have_separate_key_spaces() -> None:
    table = IpcTable()
    q = table.apply(MsgGet(key=7, flags=IPC_CREAT | 0o600), OWNER).value
    s = table.apply(SemGet(key=7, nsems=1, flags=IPC_CREAT | 0o600), OWNER).value
    assert table.find(Kind.MSG, 7) == q and table.find(Kind.SEM, 7) == s
    assert table.find(Kind.SHM, 7) is None


def test_op_from_args_and_registry() -> None:
    op = op_from_args("ipc.msgsnd", {"id": 3, "mtype": 2, "data": b"x"})
    assert op == MsgSnd(id=3, mtype=2, data=b"x")
    op = op_from_args("ipc.semop", {"id": 1, "sops": [[0, -1, SEM_UNDO]]})
    assert op == SemOp(id=1, sops=(SemBuf(0, -1, SEM_UNDO),))
    with pytest.raises(ValueError, match="unknown"):
        op_from_args("ipc.nope", {})
    with pytest.raises(ValueError, match="bad arguments"):
        op_from_args("ipc.msgsnd", {"id": "x"})
    assert all(name.startswith("ipc.") for name in OPS)
    # ops travel as msgpack with their tag
    wire = msgspec.msgpack.encode(op)
    assert msgspec.msgpack.decode(wire, type=SemOp) == op


def test_list_objects() -> None:
    table = IpcTable()
    q = table.apply(MsgGet(key=5, flags=IPC_CREAT | 0o644), OWNER).value
    table.apply(MsgSnd(id=q, mtype=1, data=b"abc"), OWNER)
    table.apply(SemGet(key=0, nsems=3, flags=IPC_CREAT | 0o600), OWNER)
    listing = table.apply(ListObjects(), OWNER).value
    assert [(o.kind, o.size, o.count) for o in listing] == [
        (Kind.MSG, 3, 1),
        (Kind.SEM, 3, 0),
    ]
    assert [o.kind for o in table.objects(Kind.SEM)] == [Kind.SEM]


# ---- snapshots ------------------------------------------------------------------


def test_snapshot_restore_moves_a_queue_with_its_parked_receiver() -> None:
    home = IpcTable(Limits(msgmnb=12), name="node1")
    q = home.apply(MsgGet(key=9, flags=IPC_CREAT | 0o666), OWNER).value
    home.apply(MsgSnd(id=q, mtype=2, data=b"two"), OWNER)
    home.apply(MsgSnd(id=q, mtype=3, data=b"three"), OWNER)
    receiver = home.apply(MsgRcv(id=q, size=8, mtype=1), OWNER)
    sender = home.apply(MsgSnd(id=q, mtype=4, data=b"four-four"), OWNER)
    assert isinstance(receiver, Blocked) and isinstance(sender, Blocked)
    data = home.evict(Kind.MSG, q)
    assert not home.has(Kind.MSG, q) and home.find(Kind.MSG, 9) is None

    new = IpcTable(Limits(msgmnb=12), name="node2")
    assert new.restore(data).id == q
    assert new.find(Kind.MSG, 9) == q
    assert {w.id for w in new.waiters()} == {receiver.waiter, sender.waiter}
    assert [m.mtype for m in new.message_queue(q).messages()] == [2, 3]
    # the parked receiver is woken by a send on the new home
    out = new.apply(MsgSnd(id=q, mtype=1, data=b"one"), OWNER)
    assert isinstance(out, Done)
    assert [(w.waiter, w.value) for w in out.woken] == [
        (receiver.waiter, Message(1, b"one"))
    ]
    # and the parked sender by a receive that makes room
    out = new.apply(MsgRcv(id=q, size=8, mtype=3), OWNER)
    assert out.value == Message(3, b"three")
    assert [w.waiter for w in out.woken] == [sender.waiter]
    assert [m.data for m in new.message_queue(q).messages()] == [b"two", b"four-four"]
    # the parked caller can be cancelled on the new home, by its id
    again = new.apply(MsgRcv(id=q, size=8, mtype=9), OWNER, waiter="r-1")
    assert isinstance(again, Blocked)
    assert new.cancel("r-1") is not None


def test_snapshot_of_a_semaphore_set_keeps_values_undo_and_waiters() -> None:
    home = IpcTable()
    s = home.apply(SemGet(key=0, nsems=2, flags=IPC_CREAT | 0o666), OWNER).value
    b = Caller(uid=1, gid=1, pid=2, client="b")
    home.apply(SemOp(id=s, sops=(SemBuf(0, 3, SEM_UNDO),)), b)
    parked = home.apply(SemOp(id=s, sops=(SemBuf(1, -1),)), OWNER)
    assert isinstance(parked, Blocked)
    replica = IpcTable()
    replica.restore(home.snapshot(Kind.SEM, s))
    for table in (home, replica):
        assert table.semaphore_set(s).values == [3, 0]
        out = table.apply(SemOp(id=s, sops=(SemBuf(1, 1),)), OWNER)
        assert [w.waiter for w in out.woken] == [parked.waiter]
        table.exit("b")  # the undo moved with the set
        assert table.semaphore_set(s).values == [0, 0]


def test_snapshot_round_trip_is_stable_for_every_kind() -> None:
    home = IpcTable(Limits(page_size=8))
    q = home.apply(MsgGet(key=1, flags=IPC_CREAT | 0o600), OWNER).value
    home.apply(MsgSnd(id=q, mtype=5, data=b"m"), OWNER)
    s = home.apply(SemGet(key=1, nsems=2, flags=IPC_CREAT | 0o600), OWNER).value
    m = home.apply(ShmGet(key=1, size=20, flags=IPC_CREAT | 0o600), OWNER).value
    home.apply(ShmAt(id=m), OWNER)
    home.apply(ShmWrite(id=m, offset=5, data=b"hello world"), OWNER)
    other = IpcTable(Limits(page_size=8))
    for kind, id in ((Kind.MSG, q), (Kind.SEM, s), (Kind.SHM, m)):
        data = home.snapshot(kind, id)
        other.restore(data)
        assert other.snapshot(kind, id) == data
        assert other.find(kind, 1) == id
    assert other.apply(ShmRead(id=m, offset=0, length=20), OWNER).value == (
        home.apply(ShmRead(id=m, offset=0, length=20), OWNER).value
    )
    assert other.segment(m).nattch == 1


def test_segment_delta_snapshots() -> None:
    home = IpcTable(Limits(page_size=8))
    m = home.apply(ShmGet(key=0, size=64, flags=IPC_CREAT | 0o600), OWNER).value
    home.apply(ShmWrite(id=m, offset=0, data=b"A" * 64), OWNER)
    replica = IpcTable(Limits(page_size=8))
    replica.restore(home.snapshot(Kind.SHM, m))
    version = home.segment(m).version
    home.apply(ShmWrite(id=m, offset=20, data=b"bb"), OWNER)
    delta = home.snapshot(Kind.SHM, m, since=version)
    assert len(delta) < len(home.snapshot(Kind.SHM, m)) - 50  # 1 page, not 8
    replica.restore(delta)
    expected = b"A" * 20 + b"bb" + b"A" * 42
    assert replica.apply(ShmRead(id=m, offset=0, length=64), OWNER).value == expected
    with pytest.raises(ValueError, match="not held"):
        IpcTable(Limits(page_size=8)).restore(delta)


def test_restore_refuses_bad_snapshots_and_clashes() -> None:
    table = IpcTable()
    with pytest.raises(ValueError):
        table.restore(b"\x01garbage")
    home = IpcTable(ids=SequentialIds(100))
    q = home.apply(MsgGet(key=3, flags=IPC_CREAT | 0o600), OWNER).value
    table.apply(MsgGet(key=3, flags=IPC_CREAT | 0o600), OWNER)
    with pytest.raises(ValueError, match="key 3"):
        table.restore(home.snapshot(Kind.MSG, q))
    # refreshing the same object (a replica) is fine
    replica = IpcTable()
    replica.restore(home.snapshot(Kind.MSG, q))
    home.apply(MsgSnd(id=q, mtype=1, data=b"x"), OWNER)
    replica.restore(home.snapshot(Kind.MSG, q))
    assert replica.message_queue(q).qnum == 1
    replica.drop(Kind.MSG, q)
    assert replica.find(Kind.MSG, 3) is None


def test_changed_lists_what_to_replicate() -> None:
    table = IpcTable()
    q = table.apply(MsgGet(key=0, flags=IPC_CREAT | 0o600), OWNER)
    assert q.changed and q.changed[0].kind is Kind.MSG
    assert table.apply(MsgCtl(id=q.value, cmd=IPC_STAT), OWNER).changed == ()
    parked = table.apply(MsgRcv(id=q.value, size=1), OWNER)
    assert parked.changed  # a parked caller is state too
    s = table.apply(SemGet(key=0, nsems=1, flags=IPC_CREAT | 0o600), OWNER).value
    assert table.apply(SemCtl(id=s, cmd=GETALL), OWNER).changed == ()


def test_waiter_names_are_unique_per_table() -> None:
    table = IpcTable(name="n7")
    q = table.apply(MsgGet(key=0, flags=IPC_CREAT | 0o600), OWNER).value
    names = [table.apply(MsgRcv(id=q, size=1), OWNER) for _ in range(3)]
    ids = [n.waiter for n in names if isinstance(n, Blocked)]
    assert len(set(ids)) == 3 and all(i.startswith("n7-") for i in ids)
    assert table.waiter(ids[1]) is not None and table.waiter("zz") is None
    assert list(itertools.islice(ids, 1)) == ["n7-1"]
