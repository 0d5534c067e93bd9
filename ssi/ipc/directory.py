"""The coordinator's directory of cluster IPC objects: where each lives.

    (kind, id) -> Entry(key, home, replica)      persisted in the StateStore's meta
    (kind, key) -> id                            ("ipc.directory", one JSON document)

It answers gets by key (forwarding them to the key's home, or creating the object on
the caller's node, with an id it reserves: ids are unique cluster-wide and never
reused), and where an id lives. It keeps every object on a home and a replica, both
on online nodes, through the node events:

    draining / evicted node: its objects move (release at the old home, adopt at
        the new one, waiters and results included); copies it held are re-made
    lost node: the replica of each object it homed is promoted; objects it was the
        replica of get a new one
    returned node / restarted service (IpcHello): it forgets what lives elsewhere
        now; objects whose home lost them come back from their replicas

One lock orders every change of the directory (gets that may create, moves,
promotions, removals); ops on existing objects never come here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ssi.cluster.events import NodeEvent, NodeEventKind
from ssi.cluster.store import NodeState, StateStore
from ssi.ipc.constants import IPC_CREAT, IPC_PRIVATE, Kind
from ssi.ipc.remote import (
    Answer,
    Result,
    decode_answer,
    decode_op,
    encode,
    get_kind,
)
from ssi.proto import messages as m
from ssi.proto.errors import NotFound, SsiError

__all__ = ["Directory", "Entry"]

log = logging.getLogger(__name__)

META_KEY = "ipc.directory"
IDS_KEY = "ipc.ids"
ID_BLOCK = 4096  # ids reserved per store write
CallNode = Callable[[str, m.Request[Any], float], Awaitable[Any]]


class Entry(msgspec.Struct, kw_only=True):
    kind: Kind
    id: int
    key: int
    home: str
    replica: str | None = None


class Directory:
    def __init__(self, store: StateStore, call_node: CallNode, timeout: float = 5.0):
        self.store = store
        self.call_node = call_node
        self.timeout = timeout
        self.lock = asyncio.Lock()
        self.entries: dict[tuple[Kind, int], Entry] = {}
        self.keys: dict[tuple[Kind, int], int] = {}
        raw = store.meta(META_KEY)
        if raw:
            for e in msgspec.json.decode(raw, type=list[Entry]):
                self._index(e)
        ids = json.loads(store.meta(IDS_KEY) or "{}")
        # restart at the end of the last reserved block: ids are never reused
        self._next = {k: int(ids.get(k.value, 0)) for k in Kind}
        self._end = dict(self._next)

    # ---- bookkeeping -----------------------------------------------------------------

    def _index(self, e: Entry) -> None:
        self.entries[(e.kind, e.id)] = e
        if e.key != IPC_PRIVATE:
            self.keys[(e.kind, e.key)] = e.id

    def _unindex(self, e: Entry) -> None:
        self.entries.pop((e.kind, e.id), None)
        if self.keys.get((e.kind, e.key)) == e.id:
            del self.keys[(e.kind, e.key)]

    def _save(self) -> None:
        data = msgspec.json.encode(list(self.entries.values())).decode()
        self.store.set_meta(META_KEY, data)

    def _reserve(self, kind: Kind) -> int:
        value = self._next[kind]
        if value >= self._end[kind]:
            self._end[kind] = value + ID_BLOCK
            self.store.set_meta(
                IDS_KEY, json.dumps({k.value: self._end[k] for k in Kind})
            )
        self._next[kind] = value + 1
        return value

    def _online(self) -> list[str]:
        return [r.name for r in self.store.nodes() if r.state is NodeState.ONLINE]

    def _load(self, field: str) -> dict[str, int]:
        counts = dict.fromkeys(self._online(), 0)
        for e in self.entries.values():
            name = getattr(e, field)
            if name in counts:
                counts[name] += 1
        return counts

    def _pick_home(self, preferred: str, avoid: tuple[str | None, ...] = ()) -> str:
        online = [n for n in self._online() if n not in avoid]
        if preferred in online:
            return preferred
        if not online:
            raise NotFound("no online node can home an IPC object")
        load = self._load("home")
        return min(online, key=lambda n: (load.get(n, 0), n))

    def _pick_replica(
        self,
        home: str,
        preferred: str | None = None,
        avoid: tuple[str | None, ...] = (),
    ) -> str | None:
        online = [n for n in self._online() if n != home and n not in avoid]
        if preferred in online:
            return preferred
        if not online:
            return None  # a lone node: nothing to replicate to
        load = self._load("replica")
        return min(online, key=lambda n: (load.get(n, 0), n))

    def where(self, kind: Kind, id: int) -> Entry | None:
        return self.entries.get((kind, id))

    def listing(self) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(e) for e in self.entries.values()]

    # ---- requests --------------------------------------------------------------------

    async def get(self, body: m.IpcGet) -> bytes:
        op = decode_op(body.operation)
        kind = get_kind(op)
        if kind is None:
            raise NotFound(f"{type(op).__name__} is not a get")
        key: int = op.key  # type: ignore[attr-defined]
        flags: int = op.flags  # type: ignore[attr-defined]
        async with self.lock:
            held = None if key == IPC_PRIVATE else self.keys.get((kind, key))
            entry = None if held is None else self.entries.get((kind, held))
            creates = key == IPC_PRIVATE or bool(flags & IPC_CREAT)
            if entry is None and not creates:
                return encode(Answer("done", Result(errno=2)))  # ENOENT
            reserve = self._reserve(kind) if creates else None
            if entry is not None:
                home, replica = entry.home, entry.replica
            else:
                home = self._pick_home(body.origin)
                replica = self._pick_replica(home)
            apply = m.IpcApply(
                operation=body.operation,
                caller=body.caller,
                request=body.request,
                origin=body.origin,
                reserve=reserve,
                replica=replica,
            )
            try:
                answer = decode_answer(await self.call_node(home, apply, self.timeout))
            except SsiError as e:
                log.info("op=ipc.get %s key %d: home %s: %s", kind.value, key, home, e)
                return encode(Answer("absent"))
            result = answer.result
            if answer.state == "done" and result is not None and not result.errno:
                id = int(msgspec.msgpack.decode(result.value))
                if id == reserve:  # created
                    if entry is not None:  # the old one is gone from its home
                        self._unindex(entry)
                    self._index(
                        Entry(kind=kind, id=id, key=key, home=home, replica=replica)
                    )
                    self._save()
                    log.info("op=ipc.create %s id=%d key=%d home=%s replica=%s",
                             kind.value, id, key, home, replica)  # fmt: skip
                answer = Answer("done", result, home=home)
            return encode(answer)

    async def gone(self, kind: Kind, id: int, home: str) -> None:
        async with self.lock:
            entry = self.entries.get((kind, id))
            if entry is not None and entry.home == home:
                self._unindex(entry)
                self._save()
                log.info("op=ipc.removed %s id=%d", kind.value, id)

    async def move(self, kind: Kind, id: int, to: str = "") -> Entry:
        async with self.lock:
            entry = self.entries.get((kind, id))
            if entry is None:
                raise NotFound(f"no {kind.value} object with id {id}")
            await self._move(entry, to, avoid=())
            return entry

    # ---- the work ------------------------------------------------------------------

    async def _move(self, entry: Entry, to: str, avoid: tuple[str, ...]) -> None:
        """Release at the old home, adopt at the new; falls back to promoting the
        replica when the old home cannot hand it over."""
        old_home, old_replica = entry.home, entry.replica
        bad = (old_home, *avoid)
        new_home = to or self._pick_home(
            old_replica if old_replica and old_replica not in bad else "", bad
        )
        new_replica = self._pick_replica(new_home, old_replica, avoid=bad)
        kind, id = entry.kind, entry.id
        try:
            bundle = await self.call_node(
                old_home, m.IpcRelease(kind=kind.value, id=id), self.timeout
            )
        except SsiError as e:
            log.warning("op=ipc.move %s %d: %s cannot release it (%s): promoting "
                        "its replica", kind.value, id, old_home, e)  # fmt: skip
            await self._recover(entry, lost=old_home)
            return
        for home in (new_home, old_home):
            try:
                await self.call_node(
                    home, m.IpcAdopt(bundle=bundle, replica=new_replica), self.timeout
                )
            except SsiError as e:
                log.error("op=ipc.move %s %d: %s cannot adopt it: %s", kind.value, id,
                          home, e)  # fmt: skip
                continue
            entry.home, entry.replica = home, new_replica
            self._save()
            log.info("op=ipc.move %s %d: %s -> %s (replica %s)", kind.value, id,
                     old_home, home, new_replica)  # fmt: skip
            if old_replica and old_replica not in (home, new_replica):
                await self._drop(old_replica, entry, home=False)
            return
        log.error("op=ipc.move %s %d: nobody adopted it: lost", kind.value, id)
        self._unindex(entry)
        self._save()

    async def _recover(self, entry: Entry, lost: str) -> None:
        """The home of `entry` is gone: promote its replica."""
        kind, id = entry.kind, entry.id
        replica = entry.replica
        if not replica or replica == lost or replica not in self._online():
            log.error("op=ipc.recover %s %d: home %s lost and no live replica: the "
                      "object is lost", kind.value, id, lost)  # fmt: skip
            self._unindex(entry)
            self._save()
            return
        new_replica = self._pick_replica(replica, avoid=(lost,))
        try:
            await self.call_node(
                replica,
                m.IpcPromote(kind=kind.value, id=id, replica=new_replica),
                self.timeout,
            )
        except SsiError as e:
            log.error("op=ipc.recover %s %d: promotion on %s failed: %s", kind.value,
                      id, replica, e)  # fmt: skip
            return
        entry.home, entry.replica = replica, new_replica
        self._save()
        log.info("op=ipc.recover %s %d: home %s lost, now %s (replica %s)",
                 kind.value, id, lost, replica, new_replica)  # fmt: skip

    async def _rereplicate(self, entry: Entry, avoid: tuple[str, ...]) -> None:
        new_replica = self._pick_replica(entry.home, avoid=avoid)
        body = m.IpcSetReplica(kind=entry.kind.value, id=entry.id, replica=new_replica)
        try:
            await self.call_node(entry.home, body, self.timeout)
        except SsiError as e:
            log.warning("op=ipc.replica %s %d: %s: %s", entry.kind.value, entry.id,
                        entry.home, e)  # fmt: skip
            return
        old, entry.replica = entry.replica, new_replica
        self._save()
        if old and old != new_replica and old in self._online():
            await self._drop(old, entry, home=False)

    async def _drop(self, node: str, entry: Entry, *, home: bool) -> None:
        try:
            await self.call_node(
                node,
                m.IpcDrop(kind=entry.kind.value, id=entry.id, home=home, replica=True),
                self.timeout,
            )
        except SsiError as e:
            log.info("op=ipc.drop %s %d on %s: %s", entry.kind.value, entry.id, node, e)

    async def on_event(self, event: NodeEvent) -> None:
        node = event.node
        if event.kind in (NodeEventKind.DRAINING, NodeEventKind.EVICTED):
            async with self.lock:
                for entry in list(self.entries.values()):
                    if entry.home == node:
                        await self._move(entry, "", avoid=(node,))
                    elif entry.replica == node:
                        await self._rereplicate(entry, avoid=(node,))
        elif event.kind is NodeEventKind.LOST:
            async with self.lock:
                for entry in list(self.entries.values()):
                    if entry.home == node:
                        await self._recover(entry, lost=node)
                    elif entry.replica == node:
                        await self._rereplicate(entry, avoid=(node,))
        elif event.kind is NodeEventKind.RETURNED:
            await self.reconcile(node)

    async def reconcile(self, node: str) -> None:
        """Make what `node` holds agree with the directory: it forgets objects and
        copies that live elsewhere now; objects it should home but lost (a restarted
        ssid) come back from their replicas; copies it lost are sent again. What it
        holds is read under the lock, so no creation or move is half-seen."""
        async with self.lock:
            try:
                held = await self.call_node(node, m.IpcHomeList(), self.timeout)
            except SsiError as e:
                log.info("op=ipc.reconcile %s: %s", node, e)
                return
            homes = {(Kind(k), int(i)) for k, i in held["homes"]}
            copies = {(Kind(k), int(i)) for k, i in held["copies"]}
            for key in homes | copies:
                entry = self.entries.get(key)
                as_home = key in homes and (entry is None or entry.home != node)
                as_copy = key in copies and (entry is None or entry.replica != node)
                if not (as_home or as_copy):
                    continue
                log.info("op=ipc.reconcile %s forgets %s %d (home %s, copy %s)",
                         node, key[0].value, key[1], as_home, as_copy)  # fmt: skip
                drop = m.IpcDrop(
                    kind=key[0].value, id=key[1], home=as_home, replica=as_copy
                )
                try:
                    await self.call_node(node, drop, self.timeout)
                except SsiError as e:
                    log.info("op=ipc.drop %s %d on %s: %s", key[0].value, key[1],
                             node, e)  # fmt: skip
            for entry in list(self.entries.values()):
                key = (entry.kind, entry.id)
                if entry.home == node and key not in homes:
                    await self._recover(entry, lost=node)
                elif entry.replica == node and key not in copies:
                    await self._rereplicate(entry, avoid=())
