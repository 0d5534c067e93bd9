"""BulkServer: a node's bulk socket (ROUTER, CURVE), serving pushes and pulls of
directories; a BulkPolicy decides what a name means on this node.

    reader ─▶ frames [id, kind, header, payload?] ─▶ session of `id` (its ServerLink)
              PUT ─▶ policy.incoming(name, key) ─▶ Staging ─▶ receive_chunks ─▶ commit
                     ─▶ policy.received(...) ─▶ DONE
              GET ─▶ policy.outgoing(name, key) ─▶ list_files ─▶ MANIFEST
                     ─▶ send_chunks(dir_chunks) ─▶ END ─▶ DONE from the client

Only keys for which `allowed_keys(z85_key)` is true complete the CURVE handshake (ZAP
domain "bulk#N" in the context's ZapAuthenticator): a stranger gets nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import zmq
import zmq.asyncio

from ssi.proto.errors import (
    Denied,
    MalformedMessage,
    NotFound,
    SsiError,
    Unavailable,
)
from ssi.rpc.keys import KeyPair, fingerprint
from ssi.rpc.zmq_rpc import ZapAuthenticator
from ssi.transfer import files as fs
from ssi.transfer import protocol as p
from ssi.transfer.engine import (
    TransferStats,
    dir_chunks,
    open_staging,
    receive_chunks,
    send_chunks,
)
from ssi.transfer.link import (
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    MAX_MESSAGE,
    Message,
    ServerLink,
    peer_name,
)

__all__ = ["BulkServer", "BulkPolicy", "RootDirs", "KeyPolicy"]

log = logging.getLogger(__name__)

KeyPolicy = Callable[[bytes], bool]
BULK_DOMAIN = "bulk"


class BulkPolicy:
    """What names mean on this node; subclass it. Each method may raise an SsiError
    (Denied, NotFound, Conflict, ...): the peer receives it as such."""

    def incoming(self, name: str, peer: bytes) -> Path:
        """Where a directory pushed as `name` by the key `peer` is to appear (it must
        not exist yet). The default refuses every push."""
        raise Denied(f"this node accepts no pushes ({name})")

    def outgoing(self, name: str, peer: bytes) -> Path:
        """The directory served as `name` to the key `peer`. The default serves
        nothing."""
        raise NotFound(f"nothing to fetch here ({name})")

    def known_checksums(self, name: str, path: Path) -> Mapping[str, str] | None:
        """Digests (relative path → hex tree hash) the files served as `name` from
        `path` must have, e.g. from a manifest kept with them: sent instead of
        digests computed while reading, so the fetcher checks the data against
        them, end to end. Called in a worker thread. The default knows none."""
        return None

    def received(
        self, name: str, path: Path, peer: bytes, stats: TransferStats
    ) -> Awaitable[None] | None:
        """Called (and awaited if it returns an awaitable) once `path` is complete
        and verified, before the sender hears DONE. If it raises, `path` is removed
        and the sender gets the error: a push counts only once its receiver took it.
        """
        return None


class RootDirs(BulkPolicy):
    """Pushes land at `incoming/<name>`; fetches are served from the first of
    `outgoing` holding `<name>`. Names are relative paths ("job-7/ckpt-3"). Partial
    dirs an earlier run left under `incoming` are removed at construction."""

    def __init__(self, incoming: Path | None, outgoing: list[Path] | None = None):
        self.incoming_root = incoming
        self.outgoing_roots = list(outgoing or [])
        if incoming is not None:
            incoming.mkdir(parents=True, exist_ok=True)
            for stale in fs.sweep_partials(incoming):
                log.info("bulk: removed the partial transfer %s", stale)

    def incoming(self, name: str, peer: bytes) -> Path:
        if self.incoming_root is None:
            return super().incoming(name, peer)
        return self.incoming_root / p.check_name(name)

    def outgoing(self, name: str, peer: bytes) -> Path:
        p.check_name(name)
        for root in self.outgoing_roots:
            if (root / name).is_dir():
                return root / name
        raise NotFound(f"no directory {name!r} to fetch", details={"name": name})


class BulkServer:
    """Serves pushes and pulls of directories on `endpoint` to the keys that
    `allowed_keys` admits (asked at each new connection), deciding paths through
    `policy`.

    ctx: the zmq context for the socket; None (recommended) gives the server its own
    context, so that encrypting bulk data never delays the control channel's I/O
    thread. At most `max_sessions` transfers at once; more get Unavailable.
    """

    _serial: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(
        self,
        ctx: zmq.asyncio.Context | None,
        endpoint: str,
        keypair: KeyPair,
        allowed_keys: KeyPolicy,
        policy: BulkPolicy,
        *,
        options: p.Options | None = None,
        max_sessions: int = 8,
    ) -> None:
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.asyncio.Context(io_threads=1)
        self.requested = endpoint
        self.keypair = keypair
        self.allowed_keys = allowed_keys
        self.policy = policy
        self.options = options or p.Options()
        self.max_sessions = max_sessions
        self.zap_domain = f"{BULK_DOMAIN}#{next(self._serial)}"
        self._zap: ZapAuthenticator | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sessions: dict[bytes, tuple[ServerLink, asyncio.Task[None]]] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=max(2, max_sessions), thread_name_prefix="ssi-bulk-io"
        )
        self.served = 0  # finished transfers, either way

    @property
    def endpoint(self) -> str:
        if self._sock is None:
            return self.requested
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        if self._zap is not None:
            raise RuntimeError("BulkServer already started")
        self._zap = ZapAuthenticator.acquire(self.ctx)
        try:
            self._zap.register(self.zap_domain, self._admit)
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
            sock.setsockopt(zmq.ZAP_DOMAIN, self.zap_domain.encode())
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._sock = sock
            try:
                sock.bind(self.requested)
            except zmq.ZMQError as e:
                raise OSError(
                    e.errno, f"bulk: cannot listen on {self.requested}: {e}"
                ) from None
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(
            self._read(sock), name="ssi-bulk-server"
        )
        log.info(
            "bulk server on %s, key %s",
            self.endpoint,
            fingerprint(self.keypair.public),
        )

    def _admit(self, key: bytes) -> bool:
        return self.allowed_keys(key)

    async def close(self) -> None:
        """Stop listening; transfers in progress are cancelled and their partial
        data removed."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        tasks = [t for _, t in self._sessions.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._zap is not None:
            self._zap.unregister(self.zap_domain)
            self._zap.release()
            self._zap = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_ctx:
            self.ctx.term()

    async def __aenter__(self) -> BulkServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- reading ------------------------------------------------------------------

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart(copy=False)
            except zmq.ZMQError as e:
                if sock.closed:
                    return
                log.error("bulk: receive failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            try:
                await self._accept(sock, frames)
            except Exception:  # the loop must survive anything a peer sends
                log.exception("bulk: message dropped")

    async def _accept(self, sock: zmq.asyncio.Socket, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        session = self._sessions.get(ident)
        try:
            if len(frames) not in (3, 4):
                raise MalformedMessage(f"bulk message of {len(frames) - 1} frames")
            header = p.decode(frames[1].buffer, frames[2].buffer)
        except SsiError as e:
            if session is not None:
                session[0].deliver(e)
            else:
                await self._refuse(sock, ident, e)
            return
        payload = frames[3] if len(frames) == 4 else None
        if session is not None:
            if isinstance(header, p.Ping):  # the client's answer to our probe
                session[0].heard()
            else:
                session[0].deliver(Message(header, payload))
            return
        if not isinstance(header, p.Put | p.Get):
            if not isinstance(header, p.Err | p.Done | p.Credit):  # a late straggler
                log.debug("bulk: %s outside a transfer dropped", type(header).__name__)
            return
        user_id = frames[1].get("User-Id")
        if not user_id:  # cannot happen with ZAP enforced; never serve anonymously
            log.error("bulk: message without an authenticated key")
            return
        key = user_id.encode() if isinstance(user_id, str) else bytes(user_id)
        if len(self._sessions) >= self.max_sessions:
            await self._refuse(
                sock,
                ident,
                Unavailable(f"bulk server busy ({self.max_sessions} transfers)"),
            )
            return
        peer = peer_name(_peer_address(frames[1]), key)
        link = ServerLink(sock, ident, peer, self.options)
        task = asyncio.get_running_loop().create_task(
            self._session(link, header, key), name=f"ssi-bulk {peer}"
        )
        self._sessions[ident] = (link, task)
        task.add_done_callback(lambda _t: self._sessions.pop(ident, None))

    async def _refuse(
        self, sock: zmq.asyncio.Socket, ident: bytes, exc: SsiError
    ) -> None:
        err = p.Err(exc.code, str(exc), {})
        with contextlib.suppress(zmq.ZMQError):
            await sock.send_multipart([ident, *p.encode(err)])

    # -- sessions -----------------------------------------------------------------

    async def _run_io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        if kw:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))
        return await loop.run_in_executor(self._pool, fn, *args)

    async def _session(
        self, link: ServerLink, first: p.Put | p.Get, key: bytes
    ) -> None:
        started = asyncio.get_running_loop().time()
        what = "push" if isinstance(first, p.Put) else "fetch"
        try:
            if isinstance(first, p.Put):
                stats = await self._receive(link, first, key, started)
            else:
                stats = await self._send(link, first, key, started)
        except asyncio.CancelledError:
            await link.fail(asyncio.CancelledError())
            raise
        except SsiError as e:
            await link.fail(e)
            log.warning(
                "bulk: %s of %r with %s failed: %s", what, first.name, link.peer, e
            )
        except Exception as e:
            await link.fail(e)
            log.exception("bulk: %s of %r with %s failed", what, first.name, link.peer)
        else:
            self.served += 1
            log.info("bulk: %s of %r with %s: %s", what, first.name, link.peer, stats)

    async def _receive(
        self, link: ServerLink, put: p.Put, key: bytes, started: float
    ) -> TransferStats:
        p.check_name(put.name)
        if not 4096 <= put.chunk <= p.MAX_CHUNK:
            raise MalformedMessage(f"bad chunk size {put.chunk}")
        final = self.policy.incoming(put.name, key)
        staging = await open_staging(self._run_io, final, expected_bytes=put.bytes)
        committed = False
        try:
            window = self.options.window
            chunk = min(put.chunk, self.options.chunk_size)
            link.expect_data(window, chunk)
            await link.send(p.Accept(window, chunk))
            files, nbytes = await receive_chunks(
                link, staging, window=window, run_io=self._run_io, total=put.bytes
            )
            committed = True
            stats = TransferStats(
                nbytes,
                files,
                asyncio.get_running_loop().time() - started,
                link.peer,
                staging.digests,
            )
            try:
                done = self.policy.received(put.name, final, key, stats)
                if inspect.isawaitable(done):
                    await done
            except BaseException:
                await self._run_io(_remove_tree, final)
                raise
            await link.send(p.Done(files, nbytes))
            return stats
        finally:
            if not committed:
                await asyncio.shield(self._run_io(staging.abort))

    async def _send(
        self, link: ServerLink, get: p.Get, key: bytes, started: float
    ) -> TransferStats:
        p.check_name(get.name)
        if not 1 <= get.window <= p.MAX_WINDOW or not 4096 <= get.chunk <= p.MAX_CHUNK:
            raise MalformedMessage(f"bad window {get.window} or chunk {get.chunk}")
        src = self.policy.outgoing(get.name, key)
        files: list[fs.SourceFile] = await self._run_io(fs.list_files, src)
        known = await self._run_io(self.policy.known_checksums, get.name, src)
        total = sum(f.size for f in files)
        await link.send(p.Manifest(len(files), total))
        pool = fs.BufferPool(get.chunk, get.window + 2)
        chunks = dir_chunks(files, pool, self._run_io, known)
        try:
            nfiles, nbytes = await send_chunks(
                link, chunks, credit=get.window, total=total, release=pool.put
            )
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return TransferStats(
            nbytes, nfiles, asyncio.get_running_loop().time() - started, link.peer
        )


def _peer_address(frame: zmq.Frame) -> str:
    with contextlib.suppress(Exception):
        addr = frame.get("Peer-Address")
        if addr:
            return f"tcp://{addr}"
    return "tcp://?"


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
