"""Router: the origin side of cluster IPC. A process's op enters at its node's ssid
(local socket or preload server) and the router takes it to the object's home.

    op(kind, id) ─▶ home cache ─(miss)─▶ coordinator IpcWhere ─▶ home
                                                                  │ IpcApply(request)
        done ◀────────────────────────────────────────────────────┤
        parked: a Pending, completed by IpcWake from the home, or by a probe
                (the same request re-sent every `probe` s: answers it if a wake
                was lost, follows the object when it moved or its home died)
    get(key) ─▶ coordinator IpcGet (finds the key's home, or creates the object)

Failures: a home that does not answer, or answers `absent` (the object moved or is
moving), is asked again through the coordinator, with back-off, for up to
`unreachable` seconds (then EIO). The request id makes every retry safe: the home
runs each request once.

Timeouts and interrupts cancel the parked request at its home (IpcCancelAt), which
answers the op's result if it completed first: an op either happened or did not.
A cancelled *task* (a client connection dropped before a checkpoint, ssid
stopping) leaves the request parked at its home, to be re-attached when the client
sends it again.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ssi.ipc.api import Interrupt
from ssi.ipc.constants import IPC_64, IPC_INFO, SEM_INFO, SHM_INFO, CancelReason, Kind
from ssi.ipc.home import HomeShard, Key
from ssi.ipc.model import Caller, Limits, ipc_error
from ssi.ipc.ops import (
    ClientExit,
    ListObjects,
    MsgCtl,
    ObjectInfo,
    Op,
    SemCtl,
    ShmCtl,
    op_from_args,
)
from ssi.ipc.remote import (
    GET_OPS,
    Answer,
    Result,
    decode_answer,
    encode,
    encode_caller,
    encode_op,
    get_kind,
    result_error,
    result_of,
    target,
    unwrap,
)
from ssi.ipc.table import IpcTable
from ssi.proto import messages as m
from ssi.proto.errors import SsiError

__all__ = ["Router", "Pending", "RouterTunables", "ClusterTransport"]

log = logging.getLogger(__name__)

CallNode = Callable[[str, m.Request[Any], float], Awaitable[Any]]
CallCoordinator = Callable[[m.Request[Any], float], Awaitable[Any]]
Nodes = Callable[[], Awaitable[list[str]]]

_INFO_CMDS = (IPC_INFO, SEM_INFO, SHM_INFO)


@dataclass(frozen=True, slots=True)
class RouterTunables:
    """Seconds: `probe` between re-sends of a parked request; `call_timeout` one
    round trip to a home; `unreachable` how long a home (or the coordinator) may be
    out of reach before the op fails with EIO; `hold` how long a home keeps the
    first round trip of an op that parks, to answer it in its reply."""

    probe: float = 2.0
    call_timeout: float = 5.0
    unreachable: float = 60.0
    hold: float = 1.0


class _NoObject(Exception):
    """The directory knows no such object (removed, or never was)."""


class Pending:
    """A request parked at its home."""

    def __init__(self, request: str, key: Key, op: bytes, caller: bytes) -> None:
        self.request = request
        self.key = key
        self.op = op
        self.caller = caller
        self.future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.keeper: asyncio.Task[None] | None = None
        self.since = time.monotonic()

    def resolve(self, result: Result) -> None:
        if not self.future.done():
            self.future.set_result(result)


class Router:
    def __init__(
        self,
        node: str,
        shard: HomeShard,
        call_node: CallNode,
        call_coordinator: CallCoordinator,
        nodes: Nodes,
        limits: Limits,
        tunables: RouterTunables | None = None,
    ) -> None:
        self.node = node
        self.shard = shard
        self.call_node = call_node
        self.call_coordinator = call_coordinator
        self.nodes = nodes
        self.limits = limits
        self.t = tunables or RouterTunables()
        self.homes: dict[Key, str] = {}
        self.pending: dict[str, Pending] = {}

    # ---- entry points --------------------------------------------------------------

    async def start(
        self, caller: Caller, op: Op, request: str, hold: float = 0.0
    ) -> Result | Pending:
        """Send `op` to its home: its Result, or the Pending it parked as (after
        up to `hold` s at the home). A request already pending here (a re-sent call)
        gives that Pending."""
        held = self.pending.get(request)
        if held is not None:
            return held
        if isinstance(op, GET_OPS):
            return await self._get(caller, op, request)
        if isinstance(op, ClientExit):
            await self.exit(caller)
            return result_of(None)
        if isinstance(op, ListObjects):
            return result_of(await self.list_objects(op.kind))
        where = target(op)
        if where is None or _is_info(op):
            return self._scratch(op, caller)
        p = Pending(request, where, encode_op(op), encode_caller(caller))
        self.pending[request] = p
        try:
            answer = await self._send(p, hold)
        except _NoObject:
            self.pending.pop(request, None)
            return self._scratch(op, caller)
        except BaseException:
            self.pending.pop(request, None)
            raise
        if answer.state == "done":
            self.pending.pop(request, None)
            assert answer.result is not None
            return answer.result
        if not p.future.done():
            p.keeper = asyncio.get_running_loop().create_task(self._keep(p))
        return p

    async def wait(
        self, p: Pending, timeout: float | None, stop: asyncio.Event | None = None
    ) -> Result | None:
        """The Pending's result, or None when `timeout` passed or `stop` was set
        first (it stays parked)."""
        waits: set[asyncio.Future[Any]] = {p.future}
        stopper = None
        if stop is not None:
            stopper = asyncio.ensure_future(stop.wait())
            waits.add(stopper)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            if stopper is not None:
                stopper.cancel()
        return p.future.result() if p.future.done() else None

    def finish(self, p: Pending) -> None:
        """Forget a Pending whose result was taken, or that its client abandoned
        (left parked at the home; a re-sent request finds it there)."""
        if self.pending.get(p.request) is p:
            del self.pending[p.request]
        if p.keeper is not None and not p.keeper.done():
            p.keeper.cancel()

    async def cancel(self, p: Pending, reason: CancelReason) -> Result:
        """Cancel at the home; the op's result if it completed first."""
        try:
            await self._cancel_at(p, reason)
            return p.future.result()
        finally:
            self.finish(p)

    async def _cancel_at(self, p: Pending, reason: CancelReason) -> None:
        """Resolve `p` with what its home says to a cancel."""
        if p.future.done():
            return
        kind, id = p.key
        body = m.IpcCancelAt(
            kind=kind.value, id=id, request=p.request, reason=reason.value
        )
        try:
            answer = await self._until_answer(p.key, body, None)
        except _NoObject:
            answer = Answer("done", result_error(errno.EIDRM))
        except OSError as e:
            answer = Answer("done", result_error(e.errno or errno.EIO))
        assert answer.result is not None
        p.resolve(answer.result)

    async def call(
        self,
        caller: Caller,
        op: Op,
        request: str,
        *,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
    ) -> Any:
        """The op's value, or its OSError (TimeoutError after `timeout`)."""
        what = f"{type(op).__name__} {request}"
        if interrupt is not None and interrupt.is_set():
            # interrupted before it started here: it may have run at its home (a
            # re-sent request), which answers its result, else EINTR
            return unwrap(await self._interrupted(op, request), what)
        if timeout is not None and timeout < 0:
            raise ipc_error(errno.EINVAL, f"timeout {timeout}")
        stop = None
        unsubscribe = None
        if interrupt is not None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            event = stop

            def interrupted() -> None:
                loop.call_soon_threadsafe(event.set)

            unsubscribe = interrupt.subscribe(interrupted)
        try:
            hold = self.t.hold if timeout is None else min(self.t.hold, timeout)
            started = await self._first_trip(caller, op, request, hold, stop)
        except BaseException:
            if unsubscribe is not None:
                unsubscribe()
            raise
        if isinstance(started, Result):
            if unsubscribe is not None:
                unsubscribe()
            return unwrap(started, what)
        p = started
        try:
            result = await self.wait(p, timeout, stop)
            if result is None:
                reason = (
                    CancelReason.INTERRUPT
                    if stop is not None and stop.is_set()
                    else CancelReason.TIMEOUT
                )
                result = await self.cancel(p, reason)
        except asyncio.CancelledError:
            self.finish(p)  # stays parked at its home: a re-send finds it
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()
        self.finish(p)
        return unwrap(result, what)

    async def _first_trip(
        self,
        caller: Caller,
        op: Op,
        request: str,
        hold: float,
        stop: asyncio.Event | None,
    ) -> Result | Pending:
        """start(), cancelled at the home if `stop` is set while the home holds it."""
        trip = asyncio.ensure_future(self.start(caller, op, request, hold))
        if stop is None:
            return await trip
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({trip, stopper}, return_when="FIRST_COMPLETED")
        except BaseException:
            trip.cancel()
            raise
        finally:
            stopper.cancel()
        if not trip.done():
            p = self.pending.get(request)
            if p is not None:  # the home answers the trip with the cancel's result
                await self._cancel_at(p, CancelReason.INTERRUPT)
        return await trip

    async def _interrupted(self, op: Op, request: str) -> Result:
        where = target(op)
        if where is None or _is_info(op):
            return result_error(errno.EINTR)
        kind, id = where
        body = m.IpcCancelAt(
            kind=kind.value, id=id, request=request, reason="interrupt"
        )
        try:
            answer = await self._until_answer(where, body, None)
        except _NoObject:
            return result_error(errno.EINTR)
        assert answer.result is not None
        return answer.result

    def on_wake(self, results: list[tuple[str, Result]]) -> None:
        for request, result in results:
            p = self.pending.get(request)
            if p is not None:
                p.resolve(result)

    # ---- cluster-wide ops ---------------------------------------------------------

    async def exit(self, caller: Caller) -> None:
        """ClientExit at every node (SEM_UNDO, attachments, parked ops)."""
        body = m.IpcExitAt(caller=encode_caller(caller))
        for request, p in list(self.pending.items()):
            if request.rpartition("#")[0] == caller.client:
                p.resolve(result_error(errno.EINTR))
        names = await self.nodes()
        outcomes = await asyncio.gather(
            *(self.call_node(n, body, self.t.call_timeout) for n in names),
            return_exceptions=True,
        )
        for n, o in zip(names, outcomes, strict=True):
            if isinstance(o, BaseException):
                log.warning("op=ipc.exit client=%s on %s: %s", caller.client, n, o)

    async def list_objects(self, kind: Kind | None = None) -> list[ObjectInfo]:
        names = await self.nodes()
        outcomes = await asyncio.gather(
            *(self.call_node(n, m.IpcHomeList(), self.t.call_timeout) for n in names),
            return_exceptions=True,
        )
        out: list[ObjectInfo] = []
        for o in outcomes:
            if isinstance(o, BaseException):
                continue
            infos = o["objects"] if isinstance(o, dict) else []
            for info in infos:
                if not isinstance(info, ObjectInfo):
                    info = msgspec.convert(info, ObjectInfo)
                if kind is None or info.kind is kind:
                    out.append(info)
        return sorted(out, key=lambda i: (i.kind.value, i.id))

    # ---- internals -------------------------------------------------------------------

    def _scratch(self, op: Op, caller: Caller) -> Result:
        """An op with no object to go to gets the kernel's error in the kernel's
        order (argument checks, then EINVAL for the id), or its value for IPC_INFO
        commands, from an empty table with the same limits."""
        try:
            outcome = IpcTable(self.limits).apply(op, caller)
        except OSError as e:
            return result_error(e.errno or errno.EINVAL)
        value = getattr(outcome, "value", None)
        return result_of(value)

    async def _get(self, caller: Caller, op: Op, request: str) -> Result:
        body = m.IpcGet(
            operation=encode_op(op),
            caller=encode_caller(caller),
            request=request,
            origin=self.node,
        )
        deadline = time.monotonic() + self.t.unreachable
        delay = 0.05
        while True:
            try:
                raw = await self.call_coordinator(body, self.t.call_timeout * 2)
                answer = decode_answer(raw)
            except SsiError as e:
                if time.monotonic() > deadline:
                    raise ipc_error(errno.EIO, f"no coordinator: {e}") from None
                answer = Answer("absent")
            if answer.state == "done":
                assert answer.result is not None
                if not answer.result.errno and answer.home:
                    kind = get_kind(op)
                    assert kind is not None
                    self.homes[(kind, int(unwrap(answer.result, "get")))] = answer.home
                return answer.result
            if time.monotonic() > deadline:
                raise ipc_error(errno.EIO, f"{type(op).__name__}: no home answers")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _where(self, key: Key) -> str:
        home = self.homes.get(key)
        if home is not None:
            return home
        kind, id = key
        found = await self.call_coordinator(
            m.IpcWhere(kind=kind.value, id=id), self.t.call_timeout
        )
        if not found:
            raise _NoObject()
        home = str(found["home"])
        self.homes[key] = home
        return home

    async def _apply_at(self, home: str, body: m.Request[Any]) -> Answer:
        wait = body.wait if isinstance(body, m.IpcApply) else 0.0
        raw = await self.call_node(home, body, self.t.call_timeout + wait)
        return raw if isinstance(raw, Answer) else decode_answer(raw)

    async def _send(self, p: Pending, hold: float = 0.0) -> Answer:
        body = m.IpcApply(
            operation=p.op,
            caller=p.caller,
            request=p.request,
            origin=self.node,
            wait=hold,
        )
        return await self._until_answer(p.key, body, p)

    async def _until_answer(
        self, key: Key, body: m.Request[Any], p: Pending | None
    ) -> Answer:
        """Ask the object's home until one answers other than `absent`."""
        deadline = time.monotonic() + self.t.unreachable
        delay = 0.02
        while True:
            if p is not None and p.future.done():
                return Answer("done", p.future.result())
            try:
                home = await self._where(key)
                answer = await self._apply_at(home, body)
                if answer.state != "absent":
                    return answer
                why = f"{home} no longer homes it"
            except SsiError as e:
                why = str(e)
            self.homes.pop(key, None)
            if time.monotonic() > deadline:
                raise ipc_error(errno.EIO, f"{key[0].value} {key[1]}: {why}")
            log.debug("op=%s %s %d: %s; asking again", body.op, key[0].value, key[1],
                      why)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _keep(self, p: Pending) -> None:
        """Probe a parked request until it completes (lost wakes, moves, deaths)."""
        while not p.future.done():
            await asyncio.wait({p.future}, timeout=self.t.probe)
            if p.future.done():
                return
            try:
                answer = await self._send(p)
            except _NoObject:
                p.resolve(result_error(errno.EIDRM))
                return
            except OSError as e:
                p.resolve(result_error(e.errno or errno.EIO))
                return
            if answer.state == "done" and answer.result is not None:
                p.resolve(answer.result)


def _is_info(op: Op) -> bool:
    if isinstance(op, MsgCtl | SemCtl | ShmCtl):
        return (op.cmd & ~IPC_64) in _INFO_CMDS
    return False


_counter = itertools.count(1)


class ClusterTransport:
    """AsyncTransport of one client (a process) through the router: what the
    preload server gives each interposed process. `request` (the interposer's
    sequence number) makes a re-sent call the same request."""

    def __init__(self, router: Router, caller: Caller) -> None:
        self.router = router
        self.caller = caller

    async def call(
        self,
        op: str,
        /,
        *,
        timeout: float | None = None,
        interrupt: Interrupt | None = None,
        request: int | None = None,
        **args: Any,
    ) -> Any:
        try:
            parsed = op_from_args(op, args)
        except ValueError as exc:
            raise ipc_error(errno.EINVAL, str(exc)) from None
        seq = f"{request}" if request is not None else f"t{next(_counter)}"
        return await self.router.call(
            self.caller,
            parsed,
            f"{self.caller.client}#{seq}",
            timeout=timeout,
            interrupt=interrupt,
        )


def encode_results(results: list[tuple[str, Result]]) -> bytes:
    return encode(results)
