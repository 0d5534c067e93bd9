"""ssi.rpc over real sockets: CURVE + ZAP on 127.0.0.1 (wildcard ports), unix sockets
with peer credentials. Every wait is bounded; nothing sleeps for a fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssi.proto import errors
from ssi.proto import messages as m
from ssi.proto.codec import decode_reply, encode_envelope
from ssi.proto.messages import PROTOCOL_VERSION, Envelope
from ssi.rpc import keys
from ssi.rpc.base import LocalPeer, Peer
from ssi.rpc.local import AsyncLocalClient, LocalClient, LocalServer
from ssi.rpc.zmq_rpc import RpcClient, RpcServer

T = TypeVar("T")
ANY = "tcp://127.0.0.1:*"


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def keypair() -> keys.KeyPair:
    public, secret = zmq.curve_keypair()
    return keys.KeyPair(public=public, secret=secret)


async def wait_until(
    what: str, pred: Callable[[], Awaitable[bool]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- handlers used by the servers below -----------------------------------------------

seen: list[tuple[Envelope, Any]] = []


async def on_ping(env: Envelope, peer: Any) -> m.Pong:
    seen.append((env, peer))
    return m.Pong(node="n0", version="test", time=time.time())


async def on_show(env: Envelope, peer: Any) -> dict[str, Any]:
    body = env.body
    assert isinstance(body, m.NodeShow)
    name = body.name
    if name == "missing":
        raise errors.NotFound("no node 'missing'", details={"node": name})
    if name == "bug":
        raise ValueError("a bug in the handler")
    if name == "unencodable":
        return {"x": object()}
    if name.startswith("sleep:"):
        await asyncio.sleep(float(name.split(":")[1]))
    if name.startswith("gate:"):
        await gates[name].wait()
    return {"name": name, "uid": env.uid, "peer": peer_dict(peer)}


def peer_dict(peer: Any) -> dict[str, Any]:
    if isinstance(peer, Peer):
        return {"key": peer.public_key.decode(), "domain": peer.domain}
    assert isinstance(peer, LocalPeer)
    return {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid}


gates: dict[str, asyncio.Event] = {}
HANDLERS = {m.Ping.op: on_ping, m.NodeShow.op: on_show, m.NodeJoin.op: on_ping}


@contextlib.asynccontextmanager
async def zmq_server(
    allowed: set[bytes], *, join: bool = False, max_size: int = 1 << 20
) -> Any:
    ctx = zmq.asyncio.Context()
    server_kp = keypair()
    server = RpcServer(
        ctx,
        ANY,
        server_kp,
        HANDLERS,
        allowed_keys=lambda key: key in allowed,
        join_endpoint=ANY if join else None,
        max_size=max_size,
    )
    await server.start()
    clients: list[RpcClient] = []

    def client(kp: keys.KeyPair, endpoint: str | None = None) -> RpcClient:
        c = RpcClient(ctx, endpoint or server.endpoint, server_kp.public, kp)
        clients.append(c)
        return c

    try:
        yield server, client, ctx, server_kp
    finally:
        for c in clients:
            c.close()
        await server.close()
        ctx.destroy(linger=0)


# --- keys -----------------------------------------------------------------------------


def test_keypair_created_once_private_and_reused(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    kp = keys.load_or_create_keypair(d)
    assert len(kp.public) == 40 and len(kp.secret) == 40
    assert zmq.curve_public(kp.secret) == kp.public
    secret_file = d / keys.SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / keys.PUBLIC_FILE).read_bytes().strip() == kp.public
    assert keys.load_or_create_keypair(d) == kp
    assert kp.secret not in repr(kp).encode()
    fp = keys.fingerprint(kp.public)
    assert fp.startswith("sha256:") and len(fp) == 7 + 16
    assert fp == keys.fingerprint(zmq.utils.z85.decode(kp.public))
    assert fp == keys.fingerprint(kp.public.decode())
    os.chmod(secret_file, 0o644)  # loosened by someone: tightened again
    assert keys.load_or_create_keypair(d) == kp
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret_file.write_bytes(b"garbage\n")
    with pytest.raises(ValueError):
        keys.load_or_create_keypair(d)


# --- CURVE RPC ------------------------------------------------------------------------


def test_allowed_key_round_trip() -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}) as (server, client, _, _):
            seen.clear()
            c = client(good)
            pong = await c.call(m.Ping(), timeout=2, cause="c-1", uid=1000, gid=100)
            assert isinstance(pong, m.Pong) and pong.node == "n0"
            env, peer = seen[-1]
            assert peer == Peer(public_key=good.public, domain="cluster")
            assert (env.cause, env.uid, env.gid) == ("c-1", 1000, 100)
            assert env.deadline is not None and env.deadline > time.time()
            value = await c.call(m.NodeShow(name="n1"), timeout=2)
            assert value["name"] == "n1" and value["peer"]["domain"] == "cluster"

    run(main())


def test_unknown_key_gets_nothing_and_good_client_still_served() -> None:
    async def main() -> None:
        good, stranger = keypair(), keypair()
        async with zmq_server({good.public}) as (server, client, ctx, _):
            bad = client(stranger)
            started = time.monotonic()
            with pytest.raises(errors.Timeout):
                await bad.call(m.Ping(), timeout=0.3)
            assert time.monotonic() - started < 1.0
            assert isinstance(await client(good).call(m.Ping(), timeout=2), m.Pong)
            # A refused client closes at once and leaves nothing blocking the context.
            bad.close()
            with pytest.raises(errors.Unavailable):
                await bad.call(m.Ping(), timeout=0.3)

    run(main())


def test_refused_client_does_not_hang_context_term() -> None:
    async def main() -> zmq.asyncio.Context:
        ctx = zmq.asyncio.Context()
        server_kp = keypair()
        server = RpcServer(ctx, ANY, server_kp, HANDLERS, allowed_keys=lambda k: False)
        await server.start()
        c = RpcClient(ctx, server.endpoint, server_kp.public, keypair())
        with pytest.raises(errors.Timeout):
            await c.call(m.Ping(), timeout=0.2)
        c.close()
        await server.close()
        return ctx

    ctx = run(main())
    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(2.0)
    assert not t.is_alive(), "zmq context term hangs: a socket lingers"


def test_endpoint_in_use_is_a_clear_error_and_releases_zap() -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}) as (server, client, ctx, skp):
            taken = RpcServer(ctx, server.endpoint, skp, HANDLERS, allowed_keys=bool)
            with pytest.raises(OSError, match="cannot listen on"):
                await taken.start()
            # The failed start left the context's ZAP handler to the first server.
            assert isinstance(await client(good).call(m.Ping(), timeout=2), m.Pong)

    run(main())


def test_allowed_set_changed_at_run_time() -> None:
    async def main() -> None:
        member, newcomer = keypair(), keypair()
        allowed = {member.public}
        async with zmq_server(allowed) as (server, client, _, _):
            with pytest.raises(errors.Timeout):
                await client(newcomer).call(m.Ping(), timeout=0.3)
            allowed.add(newcomer.public)
            assert isinstance(await client(newcomer).call(m.Ping(), timeout=2), m.Pong)
            allowed.discard(member.public)
            with pytest.raises(errors.Timeout):
                await client(member).call(m.Ping(), timeout=0.3)

    run(main())


def test_a_client_refused_once_is_served_when_admitted_later() -> None:
    """A restarting coordinator refuses its members until it has read them: the
    same client (an agent's) must get through afterwards, not stay cut off."""

    async def main() -> None:
        member = keypair()
        allowed: set[bytes] = set()
        async with zmq_server(allowed) as (server, client, _, _):
            c = client(member)
            with pytest.raises(errors.Timeout):
                await c.call(m.Ping(), timeout=0.5)
            allowed.add(member.public)
            assert isinstance(await c.call(m.Ping(), timeout=8), m.Pong)

    run(main(), timeout=20)


def test_join_socket_serves_only_join_ops_to_any_key() -> None:
    async def main() -> None:
        stranger = keypair()
        async with zmq_server(set(), join=True) as (server, client, _, _):
            assert server.join_endpoint and server.join_endpoint != server.endpoint
            c = client(stranger, server.join_endpoint)
            seen.clear()
            assert isinstance(await c.call(m.Ping(), timeout=2), m.Pong)
            assert seen[-1][1] == Peer(public_key=stranger.public, domain="join")
            join = m.NodeJoin(token="t", name="n", address="a", port=1, resources={})
            await c.call(join, timeout=2)
            assert seen[-1][1].domain == "join"
            with pytest.raises(errors.Denied, match="node.show"):
                await c.call(m.NodeShow(name="x"), timeout=2)
            with pytest.raises(errors.Timeout):  # the cluster socket still refuses it
                await client(stranger).call(m.Ping(), timeout=0.3)

    run(main())


def test_handler_errors_map_to_typed_errors() -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}) as (server, client, _, _):
            c = client(good)
            with pytest.raises(errors.NotFound) as nf:
                await c.call(m.NodeShow(name="missing"), timeout=2)
            assert nf.value.details == {"node": "missing"}
            with pytest.raises(errors.Internal, match="ValueError: a bug"):
                await c.call(m.NodeShow(name="bug"), timeout=2)
            with pytest.raises(errors.Internal, match="cannot be encoded"):
                await c.call(m.NodeShow(name="unencodable"), timeout=2)
            with pytest.raises(errors.UnknownOp) as uo:
                await c.call(m.NodeList(), timeout=2)
            assert uo.value.op == "node.list"
            big = m.NodeShow(name="x" * (5 << 20))  # over the client's 4 MiB default
            with pytest.raises(errors.MessageTooLarge):  # refused before sending
                await c.call(big, timeout=2)
            assert (await c.call(m.NodeShow(name="ok"), timeout=2))["name"] == "ok"

    run(main())


def test_concurrent_calls_match_ids_and_slow_handlers_do_not_block() -> None:
    async def main() -> None:
        good = keypair()
        gates.clear()
        gates["gate:slow"] = asyncio.Event()
        async with zmq_server({good.public}) as (server, client, _, _):
            c = client(good)
            slow = asyncio.create_task(c.call(m.NodeShow(name="gate:slow"), timeout=5))
            names = [f"sleep:{(i * 7 % 10) / 1000}" for i in range(40)]
            results = await asyncio.gather(
                *(c.call(m.NodeShow(name=n), timeout=5) for n in names)
            )
            assert [r["name"] for r in results] == names
            assert not slow.done()  # the others finished while it waited
            gates["gate:slow"].set()
            assert (await slow)["name"] == "gate:slow"

    run(main())


def test_timeout_drops_late_reply_and_client_stays_usable() -> None:
    async def main() -> None:
        good = keypair()
        gates.clear()
        gates["gate:late"] = asyncio.Event()
        async with zmq_server({good.public}) as (server, client, _, _):
            c = client(good)
            with pytest.raises(errors.Timeout):
                await c.call(m.NodeShow(name="gate:late"), timeout=0.2)
            gates["gate:late"].set()  # its reply now arrives, for nobody
            for i in range(3):
                value = await c.call(m.NodeShow(name=f"after{i}"), timeout=2)
                assert value["name"] == f"after{i}"

    run(main())


def raw_dealer(
    ctx: zmq.asyncio.Context, endpoint: str, server_public: bytes, kp: keys.KeyPair
) -> zmq.asyncio.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    s.setsockopt(zmq.CURVE_PUBLICKEY, kp.public)
    s.setsockopt(zmq.CURVE_SECRETKEY, kp.secret)
    s.connect(endpoint)
    return s


def good_request(request_id: str) -> bytes:
    return encode_envelope(
        Envelope(v=PROTOCOL_VERSION, id=request_id, body=m.NodeShow(name="alive"))
    )


async def expect_reply(sock: zmq.asyncio.Socket, request_id: str) -> m.Reply:
    async with asyncio.timeout(3):
        while True:
            reply = decode_reply((await sock.recv_multipart())[-1])
            if reply.id == request_id:
                return reply


def test_addressable_bad_messages_get_error_replies() -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}) as (server, _, ctx, server_kp):
            s = raw_dealer(ctx, server.endpoint, server_kp.public, good)
            try:
                raw = msgspec.msgpack.encode
                await s.send(raw({"v": 1, "id": "u1", "body": {"op": "job.fly"}}))
                r = await expect_reply(s, "u1")
                assert r.error is not None and r.error.code == "unknown_op"
                assert r.error.details["op"] == "job.fly"
                await s.send(raw({"v": 7, "id": "v1", "body": {}}))
                r = await expect_reply(s, "v1")
                assert r.error is not None and r.error.details["protocol"] == "version"
                await s.send(raw({"v": 1, "id": "b1", "body": {"op": "node.show"}}))
                r = await expect_reply(s, "b1")
                assert r.error is not None and r.error.code == "bad_request"
                await s.send(good_request("ok"))
                assert (await expect_reply(s, "ok")).ok
            finally:
                s.close(linger=0)

    run(main())


junk_structures = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids)
    ),
    max_leaves=8,
)
junk_messages = st.lists(
    st.lists(
        st.binary(max_size=48)
        | junk_structures.map(msgspec.msgpack.encode)
        | st.fixed_dictionaries(
            {"v": st.just(1), "id": st.text(max_size=4), "body": junk_structures}
        ).map(msgspec.msgpack.encode),
        min_size=1,
        max_size=3,  # multi-part messages too
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk_messages)
def test_malformed_frames_never_crash_the_server(messages: list[list[bytes]]) -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}) as (server, _, ctx, server_kp):
            s = raw_dealer(ctx, server.endpoint, server_kp.public, good)
            try:
                for parts in messages:
                    await s.send_multipart(parts)
                await s.send(good_request("after-junk"))
                reply = await expect_reply(s, "after-junk")
                assert reply.ok and reply.value["name"] == "alive"
            finally:
                s.close(linger=0)

    run(main())


def test_oversized_zmq_message_drops_only_that_peer() -> None:
    async def main() -> None:
        good = keypair()
        async with zmq_server({good.public}, max_size=1000) as (
            server,
            client,
            ctx,
            skp,
        ):
            s = raw_dealer(ctx, server.endpoint, skp.public, good)
            try:
                await s.send(b"\x00" * 5000)
            finally:
                s.close(linger=0)
            # A client with a larger cap than the server's: its big request is
            # dropped with its connection (a Timeout), then it reconnects.
            c = client(good)
            with pytest.raises(errors.Timeout):
                await c.call(m.NodeShow(name="x" * 2000), timeout=0.3)
            assert (await c.call(m.NodeShow(name="fine"), timeout=2))["name"] == "fine"

    run(main())


# --- local socket ---------------------------------------------------------------------


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Not under pytest's tmp_path: `nobody` must be able to reach the socket.
    d = Path(tempfile.mkdtemp(prefix="ssi-rpc-test-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def local_server(path: Path, max_size: int = 1 << 20) -> Any:
    server = LocalServer(path, HANDLERS, max_size=max_size)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def test_local_round_trip_sees_our_credentials(sockdir: Path) -> None:
    path = sockdir / "sub" / "ssid.sock"

    async def main() -> None:
        async with local_server(path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o666
            with LocalClient(path, timeout=2) as c:
                pong = await in_thread(lambda: c.call(m.Ping()))
                assert isinstance(pong, m.Pong)
                value = await in_thread(lambda: c.call(m.NodeShow(name="me")))
            assert value["peer"] == {
                "uid": os.getuid(),
                "gid": os.getgid(),
                "pid": os.getpid(),
            }
            assert value["uid"] == os.getuid()
            with pytest.raises(errors.NotFound):
                await in_thread(
                    lambda: LocalClient(path).call(m.NodeShow(name="missing"))
                )
        assert not path.exists()

    run(main())


def test_local_claimed_uid_is_replaced_by_credentials(sockdir: Path) -> None:
    path = sockdir / "ssid.sock"
    env = Envelope(v=1, id="claim", body=m.NodeShow(name="who"), uid=4242, gid=4242)

    async def main() -> None:
        async with local_server(path):
            reader, writer = await asyncio.open_unix_connection(str(path))
            data = encode_envelope(env)
            writer.write(struct.pack(">I", len(data)) + data)
            (n,) = struct.unpack(">I", await reader.readexactly(4))
            reply = decode_reply(await reader.readexactly(n))
            writer.close()
            assert reply.ok and reply.value["uid"] == os.getuid()

    run(main())


NOBODY_CLIENT = r"""
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
data = bytes.fromhex(sys.argv[2])
s.sendall(struct.pack(">I", len(data)) + data)
buf = b""
while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
sys.stdout.write(buf[4:].hex())
"""


def python_for_nobody() -> str | None:
    for candidate in ("/usr/bin/python3", sys.executable):
        st_ok = os.path.exists(candidate)
        if st_ok and os.stat(candidate).st_mode & stat.S_IXOTH:
            real = os.path.realpath(candidate)
            parents_ok = all(
                os.stat(p).st_mode & stat.S_IXOTH
                for p in Path(real).parents
                if str(p) != "/"
            )
            if parents_ok:
                return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
def test_local_peer_credentials_of_another_user(sockdir: Path) -> None:
    python = python_for_nobody()
    if python is None:
        pytest.skip("no python executable by nobody")
    path = sockdir / "ssid.sock"
    data = encode_envelope(Envelope(v=1, id="nb", body=m.NodeShow(name="nobody")))

    async def main() -> None:
        async with local_server(path):
            proc = await asyncio.create_subprocess_exec(
                python,
                "-I",
                "-c",
                NOBODY_CLIENT,
                str(path),
                data.hex(),
                user=65534,
                group=65534,
                extra_groups=[],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            reply = decode_reply(bytes.fromhex(out.decode()))
            assert reply.ok, reply.error
            assert reply.value["peer"]["uid"] == 65534
            assert reply.value["peer"]["gid"] == 65534
            assert reply.value["peer"]["pid"] == proc.pid
            assert reply.value["uid"] == 65534

    run(main())


def test_missing_socket_gives_unavailable_with_the_remedy(sockdir: Path) -> None:
    path = sockdir / "nope" / "ssid.sock"
    with pytest.raises(errors.Unavailable) as ei:
        LocalClient(path, timeout=1).call(m.Ping())
    text = str(ei.value)
    assert f"no socket at {path}" in text
    assert "systemctl start ssid" in text and "ssi cluster up --local 3" in text
    with pytest.raises(errors.Unavailable, match="systemctl start ssid"):
        run(AsyncLocalClient(path).call(m.Ping(), timeout=1))


def stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a killed daemon leaves


def test_stale_socket_file_is_replaced(sockdir: Path) -> None:
    path = sockdir / "ssid.sock"
    stale_socket(path)
    with pytest.raises(errors.Unavailable, match="refuses connections"):
        LocalClient(path, timeout=1).call(m.Ping())

    async def main() -> None:
        async with local_server(path):
            assert isinstance(
                await in_thread(lambda: LocalClient(path).call(m.Ping())), m.Pong
            )

    run(main())


def test_live_socket_is_not_stolen(sockdir: Path) -> None:
    path = sockdir / "ssid.sock"

    async def main() -> None:
        async with local_server(path):
            second = LocalServer(path, HANDLERS)
            with pytest.raises(errors.Conflict, match=f"pid {os.getpid()}"):
                await second.start()
            assert isinstance(
                await in_thread(lambda: LocalClient(path).call(m.Ping())), m.Pong
            )
        # A live listener that is not an ssid holding the lock is not stolen either.
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(path))
        other.listen()
        try:
            with pytest.raises(errors.Conflict, match="live process"):
                await LocalServer(path, HANDLERS).start()
        finally:
            other.close()
        regular = sockdir / "file"
        regular.write_text("x")
        with pytest.raises(errors.Conflict, match="not a socket"):
            await LocalServer(regular, HANDLERS).start()

    run(main())


def test_oversized_and_malformed_frames_server_lives(sockdir: Path) -> None:
    path = sockdir / "ssid.sock"

    async def main() -> None:
        async with local_server(path, max_size=1000):
            big = LocalClient(path, timeout=2, max_size=1 << 20)
            with pytest.raises(errors.MessageTooLarge):
                await in_thread(lambda: big.call(m.NodeShow(name="x" * 5000)))
            # Malformed but well framed: an error reply, and the connection goes on.
            reader, writer = await asyncio.open_unix_connection(str(path))
            for junk in (b"\xc1", msgspec.msgpack.encode({"v": 1, "id": "j"})):
                writer.write(struct.pack(">I", len(junk)) + junk)
                (n,) = struct.unpack(">I", await reader.readexactly(4))
                reply = decode_reply(await reader.readexactly(n))
                assert not reply.ok and reply.error is not None
                assert reply.error.code == "bad_request"
            ok = good_request("again")
            writer.write(struct.pack(">I", len(ok)) + ok)
            (n,) = struct.unpack(">I", await reader.readexactly(4))
            assert decode_reply(await reader.readexactly(n)).ok
            writer.close()
            value = await in_thread(
                lambda: LocalClient(path).call(m.NodeShow(name="y"))
            )
            assert value["name"] == "y"

    run(main())


def test_local_timeout_then_usable_and_async_concurrency(sockdir: Path) -> None:
    path = sockdir / "ssid.sock"

    async def main() -> None:
        async with local_server(path):
            c = LocalClient(path, timeout=2)
            with pytest.raises(errors.Timeout):
                await in_thread(lambda: c.call(m.NodeShow(name="sleep:1"), timeout=0.2))
            assert (await in_thread(lambda: c.call(m.NodeShow(name="z"))))[
                "name"
            ] == "z"
            c.close()
            async with AsyncLocalClient(path, timeout=2) as ac:
                names = [f"sleep:{(i * 3 % 5) / 1000}" for i in range(20)]
                results = await asyncio.gather(
                    *(ac.call(m.NodeShow(name=n)) for n in names)
                )
                assert [r["name"] for r in results] == names
                assert isinstance(await ac.call(m.Ping()), m.Pong)
                with pytest.raises(errors.Timeout):
                    await ac.call(m.NodeShow(name="sleep:1"), timeout=0.1)
                with pytest.raises(errors.NotFound):
                    await ac.call(m.NodeShow(name="missing"))

    run(main())
