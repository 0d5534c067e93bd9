"""ssi.transfer over real sockets (127.0.0.1, CURVE + ZAP): pushes, fetches and
streams round trip byte for byte; checksums, progress, refusals and a corrupted chunk.
Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from ssi.digest import TreeHash
from ssi.proto.errors import BadRequest, Conflict, Denied, NotFound, Unavailable
from ssi.rpc.keys import KeyPair
from ssi.transfer import (
    BulkServer,
    ChecksumMismatch,
    Options,
    RootDirs,
    TransferStats,
    chain,
    fetch_dir,
    merge,
    pipe_pieces,
    send_dir,
    send_stream,
)
from ssi.transfer import files as fs

T = TypeVar("T")
ANY = "tcp://127.0.0.1:*"
MiB = 1 << 20
SMALL = Options(chunk_size=64 * 1024, window=4, connect_timeout=3.0)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def keypair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)


def digest(path: Path) -> str:
    return TreeHash(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path → digest of every file under root."""
    return {
        str(p.relative_to(root)): digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_images(root: Path) -> Path:
    """A CRIU-like image directory: empty, tiny, multi-MiB and sparse-ish files."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "empty.img").write_bytes(b"")
    (src / "one.img").write_bytes(b"\x01")
    (src / "pages-1.img").write_bytes(os.urandom(3 * MiB + 12345))
    with open(src / "sparse.img", "wb") as f:  # mostly holes and zeros
        f.seek(2 * MiB)
        f.write(b"x" * 100)
        f.seek(5 * MiB - 1)
        f.write(b"\0")
    (src / "sub" / "core-1.img").write_bytes(os.urandom(4096))
    (src / "exact.img").write_bytes(os.urandom(2 * SMALL.chunk_size))
    os.chmod(src / "one.img", 0o640)
    return src


class Recording(RootDirs):
    def __init__(self, root: Path) -> None:
        super().__init__(root / "in", [root / "in", root / "out"])
        self.calls: list[tuple[str, str]] = []
        self.received_stats: list[TransferStats] = []

    def incoming(self, name: str, peer: bytes) -> Path:
        self.calls.append(("incoming", name))
        if name == "forbidden":
            raise Denied("not here", details={"name": name})
        return super().incoming(name, peer)

    def outgoing(self, name: str, peer: bytes) -> Path:
        self.calls.append(("outgoing", name))
        return super().outgoing(name, peer)

    async def received(  # type: ignore[override]
        self, name: str, path: Path, peer: bytes, stats: TransferStats
    ) -> None:
        self.calls.append(("received", name))
        self.received_stats.append(stats)


class Env:
    def __init__(self, root: Path, server: BulkServer, policy: Recording):
        self.root = root
        self.server = server
        self.policy = policy
        self.client = CLIENT

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def key(self) -> bytes:
        return self.server.keypair.public


SERVER, CLIENT = keypair(), keypair()


async def serving(root: Path, options: Options = SMALL) -> Env:
    policy = Recording(root)
    server = BulkServer(
        None,
        ANY,
        SERVER,
        lambda k: k == CLIENT.public,
        policy,
        options=options,
    )
    await server.start()
    return Env(root, server, policy)


def test_push_and_fetch_round_trip(tmp_path: Path) -> None:
    src = make_images(tmp_path)
    want = tree(src)
    seen: list[tuple[int, int | None]] = []

    async def main() -> tuple[TransferStats, TransferStats]:
        env = await serving(tmp_path)
        try:
            pushed = await send_dir(
                env.endpoint,
                env.key,
                CLIENT,
                src,
                "job-1/ckpt-1",
                progress=lambda d, t: seen.append((d, t)),
                options=SMALL,
            )
            fetched = await fetch_dir(
                env.endpoint,
                env.key.decode(),
                CLIENT,
                "job-1/ckpt-1",
                tmp_path / "back",
                options=SMALL,
            )
            assert env.policy.calls == [
                ("incoming", "job-1/ckpt-1"),
                ("received", "job-1/ckpt-1"),
                ("outgoing", "job-1/ckpt-1"),
            ]
            assert env.policy.received_stats[0].bytes == pushed.bytes
            return pushed, fetched
        finally:
            await env.server.close()

    pushed, fetched = run(main())
    total = sum((src / f).stat().st_size for f in want)
    assert tree(tmp_path / "in" / "job-1" / "ckpt-1") == want
    assert tree(tmp_path / "back") == want
    assert (tmp_path / "back" / "one.img").stat().st_mode & 0o777 == 0o640
    for stats in (pushed, fetched):
        assert (stats.bytes, stats.files) == (total, len(want))
        assert stats.seconds > 0 and stats.mb_per_s > 0
        assert "127.0.0.1" in stats.peer
    # progress: bytes the receiver wrote, never backwards, ending at the total
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == total
    assert {t for _, t in seen} == {total}
    assert len(seen) > total // SMALL.chunk_size // 2
    # nothing but the finished directories
    assert entries(tmp_path / "in") == ["job-1", "job-1/ckpt-1"] + [
        f"job-1/ckpt-1/{e}" for e in entries(src)
    ]
    assert not [p for p in tmp_path.iterdir() if fs.PARTIAL_MARK in p.name]


def test_known_checksums_are_checked_end_to_end(tmp_path: Path) -> None:
    src = make_images(tmp_path)
    want = tree(src)

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            await send_dir(
                env.endpoint, env.key, CLIENT, src, "a", checksums=want, options=SMALL
            )
            bad = dict(want, **{"pages-1.img": "0" * 64})  # the manifest disagrees
            with pytest.raises(ChecksumMismatch, match="pages-1.img"):
                await send_dir(
                    env.endpoint,
                    env.key,
                    CLIENT,
                    src,
                    "b",
                    checksums=bad,
                    options=SMALL,
                )
            await fetch_dir(
                env.endpoint, env.key, CLIENT, "a", tmp_path / "f1", checksums=want
            )
            with pytest.raises(ChecksumMismatch, match="damaged at the source"):
                await fetch_dir(
                    env.endpoint, env.key, CLIENT, "a", tmp_path / "f2", checksums=bad
                )
        finally:
            await env.server.close()

    run(main())
    assert tree(tmp_path / "in" / "a") == want
    assert tree(tmp_path / "f1") == want
    assert sorted(os.listdir(tmp_path / "in")) == ["a"]
    assert not (tmp_path / "f2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupted_chunk_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_images(tmp_path)
    original = fs.read_chunk
    calls = [0]

    def tampering(fd: int, buf: bytearray, hasher: Any) -> memoryview:
        data = original(fd, buf, hasher)  # hashed intact...
        calls[0] += 1
        if calls[0] == 5 and len(data):
            data[len(data) // 2] ^= 0xFF  # ...then damaged on its way
        return data

    monkeypatch.setattr(fs, "read_chunk", tampering)

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            with pytest.raises(ChecksumMismatch, match=r"digest \w+ on arrival") as ei:
                await send_dir(env.endpoint, env.key, CLIENT, src, "x", options=SMALL)
            assert ei.value.details["file"]
            assert env.server.sessions == 0
        finally:
            await env.server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []


def test_stream_round_trip(tmp_path: Path) -> None:
    blobs = {
        "pages-1.img": os.urandom(300 * 1024),
        "pagemap-1.img": os.urandom(5000),
        "dir/core-1.img": b"",
        "big.img": os.urandom(2 * MiB + 7),
    }

    async def produce() -> AsyncIterator[tuple[str, bytes, bool]]:
        # interleaved, in uneven pieces, one piece larger than a chunk
        yield "pages-1.img", blobs["pages-1.img"][:1000], False
        yield "pagemap-1.img", blobs["pagemap-1.img"], True
        yield "pages-1.img", b"", False
        yield "pages-1.img", blobs["pages-1.img"][1000:], False
        yield "big.img", blobs["big.img"], False
        yield "dir/core-1.img", b"", True
        yield "pages-1.img", b"", True
        yield "big.img", b"", True

    async def main() -> TransferStats:
        env = await serving(tmp_path)
        try:
            return await send_stream(
                env.endpoint, env.key, CLIENT, produce(), "mig-1", options=SMALL
            )
        finally:
            await env.server.close()

    stats = run(main())
    out = tmp_path / "in" / "mig-1"
    for rel, data in blobs.items():
        assert (out / rel).read_bytes() == data
        assert (out / rel).stat().st_mode & 0o777 == 0o600
    assert (stats.files, stats.bytes) == (4, sum(map(len, blobs.values())))


def test_stream_from_fifos(tmp_path: Path) -> None:
    """Data written into FIFOs by another process goes straight to the server."""
    import subprocess

    blobs = {"pages-1.img": os.urandom(3 * MiB + 1), "core-1.img": os.urandom(999)}
    for name, data in blobs.items():
        (tmp_path / f"{name}.data").write_bytes(data)
        os.mkfifo(tmp_path / name)
    writer = subprocess.Popen(
        [
            "sh",
            "-c",
            "cat pages-1.img.data > pages-1.img; cat core-1.img.data > core-1.img",
        ],
        cwd=tmp_path,
    )

    async def main() -> TransferStats:
        env = await serving(tmp_path)
        try:
            pieces = chain(
                pipe_pieces(tmp_path / "pages-1.img", "pages-1.img", piece_size=65536),
                pipe_pieces(tmp_path / "core-1.img", "core-1.img"),
            )
            return await send_stream(env.endpoint, env.key, CLIENT, pieces, "mig-2")
        finally:
            await env.server.close()

    try:
        stats = run(main())
    finally:
        writer.wait(10)
    for name, data in blobs.items():
        assert (tmp_path / "in" / "mig-2" / name).read_bytes() == data
    assert stats.files == 2


def test_stream_merges_fifos_written_in_turn(tmp_path: Path) -> None:
    """A writer that fills two FIFOs in turn (as CRIU does pages and pagemap) would
    block on a sequential reader; merge() reads both at once."""
    import subprocess

    for name in ("pages-1.img", "pagemap-1.img"):
        os.mkfifo(tmp_path / name)
    script = (
        "import os\n"
        "a = open('pages-1.img', 'wb', buffering=0)\n"
        "b = open('pagemap-1.img', 'wb', buffering=0)\n"
        "for i in range(64):\n"
        "    a.write(bytes([i]) * 200_000)\n"
        "    b.write(bytes([i]) * 100)\n"
        "a.close(); b.close()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)

    async def main() -> TransferStats:
        env = await serving(tmp_path)
        try:
            pieces = merge(
                pipe_pieces(tmp_path / "pages-1.img", "pages-1.img"),
                pipe_pieces(tmp_path / "pagemap-1.img", "pagemap-1.img"),
            )
            return await send_stream(env.endpoint, env.key, CLIENT, pieces, "m")
        finally:
            await env.server.close()

    try:
        stats = run(main())
    finally:
        writer.wait(10)
    out = tmp_path / "in" / "m"
    assert (out / "pages-1.img").read_bytes() == b"".join(
        bytes([i]) * 200_000 for i in range(64)
    )
    assert (out / "pagemap-1.img").read_bytes() == b"".join(
        bytes([i]) * 100 for i in range(64)
    )
    assert stats.files == 2


def test_merge_fails_with_its_source() -> None:
    async def good() -> AsyncIterator[tuple[str, bytes, bool]]:
        for _ in range(100):
            yield "a", b"x", False
            await asyncio.sleep(0.001)

    async def bad() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "b", b"y", False
        raise OSError("pipe broke")

    async def main() -> int:
        n = 0
        with pytest.raises(OSError, match="pipe broke"):
            async for _ in merge(good(), bad()):
                n += 1
        return n

    assert run(main()) < 100


def test_slow_producer_is_not_a_dead_peer(tmp_path: Path) -> None:
    """A stream that pauses longer than the server's idle timeout goes through: the
    client answers the server's probes."""

    async def slow() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "a", b"x" * 1000, False
        await asyncio.sleep(2.0)
        yield "a", b"y", True

    async def main() -> None:
        impatient = SMALL.replace(idle_timeout=1.0, probe_interval=0.2)
        env = await serving(tmp_path, impatient)
        try:
            await send_stream(env.endpoint, env.key, CLIENT, slow(), "s", options=SMALL)
        finally:
            await env.server.close()

    run(main())
    assert (tmp_path / "in" / "s" / "a").read_bytes() == b"x" * 1000 + b"y"


def test_broken_streams_leave_nothing(tmp_path: Path) -> None:
    async def unfinished() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "a", b"x" * 100_000, False

    async def failing() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "a", b"x" * 100_000, True
        raise RuntimeError("CRIU died")

    async def reopening() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "a", b"x", True
        yield "a", b"y", True

    async def bad_path() -> AsyncIterator[tuple[str, bytes, bool]]:
        yield "../etc/passwd", b"x", True

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            with pytest.raises(BadRequest, match="unfinished files: a"):
                await send_stream(env.endpoint, env.key, CLIENT, unfinished(), "s1")
            with pytest.raises(RuntimeError, match="CRIU died"):
                await send_stream(env.endpoint, env.key, CLIENT, failing(), "s2")
            with pytest.raises(BadRequest, match="after its last piece"):
                await send_stream(env.endpoint, env.key, CLIENT, reopening(), "s3")
            with pytest.raises(BadRequest, match="bad file path"):
                await send_stream(env.endpoint, env.key, CLIENT, bad_path(), "s4")
            await wait_idle(env.server)
        finally:
            await env.server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []


async def wait_idle(server: BulkServer, timeout: float = 5.0) -> None:
    """The server has ended every session (cleanup included)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while server.sessions:
        if loop.time() > deadline:
            raise AssertionError(f"server still has {server.sessions} sessions")
        await asyncio.sleep(0.01)


def test_stranger_key_gets_nothing(tmp_path: Path) -> None:
    src = make_images(tmp_path)
    (tmp_path / "out" / "secret").mkdir(parents=True)
    (tmp_path / "out" / "secret" / "f").write_bytes(b"secret")
    stranger = keypair()

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            with pytest.raises(Denied, match="refused our key"):
                await send_dir(env.endpoint, env.key, stranger, src, "x", options=SMALL)
            with pytest.raises(Denied, match="refused our key"):
                await fetch_dir(
                    env.endpoint, env.key, stranger, "secret", tmp_path / "got"
                )
            # a client that does not know the server's real key never gets through
            wrong = Options(connect_timeout=1.0)
            with pytest.raises(Unavailable, match="cannot reach"):
                await fetch_dir(
                    env.endpoint,
                    keypair().public,
                    CLIENT,
                    "secret",
                    tmp_path / "got",
                    options=wrong,
                )
            assert env.policy.calls == []
        finally:
            await env.server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []
    assert not (tmp_path / "got").exists()


def test_refusals_by_policy(tmp_path: Path) -> None:
    src = make_images(tmp_path)

    async def main() -> None:
        env = await serving(tmp_path)
        try:
            with pytest.raises(Denied, match="not here"):
                await send_dir(env.endpoint, env.key, CLIENT, src, "forbidden")
            await send_dir(env.endpoint, env.key, CLIENT, src, "once")
            with pytest.raises(Conflict, match="already exists"):
                await send_dir(env.endpoint, env.key, CLIENT, src, "once")
            with pytest.raises(NotFound, match="no directory 'missing'"):
                await fetch_dir(
                    env.endpoint, env.key, CLIENT, "missing", tmp_path / "m"
                )
            (tmp_path / "exists").mkdir()
            with pytest.raises(Conflict, match="already exists"):
                await fetch_dir(
                    env.endpoint, env.key, CLIENT, "once", tmp_path / "exists"
                )
            with pytest.raises(Unavailable, match="cannot reach"):
                await send_dir(
                    "tcp://127.0.0.1:1",
                    env.key,
                    CLIENT,
                    src,
                    "x",
                    options=Options(connect_timeout=0.5),
                )
            await wait_idle(env.server)
        finally:
            await env.server.close()

    run(main())
    assert sorted(os.listdir(tmp_path / "in")) == ["once"]
    assert os.listdir(tmp_path / "exists") == []


def test_sending_beyond_the_credit_is_cut_off(tmp_path: Path) -> None:
    """A member that ignores the credit cannot make the server queue its data."""
    from ssi.transfer import protocol as p

    async def main() -> list[Any]:
        import zmq.asyncio

        env = await serving(tmp_path)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.curve_serverkey = SERVER.public
        sock.curve_publickey, sock.curve_secretkey = CLIENT.public, CLIENT.secret
        sock.connect(env.endpoint)
        try:
            await sock.send_multipart(p.encode(p.Put(p.VERSION, "x", True, 65536)))
            accept = p.decode(*await sock.recv_multipart())
            assert isinstance(accept, p.Accept)
            block = b"z" * accept.chunk
            for i in range(accept.window * 4):
                header = p.Data("f", i * len(block))
                await sock.send_multipart([*p.encode(header), block])
            replies = []
            while True:
                reply = p.decode(*await asyncio.wait_for(sock.recv_multipart(), 5))
                replies.append(reply)
                if isinstance(reply, p.Err):
                    break
            await wait_idle(env.server)
            return replies
        finally:
            sock.close(linger=0)
            ctx.term()
            await env.server.close()

    replies = run(main())
    assert isinstance(replies[-1], p.Err)
    assert "credit" in replies[-1].message
    assert os.listdir(tmp_path / "in") == []


def test_received_hook_failure_undoes_the_push(tmp_path: Path) -> None:
    src = make_images(tmp_path)

    class Refusing(Recording):
        async def received(  # type: ignore[override]
            self, name: str, path: Path, peer: bytes, stats: TransferStats
        ) -> None:
            assert path.is_dir()
            raise Conflict("the coordinator has a newer checkpoint")

    async def main() -> None:
        server = BulkServer(
            None, ANY, SERVER, lambda k: True, Refusing(tmp_path), options=SMALL
        )
        await server.start()
        try:
            with pytest.raises(Conflict, match="newer checkpoint"):
                await send_dir(server.endpoint, SERVER.public, CLIENT, src, "x")
        finally:
            await server.close()

    run(main())
    assert os.listdir(tmp_path / "in") == []


def test_concurrent_transfers_and_shared_context(tmp_path: Path) -> None:
    src = make_images(tmp_path)
    want = tree(src)

    async def main() -> None:
        import zmq.asyncio

        from ssi.rpc.zmq_rpc import RpcServer

        ctx = zmq.asyncio.Context()
        # the control channel's server in the same context: both register with ZAP
        rpc = RpcServer(ctx, ANY, SERVER, {}, allowed_keys=lambda k: True)
        await rpc.start()
        policy = Recording(tmp_path)
        server = BulkServer(ctx, ANY, SERVER, lambda k: k == CLIENT.public, policy)
        await server.start()
        try:
            await asyncio.gather(
                *(
                    send_dir(
                        server.endpoint, SERVER.public, CLIENT, src, f"n{i}", ctx=ctx
                    )
                    for i in range(4)
                )
            )
            await asyncio.gather(
                *(
                    fetch_dir(
                        server.endpoint,
                        SERVER.public,
                        CLIENT,
                        f"n{i}",
                        tmp_path / f"b{i}",
                    )
                    for i in range(4)
                )
            )
        finally:
            await server.close()
            await rpc.close()
            ctx.term()

    run(main())
    for i in range(4):
        assert tree(tmp_path / "in" / f"n{i}") == want
        assert tree(tmp_path / f"b{i}") == want
