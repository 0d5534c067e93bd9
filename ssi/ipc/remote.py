"""What cluster IPC puts on the daemons' wire, beyond ssi.proto's envelopes: ops,
callers, results, replication records and moved objects, as msgpack bytes. Pure.

The proto layer carries these as opaque `bytes` fields (ssi.proto does not depend on
ssi.ipc); both ends of every ipc.* request encode and decode them here:

    origin ── IpcApply(op=encode_op(MsgRcv), caller=encode_caller(c), request) ──▶ home
    origin ◀── Answer(state="done", result=Result(errno, type, value bytes)) ──── home
    home ── IpcReplicate([ReplicaItem(snapshot, origins, results...)]) ──▶ replica
    home ── Bundle(snapshot, side) ──▶ coordinator ──▶ new home        (a move)

A Result keeps the value's type name, so a MsqidDs comes back a MsqidDs on the
origin (`decode_value`); the request id ("<client>#<seq>") names one op of one
client across retries, reconnections and migrations: a home answers it once.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Union

import msgspec

from ssi.ipc.constants import CancelReason, Kind
from ssi.ipc.model import Caller, ipc_error
from ssi.ipc.ops import (
    OPS,
    Message,
    MsgCtl,
    MsgGet,
    MsgInfo,
    MsgRcv,
    MsgSnd,
    MsqidDs,
    ObjectInfo,
    Op,
    SemCtl,
    SemGet,
    SemidDs,
    SemInfo,
    SemOp,
    SemSize,
    ShmAt,
    ShmAttach,
    ShmCtl,
    ShmDt,
    ShmGet,
    ShmidDs,
    ShmInfo,
    ShmPages,
    ShmPull,
    ShmPush,
    ShmRead,
    ShmWrite,
    ShmWritten,
)

__all__ = [
    "AnyOp",
    "Answer",
    "Bundle",
    "ReplicaItem",
    "Result",
    "Side",
    "client_of",
    "decode_op",
    "encode_op",
    "decode_caller",
    "encode_caller",
    "decode_value",
    "encode_value",
    "result_error",
    "result_of",
    "target",
    "GET_OPS",
    "RESULTS_PER_CLIENT",
]

# Every op of ops.OPS, as the tagged Union msgspec decodes (one list: ops.OPS).
AnyOp: Any = Union[tuple(OPS.values())]  # noqa: UP007

GET_OPS = (MsgGet, SemGet, ShmGet)
RESULTS_PER_CLIENT = 32  # completed results a home keeps per client and object

_enc = msgspec.msgpack.Encoder()
_op_dec = msgspec.msgpack.Decoder(AnyOp)
_caller_dec = msgspec.msgpack.Decoder(Caller)

_KIND_OF: dict[type[Op], Kind] = {
    MsgSnd: Kind.MSG,
    MsgRcv: Kind.MSG,
    MsgCtl: Kind.MSG,
    SemOp: Kind.SEM,
    SemCtl: Kind.SEM,
    SemSize: Kind.SEM,
    ShmAt: Kind.SHM,
    ShmDt: Kind.SHM,
    ShmCtl: Kind.SHM,
    ShmRead: Kind.SHM,
    ShmWrite: Kind.SHM,
    ShmPush: Kind.SHM,
    ShmPull: Kind.SHM,
}
_GET_KIND: dict[type[Op], Kind] = {MsgGet: Kind.MSG, SemGet: Kind.SEM, ShmGet: Kind.SHM}


def encode_op(op: Op) -> bytes:
    return _enc.encode(op)


def decode_op(data: bytes) -> Op:
    op: Op = _op_dec.decode(data)
    return op


def encode_caller(caller: Caller) -> bytes:
    return _enc.encode(caller)


def decode_caller(data: bytes) -> Caller:
    return _caller_dec.decode(data)


def target(op: Op) -> tuple[Kind, int] | None:
    """The object an op works on: (kind, id); None for gets, exit and list."""
    kind = _KIND_OF.get(type(op))
    if kind is None:
        return None
    return kind, int(op.id)  # type: ignore[attr-defined]


def get_kind(op: Op) -> Kind | None:
    return _GET_KIND.get(type(op))


def client_of(request: str) -> str:
    """The client part of a request id `<client>#<seq>`."""
    return request.rpartition("#")[0]


# ---- values and results ---------------------------------------------------------

_VALUE_TYPES: dict[str, Any] = {
    "none": None,
    "int": int,
    "ints": list[int],
    "bytes": bytes,
    "msg": Message,
    "msqid": MsqidDs,
    "semid": SemidDs,
    "shmid": ShmidDs,
    "msginfo": MsgInfo,
    "seminfo": SemInfo,
    "shminfo": ShmInfo,
    "attach": ShmAttach,
    "pages": ShmPages,
    "written": ShmWritten,
    "objects": list[ObjectInfo],
}
_NAME_OF: dict[type, str] = {
    Message: "msg",
    MsqidDs: "msqid",
    SemidDs: "semid",
    ShmidDs: "shmid",
    MsgInfo: "msginfo",
    SemInfo: "seminfo",
    ShmInfo: "shminfo",
    ShmAttach: "attach",
    ShmPages: "pages",
    ShmWritten: "written",
    int: "int",
    bool: "int",
    bytes: "bytes",
}
_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
    name: msgspec.msgpack.Decoder(t) for name, t in _VALUE_TYPES.items() if t
}


def encode_value(value: Any) -> tuple[str, bytes]:
    if value is None:
        return "none", b""
    name = _NAME_OF.get(type(value))
    if name is None:
        if isinstance(value, list) and all(isinstance(v, ObjectInfo) for v in value):
            name = "objects" if value else "ints"
        elif isinstance(value, list):
            name = "ints"
        else:
            raise TypeError(f"no wire form for an ipc value of type {type(value)}")
    return name, _enc.encode(value)


def decode_value(name: str, data: bytes) -> Any:
    if name == "none":
        return None
    dec = _decoders.get(name)
    if dec is None:
        raise ValueError(f"unknown ipc value type {name!r}")
    return dec.decode(data)


class Result(msgspec.Struct, frozen=True, array_like=True):
    """An op's outcome for its caller: errno 0 and a value, or an errno. `timeout`
    when the errno comes from a timeout's cancel (EAGAIN -> TimeoutError)."""

    errno: int = 0
    type: str = "none"
    value: bytes = b""
    timeout: bool = False


def result_of(value: Any) -> Result:
    name, data = encode_value(value)
    return Result(0, name, data)


def result_error(err: int, reason: CancelReason | None = None) -> Result:
    return Result(err, timeout=reason is CancelReason.TIMEOUT and err == _errno.EAGAIN)


def unwrap(result: Result, what: str) -> Any:
    """The value of a Result, or the OSError (TimeoutError) it stands for."""
    if result.errno:
        if result.timeout:
            raise TimeoutError(_errno.EAGAIN, f"timed out: {what}")
        raise ipc_error(result.errno, what)
    return decode_value(result.type, result.value)


class Answer(msgspec.Struct, frozen=True, array_like=True):
    """A home's answer to IpcApply/IpcCancelAt: `done` (with its Result), `parked`
    (woken later through IpcWake), or `absent` (the object is not homed here:
    moved, moving or gone; ask the coordinator again)."""

    state: str
    result: Result | None = None
    home: str = ""  # for gets: where the object lives


# ---- replication and moves ---------------------------------------------------------


class Side(msgspec.Struct, kw_only=True):
    """What a home keeps of an object beside its table state: where each parked
    request is answered (its origin node), and the last results per client, so a
    request retried after a failure or a migration is answered once."""

    origins: dict[str, str] = msgspec.field(default_factory=dict)
    results: dict[str, dict[str, Result]] = msgspec.field(default_factory=dict)

    def result(self, request: str) -> Result | None:
        per = self.results.get(client_of(request))
        return None if per is None else per.get(request)

    def record(self, request: str, result: Result) -> None:
        per = self.results.setdefault(client_of(request), {})
        per[request] = result
        while len(per) > RESULTS_PER_CLIENT:
            del per[next(iter(per))]

    def forget_client(self, client: str) -> bool:
        return self.results.pop(client, None) is not None


class ReplicaItem(msgspec.Struct, frozen=True, kw_only=True):
    """One object's news for its replica: its snapshot (a shm delta when `delta`;
    None: removed), the origins of its parked requests, the results recorded since
    the last item (all of them when `full`), and clients whose results are gone."""

    kind: Kind
    id: int
    snapshot: bytes | None
    origins: dict[str, str] = {}
    results: list[tuple[str, Result]] = []
    full: bool = False
    purged: list[str] = []


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    """An object leaving its home for another: whole snapshot and side state."""

    kind: Kind
    id: int
    snapshot: bytes
    side: Side


_item_dec = msgspec.msgpack.Decoder(list[ReplicaItem])
_bundle_dec = msgspec.msgpack.Decoder(Bundle)
_answer_dec = msgspec.msgpack.Decoder(Answer)
_results_dec = msgspec.msgpack.Decoder(list[tuple[str, Result]])


def encode(obj: Any) -> bytes:
    return _enc.encode(obj)


def decode_items(data: bytes) -> list[ReplicaItem]:
    return _item_dec.decode(data)


def decode_bundle(data: bytes) -> Bundle:
    return _bundle_dec.decode(data)


def decode_answer(data: bytes) -> Answer:
    return _answer_dec.decode(data)


def decode_results(data: bytes) -> list[tuple[str, Result]]:
    return _results_dec.decode(data)
