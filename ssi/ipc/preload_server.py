"""The interposer's server: an asyncio unix socket server that decodes the frames of
ssi_ipc_preload.c (ssi.ipc.wire) and drives an AsyncTransport per connection.

    C program ─ LD_PRELOAD ─ frames ─▶ PreloadServer ─ connect(caller) ─▶ AsyncTransport
                                         peer creds (SO_PEERCRED, SO_PEERGROUPS)
                                         client = <node><pid>.<token>

The caller's uid/gid/groups/pid come from the kernel (peer credentials), never from
the frames; `identify(pid, token)` may name the client otherwise (the daemon names a
job's processes after the job, so the name survives a migration). A client (one
process) may hold several connections (one per concurrent call); when the last one
closes, after `linger` seconds without a reconnect, its parked calls are interrupted
and `ipc.exit` applies its SEM_UNDO adjustments and detaches its segments. A
request resent after a reconnect (same seq) is joined to the pending call or
answered from the kept reply, so it runs once.

hold(match) closes the connections of the processes `match(pid)` picks, cancels
their calls here without ending them at the home (with `request_ids`, the
transport is given the interposer's seq as `request=`, so the re-sent call is the
same request) and refuses them until release(): a checkpoint then finds no socket
connected to this server (CRIU dumps the half-closed ones; the restored process
reconnects wherever it is and re-sends). A path "@name" is an abstract socket (one
per network namespace: a migrated job finds its new node's server by the same name).

Standalone, on one node, with an in-process table:

    python -m ssi.ipc.preload_server /run/ssi-ipc.sock
    SSI_IPC_SOCKET=/run/ssi-ipc.sock LD_PRELOAD=.../ssi_ipc_preload.so ./program
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ssi.ipc import wire
from ssi.ipc.api import AsyncTransport, Interrupt
from ssi.ipc.local import LocalHub
from ssi.ipc.model import Caller

__all__ = ["PreloadServer", "serve_local", "main"]

log = logging.getLogger(__name__)

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
KEEP_REPLIES = 16  # replies kept per client for resent requests
KEEP_REPLY_BYTES = 64 * 1024  # larger replies (pulls, stats) are idempotent anyway

Connect = Callable[[Caller], AsyncTransport]
Identify = Callable[[int, int], tuple[str, int]]  # (peer pid, token) -> (client, pid)


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.open = True

    def send(self, data: bytes) -> None:
        if self.open and not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        """Shut the connection now (not at the loop's next turn: a checkpoint
        may freeze the peer right after)."""
        self.open = False
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.writer.close()


class _Pending:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.interrupt = Interrupt()
        self.task: asyncio.Task[None] | None = None


class _Client:
    def __init__(self, id: str, pid: int = 0) -> None:
        self.id = id
        self.pid = pid  # the peer's pid, as this server sees it
        self.held = False
        self.conns: set[_Conn] = set()
        self.pending: dict[int, _Pending] = {}
        self.done: OrderedDict[int, bytes] = OrderedDict()
        self.transport: AsyncTransport | None = None
        self.exit_task: asyncio.Task[None] | None = None


def _peer(sock: socket.socket) -> tuple[int, int, int, tuple[int, ...]]:
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    except OSError:
        groups = ()
    return pid, uid, gid, tuple(groups)


class PreloadServer:
    """Serves interposed processes on `path`; `connect(caller)` gives the transport
    a connection's calls go through (a LocalHub's, or the daemon's client)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        connect: Connect,
        *,
        node: str = "",
        linger: float = 0.0,
        mode: int = 0o666,
        identify: Identify | None = None,
        request_ids: bool = False,
    ) -> None:
        self.abstract = str(path).startswith("@")
        self.path = Path(path)
        self.connect = connect
        self.node = node
        self.linger = linger
        self.mode = mode
        self.identify = identify
        self.request_ids = request_ids
        self._server: asyncio.Server | None = None
        self._clients: dict[str, _Client] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._holds: dict[object, tuple[Callable[[int], bool], set[str]]] = {}
        self._closing = False

    async def start(self) -> None:
        if self.abstract:
            self._server = await asyncio.start_unix_server(
                self._serve, path="\0" + str(self.path)[1:], limit=wire.MAX_FRAME
            )
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=wire.MAX_FRAME
        )
        os.chmod(self.path, self.mode)

    async def close(self) -> None:
        self._closing = True  # parked calls stay parked: the clients come back
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            for p in client.pending.values():
                p.interrupt.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.abstract:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def __aenter__(self) -> PreloadServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def clients(self) -> list[str]:
        return sorted(self._clients)

    def hold(self, match: Callable[[int], bool]) -> object:
        """Close the connections of the clients whose pid `match` picks and refuse
        theirs until release(); their calls here are cancelled, not ended (see the
        module doc). Returns the handle release() takes."""
        handle = object()
        held: set[str] = set()
        self._holds[handle] = (match, held)
        for client in list(self._clients.values()):
            if not client.held and match(client.pid):
                held.add(client.id)
                self._hold(client)
        return handle

    def _hold(self, client: _Client) -> None:
        client.held = True
        if client.exit_task is not None:
            client.exit_task.cancel()
            client.exit_task = None
        for pending in client.pending.values():
            if pending.task is not None:
                pending.task.cancel()
        client.pending.clear()
        for conn in list(client.conns):
            conn.close()

    def release(self, handle: object, *, forget: bool) -> None:
        """End a hold. `forget`: its processes left this node (a checkpoint that
        stopped them), drop them here without ending them; otherwise each is ended
        when it exits, unless it connects again first."""
        _, held = self._holds.pop(handle, (None, set()))
        for cid in held:
            client = self._clients.get(cid)
            if client is None:
                continue
            client.held = False
            if forget:
                if not client.conns:
                    del self._clients[cid]
            elif not client.conns and client.exit_task is None:
                client.exit_task = self._spawn(self._exit_when_gone(client))

    def _held(self, pid: int) -> bool:
        return any(match(pid) for match, _ in self._holds.values())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- connections -----------------------------------------------------------

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)
            me.add_done_callback(self._tasks.discard)
        conn = _Conn(writer)
        client: _Client | None = None
        transport: AsyncTransport | None = None
        try:
            pid, uid, gid, groups = _peer(writer.get_extra_info("socket"))
            if self._held(pid):
                return  # checkpointing: it comes back when that is over
            while True:
                body = await self._read_frame(reader)
                if body is None:
                    break
                try:
                    req = wire.decode_request(body)
                except wire.WireError as exc:
                    log.debug("bad frame from pid %s: %s", pid, exc)
                    if exc.seq is None:
                        break
                    conn.send(wire.encode_reply(exc.seq, -1, errno.EINVAL))
                    continue
                if client is None or transport is None:
                    if req.op != wire.Op.HELLO:
                        break
                    token = req.fields["token"]
                    cid, cpid = f"{self.node}{pid}.{token:016x}", pid
                    if self.identify is not None:
                        cid, cpid = self.identify(pid, token)
                    if self._held(pid):
                        break
                    client = self._attach(cid, conn, pid)
                    caller = Caller(
                        uid=uid, gid=gid, groups=groups, pid=cpid, client=cid
                    )
                    transport = client.transport = self.connect(caller)
                    hello = struct.pack("<IIQ", wire.VERSION, 0, wire.MAX_FRAME)
                    conn.send(wire.encode_reply(req.seq, 0, 0, hello))
                elif req.op == wire.Op.CANCEL:
                    pending = client.pending.get(req.fields["target"])
                    if pending is not None:
                        pending.interrupt.set()
                elif req.op == wire.Op.HELLO:
                    conn.send(wire.encode_reply(req.seq, -1, errno.EINVAL))
                else:
                    self._dispatch(client, conn, transport, req)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server closes
        finally:
            conn.open = False
            writer.close()
            if client is not None:
                client.conns.discard(conn)
                if not client.conns and not client.held and not self._closing:
                    client.exit_task = self._spawn(self._exit_later(client))

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(wire.LEN.size)
        except asyncio.IncompleteReadError:
            return None
        (length,) = wire.LEN.unpack(head)
        if length > wire.MAX_FRAME:
            log.warning("frame of %s bytes refused", length)
            return None
        return await reader.readexactly(length)

    def _attach(self, cid: str, conn: _Conn, pid: int = 0) -> _Client:
        client = self._clients.get(cid)
        if client is None:
            client = self._clients[cid] = _Client(cid, pid)
        client.pid = pid or client.pid  # a migrated process has another one here
        if client.exit_task is not None:
            client.exit_task.cancel()  # it came back within the linger time
            client.exit_task = None
        client.conns.add(conn)
        return client

    async def _exit_when_gone(self, client: _Client) -> None:
        """A client without connections (after a hold) ends when its process does."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(client.pid)
        except OSError:
            fd = -1
        if fd >= 0:
            gone = asyncio.Event()
            loop.add_reader(fd, gone.set)
            try:
                await gone.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        await self._exit_later(client)

    async def _exit_later(self, client: _Client) -> None:
        if self.linger > 0:
            await asyncio.sleep(self.linger)
        if client.conns:
            return
        for pending in client.pending.values():
            pending.interrupt.set()
        self._clients.pop(client.id, None)
        waiting = [p.task for p in client.pending.values() if p.task is not None]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        if client.transport is not None:
            try:
                await client.transport.call("ipc.exit")
            except OSError as exc:
                log.warning("ipc.exit of client %s failed: %s", client.id, exc)

    # ---- requests --------------------------------------------------------------

    def _dispatch(
        self,
        client: _Client,
        conn: _Conn,
        transport: AsyncTransport,
        req: wire.Request,
    ) -> None:
        kept = client.done.get(req.seq)
        if kept is not None:
            conn.send(kept)
            return
        pending = client.pending.get(req.seq)
        if pending is not None:
            pending.conn = conn  # a resend after a reconnect: answer here
            return
        pending = client.pending[req.seq] = _Pending(conn)
        pending.task = self._spawn(self._run(client, pending, transport, req))

    async def _run(
        self,
        client: _Client,
        pending: _Pending,
        transport: AsyncTransport,
        req: wire.Request,
    ) -> None:
        ret, err, payload = -1, 0, b""
        try:
            name, args = wire.to_call(req)
            if self.request_ids:
                args["request"] = req.seq
            value = await transport.call(name, **args, interrupt=pending.interrupt)
            ret, payload = wire.reply_payload(req, value)
        except TimeoutError:
            err = errno.EAGAIN
        except OSError as exc:
            err = exc.errno or errno.EIO
        except (wire.WireError, ValueError, TypeError, OverflowError) as exc:
            log.debug("bad request %s from %s: %s", req.op, client.id, exc)
            err = errno.EINVAL
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ipc op %s of client %s failed", req.op, client.id)
            err = errno.EIO
        data = wire.encode_reply(req.seq, ret, err, payload)
        client.pending.pop(req.seq, None)
        if len(data) <= KEEP_REPLY_BYTES:
            client.done[req.seq] = data
            while len(client.done) > KEEP_REPLIES:
                client.done.popitem(last=False)
        pending.conn.send(data)


def serve_local(
    path: str | os.PathLike[str],
    hub: LocalHub | None = None,
    *,
    node: str = "",
    linger: float = 0.0,
) -> PreloadServer:
    """A PreloadServer over an in-process table (a LocalHub, new by default)."""
    local = hub if hub is not None else LocalHub()
    return PreloadServer(path, local.async_transport, node=node, linger=linger)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssi.ipc.preload_server",
        description="Serve the ssi IPC interposer from an in-process table.",
    )
    parser.add_argument("socket", help="unix socket path (SSI_IPC_SOCKET)")
    parser.add_argument("--linger", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        async with serve_local(args.socket, linger=args.linger):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
