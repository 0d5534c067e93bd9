"""Node-to-node RPC over ZeroMQ with CURVE: a ROUTER server, a DEALER client.

    RpcClient (DEALER, CURVE client) ──tcp──▶ RpcServer ROUTER "cluster" domain
                                                  ▲ ZAP: allowed_keys(key)?
    new node's RpcClient ───────────tcp──▶ RpcServer ROUTER "join" domain
                                                  ▲ ZAP: any CURVE key; join ops only
    ZapAuthenticator: one per zmq context on inproc://zeromq.zap.01, asked by libzmq
    at every handshake, so a change of `allowed_keys` takes effect for new connections.

A refused key gets no handshake, hence nothing at all: its calls end in `Timeout`.
Revoking a key does not close connections already made; handlers that care check the
peer's key again (`Peer.public_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, TypeVar

import zmq
import zmq.asyncio
import zmq.utils.z85

from ssi.proto.codec import DEFAULT_MAX_SIZE, decode_reply, encode_envelope
from ssi.proto.errors import NoReply, ProtocolError, Unavailable
from ssi.proto.messages import PROTOCOL_VERSION, Envelope, Request
from ssi.rpc.base import (
    Dispatcher,
    Handler,
    Peer,
    PendingCalls,
    Rejected,
    error_reply,
    new_request_id,
    result_of,
)
from ssi.rpc.keys import KeyPair, fingerprint

__all__ = [
    "RpcServer",
    "RpcClient",
    "ZapAuthenticator",
    "DEFAULT_JOIN_OPS",
    "CLUSTER_DOMAIN",
    "JOIN_DOMAIN",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CLUSTER_DOMAIN = "cluster"
JOIN_DOMAIN = "join"
DEFAULT_JOIN_OPS = frozenset({"node.join", "sys.ping"})
KeyPolicy = Callable[[bytes], bool]

_HEARTBEAT_IVL_MS = 5_000  # ZMTP pings find half-open connections
_HEARTBEAT_TIMEOUT_MS = 15_000
_RECONNECT_IVL_MS = 100
_RECONNECT_IVL_MAX_MS = 2_000
_DENIAL_LOG_INTERVAL = 60.0  # seconds between two log lines about the same refused key


class ZapAuthenticator:
    """The ZAP handler of one zmq context; CURVE server sockets of that context name
    a domain (`zap_domain`) registered here with its key policy. Unknown domains and
    other mechanisms are refused: fail closed.

    `ZapAuthenticator.acquire(ctx)` (in a running event loop) returns the context's
    handler, creating it; `release()` undoes one `acquire`.
    """

    _by_context: ClassVar[dict[int, ZapAuthenticator]] = {}

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self._ctx = ctx
        self._users = 0
        self._policies: dict[str, KeyPolicy] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._denials: dict[bytes, float] = {}

    @classmethod
    def acquire(cls, ctx: zmq.asyncio.Context) -> ZapAuthenticator:
        zap = cls._by_context.get(id(ctx))
        if zap is None or zap._ctx is not ctx:  # none yet, or a dead context's id
            zap = cls(ctx)
            zap._open()
            cls._by_context[id(ctx)] = zap
        zap._users += 1
        return zap

    def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._by_context.get(id(self._ctx)) is self:
            del self._by_context[id(self._ctx)]
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)

    def register(self, domain: str, policy: KeyPolicy) -> None:
        if domain in self._policies:
            raise ValueError(f"ZAP domain {domain!r} is already registered")
        self._policies[domain] = policy

    def unregister(self, domain: str) -> None:
        self._policies.pop(domain, None)

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise RuntimeError(
                f"cannot bind the ZAP handler ({ZAP_ENDPOINT}): {e}; another "
                "authenticator (zmq.auth?) already runs in this zmq context"
            ) from None
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(
            self._serve(sock), name="ssi-zap"
        )

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as e:
                if sock.closed:
                    return
                log.error("ZAP handler: receive failed: %s", e)
                continue
            try:
                await sock.send_multipart(self._answer(frames))
            except zmq.ZMQError as e:
                if sock.closed:
                    return
                log.error("ZAP handler: send failed: %s", e)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6 or frames[0] != b"1.0":
            rid = frames[1] if len(frames) > 1 else b""
            return [b"1.0", rid, b"500", b"malformed ZAP request", b"", b""]
        _, rid, domain_b, address, _identity, mechanism, *credentials = frames
        domain = domain_b.decode("utf-8", "replace")
        policy = self._policies.get(domain)

        def deny(why: str) -> list[bytes]:
            return [b"1.0", rid, b"400", why.encode(), b"", b""]

        if policy is None:
            log.warning("ZAP: refused a handshake for unknown domain %r", domain)
            return deny("unknown domain")
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            log.warning("ZAP: refused a %s handshake on %s", mechanism, domain)
            return deny("CURVE required")
        key = zmq.utils.z85.encode(credentials[0])
        try:
            admitted = bool(policy(key))
        except Exception:
            log.exception("ZAP: key policy of %s failed: refusing", domain)
            admitted = False
        if not admitted:
            self._log_denial(key, domain, address.decode("utf-8", "replace"))
            return deny("key not admitted")
        return [b"1.0", rid, b"200", b"OK", key, b""]

    def _log_denial(self, key: bytes, domain: str, address: str) -> None:
        now = time.monotonic()
        if now - self._denials.get(key, -1e9) < _DENIAL_LOG_INTERVAL:
            return
        if len(self._denials) > 1000:
            self._denials.clear()
        self._denials[key] = now
        log.warning(
            "refused key %s from %s on the %s socket (not a member)",
            fingerprint(key),
            address,
            domain.split("#")[0],
        )


class _Listener:
    """One bound ROUTER socket and its receive loop."""

    def __init__(
        self,
        server: RpcServer,
        endpoint: str,
        domain: str,
        dispatcher: Dispatcher,
    ) -> None:
        self.server = server
        self.requested = endpoint
        self.domain = domain
        self.zap_domain = f"{domain}#{next(RpcServer._serial)}"
        self.dispatcher = dispatcher
        self.sock: zmq.asyncio.Socket | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        if self.sock is None:
            return self.requested
        last = self.sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def open(self, ctx: zmq.asyncio.Context, keypair: KeyPair, max_size: int) -> None:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, self.zap_domain.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: no handshake
        sock.setsockopt(zmq.MAXMSGSIZE, max_size)
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
        try:
            sock.bind(self.requested)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise OSError(e.errno, f"cannot listen on {self.requested}: {e}") from None
        self.sock = sock
        self.dispatcher.where = f"rpc {self.endpoint} ({self.domain})"
        self.task = asyncio.get_running_loop().create_task(
            self._receive(sock), name=f"ssi-rpc-{self.domain}"
        )

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart(copy=False)
            except zmq.ZMQError as e:
                if sock.closed:
                    return
                log.error("%s socket: receive failed: %s", self.domain, e)
                continue
            try:
                await self._accept(sock, frames)
            except Exception:  # the loop must survive anything a peer sends
                log.exception("%s socket: message dropped", self.domain)

    async def _accept(self, sock: zmq.asyncio.Socket, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        parts = frames[1:]
        prefix: list[bytes] = []
        if len(parts) == 2 and len(parts[0].buffer) == 0:  # a REQ peer's delimiter
            prefix, parts = [b""], parts[1:]
        if len(parts) != 1:
            log.warning("%s socket: dropped a %d-part message", self.domain, len(parts))
            return
        frame = parts[0]
        user_id = frame.get("User-Id")
        if not user_id:  # cannot happen with ZAP enforced; never serve anonymously
            log.error("%s socket: message without an authenticated key", self.domain)
            return
        key = user_id.encode() if isinstance(user_id, str) else bytes(user_id)
        peer = Peer(public_key=key, domain=self.domain)
        decoded = self.dispatcher.decode(frame.buffer, peer)
        if isinstance(decoded, Rejected):
            if decoded.request_id:
                await self.server._send(sock, [ident, *prefix, decoded.reply])
            return
        await self.server._spawn(sock, [ident, *prefix], self.dispatcher, decoded, peer)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.sock is not None:
            self.sock.close(linger=0)


class RpcServer:
    """Serves `handlers` (op name → `async def handler(env, peer)`) to CURVE clients.

    On `endpoint` ("cluster" domain) only keys for which `allowed_keys(z85_key)` is
    true complete the handshake; the callback is asked at each new connection, so
    its answer may change at run time. On `join_endpoint`, when given ("join"
    domain), any CURVE key is admitted but only `join_ops` are served (others get
    `Denied`). Endpoints may use a wildcard port ("tcp://127.0.0.1:*"): read the
    bound ones from `.endpoint` and `.join_endpoint` after `start()`.

    Each request runs in its own task, at most `max_inflight` at once (beyond that
    callers get `Unavailable`); messages over `max_size` bytes are refused.
    """

    _serial: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        keypair: KeyPair,
        handlers: Mapping[str, Handler],
        *,
        allowed_keys: KeyPolicy,
        max_size: int = DEFAULT_MAX_SIZE,
        join_endpoint: str | None = None,
        join_ops: Collection[str] = DEFAULT_JOIN_OPS,
        max_inflight: int = 1024,
    ) -> None:
        self.ctx = ctx
        self.keypair = keypair
        self.allowed_keys = allowed_keys
        self.max_size = max_size
        self.max_inflight = max_inflight
        self._zap: ZapAuthenticator | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners = [
            _Listener(
                self,
                endpoint,
                CLUSTER_DOMAIN,
                Dispatcher(handlers, max_size=max_size, where=f"rpc {endpoint}"),
            )
        ]
        if join_endpoint is not None:
            dispatcher = Dispatcher(
                handlers,
                max_size=max_size,
                allowed_ops=join_ops,
                where=f"rpc {join_endpoint} (join)",
            )
            self._listeners.append(
                _Listener(self, join_endpoint, JOIN_DOMAIN, dispatcher)
            )

    @property
    def endpoint(self) -> str:
        return self._listeners[0].endpoint

    @property
    def join_endpoint(self) -> str | None:
        return self._listeners[1].endpoint if len(self._listeners) > 1 else None

    async def start(self) -> None:
        if self._zap is not None:
            raise RuntimeError("RpcServer already started")
        zap = ZapAuthenticator.acquire(self.ctx)
        self._zap = zap
        try:
            for listener in self._listeners:
                policy = (
                    self._admit_member if listener.domain == CLUSTER_DOMAIN else _any
                )
                zap.register(listener.zap_domain, policy)
                listener.open(self.ctx, self.keypair, self.max_size)
        except BaseException:
            await self.close()
            raise
        log.info(
            "rpc server on %s, key %s",
            ", ".join(f"{x.endpoint} ({x.domain})" for x in self._listeners),
            fingerprint(self.keypair.public),
        )

    def _admit_member(self, key: bytes) -> bool:
        return self.allowed_keys(key)

    async def close(self) -> None:
        """Stop listening and cancel the requests in progress."""
        for listener in self._listeners:
            await listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._zap is not None:
            for listener in self._listeners:
                self._zap.unregister(listener.zap_domain)
            self._zap.release()
            self._zap = None

    async def _send(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        if sock.closed:
            return
        try:
            # ROUTER never blocks a send: a full or vanished peer just loses it.
            await sock.send_multipart(frames)
        except zmq.ZMQError as e:
            log.debug("reply dropped: %s", e)

    async def _spawn(
        self,
        sock: zmq.asyncio.Socket,
        route: list[bytes],
        dispatcher: Dispatcher,
        env: Envelope,
        peer: Peer,
    ) -> None:
        if len(self._tasks) >= self.max_inflight:
            busy = Unavailable(
                f"server busy ({self.max_inflight} requests in progress)"
            )
            await self._send(sock, [*route, error_reply(env.id, busy, self.max_size)])
            return
        task = asyncio.get_running_loop().create_task(
            self._serve_one(sock, route, dispatcher, env, peer)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_one(
        self,
        sock: zmq.asyncio.Socket,
        route: list[bytes],
        dispatcher: Dispatcher,
        env: Envelope,
        peer: Peer,
    ) -> None:
        reply = await dispatcher.run(env, peer)
        await self._send(sock, [*route, reply])


def _any(key: bytes) -> bool:
    return True


class RpcClient:
    """Calls one RpcServer. Replies are matched to calls by request id (one reader
    task), so calls may run concurrently; a call without a reply in `timeout`
    seconds raises `Timeout` and its late reply is dropped.

    A server that refuses our key gives nothing at all: calls end in `Timeout`.
    Requests are only queued on a completed connection (ZMQ_IMMEDIATE), so one
    that timed out before any connection is never delivered later. A refused
    handshake is tried again after a while: libzmq ends such a connection for
    good, and a server may well admit us later (a coordinator restarting, the
    member list it checks not read yet).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        server_public: bytes | str,
        keypair: KeyPair,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        sender: str = "",
    ) -> None:
        if isinstance(server_public, str):
            server_public = server_public.encode()
        self.endpoint = endpoint
        self.max_size = max_size
        self.sender = sender
        self._pending = PendingCalls()
        self._reader: asyncio.Task[None] | None = None
        self._retrier: asyncio.Task[None] | None = None
        self._closed = False
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
        sock.setsockopt(zmq.MAXMSGSIZE, max_size)
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise ValueError(f"bad endpoint {endpoint!r}: {e}") from None
        self._sock = sock
        self._refusals = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    async def call(
        self,
        body: Request[R],
        *,
        timeout: float,
        cause: str = "",
        uid: int | None = None,
        gid: int | None = None,
    ) -> R:
        """Send `body`, wait for its reply; the value (converted to the request's
        declared result type) or the reply's typed SsiError. `Timeout` after
        `timeout` seconds; `Unavailable` once closed; `MessageTooLarge` before
        sending when the request exceeds the size cap."""
        if self._closed:
            raise Unavailable(f"rpc client for {self.endpoint} is closed")
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(
                self._read(), name=f"ssi-rpc-client {self.endpoint}"
            )
        if self._retrier is None or self._retrier.done():
            self._retrier = loop.create_task(
                self._retry_refused(), name=f"ssi-rpc-client-retry {self.endpoint}"
            )
        request_id = new_request_id()
        env = Envelope(
            v=PROTOCOL_VERSION,
            id=request_id,
            body=body,
            cause=cause,
            sender=self.sender,
            uid=uid,
            gid=gid,
            deadline=time.time() + timeout,
        )
        data = encode_envelope(env, self.max_size)
        fut = self._pending.add(request_id)
        try:
            async with asyncio.timeout(timeout):
                await self._sock.send_multipart([data])
                reply = await fut
        except TimeoutError:
            raise NoReply(
                f"no reply to {body.op} from {self.endpoint} within {timeout:g} s",
                details={"op": body.op, "endpoint": self.endpoint},
            ) from None
        except zmq.ZMQError as e:
            raise Unavailable(f"cannot send to {self.endpoint}: {e}") from None
        finally:
            self._pending.discard(request_id)
        return result_of(body, reply)

    async def _read(self) -> None:
        sock = self._sock
        while True:
            try:
                frames = await sock.recv_multipart(copy=False)
            except zmq.ZMQError as e:
                if sock.closed:
                    return
                log.error("rpc client %s: receive failed: %s", self.endpoint, e)
                await asyncio.sleep(0.1)  # do not spin on a persistent error
                continue
            try:
                reply = decode_reply(frames[-1].buffer, self.max_size)
            except ProtocolError as e:
                log.warning("rpc client %s: bad reply dropped: %s", self.endpoint, e)
                continue
            if not self._pending.resolve(reply):
                log.debug(
                    "rpc client %s: late reply %s dropped", self.endpoint, reply.id
                )

    async def _retry_refused(self) -> None:
        """Connect again, a reconnect interval after each refused handshake."""
        while True:
            await self._refusals.recv_multipart()  # one event: the mask has one kind
            await asyncio.sleep(_RECONNECT_IVL_MAX_MS / 1000)
            with contextlib.suppress(zmq.ZMQError):  # no such connection left
                self._sock.disconnect(self.endpoint)
            self._sock.connect(self.endpoint)

    def close(self) -> None:
        """Close now (pending calls fail with `Unavailable`); never blocks."""
        if self._closed:
            return
        self._closed = True
        for task in (self._reader, self._retrier):
            if task is not None:
                task.cancel()
        with contextlib.suppress(zmq.ZMQError):  # its context already gone
            self._sock.disable_monitor()
        self._refusals.close(linger=0)
        self._sock.close(linger=0)
        self._pending.fail_all(Unavailable(f"rpc client for {self.endpoint} closed"))

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
