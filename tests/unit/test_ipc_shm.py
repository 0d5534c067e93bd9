"""ssi.ipc shared memory: shmget/shmat/shmdt/shmctl bookkeeping, explicit read/write
with page versions, and mirrors kept coherent by push/pull (twins and diffs)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssi.ipc import Caller, Done, IpcTable, Kind, Limits
from ssi.ipc.constants import (
    IPC_CREAT,
    IPC_EXCL,
    IPC_INFO,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    SHM_DEST,
    SHM_EXEC,
    SHM_LOCK,
    SHM_LOCKED,
    SHM_RDONLY,
    SHM_UNLOCK,
)
from ssi.ipc.ops import (
    ClientExit,
    PermSet,
    ShmAt,
    ShmAttach,
    ShmCtl,
    ShmDt,
    ShmGet,
    ShmidDs,
    ShmPages,
    ShmPull,
    ShmPush,
    ShmRead,
    ShmWrite,
    ShmWritten,
)
from ssi.ipc.shm import Mirror

A = Caller(uid=1000, gid=100, pid=11, client="a")
B = Caller(uid=1000, gid=100, pid=22, client="b")
OTHER = Caller(uid=2000, gid=200, pid=33, client="other")
PAGE = 16


@pytest.fixture
def table() -> IpcTable:
    return IpcTable(Limits(page_size=PAGE, shmmax=1000, shmall=50, shmmni=4))


def errno_of(table: IpcTable, op: object, caller: Caller = A) -> int:
    with pytest.raises(OSError) as info:
        table.apply(op, caller)  # type: ignore[arg-type]
    assert info.value.errno is not None
    return info.value.errno


def new_seg(table: IpcTable, size: int = 40, mode: int = 0o600, key: int = 0) -> int:
    out = table.apply(ShmGet(key=key, size=size, flags=IPC_CREAT | mode), A)
    assert isinstance(out.value, int)
    return out.value


def stat(table: IpcTable, seg: int) -> ShmidDs:
    ds = table.apply(ShmCtl(id=seg, cmd=IPC_STAT), A).value
    assert isinstance(ds, ShmidDs)
    return ds


def test_shmget_rules(table: IpcTable) -> None:
    seg = new_seg(table, 40, key=3)
    assert table.apply(ShmGet(key=3, size=0), A).value == seg
    assert table.apply(ShmGet(key=3, size=40), A).value == seg
    assert errno_of(table, ShmGet(key=3, size=41)) == errno.EINVAL
    assert errno_of(table, ShmGet(key=3, size=1, flags=IPC_CREAT | IPC_EXCL)) == (
        errno.EEXIST
    )
    assert errno_of(table, ShmGet(key=4, size=1)) == errno.ENOENT
    assert errno_of(table, ShmGet(key=IPC_PRIVATE, size=0)) == errno.EINVAL
    assert errno_of(table, ShmGet(key=IPC_PRIVATE, size=1001)) == errno.EINVAL
    assert errno_of(table, ShmGet(key=3, size=1, flags=0o600), OTHER) == errno.EACCES
    # shmall: 50 pages of 16 bytes
    assert errno_of(table, ShmGet(key=IPC_PRIVATE, size=999)) == errno.ENOSPC
    new_seg(table)
    new_seg(table)
    new_seg(table)
    assert errno_of(table, ShmGet(key=IPC_PRIVATE, size=1)) == errno.ENOSPC  # shmmni
    ds = stat(table, seg)
    assert (ds.segsz, ds.cpid, ds.nattch, ds.perm.mode) == (40, A.pid, 0, 0o600)


def test_attach_detach_and_deferred_destroy(table: IpcTable) -> None:
    seg = new_seg(table, key=8)
    info = table.apply(ShmAt(id=seg), A).value
    assert info == ShmAttach(segsz=40, page_size=PAGE, version=0)
    table.apply(ShmAt(id=seg, flags=SHM_RDONLY), A)
    table.apply(ShmAt(id=seg), B)
    assert stat(table, seg).nattch == 3
    table.apply(ShmCtl(id=seg, cmd=IPC_RMID), A)
    ds = stat(table, seg)
    assert ds.perm.mode & SHM_DEST and ds.perm.key == IPC_PRIVATE
    # the key is free again: a new segment, not the removed one
    other = table.apply(ShmGet(key=8, size=4, flags=IPC_CREAT), A).value
    assert other != seg
    # Linux lets a removed but attached segment be attached again
    table.apply(ShmAt(id=seg), A)
    table.apply(ShmDt(id=seg), A)
    table.apply(ShmDt(id=seg), A)
    assert errno_of(table, ShmDt(id=seg), OTHER) == errno.EINVAL  # never attached
    out = table.apply(ShmDt(id=seg), A)
    assert isinstance(out, Done) and not out.changed[0].removed
    out = table.apply(ClientExit(), B)  # B's attachment goes with B
    assert isinstance(out, Done) and out.changed[0].removed
    assert errno_of(table, ShmAt(id=seg)) == errno.EINVAL
    assert not table.has(Kind.SHM, seg)


def test_rmid_of_unattached_segment_destroys_it(table: IpcTable) -> None:
    seg = new_seg(table)
    assert errno_of(table, ShmCtl(id=seg, cmd=IPC_RMID), OTHER) == errno.EPERM
    out = table.apply(ShmCtl(id=seg, cmd=IPC_RMID), A)
    assert isinstance(out, Done) and out.changed[0].removed
    assert errno_of(table, ShmCtl(id=seg, cmd=IPC_STAT)) == errno.EINVAL


def test_shmat_permissions(table: IpcTable) -> None:
    seg = new_seg(table, mode=0o640)
    group = Caller(uid=5, gid=100, client="g")
    assert errno_of(table, ShmAt(id=seg), group) == errno.EACCES
    table.apply(ShmAt(id=seg, flags=SHM_RDONLY), group)
    assert errno_of(table, ShmAt(id=seg, flags=SHM_RDONLY | SHM_EXEC), group) == (
        errno.EACCES
    )
    assert errno_of(table, ShmAt(id=seg, flags=SHM_RDONLY), OTHER) == errno.EACCES
    table.apply(ShmAt(id=seg, inherit=True), OTHER)  # a forked child: no check
    assert stat(table, seg).nattch == 2
    assert errno_of(table, ShmAt(id=-1)) == errno.EINVAL


def test_shmctl_set_lock_info(table: IpcTable) -> None:
    seg = new_seg(table)
    table.apply(ShmCtl(id=seg, cmd=IPC_SET, set=PermSet(uid=7, mode=0o644)), A)
    ds = stat(table, seg)
    assert (ds.perm.uid, ds.perm.cuid, ds.perm.mode) == (7, 1000, 0o644)
    assert errno_of(table, ShmCtl(id=seg, cmd=SHM_LOCK), OTHER) == errno.EPERM
    table.apply(ShmCtl(id=seg, cmd=SHM_LOCK), A)
    assert stat(table, seg).perm.mode & SHM_LOCKED
    table.apply(ShmCtl(id=seg, cmd=SHM_UNLOCK), A)
    assert not stat(table, seg).perm.mode & SHM_LOCKED
    assert table.apply(ShmCtl(id=0, cmd=IPC_INFO), OTHER).value.shmmax == 1000
    assert errno_of(table, ShmCtl(id=seg, cmd=77)) == errno.EINVAL


def test_explicit_read_write_and_versions(table: IpcTable) -> None:
    seg = new_seg(table, 40, mode=0o640)
    assert table.apply(ShmRead(id=seg, offset=0, length=40), A).value == bytes(40)
    w = table.apply(ShmWrite(id=seg, offset=14, data=b"abcd"), A).value
    assert w == ShmWritten(version=1, pages=((0, 0, 1), (1, 0, 1)))
    assert table.apply(ShmRead(id=seg, offset=12, length=8), A).value == (
        b"\0\0abcd\0\0"
    )
    w = table.apply(ShmWrite(id=seg, offset=16, data=b"Z"), A).value
    assert w.pages == ((1, 1, 2),)
    assert table.apply(ShmRead(id=seg, offset=36, length=4), A).value == bytes(4)
    assert errno_of(table, ShmRead(id=seg, offset=30, length=11)) == errno.EINVAL
    assert errno_of(table, ShmWrite(id=seg, offset=-1, data=b"x")) == errno.EINVAL
    group = Caller(uid=5, gid=100, client="g")
    assert table.apply(ShmRead(id=seg, offset=0, length=1), group).value == b"\0"
    assert errno_of(table, ShmWrite(id=seg, offset=0, data=b"x"), group) == (
        errno.EACCES
    )
    assert errno_of(table, ShmRead(id=seg, offset=0, length=1), OTHER) == (errno.EACCES)


def test_pull_since_known_and_windows(table: IpcTable) -> None:
    seg = new_seg(table, 40)  # pages 0,1 of 16 bytes and 2 of 8
    table.apply(ShmWrite(id=seg, offset=0, data=b"a"), A)  # v1: page 0
    table.apply(ShmWrite(id=seg, offset=35, data=b"c"), A)  # v2: page 2
    table.apply(ShmWrite(id=seg, offset=16, data=b"b"), A)  # v3: page 1
    pages = table.apply(ShmPull(id=seg, since=0), A).value
    assert isinstance(pages, ShmPages) and pages.version == 3 and pages.next is None
    assert [(p.index, p.version, len(p.data)) for p in pages.pages] == [
        (0, 1, 16),
        (1, 3, 16),
        (2, 2, 8),
    ]
    pages = table.apply(ShmPull(id=seg, since=1, known={1: 3}), A).value
    assert [p.index for p in pages.pages] == [2]
    pages = table.apply(ShmPull(id=seg, since=0, max_pages=2), A).value
    assert [p.index for p in pages.pages] == [0, 1] and pages.next == 2
    pages = table.apply(ShmPull(id=seg, since=0, start=2, max_pages=2), A).value
    assert [p.index for p in pages.pages] == [2] and pages.next is None


def sync(table: IpcTable, seg: int, mirror: Mirror, caller: Caller = A) -> None:
    while runs := mirror.push_runs(max_bytes=8):
        written = table.apply(ShmPush(id=seg, runs=tuple(runs)), caller).value
        mirror.pushed(runs, written)
    start: int | None = 0
    while start is not None:
        args = mirror.pull_args(start)
        answer = table.apply(ShmPull(id=seg, max_pages=1, **args), caller).value  # type: ignore[arg-type]
        start = mirror.pulled(answer)


def test_mirrors_merge_disjoint_writes_in_one_page(table: IpcTable) -> None:
    seg = new_seg(table, 40)
    one, two = Mirror(40, PAGE), Mirror(40, PAGE)
    one.buf[0:3] = b"one"
    two.buf[8:11] = b"two"
    assert two.buf[0:3] == bytes(3)  # not coherent between syncs
    sync(table, seg, one)
    sync(table, seg, two)
    sync(table, seg, one)
    assert one.buf == two.buf
    assert bytes(one.buf[0:11]) == b"one\0\0\0\0\0two"
    assert table.apply(ShmRead(id=seg, offset=0, length=11), A).value == (
        b"one\0\0\0\0\0two"
    )


def test_mirror_pull_keeps_unsynced_local_bytes(table: IpcTable) -> None:
    seg = new_seg(table, 40)
    mine = Mirror(40, PAGE)
    table.apply(ShmWrite(id=seg, offset=0, data=b"HOMEHOME"), A)
    mine.buf[2] = ord("x")  # written locally, not pushed yet
    start: int | None = 0
    while start is not None:
        answer = table.apply(ShmPull(id=seg, **mine.pull_args(start)), A).value  # type: ignore[arg-type]
        start = mine.pulled(answer)
    assert bytes(mine.buf[0:8]) == b"HOxEHOME"
    sync(table, seg, mine)
    assert table.apply(ShmRead(id=seg, offset=0, length=8), A).value == b"HOxEHOME"


def test_mirror_adopts_versions_of_its_own_writes(table: IpcTable) -> None:
    seg = new_seg(table, 40)
    mine = Mirror(40, PAGE)
    sync(table, seg, mine)
    mine.buf[20] = 1
    runs = mine.push_runs()
    written = table.apply(ShmPush(id=seg, runs=tuple(runs)), A).value
    mine.pushed(runs, written)
    answer = table.apply(ShmPull(id=seg, **mine.pull_args()), A).value  # type: ignore[arg-type]
    assert answer.pages == ()  # nothing to fetch: the only change was ours
    mine.pulled(answer)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # which mirror
            st.integers(0, 39),  # offset
            st.binary(min_size=1, max_size=12),
            st.booleans(),  # sync after the write
        ),
        max_size=25,
    )
)
def test_synced_mirrors_equal_the_home(
    steps: list[tuple[int, int, bytes, bool]],
) -> None:
    """Writers that sync before anyone writes the same bytes again see one segment:
    after everyone syncs, every mirror equals the home, which holds, for each byte,
    the value of the last synced write of it."""
    table = IpcTable(Limits(page_size=PAGE))
    seg = new_seg(table, 40)
    mirrors = [Mirror(40, PAGE) for _ in range(3)]
    expected = bytearray(40)
    for who, offset, data, _ in steps:
        data = data[: 40 - offset]
        sync(table, seg, mirrors[who])  # acquire
        mirrors[who].buf[offset : offset + len(data)] = data
        expected[offset : offset + len(data)] = data
        sync(table, seg, mirrors[who])  # release
    for m in mirrors:
        sync(table, seg, m)
    assert table.apply(ShmRead(id=seg, offset=0, length=40), A).value == expected
    assert all(m.buf == expected for m in mirrors)
