"""The coordinator role: authoritative membership, join tokens, drain/resume/evict.

One ssid at a time holds it. Its handlers serve requests that agents forward (with the
caller's uid) and requests agents make for themselves (join, hello, heartbeat).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import zmq.utils.z85

from ssi.cluster import tokens
from ssi.cluster.checkpoints import Checkpoints
from ssi.cluster.events import NodeEvent, NodeEventKind, NodeEvents
from ssi.cluster.jobs import JobManager
from ssi.cluster.membership import Membership
from ssi.cluster.migrations import Migrations
from ssi.cluster.peers import Peers
from ssi.cluster.store import NodeRecord, NodeState, StateStore
from ssi.config import Config
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Conflict, Denied, NotFound

log = logging.getLogger(__name__)


def z85_key(key: bytes | str) -> str:
    """Peers' keys arrive raw (32 bytes) or z85 (40 chars); the store keeps z85."""
    if isinstance(key, str):
        return key
    return zmq.utils.z85.encode(key).decode() if len(key) == 32 else key.decode()


@dataclass(frozen=True, slots=True)
class Welcome:
    """What a node learns when it joins or says hello."""

    cluster: str
    coordinator: str
    coordinator_address: str
    coordinator_port: int  # the cluster port (joins use the port after it)
    coordinator_key: str
    heartbeat_interval: float
    heartbeat_timeout: float
    revision: int
    boot: str = ""  # the coordinator's run (agents reconcile when it changes)


class Coordinator:
    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        events: NodeEvents,
        peers: Peers,
        *,
        self_key: str,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.events = events
        self.self_key = self_key
        self.membership = Membership(cfg.cluster.heartbeat_timeout)
        self._keys: set[str] = set()
        self._boots: dict[str, str] = {}  # node -> its ssid's run, from its hello
        self.boot = uuid.uuid4().hex  # this run: agents reconcile when it changes
        self._task: asyncio.Task[None] | None = None
        self.peers = peers
        self.jobs = JobManager(cfg, store, events, peers)
        self.checkpoints = Checkpoints(self.jobs, events)
        self.migrations = Migrations(self.jobs, events)
        self.handlers = {
            **self._handlers(),
            **self.jobs.handlers(),
            **self.checkpoints.handlers(),
            **self.migrations.handlers(),
        }
        assert set(self.handlers) == self.OPS

    # --- life cycle -------------------------------------------------------------------

    @property
    def cluster(self) -> str:
        return self.store.meta("cluster") or ""

    def start(self) -> None:
        now = time.monotonic()
        # After a restart every member gets a full timeout to be heard again.
        for rec in self.store.nodes():
            self.jobs.scheduling.node_seen(rec)
            if rec.state is not NodeState.LOST:
                self.membership.watch(rec.name, now)
        self._refresh_keys()
        self._task = asyncio.get_running_loop().create_task(self._watch_heartbeats())
        self.jobs.start()
        self.checkpoints.start()
        self.migrations.start()

    async def close(self) -> None:
        await self.jobs.close()
        self.peers.close()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def key_allowed(self, key: bytes | str) -> bool:
        return z85_key(key) in self._keys

    def _refresh_keys(self) -> None:
        self._keys = {r.public_key for r in self.store.nodes()}
        self._members_tag = hashlib.sha256(
            "".join(sorted(self._keys)).encode()
        ).hexdigest()

    NODE_HANDLERS: ClassVar[dict[str, str]] = {
        m.NodeJoin.op: "on_join",
        m.NodeHello.op: "on_hello",
        m.Heartbeat.op: "on_heartbeat",
        m.NodeList.op: "on_list",
        m.NodeShow.op: "on_show",
        m.NodeToken.op: "on_token",
        m.NodeDrain.op: "on_drain",
        m.NodeResume.op: "on_resume",
        m.NodeEvict.op: "on_evict",
        m.ClusterStatus.op: "on_status",
    }
    OPS = frozenset(NODE_HANDLERS) | JobManager.OPS | Checkpoints.OPS | Migrations.OPS

    def _handlers(self) -> Mapping[str, Any]:
        return {op: getattr(self, name) for op, name in self.NODE_HANDLERS.items()}

    def welcome(self) -> Welcome:
        c = self.cfg.cluster
        me = self._node(self.cfg.node.name)
        return Welcome(
            self.cluster,
            me.name,
            me.address,
            me.port,
            self.self_key,
            c.heartbeat_interval,
            c.heartbeat_timeout,
            self.store.revision(),
            self.boot,
        )

    # --- membership -------------------------------------------------------------------

    def _put(self, rec: NodeRecord, **kw: Any) -> NodeRecord:
        """Every node change goes to the store, then to the scheduler's view."""
        rec = self.store.put_node(rec, **kw)
        self.jobs.scheduling.node_seen(rec)
        return rec

    def register_self(self, address: str, port: int, resources: dict[str, Any]) -> None:
        """The coordinator's own node is a member like any other."""
        rec = self.store.node(self.cfg.node.name)
        rec = NodeRecord(
            self.cfg.node.name,
            self.self_key,
            address,
            port,
            joined_at=rec.joined_at if rec else time.time(),
            resources=resources,
        )
        self._put(rec)
        self.membership.watch(rec.name, time.monotonic())
        self._refresh_keys()

    async def on_join(self, env: m.Envelope, peer: Any) -> Welcome:
        body = env.body
        assert isinstance(body, m.NodeJoin)
        token = tokens.decode(body.token)
        if token.cluster != self.cluster:
            raise Denied(
                f"this token is for cluster {token.cluster!r}, not {self.cluster!r}"
            )
        key = z85_key(peer.public_key)
        existing = self.store.node(body.name)
        if existing is not None and existing.public_key != key:
            raise Conflict(f"node name {body.name!r} is already in use by another node")
        verdict = self.store.use_token(token.digest, time.time())
        if verdict != "ok":
            raise Denied(f"join token refused: {verdict}")
        other = self.store.node_by_key(key)
        if other is not None and other.name != body.name:
            raise Conflict(f"this node's key already belongs to node {other.name!r}")
        rec = NodeRecord(
            body.name, key, body.address, body.port, resources=body.resources
        )
        self._put(rec)
        self._refresh_keys()
        self.membership.watch(rec.name, time.monotonic())
        await self.events.emit(NodeEvent(NodeEventKind.ADDED, rec.name, env.id))
        return self.welcome()

    def _member(self, peer: Any, name: str | None = None) -> NodeRecord:
        rec = self.store.node_by_key(z85_key(peer.public_key))
        if rec is None:
            raise NotFound("this node is not a member of the cluster (evicted?)")
        if name is not None and rec.name != name:
            raise Denied(f"this key belongs to node {rec.name!r}, not {name!r}")
        return rec

    async def on_hello(self, env: m.Envelope, peer: Any) -> Welcome:
        body = env.body
        assert isinstance(body, m.NodeHello)
        rec = self._member(peer, body.name)
        returned = rec.state is NodeState.LOST
        last_boot = self._boots.get(rec.name)
        self._boots[rec.name] = body.boot
        if last_boot is not None and last_boot != body.boot:
            # Its ssid restarted: what we were waiting for from it will never come.
            self.migrations.node_restarted(rec.name)
        rec = self._put(
            NodeRecord(
                rec.name,
                rec.public_key,
                body.address,
                body.port,
                NodeState.ONLINE if returned else rec.state,
                "" if returned else rec.reason,
                rec.joined_at,
                time.time(),
                body.resources,
            )
        )
        self.membership.watch(rec.name, time.monotonic())
        if returned:
            await self.events.emit(NodeEvent(NodeEventKind.RETURNED, rec.name, env.id))
        return self.welcome()

    async def on_heartbeat(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.Heartbeat)
        rec = self._member(peer, body.name)
        self.jobs.scheduling.node_seen(rec, body.report)
        self.jobs.on_heartbeat_jobs(rec.name, body.jobs, body.load)
        if (
            self.membership.heard(rec.name, time.monotonic())
            or rec.state is NodeState.LOST
        ):
            self._put(rec.with_state(NodeState.ONLINE))
            await self.events.emit(NodeEvent(NodeEventKind.RETURNED, rec.name, env.id))
        # Agents refetch the member list (their peers' keys) when this tag changes,
        # and reconcile their jobs when the boot does (moves we drove are over).
        return {"members": self._members_tag, "boot": self.boot}

    async def _watch_heartbeats(self) -> None:
        period = min(1.0, self.cfg.cluster.heartbeat_timeout / 4)
        while True:
            await asyncio.sleep(period)
            for name in self.membership.tick(time.monotonic()):
                rec = self.store.node(name)
                if rec is None or name == self.cfg.node.name:
                    continue
                why = f"no heartbeat for {self.cfg.cluster.heartbeat_timeout:g}s"
                self._put(rec.with_state(NodeState.LOST, why))
                await self.events.emit(NodeEvent(NodeEventKind.LOST, name, why))

    # --- admin and read verbs ---

    def view(self, rec: NodeRecord) -> dict[str, Any]:
        out = asdict(rec)
        heard = self.membership.last_heard.get(rec.name)
        out["last_heard_ago"] = None if heard is None else time.monotonic() - heard
        out["load"] = self.jobs.load.get(rec.name, {})
        out["coordinator"] = rec.name == self.cfg.node.name
        return out

    def _node(self, name: str) -> NodeRecord:
        rec = self.store.node(name)
        if rec is None:
            raise NotFound(f"no node named {name!r} (see `ssi node list`)")
        return rec

    async def on_list(self, env: m.Envelope, peer: Any) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.store.nodes()]

    async def on_show(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.NodeShow)
        return self.view(self._node(body.name))

    async def on_status(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        nodes = self.store.nodes()
        counts: dict[str, int] = {}
        for r in nodes:
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return {
            "cluster": self.cluster,
            "coordinator": self.cfg.node.name,
            "revision": self.store.revision(),
            "nodes": len(nodes),
            "states": counts,
        }

    async def on_token(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.NodeToken)
        ttl = body.ttl if body.ttl is not None else self.cfg.cluster.token_ttl
        if not 0 < ttl <= 30 * 86400:
            raise BadRequest("token lifetime must be between 0 and 30 days")
        me = self._node(self.cfg.node.name)
        token = tokens.new_token(self.cluster, me.address, me.port + 1, self.self_key)
        self.store.add_token(token.digest, time.time() + ttl)
        return {
            "token": token.encode(),
            "expires_in": ttl,
            "coordinator_key": self.self_key,
        }

    async def on_drain(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.NodeDrain)
        rec = self._node(body.name)
        if rec.state is not NodeState.DRAINING:
            rec = self._put(rec.with_state(NodeState.DRAINING, body.reason))
            await self.events.emit(NodeEvent(NodeEventKind.DRAINING, rec.name, env.id))
        return self.view(rec)

    async def on_resume(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.NodeResume)
        rec = self._node(body.name)
        if rec.state is NodeState.LOST:
            raise Conflict(
                f"node {rec.name} is lost; it comes back by itself when heard"
            )
        if rec.state is not NodeState.ONLINE:
            rec = self._put(rec.with_state(NodeState.ONLINE))
            await self.events.emit(NodeEvent(NodeEventKind.RESUMED, rec.name, env.id))
        return self.view(rec)

    async def on_evict(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.NodeEvict)
        rec = self._node(body.name)
        if rec.name == self.cfg.node.name:
            raise Conflict(
                f"{rec.name} holds the coordinator role and cannot be evicted"
            )
        # Drained first (nothing new lands there), then emptied, then removed.
        rec = self._put(rec.with_state(NodeState.EVICTING, f"evicting ({env.id})"))
        await self.events.emit(NodeEvent(NodeEventKind.DRAINING, rec.name, env.id))
        moves = await self.migrations.evacuate(rec.name, cause=env.id)
        stuck = [mv for mv in moves if mv["how"] == "failed"]
        if stuck and not body.force:
            self._put(
                rec.with_state(NodeState.DRAINING, "eviction stopped: jobs stuck")
            )
            raise Conflict(
                f"{rec.name} is drained but jobs could not move: "
                + "; ".join(f"job {mv['job']}: {mv['error']}" for mv in stuck)
                + " (--force evicts anyway: they restart from checkpoints, or fail)"
            )
        self._put(rec.with_state(NodeState.EVICTING, f"evicted ({env.id})"))
        self.store.delete_node(rec.name)  # revokes its key: it gets nothing through
        self._refresh_keys()
        self.membership.forget(rec.name)
        self.jobs.load.pop(rec.name, None)
        await self.events.emit(NodeEvent(NodeEventKind.EVICTED, rec.name, env.id))
        return {"evicted": rec.name, "moved": moves}
