"""ssi.ipc.wire: the interposer's frames decode to the ops the table runs, values
encode to the payloads the C side reads, malformed frames are refused."""

from __future__ import annotations

import struct

import pytest

from ssi.ipc import wire
from ssi.ipc.constants import GETALL, GETVAL, IPC_INFO, IPC_SET, IPC_STAT, SETALL
from ssi.ipc.ops import (
    Message,
    MsgInfo,
    MsqidDs,
    PermInfo,
    SemidDs,
    ShmAttach,
    ShmidDs,
    ShmPage,
    ShmPages,
    ShmWritten,
    op_from_args,
)
from ssi.ipc.wire import Op, WireError

PERM = PermInfo(key=5, uid=1, gid=2, cuid=3, cgid=4, mode=0o640, seq=0)


def body(op: int, seq: int, payload: bytes) -> bytes:
    return wire.encode_request(op, seq, payload)[4:]


def call_of(op: int, payload: bytes) -> tuple[str, dict[str, object]]:
    req = wire.decode_request(body(op, 7, payload))
    assert req.seq == 7
    name, args = wire.to_call(req)
    op_from_args(name, dict(args))  # the table accepts the arguments
    return name, args


def test_requests_become_ops() -> None:
    assert call_of(Op.MSGGET, struct.pack("<ii", 0x1234, 0o1600)) == (
        "ipc.msgget",
        {"key": 0x1234, "flags": 0o1600},
    )
    payload = struct.pack("<iiqQ", 3, 0, 9, 5) + b"hello"
    assert call_of(Op.MSGSND, payload) == (
        "ipc.msgsnd",
        {"id": 3, "mtype": 9, "data": b"hello", "flags": 0},
    )
    assert call_of(Op.MSGRCV, struct.pack("<iiqQ", 3, 0o10000, -4, 100))[1] == {
        "id": 3,
        "size": 100,
        "mtype": -4,
        "flags": 0o10000,
    }
    name, args = call_of(
        Op.MSGCTL, struct.pack("<iiIIIIQ", 3, IPC_SET, 10, 20, 0o644, 0, 999)
    )
    assert args["set"] == {"uid": 10, "gid": 20, "mode": 0o644, "qbytes": 999}
    sops = (
        struct.pack("<iIq", 4, 2, 1_500_000_000)
        + struct.pack("<Hhh", 0, -1, 0x1000)
        + struct.pack("<Hhh", 1, 0, 0o4000)
    )
    name, args = call_of(Op.SEMOP, sops)
    assert args == {"id": 4, "sops": [[0, -1, 0x1000], [1, 0, 0o4000]], "timeout": 1.5}
    name, args = call_of(Op.SEMOP, struct.pack("<iIq", 4, 0, -1))
    assert "timeout" not in args and args["sops"] == []
    name, args = call_of(
        Op.SEMCTL, struct.pack("<iiiiI3H", 4, 0, SETALL, 0, 3, 1, 2, 3)
    )
    assert args["values"] == [1, 2, 3]
    assert call_of(Op.SEMCTL, struct.pack("<iiii", 4, 1, GETVAL, 0))[1]["num"] == 1
    assert call_of(Op.SHMGET, struct.pack("<iiQ", 0, 0o1600, 4096))[1]["size"] == 4096
    assert call_of(Op.SHMAT, struct.pack("<iiI", 2, 0, 1))[1]["inherit"] is True
    runs = struct.pack("<iI", 2, 2) + struct.pack("<QI", 0, 2) + b"ab"
    runs += struct.pack("<QI", 100, 1) + b"c"
    assert call_of(Op.SHMPUSH, runs)[1]["runs"] == [[0, b"ab"], [100, b"c"]]
    pull = struct.pack("<iIQII", 2, 3, 10, 64, 1) + struct.pack("<IQ", 5, 11)
    assert call_of(Op.SHMPULL, pull)[1] == {
        "id": 2,
        "since": 10,
        "known": {5: 11},
        "start": 3,
        "max_pages": 64,
    }


@pytest.mark.parametrize(
    "frame",
    [
        b"\x01\x00",  # short header
        struct.pack("<HHIQ", 2, Op.MSGGET, 0, 1) + struct.pack("<ii", 1, 1),
        struct.pack("<HHIQ", 1, 99, 0, 1),
        struct.pack("<HHIQ", 1, Op.MSGGET, 0, 1) + b"\x00",
        struct.pack("<HHIQ", 1, Op.MSGGET, 0, 1) + struct.pack("<iii", 1, 1, 1),
        struct.pack("<HHIQ", 1, Op.MSGSND, 0, 1) + struct.pack("<iiqQ", 1, 0, 1, 9),
    ],
)
def test_malformed_requests(frame: bytes) -> None:
    with pytest.raises(WireError) as info:
        wire.decode_request(frame)
    assert info.value.seq in (None, 1)


def test_reply_payloads() -> None:
    req = wire.decode_request(body(Op.MSGRCV, 1, struct.pack("<iiqQ", 1, 0, 0, 9)))
    ret, payload = wire.reply_payload(req, Message(3, b"abc"))
    assert (ret, payload) == (3, struct.pack("<q", 3) + b"abc")

    stat = wire.decode_request(body(Op.MSGCTL, 1, struct.pack("<ii", 1, IPC_STAT)))
    ds = MsqidDs(
        perm=PERM,
        stime=1,
        rtime=2,
        ctime=3,
        cbytes=4,
        qnum=5,
        qbytes=6,
        lspid=7,
        lrpid=8,
    )
    ret, payload = wire.reply_payload(stat, ds)
    assert struct.unpack("<iIIIIIIqqqQQQii", payload) == (
        5, 1, 2, 3, 4, 0o640, 0, 1, 2, 3, 4, 5, 6, 7, 8,
    )  # fmt: skip
    info = wire.decode_request(body(Op.MSGCTL, 1, struct.pack("<ii", 0, IPC_INFO)))
    assert wire.reply_payload(info, MsgInfo(msgmax=1, msgmnb=2, msgmni=3))[1] == (
        struct.pack("<iii", 1, 2, 3)
    )
    getall = wire.decode_request(
        body(Op.SEMCTL, 1, struct.pack("<iiii", 1, 0, GETALL, 0))
    )
    assert wire.reply_payload(getall, [4, 5]) == (0, struct.pack("<I2H", 2, 4, 5))
    getval = wire.decode_request(
        body(Op.SEMCTL, 1, struct.pack("<iiii", 1, 0, GETVAL, 0))
    )
    assert wire.reply_payload(getval, 9) == (9, b"")
    semstat = wire.decode_request(
        body(Op.SEMCTL, 1, struct.pack("<iiii", 1, 0, IPC_STAT, 0))
    )
    sds = SemidDs(perm=PERM, otime=1, ctime=2, nsems=3)
    assert len(wire.reply_payload(semstat, sds)[1]) == 28 + 24
    shmat = wire.decode_request(body(Op.SHMAT, 1, struct.pack("<iiI", 1, 0, 0)))
    assert wire.reply_payload(shmat, ShmAttach(segsz=10, page_size=4096, version=2))[
        1
    ] == struct.pack("<QIIQ", 10, 4096, 0, 2)
    shmstat = wire.decode_request(body(Op.SHMCTL, 1, struct.pack("<ii", 1, IPC_STAT)))
    shds = ShmidDs(
        perm=PERM, segsz=1, atime=2, dtime=3, ctime=4, cpid=5, lpid=6, nattch=7
    )
    assert len(wire.reply_payload(shmstat, shds)[1]) == 28 + 48
    push = wire.decode_request(body(Op.SHMPUSH, 1, struct.pack("<iI", 1, 0)))
    written = ShmWritten(version=4, pages=((0, 1, 4),))
    assert wire.reply_payload(push, written)[1] == struct.pack("<QI", 4, 1) + (
        struct.pack("<IQQ", 0, 1, 4)
    )
    pull = wire.decode_request(
        body(Op.SHMPULL, 1, struct.pack("<iIQII", 1, 0, 0, 9, 0))
    )
    pages = ShmPages(version=4, pages=(ShmPage(2, 4, b"xy"),), next=None)
    assert wire.reply_payload(pull, pages)[1] == struct.pack("<QqI", 4, -1, 1) + (
        struct.pack("<IQI", 2, 4, 2) + b"xy"
    )


def test_reply_frames_round_trip() -> None:
    data = wire.encode_reply(12, -1, 11, b"zz")
    (length,) = wire.LEN.unpack(data[:4])
    assert length == len(data) - 4
    assert wire.decode_reply(data[4:]) == (12, -1, 11, b"zz")
