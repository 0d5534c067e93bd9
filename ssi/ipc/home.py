"""HomeShard: this node's share of the cluster's IPC objects. It homes some objects
(one IpcTable serialises their ops, in the daemon's event loop) and keeps copies of
objects homed elsewhere (replicas).

    origin ─ IpcApply(op, request) ─▶ apply ─▶ table.apply ─▶ Done | Blocked
                                       │ record results, park origins
                                       ▼
                          commit(changed) ── IpcReplicate ──▶ replica's copies
                                       │  (acknowledged before the op is)
                                       ▼
                  answer the caller; IpcWake(results) ──▶ origins of woken callers

Exactly once. A request id ("<client>#<seq>") names one op of one client. The
home records every result under it (the last RESULTS_PER_CLIENT per client and
object, replicated with the object), so an op retried after a lost reply, a home
failure or the client's migration is answered, never run twice; a retried parked
op is re-attached to its waiter, and answered at its new origin.

Replication is group commit: ops mark their objects dirty and wait; one flusher
sends every dirty object's snapshot (a delta of written pages for segments) to its
replica node, in order, and releases the ops whose objects got there. An object
without a replica (a one-node cluster) is acknowledged at once. A parked op is
answered without waiting for its replication (its object is still marked dirty):
if the home dies first, the origin's next probe parks it again at the new home;
what a parked op takes (a message, a semaphore count) is taken by the op that wakes
it, which is replicated before anyone hears of it.

A remote origin may ask (`wait`) to have a parked op answered in the same round
trip when it completes soon: its result then goes in the reply, not in an IpcWake.

Moves and failures: release() hands an object over (snapshot, waiters, results)
and forgets it; adopt() takes one; promote() turns a copy into the object when its
home is lost. The coordinator drives those (ssi.ipc.directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ssi.ipc.constants import IPC_PRIVATE, CancelReason, Kind
from ssi.ipc.model import Caller, Limits, ipc_error
from ssi.ipc.ops import (
    Blocked,
    ClientExit,
    ListObjects,
    ObjectInfo,
    Op,
    Outcome,
    Ref,
    Wakeup,
)
from ssi.ipc.remote import (
    GET_OPS,
    Answer,
    Bundle,
    ReplicaItem,
    Result,
    Side,
    encode,
    get_kind,
    result_error,
    result_of,
    target,
)
from ssi.ipc.table import IpcTable
from ssi.proto import messages as m
from ssi.proto.errors import Conflict, NotFound, SsiError

__all__ = ["HomeShard", "Tunables", "Key"]

log = logging.getLogger(__name__)

Key = tuple[Kind, int]
SendTo = Callable[[str, m.Request[Any], float], Awaitable[Any]]
Gone = Callable[[Kind, int], Awaitable[None]]
Wake = Callable[[str, list[tuple[str, Result]]], None]


@dataclass(frozen=True, slots=True)
class Tunables:
    """Seconds. `replicate_timeout`: one replication round trip; `retry`: pause
    after a failed one (the ops wait: nothing is acknowledged unreplicated)."""

    replicate_timeout: float = 3.0
    retry: float = 0.2


class HomeShard:
    def __init__(
        self,
        node: str,
        limits: Limits,
        send: SendTo,
        gone: Gone,
        wake: Wake,
        tunables: Tunables | None = None,
    ) -> None:
        self.node = node
        self.t = tunables or Tunables()
        self._reserve: int | None = None
        self.table = IpcTable(limits, name=f"ipc@{node}", ids=self._ids)
        self.copies = IpcTable(limits, name=f"copy@{node}")
        self.sides: dict[Key, Side] = {}
        self.copy_sides: dict[Key, Side] = {}
        self.replica: dict[Key, str | None] = {}
        self._send = send
        self._gone = gone
        self._wake = wake
        self._parked_at: dict[str, Key] = {}
        self._unsent: dict[Key, list[tuple[str, Result]]] = {}
        self._purged: dict[Key, list[str]] = {}
        self._shm_sent: dict[Key, int] = {}
        self._full: set[Key] = set()
        self._removed: dict[Key, str | None] = {}
        self._dirty: set[Key] = set()
        self._commits: list[tuple[set[Key], asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._polls: dict[str, asyncio.Future[Result]] = {}
        self.stats = {"ops": 0, "flushes": 0, "items": 0}

    def _ids(self, kind: Kind) -> int:
        """The id the coordinator reserved for the object a get creates."""
        reserved, self._reserve = self._reserve, None
        if reserved is None:
            raise ipc_error(errno.ENOSPC, f"no {kind.value} id reserved here")
        return reserved

    async def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for _, fut in self._commits:
            if not fut.done():
                fut.cancel()

    # ---- ops -----------------------------------------------------------------------

    async def apply(
        self,
        op: Op,
        caller: Caller,
        request: str,
        origin: str,
        *,
        reserve: int | None = None,
        replica: str | None = None,
        wait: float = 0.0,
    ) -> Answer:
        """Run `op` once per request (see the module doc)."""
        self.stats["ops"] += 1
        if isinstance(op, GET_OPS):
            return await self._get(op, caller, request, reserve, replica)
        if isinstance(op, ListObjects):
            return Answer("done", result_of(self.table.objects(op.kind)))
        if isinstance(op, ClientExit):
            await self.exit(caller)
            return Answer("done", result_of(None))
        where = target(op)
        if where is None or not self.table.has(*where):
            return Answer("absent")
        side = self.sides[where]
        known = side.result(request)
        if known is not None:
            log.debug("op=ipc.apply request=%s from %s: again", request, origin)
            return Answer("done", known)
        if self.table.waiter(request) is not None:
            side.origins[request] = origin  # re-attached, maybe from another node
            log.debug("op=ipc.apply request=%s from %s: re-attached", request, origin)
            return Answer("parked")
        try:
            outcome = self.table.apply(op, caller, waiter=request)
        except OSError as e:
            return Answer("done", result_error(e.errno or errno.EIO))
        return await self._settle(where, request, origin, outcome, wait)

    async def _settle(
        self, key: Key, request: str, origin: str, outcome: Outcome, wait: float
    ) -> Answer:
        if log.isEnabledFor(logging.DEBUG):
            if isinstance(outcome, Blocked):
                state, woken = "parked", ""
            else:
                state, woken = "done", ",".join(w.waiter for w in outcome.woken)
            log.debug("op=ipc.apply request=%s from %s: %s%s", request, origin,
                      state, f", woke {woken}" if woken else "")  # fmt: skip
        if isinstance(outcome, Blocked):
            self.sides[key].origins[request] = origin
            self._parked_at[request] = key
            self._mark(outcome.changed)  # replicated later, not waited for
            if wait <= 0 or origin == self.node:
                return Answer("parked")
            poll = self._polls[request] = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait):
                    return Answer("done", await poll)
            except TimeoutError:
                return Answer("parked")
            finally:
                self._polls.pop(request, None)
        result = result_of(outcome.value)
        self._record(key, request, result)
        wakes = self._woken(outcome.woken, None)
        await self._commit(outcome.changed)
        self._send_wakes(wakes)
        return Answer("done", result)

    async def _get(
        self,
        op: Any,
        caller: Caller,
        request: str,
        reserve: int | None,
        replica: str | None,
    ) -> Answer:
        kind = get_kind(op)
        assert kind is not None
        if op.key != IPC_PRIVATE:
            held = self.table.find(kind, op.key)
            if held is not None:
                known = self.sides[(kind, held)].result(request)
                if known is not None:
                    return Answer("done", known, home=self.node)
        self._reserve = reserve
        try:
            outcome = self.table.apply(op, caller)
        except OSError as e:
            return Answer("done", result_error(e.errno or errno.EIO))
        finally:
            self._reserve = None
        assert not isinstance(outcome, Blocked)
        key = (kind, int(outcome.value))
        if key not in self.sides:  # created here and now
            self.sides[key] = Side()
            self.replica[key] = replica
            self._full.add(key)
        result = result_of(outcome.value)
        self._record(key, request, result)
        await self._commit(outcome.changed)
        return Answer("done", result, home=self.node)

    async def cancel(
        self, kind: Kind, id: int, request: str, reason: CancelReason
    ) -> Answer:
        """End a parked request (timeout: EAGAIN, else EINTR), or answer its result
        if it completed first."""
        key = (kind, id)
        if not self.table.has(kind, id):
            return Answer("absent")
        side = self.sides[key]
        known = side.result(request)
        if known is not None:
            return Answer("done", known)
        done = self.table.cancel(request, reason)
        if done is None:  # never parked here: nothing happened
            err = errno.EAGAIN if reason is CancelReason.TIMEOUT else errno.EINTR
            return Answer("done", result_error(err, reason))
        wakes = self._woken(done.woken, reason)
        await self._commit(done.changed)
        self._send_wakes([w for w in wakes if w[1] != request])
        result = side.result(request)
        assert result is not None
        poll = self._polls.pop(request, None)
        if poll is not None and not poll.done():
            poll.set_result(result)
        return Answer("done", result)

    async def exit(self, caller: Caller) -> None:
        """A client is gone: its undo applied, segments detached, parked ops ended,
        its results forgotten."""
        done = self.table.exit(caller.client)
        wakes = self._woken(done.woken, CancelReason.INTERRUPT)
        refs = list(done.changed)
        for key, side in self.sides.items():
            if side.forget_client(caller.client):
                self._purged.setdefault(key, []).append(caller.client)
                refs.append(Ref(*key))
        await self._commit(refs)
        self._send_wakes(wakes)

    def _record(self, key: Key, request: str, result: Result) -> None:
        side = self.sides.get(key)
        if side is None:
            return
        side.record(request, result)
        self._unsent.setdefault(key, []).append((request, result))

    def _woken(
        self, woken: Iterable[Wakeup], reason: CancelReason | None
    ) -> list[tuple[str, str, Result]]:
        """Record the results of woken requests; (origin, request, result) each."""
        out = []
        for w in woken:
            key = self._parked_at.pop(w.waiter, None)
            if w.errno:
                result = result_error(w.errno, reason)
            else:
                result = result_of(w.value)
            side = self.sides.get(key) if key is not None else None
            origin = side.origins.pop(w.waiter, "") if side is not None else ""
            if key is not None:
                self._record(key, w.waiter, result)
            if origin:
                out.append((origin, w.waiter, result))
        return out

    def _send_wakes(self, wakes: list[tuple[str, str, Result]]) -> None:
        by_origin: dict[str, list[tuple[str, Result]]] = {}
        for origin, request, result in wakes:
            poll = self._polls.pop(request, None)
            if poll is not None and not poll.done():
                poll.set_result(result)  # its origin is still waiting for the reply
                continue
            by_origin.setdefault(origin, []).append((request, result))
        for origin, results in by_origin.items():
            self._wake(origin, results)

    # ---- replication -------------------------------------------------------------

    def _mark(self, refs: Iterable[Ref]) -> None:
        """Replicate these objects at the next flush, without waiting for it."""
        keys = {(r.kind, r.id) for r in refs if not r.removed}
        if keys:
            self._dirty |= keys
            self._kick.set()

    async def _commit(self, refs: Iterable[Ref]) -> None:
        """Return once every object in `refs` is at its replica (removed ones: gone
        from the replica and from the coordinator's directory)."""
        keys: set[Key] = set()
        gone: list[Key] = []
        for r in refs:
            key = (r.kind, r.id)
            if r.removed:
                self._forget(key)
                gone.append(key)
            keys.add(key)
        if not keys:
            return
        self._dirty |= keys
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commits.append((keys, fut))
        self._kick.set()
        await fut
        for kind, id in gone:
            try:
                await self._gone(kind, id)
            except SsiError as e:  # the directory learns it at the next hello
                log.warning("op=ipc.gone %s %d: coordinator not told: %s",
                            kind.value, id, e)  # fmt: skip

    def _forget(self, key: Key) -> None:
        """The object is gone from this home (removed): its replica drops it too."""
        self._removed[key] = self.replica.pop(key, None)
        side = self.sides.pop(key, None)
        if side is not None:
            for request in side.origins:
                self._parked_at.pop(request, None)
        self._drop_tracking(key)

    def _drop_tracking(self, key: Key) -> None:
        self._unsent.pop(key, None)
        self._purged.pop(key, None)
        self._shm_sent.pop(key, None)
        self._full.discard(key)

    def _item(self, key: Key) -> ReplicaItem:
        kind, id = key
        side = self.sides[key]
        full = key in self._full or (kind is Kind.SHM and key not in self._shm_sent)
        since = None if full else self._shm_sent.get(key)
        snapshot = self.table.snapshot(kind, id, since=since)
        if kind is Kind.SHM:
            self._shm_sent[key] = self.table.segment(id).version
        self._full.discard(key)
        if full:
            self._unsent.pop(key, None)
            results = [
                (request, result)
                for per in side.results.values()
                for request, result in per.items()
            ]
        else:
            results = self._unsent.pop(key, [])
        return ReplicaItem(
            kind=kind,
            id=id,
            snapshot=snapshot,
            origins=dict(side.origins),
            results=results,
            full=full,
            purged=self._purged.pop(key, []),
        )

    async def _flush_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._dirty:
                failed = await self._flush_once()
                if failed:
                    await asyncio.sleep(self.t.retry)

    async def _flush_once(self) -> bool:
        keys, self._dirty = self._dirty, set()
        commits, self._commits = self._commits, []
        done: set[Key] = set()
        batches: dict[str, tuple[list[ReplicaItem], list[Key]]] = {}
        # removals first: a key freed and taken again in one batch must not clash
        for key in sorted(keys, key=lambda k: k not in self._removed):
            node: str | None
            item: ReplicaItem | None
            if key in self._removed:
                node = self._removed.pop(key)
                item = ReplicaItem(kind=key[0], id=key[1], snapshot=None)
            elif self.table.has(*key):
                node = self.replica.get(key)
                item = self._item(key) if node and node != self.node else None
            else:  # moved away meanwhile: its new home replicates it
                node, item = None, None
            if node is None or node == self.node or item is None:
                done.add(key)
                continue
            items, ks = batches.setdefault(node, ([], []))
            items.append(item)
            ks.append(key)
        failed = False
        if batches:
            nodes = list(batches)
            outcomes = await asyncio.gather(
                *(
                    self._send(
                        n,
                        m.IpcReplicate(items=encode(batches[n][0])),
                        self.t.replicate_timeout,
                    )
                    for n in nodes
                ),
                return_exceptions=True,
            )
            self.stats["flushes"] += 1
            for n, outcome in zip(nodes, outcomes, strict=True):
                items, ks = batches[n]
                self.stats["items"] += len(items)
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, SsiError | OSError):
                        log.error("replication to %s failed", n, exc_info=outcome)
                    else:
                        log.warning("replication of %d objects to %s: %s", len(ks),
                                    n, outcome)  # fmt: skip
                    failed = True
                    for item, key in zip(items, ks, strict=True):
                        if item.snapshot is None:
                            self._removed.setdefault(key, n)
                        else:
                            self._full.add(key)
                        self._dirty.add(key)
                else:
                    done.update(ks)
        for ks2, fut in commits:
            ks2 -= done
            if not ks2:
                if not fut.done():
                    fut.set_result(None)
            else:
                self._commits.append((ks2, fut))
        return failed

    # ---- as a replica ------------------------------------------------------------

    def on_replicate(self, items: list[ReplicaItem]) -> None:
        """Apply a home's news to the copies; Conflict when a delta cannot apply
        (the home then sends the whole object)."""
        for it in items:
            key = (it.kind, it.id)
            if it.snapshot is None:
                self.copies.drop(it.kind, it.id)
                self.copy_sides.pop(key, None)
                continue
            try:
                self.copies.restore(it.snapshot)
            except ValueError as e:
                raise Conflict(f"replica of {it.kind.value} {it.id}: {e}") from None
            if it.full or key not in self.copy_sides:
                side = self.copy_sides[key] = Side()
            else:
                side = self.copy_sides[key]
            side.origins = dict(it.origins)
            for request, result in it.results:
                side.record(request, result)
            for client in it.purged:
                side.forget_client(client)

    # ---- moves -----------------------------------------------------------------

    def release(self, kind: Kind, id: int) -> Bundle:
        """Hand the object over (to the coordinator, for its new home); ops on it
        are answered `absent` from now on."""
        key = (kind, id)
        if not self.table.has(kind, id):
            raise NotFound(f"{kind.value} {id} is not homed on {self.node}")
        side = self.sides.pop(key)
        data = self.table.evict(kind, id)
        for request in side.origins:
            self._parked_at.pop(request, None)
        self.replica.pop(key, None)
        self._drop_tracking(key)
        return Bundle(kind=kind, id=id, snapshot=data, side=side)

    async def adopt(self, bundle: Bundle, replica: str | None) -> None:
        key = (bundle.kind, bundle.id)
        self.copies.drop(*key)
        self.copy_sides.pop(key, None)
        try:
            self.table.restore(bundle.snapshot)
        except ValueError as e:
            raise Conflict(f"cannot adopt {key[0].value} {key[1]}: {e}") from None
        self._install(key, bundle.side, replica)
        await self._commit([Ref(*key)])

    def _install(self, key: Key, side: Side, replica: str | None) -> None:
        self.sides[key] = side
        self.replica[key] = replica
        self._full.add(key)
        for request in side.origins:
            self._parked_at[request] = key
        for w in self.table.waiters():
            if w.id in side.origins:
                self._parked_at[w.id] = key

    async def promote(self, kind: Kind, id: int, replica: str | None) -> None:
        """The home of this copy is lost: serve it from here."""
        key = (kind, id)
        if self.table.has(kind, id):  # already ours (a repeated promote)
            await self.set_replica(kind, id, replica)
            return
        if key not in self.copy_sides:
            raise NotFound(f"no copy of {kind.value} {id} on {self.node}")
        data = self.copies.evict(kind, id)
        side = self.copy_sides.pop(key)
        try:
            self.table.restore(data)
        except ValueError as e:
            raise Conflict(f"cannot promote {kind.value} {id}: {e}") from None
        self._install(key, side, replica)
        log.info("op=ipc.promote %s %d: homed on %s now", kind.value, id, self.node)
        await self._commit([Ref(*key)])

    async def set_replica(self, kind: Kind, id: int, replica: str | None) -> None:
        key = (kind, id)
        if not self.table.has(kind, id):
            raise NotFound(f"{kind.value} {id} is not homed on {self.node}")
        self.replica[key] = replica
        self._full.add(key)
        self._shm_sent.pop(key, None)
        await self._commit([Ref(*key)])

    def drop(self, kind: Kind, id: int, *, home: bool, replica: bool) -> None:
        key = (kind, id)
        if home and self.table.has(kind, id):
            self.release(kind, id)
        if replica:
            self.copies.drop(kind, id)
            self.copy_sides.pop(key, None)

    def held(self) -> dict[str, list[list[Any]]]:
        return {
            "homes": [[k.value, i] for k, i in self.sides],
            "copies": [[k.value, i] for k, i in self.copy_sides],
        }

    def objects(self) -> list[ObjectInfo]:
        return self.table.objects()
