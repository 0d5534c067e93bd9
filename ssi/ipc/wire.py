"""The interposer's wire format: what ssi_ipc_preload.c and preload_server.py say to
each other over a unix stream socket. Fixed little-endian fields, no msgpack, so
that a few lines of C encode and decode it. Pure: bytes in, bytes out.

Frames, both ways:   u32 length (of what follows) | body
Request body:        u16 version (1) | u16 op | u32 zero | u64 seq | payload
Reply body:          u64 seq | i64 ret | i32 errno | u32 zero | payload

`seq` is a per-process request number; the reply carries it back. A process opens
one connection per concurrent call (a blocked msgrcv holds one) and says HELLO first
on each. Its client identity (SEM_UNDO, attachments) is (peer pid, HELLO's token):
the server applies `ipc.exit` when the last connection of a client closes. A
request resent with the same seq after a reconnect is answered once: the server
re-attaches it to the pending op or replays the kept reply. CANCEL(seq) interrupts a
pending request (a signal arrived): its reply then says EINTR, or its result if it
completed first. CANCEL has no reply of its own. `ret` is the C call's return value
(an id, a byte count, a GETVAL value), `errno` its errno when nonzero.

Payloads (i32/u32/i64/u64/i16/u16 little-endian; "perm" = i32 key, u32 uid, gid,
cuid, cgid, mode, seq):

  op  name     request payload                         reply payload
   1  HELLO    u64 token, u32 pid, u32 zero             u32 version, u32 zero,
                                                        u64 max frame
   2  CANCEL   u64 seq of the request to interrupt      (none, no reply)
   3  CALL     msgpack {"name": ssi.ipc op name,        msgpack ssi.ipc.remote.Result
               "args": {...}, "timeout": s | nil}       (typed value); errno as any
               (Python programs: ssi.ipc.client)
  10  MSGGET   i32 key, i32 flags                       ret = id
  11  MSGSND   i32 id, i32 flags, i64 mtype, u64 size,  -
               size bytes
  12  MSGRCV   i32 id, i32 flags, i64 mtype, u64 size   ret = n; i64 mtype, n bytes
  13  MSGCTL   i32 id, i32 cmd [IPC_SET: u32 uid, gid,  IPC_STAT: perm, i64 stime,
               mode, u32 zero, u64 qbytes]              rtime, ctime, u64 cbytes,
                                                        qnum, qbytes, i32 lspid,
                                                        lrpid; IPC_INFO: i32 msgmax,
                                                        msgmnb, msgmni
  20  SEMGET   i32 key, i32 nsems, i32 flags            ret = id
  21  SEMOP    i32 id, u32 nsops, i64 timeout ns (-1:   -
               none), nsops x (u16 num, i16 op, i16 flg)
  22  SEMCTL   i32 id, i32 num, i32 cmd, i32 value      ret = GETVAL/GETPID/GETNCNT/
               [SETALL: u32 n, n x u16]                 GETZCNT value; GETALL: u32
               [IPC_SET: u32 uid, gid, mode]            n, n x u16; IPC_STAT: perm,
                                                        i64 otime, ctime, u64 nsems;
                                                        IPC_INFO: i32 semmsl, semmns,
                                                        semopm, semmni, semvmx, semaem
  23  SEMSIZE  i32 id                                   ret = nsems
  30  SHMGET   i32 key, i32 flags, u64 size             ret = id
  31  SHMAT    i32 id, i32 flags, u32 inherit           u64 segsz, u32 page size,
                                                        u32 zero, u64 version
  32  SHMDT    i32 id                                   -
  33  SHMCTL   i32 id, i32 cmd [IPC_SET: u32 uid, gid,  IPC_STAT: perm, u64 segsz,
               mode]                                    i64 atime, dtime, ctime,
                                                        i32 cpid, lpid, u64 nattch;
                                                        IPC_INFO: u64 shmmax, shmmin,
                                                        shmmni, shmall
  34  SHMPUSH  i32 id, u32 nruns, nruns x (u64 offset,  u64 version, u32 n,
               u32 len, len bytes)                      n x (u32 page, u64 old,
                                                        u64 new)
  35  SHMPULL  i32 id, u32 start, u64 since,            u64 version, i64 next (-1:
               u32 max pages, u32 nknown,               done), u32 n, n x (u32 page,
               nknown x (u32 page, u64 version)         u64 version, u32 len, bytes)

A request the server cannot decode gets errno EINVAL when its seq could be read;
otherwise the server closes the connection.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from ssi.ipc.constants import GETALL, IPC_SET, SETALL
from ssi.ipc.model import ipc_error
from ssi.ipc.ops import (
    OPS,
    MsgInfo,
    MsqidDs,
    PermInfo,
    SemidDs,
    SemInfo,
    ShmAttach,
    ShmidDs,
    ShmInfo,
    ShmPages,
    ShmWritten,
)
from ssi.ipc.remote import result_of

__all__ = [
    "VERSION",
    "MAX_FRAME",
    "Op",
    "Request",
    "WireError",
    "decode_request",
    "encode_request",
    "encode_call",
    "encode_reply",
    "decode_reply",
    "to_call",
    "reply_payload",
    "frame",
]

VERSION = 1
MAX_FRAME = 16 * 1024 * 1024 + 4096

LEN = struct.Struct("<I")
REQ = struct.Struct("<HHIQ")
REP = struct.Struct("<QqiI")


class Op:
    HELLO = 1
    CANCEL = 2
    CALL = 3
    MSGGET = 10
    MSGSND = 11
    MSGRCV = 12
    MSGCTL = 13
    SEMGET = 20
    SEMOP = 21
    SEMCTL = 22
    SEMSIZE = 23
    SHMGET = 30
    SHMAT = 31
    SHMDT = 32
    SHMCTL = 33
    SHMPUSH = 34
    SHMPULL = 35


class _Call(msgspec.Struct, frozen=True):
    name: str
    args: dict[str, Any] = {}
    timeout: float | None = None


def encode_call(name: str, args: dict[str, Any], timeout: float | None) -> bytes:
    """CALL's payload."""
    return msgspec.msgpack.encode(_Call(name, args, timeout))


class WireError(Exception):
    """A frame that does not decode; `seq` when it could be read."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Request:
    op: int
    seq: int
    fields: dict[str, Any]


class _Reader:
    def __init__(self, data: bytes, seq: int) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.seq = seq

    def take(self, fmt: str) -> tuple[Any, ...]:
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            raise WireError("payload too short", self.seq)
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return values

    def one(self, fmt: str) -> Any:
        return self.take(fmt)[0]

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError("payload too short", self.seq)
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def rest(self) -> int:
        return len(self.data) - self.pos


def frame(body: bytes) -> bytes:
    return LEN.pack(len(body)) + body


def encode_request(op: int, seq: int, payload: bytes = b"") -> bytes:
    """A whole request frame (the C side's encoder, in Python, for tests)."""
    return frame(REQ.pack(VERSION, op, 0, seq) + payload)


def encode_reply(seq: int, ret: int, err: int, payload: bytes = b"") -> bytes:
    return frame(REP.pack(seq, ret, err, 0) + payload)


def decode_reply(body: bytes) -> tuple[int, int, int, bytes]:
    """(seq, ret, errno, payload) of a reply body (without its length)."""
    seq, ret, err, _ = REP.unpack_from(body)
    return seq, ret, err, bytes(body[REP.size :])


def decode_request(body: bytes) -> Request:
    """A Request from a frame body (without its length); WireError if malformed."""
    if len(body) < REQ.size:
        raise WireError("short request header")
    version, op, _, seq = REQ.unpack_from(body)
    if version != VERSION:
        raise WireError(f"wire version {version}", seq)
    r = _Reader(body[REQ.size :], seq)
    f: dict[str, Any] = {}
    if op == Op.HELLO:
        f["token"], f["pid"], _ = r.take("QII")
    elif op == Op.CANCEL:
        f["target"] = r.one("Q")
    elif op == Op.CALL:
        try:
            call = msgspec.msgpack.decode(r.raw(r.rest()), type=_Call)
        except msgspec.DecodeError as exc:
            raise WireError(f"bad CALL: {exc}", seq) from None
        f["name"], f["args"], f["timeout"] = call.name, call.args, call.timeout
    elif op == Op.MSGGET:
        f["key"], f["flags"] = r.take("ii")
    elif op == Op.MSGSND:
        f["id"], f["flags"], f["mtype"], size = r.take("iiqQ")
        f["data"] = r.raw(size)
    elif op == Op.MSGRCV:
        f["id"], f["flags"], f["mtype"], f["size"] = r.take("iiqQ")
    elif op in (Op.MSGCTL, Op.SHMCTL):
        f["id"], f["cmd"] = r.take("ii")
        if f["cmd"] & 0xFF == IPC_SET:
            f["uid"], f["gid"], f["mode"] = r.take("III")
            if op == Op.MSGCTL:
                f["qbytes"] = r.take("IQ")[1]
    elif op == Op.SEMGET:
        f["key"], f["nsems"], f["flags"] = r.take("iii")
    elif op == Op.SEMOP:
        f["id"], n, f["timeout_ns"] = r.take("iIq")
        if n > 65536:
            raise WireError(f"{n} semaphore operations", seq)
        f["sops"] = [list(r.take("Hhh")) for _ in range(n)]
    elif op == Op.SEMCTL:
        f["id"], f["num"], f["cmd"], f["value"] = r.take("iiii")
        if f["cmd"] == SETALL:
            n = r.one("I")
            f["values"] = list(r.take(f"{n}H")) if n else []
        elif f["cmd"] & 0xFF == IPC_SET:
            f["uid"], f["gid"], f["mode"] = r.take("III")
    elif op in (Op.SEMSIZE, Op.SHMDT):
        f["id"] = r.one("i")
    elif op == Op.SHMGET:
        f["key"], f["flags"], f["size"] = r.take("iiQ")
    elif op == Op.SHMAT:
        f["id"], f["flags"], f["inherit"] = r.take("iiI")
    elif op == Op.SHMPUSH:
        f["id"], n = r.take("iI")
        runs = []
        for _ in range(n):
            offset, length = r.take("QI")
            runs.append([offset, r.raw(length)])
        f["runs"] = runs
    elif op == Op.SHMPULL:
        f["id"], f["start"], f["since"], f["max_pages"], n = r.take("iIQII")
        known = {}
        for _ in range(n):
            page, version = r.take("IQ")
            known[page] = version
        f["known"] = known
    else:
        raise WireError(f"unknown op {op}", seq)
    if r.rest():
        raise WireError(f"{r.rest()} trailing bytes", seq)
    return Request(op, seq, f)


def _set(f: dict[str, Any], qbytes: bool = False) -> dict[str, Any]:
    out = {"uid": f["uid"], "gid": f["gid"], "mode": f["mode"]}
    if qbytes:
        out["qbytes"] = f["qbytes"]
    return out


def to_call(req: Request) -> tuple[str, dict[str, Any]]:
    """The ssi.ipc op name and arguments of a request (not HELLO or CANCEL).
    SEMOP's timeout becomes the transport's `timeout` in seconds."""
    f = req.fields
    op = req.op
    if op == Op.CALL:
        if f["name"] not in OPS or f["name"] == "ipc.list":
            raise WireError(f"no CALL of {f['name']!r}", req.seq)
        call: dict[str, Any] = dict(f["args"])
        if f["timeout"] is not None:
            call["timeout"] = f["timeout"]
        return f["name"], call
    if op == Op.MSGGET:
        return "ipc.msgget", {"key": f["key"], "flags": f["flags"]}
    if op == Op.MSGSND:
        return "ipc.msgsnd", {
            "id": f["id"],
            "mtype": f["mtype"],
            "data": f["data"],
            "flags": f["flags"],
        }
    if op == Op.MSGRCV:
        return "ipc.msgrcv", {
            "id": f["id"],
            "size": min(f["size"], 2**63 - 1),
            "mtype": f["mtype"],
            "flags": f["flags"],
        }
    if op == Op.MSGCTL:
        args: dict[str, Any] = {"id": f["id"], "cmd": f["cmd"]}
        if "uid" in f:
            args["set"] = _set(f, qbytes=True)
        return "ipc.msgctl", args
    if op == Op.SEMGET:
        return "ipc.semget", {"key": f["key"], "nsems": f["nsems"], "flags": f["flags"]}
    if op == Op.SEMOP:
        args = {"id": f["id"], "sops": f["sops"]}
        if f["timeout_ns"] >= 0:
            args["timeout"] = f["timeout_ns"] / 1e9
        return "ipc.semop", args
    if op == Op.SEMCTL:
        args = {"id": f["id"], "num": f["num"], "cmd": f["cmd"], "value": f["value"]}
        if "values" in f:
            args["values"] = f["values"]
        if "uid" in f:
            args["set"] = _set(f)
        return "ipc.semctl", args
    if op == Op.SEMSIZE:
        return "ipc.semsize", {"id": f["id"]}
    if op == Op.SHMGET:
        return "ipc.shmget", {"key": f["key"], "size": f["size"], "flags": f["flags"]}
    if op == Op.SHMAT:
        return "ipc.shmat", {
            "id": f["id"],
            "flags": f["flags"],
            "inherit": bool(f["inherit"]),
        }
    if op == Op.SHMDT:
        return "ipc.shmdt", {"id": f["id"]}
    if op == Op.SHMCTL:
        args = {"id": f["id"], "cmd": f["cmd"]}
        if "uid" in f:
            args["set"] = _set(f)
        return "ipc.shmctl", args
    if op == Op.SHMPUSH:
        return "ipc.shmpush", {"id": f["id"], "runs": f["runs"]}
    if op == Op.SHMPULL:
        return "ipc.shmpull", {
            "id": f["id"],
            "since": f["since"],
            "known": f["known"],
            "start": f["start"],
            "max_pages": max(1, min(f["max_pages"], 4096)),
        }
    raise WireError(f"op {op} is not an ipc call", req.seq)


def _perm(p: PermInfo) -> bytes:
    return struct.pack(
        "<iIIIIII",
        p.key,
        p.uid & 0xFFFFFFFF,
        p.gid & 0xFFFFFFFF,
        p.cuid & 0xFFFFFFFF,
        p.cgid & 0xFFFFFFFF,
        p.mode,
        p.seq & 0xFFFFFFFF,
    )


def reply_payload(req: Request, value: Any) -> tuple[int, bytes]:
    """(ret, payload) of a successful call's value."""
    op = req.op
    if op == Op.CALL:
        return 0, msgspec.msgpack.encode(result_of(value))
    if op in (Op.MSGGET, Op.SEMGET, Op.SHMGET, Op.SEMSIZE):
        return int(value), b""
    if op in (Op.MSGSND, Op.SEMOP, Op.SHMDT):
        return 0, b""
    if op == Op.MSGRCV:
        return len(value.data), struct.pack("<q", value.mtype) + value.data
    if op == Op.MSGCTL:
        if isinstance(value, MsqidDs):
            return 0, _perm(value.perm) + struct.pack(
                "<qqqQQQii",
                value.stime,
                value.rtime,
                value.ctime,
                value.cbytes,
                value.qnum,
                value.qbytes,
                value.lspid,
                value.lrpid,
            )
        if isinstance(value, MsgInfo):
            return 0, struct.pack("<iii", value.msgmax, value.msgmnb, value.msgmni)
        return 0, b""
    if op == Op.SEMCTL:
        cmd = req.fields["cmd"] & 0xFF
        if isinstance(value, SemidDs):
            return 0, _perm(value.perm) + struct.pack(
                "<qqQ", value.otime, value.ctime, value.nsems
            )
        if isinstance(value, SemInfo):
            return 0, struct.pack(
                "<iiiiii",
                value.semmsl,
                value.semmns,
                value.semopm,
                value.semmni,
                value.semvmx,
                value.semaem,
            )
        if cmd == GETALL:
            return 0, struct.pack(f"<I{len(value)}H", len(value), *value)
        return (int(value) if isinstance(value, int) else 0), b""
    if op == Op.SHMAT:
        assert isinstance(value, ShmAttach)
        return 0, struct.pack("<QIIQ", value.segsz, value.page_size, 0, value.version)
    if op == Op.SHMCTL:
        if isinstance(value, ShmidDs):
            return 0, _perm(value.perm) + struct.pack(
                "<QqqqiiQ",
                value.segsz,
                value.atime,
                value.dtime,
                value.ctime,
                value.cpid,
                value.lpid,
                value.nattch,
            )
        if isinstance(value, ShmInfo):
            return 0, struct.pack(
                "<QQQQ", value.shmmax, value.shmmin, value.shmmni, value.shmall
            )
        return 0, b""
    if op == Op.SHMPUSH:
        assert isinstance(value, ShmWritten)
        out = [struct.pack("<QI", value.version, len(value.pages))]
        out += [struct.pack("<IQQ", *p) for p in value.pages]
        return 0, b"".join(out)
    if op == Op.SHMPULL:
        assert isinstance(value, ShmPages)
        nxt = -1 if value.next is None else value.next
        out = [struct.pack("<QqI", value.version, nxt, len(value.pages))]
        for page in value.pages:
            out.append(struct.pack("<IQI", page.index, page.version, len(page.data)))
            out.append(page.data)
        return 0, b"".join(out)
    raise ipc_error(errno.EINVAL, f"no reply format for op {op}")
