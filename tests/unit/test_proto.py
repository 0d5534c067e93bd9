"""ssi.proto: message round trips, the decoder's total error contract, error mapping."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssi.proto import codec, errors
from ssi.proto import messages as m
from ssi.proto.codec import decode_envelope, decode_reply, encode_envelope, encode_reply
from ssi.proto.messages import PROTOCOL_VERSION, Envelope, Reply

SAMPLES: list[m.Request[Any]] = [
    m.Ping(),
    m.NodeJoin(
        token="t0k", name="n1", address="10.0.0.1", port=7070, resources={"cpus": 2}
    ),
    m.NodeHello(name="n1", address="10.0.0.1", port=7070, resources={"mem": 1 << 30}),
    m.Heartbeat(name="n1", seq=7, load={"cpu": 0.5}),
    m.NodeList(),
    m.NodeShow(name="n2"),
    m.NodeToken(),
    m.NodeToken(ttl=60.0),
    m.NodeDrain(name="n2", reason="disk"),
    m.NodeResume(name="n2"),
    m.NodeEvict(name="n2", force=True, wait=True),
    m.ClusterInit(name="lab"),
    m.ClusterStatus(),
    m.ClusterJoin(token="tok"),
    m.JobSubmit(
        argv=["sim", "-n", "8"],
        cwd="/home/u",
        env={"A": "1"},
        hold=True,
        require="cpus>=2",
        ckpt_every=60.0,
        wall_limit=5.0,
        session="s",
    ),
    m.JobSubmitBatch(jobs=[m.JobSubmit(argv=["true"], cwd="/")] * 2),
    m.JobList(all=True, user=1000, session="s", ids=[1, 2]),
    m.JobShow(job=1),
    m.JobWait(job=1, timeout=2.5),
    m.JobWaitAny(jobs=[1, 2], timeout=None),
    m.JobKill(job=1, signal=9),
    m.JobSuspend(job=1),
    m.JobResume(job=1),
    m.JobHold(job=1),
    m.JobRelease(job=1),
    m.JobCheckpoint(job=1, stop=True),
    m.JobCheckpoints(job=1),
    m.JobRestart(job=1, checkpoint="1-1-1", node="n3"),
    m.JobWhy(job=1),
    m.AgentStart(job=1, spec={"argv": ["true"]}),
    m.AgentSignal(job=1, signal=15),
    m.AgentFreeze(job=1, frozen=True),
    m.AgentDump(job=1, checkpoint="c", stop=False, replicas=[{"name": "n2"}]),
    m.AgentRestore(job=1, checkpoint="c", spec={}, holders=[]),
    m.AgentForget(job=1, kill=True, checkpoints=["c"]),
    m.JobEnded(job=1, node="n1", status={"exited": 0}),
    m.JobsHere(node="n1", running=[1]),
    m.JobMigrate(job=1, node="n2", live=False),
    m.AgentMigrateOut(job=1, migration="mig-1", channel={"port": 1}),
    m.AgentMovePrepare(job=1, migration="mig-1", source="10.0.0.1"),
    m.AgentSettle(job=1, moved=True),
    m.AgentKeep(job=1),
    m.MigrationPhase(job=1, migration="mig-1", node="n1", phase="sending"),
    m.PolicyList(),
    m.PolicyShow(),
    m.PolicySet(name="mosix", params={"interval": "2s"}),
    m.IpcCall(name="ipc.msgsnd", args={"id": 1, "data": b"x"}, client="t", request=2),
    m.IpcCancel(client="t", request=2, reason="timeout"),
    m.IpcObjects(kind="msg"),
    m.IpcObject(kind="sem", id=3),
    m.IpcApply(operation=b"op", caller=b"c", request="t#2", origin="n1", wait=1.0),
    m.IpcCancelAt(kind="msg", id=1, request="t#2"),
    m.IpcExitAt(caller=b"c"),
    m.IpcWake(results=b"r"),
    m.IpcReplicate(items=b"i"),
    m.IpcHomeList(),
    m.IpcRelease(kind="shm", id=4),
    m.IpcAdopt(bundle=b"b", replica="n3"),
    m.IpcPromote(kind="msg", id=1, replica=None),
    m.IpcSetReplica(kind="msg", id=1, replica="n2"),
    m.IpcDrop(kind="msg", id=1, home=False),
    m.IpcGet(operation=b"op", caller=b"c", request="t#1", origin="n2"),
    m.IpcWhere(kind="msg", id=1),
    m.IpcGone(kind="msg", id=1),
    m.IpcMove(kind="msg", id=1, to="n2"),
    m.IpcHello(node="n2"),
]


def env(body: m.Request[Any], **kw: Any) -> Envelope:
    return Envelope(v=PROTOCOL_VERSION, id="r1", body=body, **kw)


def raw(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_every_registered_op_has_a_sample() -> None:
    ops = {op for op in m.registry() if not op.startswith("test.")}
    assert {s.op for s in SAMPLES} == ops


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: b.op)
def test_envelope_round_trip(body: m.Request[Any]) -> None:
    e = env(body, cause="c1", sender="n0", uid=1000, gid=100, deadline=12.5)
    back = decode_envelope(encode_envelope(e))
    assert back == e
    assert type(back.body) is type(body)


def test_op_travels_as_tag() -> None:
    assert m.Ping.op == "sys.ping"
    assert msgspec.msgpack.decode(raw(m.NodeShow(name="x"))) == {
        "op": "node.show",
        "name": "x",
    }


def test_requests_are_frozen_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        m.NodeShow("x")  # type: ignore[call-arg]
    n = m.NodeShow(name="x")
    with pytest.raises(AttributeError):
        n.name = "y"  # type: ignore[misc]


def test_reply_round_trip_with_struct_value_and_error() -> None:
    pong = m.Pong(node="n1", version="0.1.0", time=1.5)
    r = decode_reply(encode_reply(Reply(v=1, id="a", ok=True, value=pong)))
    assert r.ok and msgspec.convert(r.value, m.result_type(m.Ping)) == pong
    err = errors.WireError(code="not_found", message="no node n9", details={"n": "n9"})
    r = decode_reply(encode_reply(Reply(v=1, id="b", ok=False, error=err)))
    assert r.error == err


def test_result_type() -> None:
    assert m.result_type(m.Ping) is m.Pong
    assert m.result_type(m.NodeList) is Any


def test_adding_a_class_adds_the_op() -> None:
    class Probe(m.Request[int], tag="test.probe_added"):
        x: int

    e = decode_envelope(encode_envelope(env(Probe(x=3))))
    assert e.body == Probe(x=3)
    assert m.result_type(Probe) is int


def test_request_needs_an_op_name_and_a_unique_one() -> None:
    with pytest.raises(TypeError, match="area.verb"):

        class NoTag(m.Request[Any]):
            pass

    with pytest.raises(TypeError, match="already"):

        class Dup(m.Request[Any], tag="sys.ping"):
            pass


def test_unknown_field_rejected() -> None:
    data = raw({"v": 1, "id": "q", "body": {"op": "node.show", "name": "a", "zz": 1}})
    with pytest.raises(errors.MalformedMessage) as ei:
        decode_envelope(data)
    assert ei.value.request_id == "q"
    assert ei.value.details["op"] == "node.show"


def test_unknown_op_names_the_op() -> None:
    data = raw({"v": 1, "id": "q7", "body": {"op": "job.teleport"}})
    with pytest.raises(errors.UnknownOp) as ei:
        decode_envelope(data)
    assert ei.value.op == "job.teleport"
    assert ei.value.request_id == "q7"
    assert "job.teleport" in str(ei.value)


def test_version_mismatch() -> None:
    good = raw({"v": 1, "id": "q", "body": {"op": "sys.ping"}})
    assert decode_envelope(good).body == m.Ping()
    for data in (
        raw({"v": 2, "id": "q", "body": {"op": "sys.ping"}}),
        raw({"v": 2, "id": "q", "future": [1, 2], "body": None}),
    ):
        with pytest.raises(errors.VersionMismatch) as ei:
            decode_envelope(data)
        assert ei.value.request_id == "q"
        assert ei.value.details["got"] == 2
    with pytest.raises(errors.VersionMismatch):
        decode_reply(raw({"v": 9, "id": "q", "ok": True}))


def test_oversized_rejected_both_ways() -> None:
    big = m.NodeJoin(
        token="t", name="n", address="a", port=1, resources={"x": "y" * 2000}
    )
    data = encode_envelope(env(big))
    with pytest.raises(errors.MessageTooLarge):
        decode_envelope(data, max_size=1000)
    with pytest.raises(errors.MessageTooLarge):
        encode_envelope(env(big), max_size=1000)
    with pytest.raises(errors.MessageTooLarge):
        decode_reply(encode_reply(Reply(v=1, id="x", ok=True, value="z" * 50)), 20)
    assert codec.DEFAULT_MAX_SIZE == 4 * 1024 * 1024


def test_malformed_header_fields() -> None:
    cases = [
        b"",
        b"\xc1",
        b"\x91" * 100_000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        raw([1, 2]),
        raw({"v": "1", "id": "q", "body": {"op": "sys.ping"}}),
        raw({"v": 1, "id": 5, "body": {"op": "sys.ping"}}),
        raw({"v": 1, "id": "q", "body": 5}),
        raw({"v": 1, "id": "q", "body": {"op": 5}}),
        raw({"v": 1, "id": "q", "body": {"op": "sys.ping"}, "uid": "root"}),
    ]
    for data in cases:
        with pytest.raises(errors.ProtocolError):
            decode_envelope(data)
        with pytest.raises(errors.ProtocolError):
            decode_reply(data)


# --- the decoder's total contract ---------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
trees = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=6) | ints, kids, max_size=4)
    ),
    max_leaves=12,
)
ops = st.sampled_from([*m.registry(), "no.such", "", "x"]) | st.text(max_size=8)
bodies = st.fixed_dictionaries({"op": ops}, optional={"name": trees, "seq": trees})
headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 0, 2, -1, "1", None]) | trees,
        "id": st.text(max_size=8) | trees,
        "body": bodies | trees,
        "cause": trees,
        "uid": trees,
        "deadline": trees,
        "ok": trees,
        "value": trees,
        "error": trees,
    },
)

FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (decode_envelope, decode_reply):
        try:
            decode(data)
        except errors.ProtocolError:
            pass


@FAST
@given(headers | trees)
def test_arbitrary_structures_raise_only_protocol_errors(obj: Any) -> None:
    data = raw(obj)
    for decode in (decode_envelope, decode_reply):
        try:
            decode(data)
        except errors.ProtocolError as e:
            if isinstance(e, errors.UnknownOp):
                assert isinstance(obj, dict) and e.op == obj["body"]["op"]


@FAST
@given(st.sampled_from(SAMPLES), st.integers(min_value=0), st.binary(max_size=4))
def test_corrupted_good_messages(body: m.Request[Any], pos: int, junk: bytes) -> None:
    data = bytearray(encode_envelope(env(body)))
    i = pos % (len(data) + 1)
    data[i : i + len(junk)] = junk
    try:
        decode_envelope(bytes(data))
    except errors.ProtocolError:
        pass


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "code", "exit_code"),
    [
        (errors.BadRequest, "bad_request", 2),
        (errors.UnknownOp, "unknown_op", 2),
        (errors.NotFound, "not_found", 3),
        (errors.Denied, "denied", 4),
        (errors.Timeout, "timeout", 5),
        (errors.Conflict, "conflict", 1),
        (errors.Unavailable, "unavailable", 1),
        (errors.NodeGone, "node_gone", 1),
        (errors.Internal, "internal", 1),
    ],
)
def test_error_codes_round_trip(
    cls: type[errors.SsiError], code: str, exit_code: int
) -> None:
    assert (cls.code, cls.exit_code) == (code, exit_code)
    exc = cls("boom", details={"node": "n3"})
    wire = errors.to_wire(exc)
    assert wire.code == code
    travelled = msgspec.msgpack.decode(raw(wire), type=errors.WireError)
    assert travelled == wire
    back = errors.from_wire(travelled)
    assert type(back) is cls and str(back) == "boom"
    assert back.details["node"] == "n3"


def test_protocol_errors_map_to_bad_request_and_back() -> None:
    for cls in (
        errors.MessageTooLarge,
        errors.MalformedMessage,
        errors.VersionMismatch,
    ):
        wire = errors.to_wire(cls("x", request_id="r"))
        assert wire.code == "bad_request"
        back = errors.from_wire(wire)
        assert type(back) is cls and isinstance(back, errors.BadRequest)
    back = errors.from_wire(errors.to_wire(errors.UnknownOp(op="a.b")))
    assert isinstance(back, errors.UnknownOp) and back.op == "a.b"


def test_unknown_code_and_foreign_exceptions() -> None:
    back = errors.from_wire(errors.WireError(code="migration_refused", message="no"))
    assert type(back) is not errors.SsiError and isinstance(back, errors.SsiError)
    assert back.code == "migration_refused" and back.exit_code == 1
    wire = errors.to_wire(KeyError("k"))
    assert wire.code == "internal" and "KeyError" in wire.message
