"""An IpcTable shared by the threads (and asyncio tasks) of one process: the
in-process stand-in for a home daemon, for tests, single-node use and the preload
server's standalone mode.

    hub = LocalHub(IpcTable())
    t1 = hub.transport(Caller(uid=1000, gid=100, pid=1, client="p1"))
    t2 = hub.async_transport(Caller(...))          # for asyncio code
    t1.call("ipc.msgrcv", id=q, size=64, timeout=2.0)   # parks, woken by a send

One lock serialises the table. A parked op gets a slot; the outcome that completes
it fills the slot and wakes its caller (Event for threads, call_soon_threadsafe for
asyncio). Timeout and interruption cancel the waiter at the table under the same
lock, so an op either completed (its value is returned) or was cancelled (nothing
happened), never both.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from ssi.ipc.api import Interrupt
from ssi.ipc.constants import CancelReason
from ssi.ipc.model import Caller, ipc_error
from ssi.ipc.ops import Blocked, Op, Outcome, Wakeup, op_from_args
from ssi.ipc.table import IpcTable

__all__ = ["LocalHub", "LocalTransport", "LocalAsyncTransport", "this_process"]


def this_process(client: str | None = None) -> Caller:
    """The credentials of the calling process; a fresh client id by default."""
    pid = os.getpid()
    return Caller(
        uid=os.geteuid(),
        gid=os.getegid(),
        groups=tuple(os.getgroups()),
        pid=pid,
        client=client or f"{os.uname().nodename}:{pid}:{secrets.token_hex(4)}",
    )


class _Slot:
    def __init__(self, waiter: str) -> None:
        self.waiter = waiter
        self.done = False
        self.value: Any = None
        self.errno = 0
        self.reason: CancelReason | None = None
        self.event = threading.Event()
        self.notify: Callable[[], None] | None = None

    def complete(self, wakeup: Wakeup, reason: CancelReason | None) -> None:
        self.value, self.errno, self.reason = wakeup.value, wakeup.errno, reason
        self.done = True
        self.event.set()
        if self.notify is not None:
            self.notify()

    def result(self) -> Any:
        if not self.errno:
            return self.value
        if self.reason is CancelReason.TIMEOUT:
            raise TimeoutError(errno.EAGAIN, "timed out")
        raise ipc_error(self.errno, f"parked op {self.waiter}")


class LocalHub:
    """The shared table and its parked callers."""

    def __init__(self, table: IpcTable | None = None) -> None:
        self.table = table if table is not None else IpcTable()
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def transport(self, caller: Caller | None = None) -> LocalTransport:
        return LocalTransport(self, caller or this_process())

    def async_transport(self, caller: Caller | None = None) -> LocalAsyncTransport:
        return LocalAsyncTransport(self, caller or this_process())

    def exit(self, client: str) -> None:
        with self._lock:
            self._deliver(self.table.exit(client).woken, None)

    def _deliver(self, woken: tuple[Wakeup, ...], reason: CancelReason | None) -> None:
        for w in woken:
            slot = self._slots.pop(w.waiter, None)
            if slot is not None:
                slot.complete(w, reason)

    def start(self, caller: Caller, op: Op) -> tuple[Any, _Slot | None]:
        """Apply `op`; (value, None) when done, (None, slot) when parked."""
        with self._lock:
            outcome: Outcome = self.table.apply(op, caller)
            if isinstance(outcome, Blocked):
                slot = self._slots[outcome.waiter] = _Slot(outcome.waiter)
                return None, slot
            self._deliver(outcome.woken, None)
            return outcome.value, None

    def cancel(self, slot: _Slot, reason: CancelReason) -> None:
        """Cancel a parked op unless it completed already."""
        with self._lock:
            if slot.done:
                return
            outcome = self.table.cancel(slot.waiter, reason)
            if outcome is not None:
                self._deliver(outcome.woken, reason)


def _split(args: dict[str, Any]) -> tuple[float | None, Interrupt | None]:
    timeout = args.pop("timeout", None)
    interrupt = args.pop("interrupt", None)
    if timeout is not None and timeout < 0:
        raise ipc_error(errno.EINVAL, f"timeout {timeout}")
    return timeout, interrupt


def _op(op: str, args: dict[str, Any]) -> Op:
    try:
        return op_from_args(op, args)
    except ValueError as exc:
        raise ipc_error(errno.EINVAL, str(exc)) from None


class LocalTransport:
    """Transport for threads: blocking ops wait on an Event."""

    def __init__(self, hub: LocalHub, caller: Caller) -> None:
        self.hub = hub
        self.caller = caller

    def call(self, op: str, /, **args: Any) -> Any:
        timeout, interrupt = _split(args)
        request = _op(op, args)
        if interrupt is not None and interrupt.is_set():
            raise ipc_error(errno.EINTR, op)
        value, slot = self.hub.start(self.caller, request)
        if slot is None:
            return value
        unsubscribe = None
        if interrupt is not None:
            unsubscribe = interrupt.subscribe(
                lambda: self.hub.cancel(slot, CancelReason.INTERRUPT)
            )
        try:
            if not slot.event.wait(timeout):
                self.hub.cancel(slot, CancelReason.TIMEOUT)
        except BaseException:
            # KeyboardInterrupt, an exception from a signal handler: nothing waits
            self.hub.cancel(slot, CancelReason.INTERRUPT)
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()
        return slot.result()


class LocalAsyncTransport:
    """AsyncTransport for asyncio code: blocking ops await a future."""

    def __init__(self, hub: LocalHub, caller: Caller) -> None:
        self.hub = hub
        self.caller = caller

    async def call(self, op: str, /, **args: Any) -> Any:
        timeout, interrupt = _split(args)
        request = _op(op, args)
        if interrupt is not None and interrupt.is_set():
            raise ipc_error(errno.EINTR, op)
        value, slot = self.hub.start(self.caller, request)
        if slot is None:
            return value
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, done)

        slot.notify = wake
        if slot.done:
            _resolve(done)
        unsubscribe = None
        if interrupt is not None:
            unsubscribe = interrupt.subscribe(
                lambda: self.hub.cancel(slot, CancelReason.INTERRUPT)
            )
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(done)
        except TimeoutError:
            self.hub.cancel(slot, CancelReason.TIMEOUT)
        except BaseException:
            self.hub.cancel(slot, CancelReason.INTERRUPT)
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()
        return slot.result()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
