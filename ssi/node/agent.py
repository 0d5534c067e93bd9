"""The agent every ssid runs: answers local clients, joins and says hello to the
coordinator, sends heartbeats, and holds the coordinator role when this node has it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq.asyncio

import ssi
from schedulers.probes.sampler import NodeSampler
from ssi.auth import is_admin
from ssi.cluster import tokens
from ssi.cluster.coordinator import Coordinator, Welcome, z85_key
from ssi.cluster.events import NodeEvents
from ssi.cluster.peers import Peers
from ssi.cluster.store import SqliteStore
from ssi.config import Config
from ssi.ipc.service import IpcService
from ssi.node.executor import Executor
from ssi.node.membership_file import MembershipFile, Role
from ssi.node.service import Service
from ssi.proto import messages as m
from ssi.proto.errors import Conflict, Denied, NoReply, NotFound, SsiError, Unavailable
from ssi.rpc.keys import KeyPair
from ssi.rpc.zmq_rpc import RpcClient

log = logging.getLogger(__name__)

ADMIN_OPS = {
    m.PolicySet.op,
    m.ClusterInit.op,
    m.ClusterJoin.op,
    m.NodeToken.op,
    m.NodeDrain.op,
    m.NodeResume.op,
    m.NodeEvict.op,
}
# Everything the coordinator serves to users goes there with the caller's uid, except
# what agents alone say (join, hello, heartbeats, job ends).
FORWARDED_OPS = Coordinator.OPS - {
    m.NodeJoin.op,
    m.NodeHello.op,
    m.Heartbeat.op,
    m.JobEnded.op,
    m.JobsHere.op,
    m.MigrationPhase.op,
    m.ClusterStatus.op,
}


def node_resources() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count() or 1,
        "memory": psutil.virtual_memory().total,
        "ssi_version": ssi.__version__,
    }


def node_load() -> dict[str, float]:
    load1, _, _ = os.getloadavg()
    return {"load1": load1, "mem_used": psutil.virtual_memory().percent / 100}


class Agent:
    def __init__(
        self, cfg: Config, keypair: KeyPair, ctx: zmq.asyncio.Context, address: str
    ) -> None:
        self.cfg = cfg
        self.keypair = keypair
        self.ctx = ctx
        self.address = address
        self.state_dir = Path(cfg.node.state_dir)
        self.events = NodeEvents()
        self.membership = MembershipFile.load(self.state_dir)
        self.coordinator: Coordinator | None = None
        self.coord: RpcClient | None = None
        self.connected = False  # the coordinator has welcomed us since start
        self.boot = uuid.uuid4().hex  # this run of ssid, as the coordinator knows it
        self._coordinator_boot: str | None = None  # its run, from hello and heartbeats
        self.member_keys: set[str] = set()
        if self.membership is not None and self.membership.role is Role.COORDINATOR:
            # Members reconnect the moment our cluster socket listens, before
            # start() makes the coordinator: know their keys from its store now.
            with contextlib.closing(self._cluster_store()) as store:
                self.member_keys = {n.public_key for n in store.nodes()}
        self.sampler = NodeSampler.default()
        self._members_tag: str | None = None  # the coordinator's, last seen
        # Services other nodes and jobs use through this node (see ssi/node/service.py).
        self.services: list[Service] = []
        self.executor = Executor(
            cfg,
            keypair,
            self.call_coordinator,
            self.member_key_allowed,
            self.job_env,
            address=address,
        )
        self.executor.dump_hooks = self.services  # told before and after every dump
        self.services.append(IpcService(self))
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False  # start() done: Pong says so

    @property
    def name(self) -> str:
        return self.cfg.node.name

    @property
    def public_key(self) -> str:
        return z85_key(self.keypair.public)

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.executor.start()
        for service in self.services:
            await service.start()
        if self.membership is None:
            log.info(
                "not in a cluster yet: `ssi cluster init` or `ssi node join TOKEN`"
            )
        else:
            if self.membership.role is Role.COORDINATOR:
                self._start_coordinator(self.membership.cluster)
            self._connect(self.membership)
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._stay_in_touch())
            )
        self.ready = True

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.coord:
            self.coord.close()
        if self.coordinator:
            await self.coordinator.close()
            self.coordinator.store.close()
        for service in self.services:
            await service.close()
        await self.executor.close()

    def _start_coordinator(self, cluster: str) -> Coordinator:
        store = self._cluster_store()
        if store.meta("cluster") is None:
            store.set_meta("cluster", cluster)
        peers = Peers(self.ctx, self.keypair, sender=self.name)
        self.coordinator = Coordinator(
            self.cfg, store, self.events, peers, self_key=self.public_key
        )
        self.coordinator.register_self(
            self.address, self.cfg.node.port, node_resources()
        )
        self.coordinator.start()
        return self.coordinator

    def _cluster_store(self) -> SqliteStore:
        return SqliteStore(self.state_dir / "cluster.db")

    def _connect(self, mf: MembershipFile) -> None:
        endpoint = f"tcp://{mf.coordinator_address}:{mf.coordinator_port}"
        self.coord = RpcClient(
            self.ctx,
            endpoint,
            mf.coordinator_key.encode(),
            self.keypair,
            sender=self.name,
        )

    def key_allowed(self, key: bytes | str) -> bool:
        """Who may reach this node's cluster socket: members (agent.* ops are for
        the coordinator's key only: see the daemon's handler table)."""
        return self.member_key_allowed(key)

    # --- talking to the coordinator ---------------------------------------------------

    async def _call(
        self, body: m.Request, timeout: float | None = None, **kw: Any
    ) -> Any:
        if self.coord is None:
            raise Unavailable(
                f"node {self.name} is not in a cluster: `ssi cluster init NAME` makes "
                "one, "
                "`ssi node join TOKEN` joins one"
            )
        try:
            return await self.coord.call(body, timeout=timeout or 10.0, **kw)
        except NoReply:
            assert self.membership is not None
            raise Unavailable(
                f"the coordinator ({self.membership.coordinator} at "
                f"{self.membership.coordinator_address}:"
                f"{self.membership.coordinator_port}) "
                "did not answer"
            ) from None

    async def _stay_in_touch(self) -> None:
        """Hello until welcomed, then heartbeats; an evicted node leaves."""
        interval = self.cfg.cluster.heartbeat_interval
        seq = 0
        while True:
            try:
                if not self.connected:
                    hello = m.NodeHello(
                        name=self.name,
                        address=self.address,
                        port=self.cfg.node.port,
                        resources=node_resources(),
                        boot=self.boot,
                    )
                    welcome = await self._call(hello, timeout=max(2.0, interval * 2))
                    # Known from here: a restart before our first heartbeat counts.
                    self._coordinator_boot = welcome.get("boot")
                    self.connected = True
                    log.info(
                        "welcomed by the coordinator of %s",
                        self.membership and self.membership.cluster,
                    )
                    await self.executor.reconcile()
                else:
                    seq += 1
                    jobs = await asyncio.to_thread(self.executor.live_stats)
                    report = await asyncio.to_thread(self.sampler.sample, time.time())
                    hb = m.Heartbeat(
                        name=self.name,
                        seq=seq,
                        load=node_load(),
                        jobs=jobs,
                        report=report,
                    )
                    reply = await self._call(hb, timeout=max(2.0, interval * 2))
                    if reply.get("members") != self._members_tag:
                        await self._refresh_members(reply.get("members"))
                    boot, last = reply.get("boot"), self._coordinator_boot
                    self._coordinator_boot = boot
                    if last is not None and boot != last:
                        # A new coordinator run, heard without a miss: what it
                        # forgot (a move under way) is ours to settle.
                        await self.executor.reconcile()
            except NotFound as e:
                log.warning("the cluster no longer knows this node (%s): leaving it", e)
                self._leave()
                return
            except SsiError as e:
                log.warning("coordinator unreachable: %s", e)
                self.connected = False
            await asyncio.sleep(interval)

    async def _refresh_members(self, tag: str | None) -> None:
        """Learn the keys of the other members (they fetch and push checkpoints)."""
        nodes = await self._call(m.NodeList())
        self.member_keys = {n["public_key"] for n in nodes}
        self._members_tag = tag

    def member_key_allowed(self, key: bytes | str) -> bool:
        """Members of the cluster: they fetch and push checkpoints here, and reach
        this node's services."""
        if self.coordinator is not None:
            return self.coordinator.key_allowed(key)
        mf = self.membership
        return z85_key(key) in self.member_keys or (
            mf is not None and z85_key(key) == mf.coordinator_key
        )

    def job_env(self, spec: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for service in self.services:
            env.update(service.job_env(spec))
        return env

    async def call_coordinator(
        self, body: m.Request[Any], timeout: float = 30.0
    ) -> Any:
        return await self._call(body, timeout)

    def _leave(self) -> None:
        MembershipFile.remove(self.state_dir)
        self.membership = None
        self.connected = False
        if self.coord:
            self.coord.close()
            self.coord = None

    # --- local clients ----------------------------------------------------------------

    def local_handlers(self) -> Mapping[str, Any]:
        handlers: dict[str, Any] = {op: self._forward for op in FORWARDED_OPS}
        for service in self.services:
            handlers.update(service.local_handlers())
        handlers.update(
            {
                m.Ping.op: self.on_ping,
                m.ClusterInit.op: self.on_init,
                m.ClusterJoin.op: self.on_join,
                m.ClusterStatus.op: self.on_status,
            }
        )
        return {op: self._authorized(op, h) for op, h in handlers.items()}

    def _authorized(self, op: str, handler: Any) -> Any:
        async def guarded(env: m.Envelope, peer: Any) -> Any:
            if op in ADMIN_OPS and not is_admin(
                peer.uid, peer.gid, self.cfg.cluster.admin_group
            ):
                group = self.cfg.cluster.admin_group
                who = "root" + (f" or members of group {group!r}" if group else "")
                raise Denied(f"{op} is an admin verb: only {who} may use it")
            return await handler(env, peer)

        return guarded

    async def _forward(self, env: m.Envelope, peer: Any) -> Any:
        timeout = None
        if env.deadline is not None:
            timeout = max(0.1, env.deadline - time.time())
        return await self._call(
            env.body, timeout, uid=peer.uid, gid=peer.gid, cause=env.id
        )

    async def on_ping(self, env: m.Envelope, peer: Any) -> m.Pong:
        return m.Pong(
            node=self.name, version=ssi.__version__, time=time.time(), ready=self.ready
        )

    async def on_status(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        local = {
            "node": self.name,
            "address": self.address,
            "role": self.membership.role.value if self.membership else "none",
            "connected": self.connected,
            "key": self.public_key,
        }
        if self.membership is None:
            return {"cluster": None, "this_node": local}
        try:
            status: dict[str, Any] = await self._call(
                env.body, timeout=5.0, uid=peer.uid, gid=peer.gid
            )
        except Unavailable as e:  # still worth telling what this node knows
            mf = self.membership
            return {
                "cluster": mf.cluster,
                "coordinator": mf.coordinator,
                "unreachable": str(e),
                "this_node": local,
            }
        return {**status, "this_node": local}

    async def on_init(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.ClusterInit)
        self._refuse_if_member()
        coordinator = self._start_coordinator(body.name)
        welcome = coordinator.welcome()
        self._adopt(welcome, Role.COORDINATOR)
        log.info("formed cluster %s with this node as coordinator", body.name)
        return asdict(welcome)

    async def on_join(self, env: m.Envelope, peer: Any) -> dict[str, Any]:
        body = env.body
        assert isinstance(body, m.ClusterJoin)
        self._refuse_if_member()
        token = tokens.decode(body.token)
        client = RpcClient(
            self.ctx,
            f"tcp://{token.address}:{token.port}",
            token.key.encode(),
            self.keypair,
        )
        try:
            join = m.NodeJoin(
                token=body.token,
                name=self.name,
                address=self.address,
                port=self.cfg.node.port,
                resources=node_resources(),
            )
            value = await client.call(join, timeout=10.0, cause=env.id)
        except NoReply:
            raise Unavailable(
                f"the coordinator at {token.address}:{token.port} did not answer: is "
                "it running and reachable, and is the token from this cluster's "
                "coordinator?"
            ) from None
        finally:
            client.close()
        welcome = msgspec.convert(value, Welcome)
        self._adopt(welcome, Role.MEMBER)
        log.info("joined cluster %s", welcome.cluster)
        return asdict(welcome)

    def _refuse_if_member(self) -> None:
        if self.membership is not None:
            raise Conflict(
                f"node {self.name} is already in cluster {self.membership.cluster!r} "
                f"(role {self.membership.role})"
            )

    def _adopt(self, welcome: Welcome, role: Role) -> None:
        self.membership = MembershipFile(
            welcome.cluster,
            role,
            welcome.coordinator,
            welcome.coordinator_address,
            welcome.coordinator_port,
            welcome.coordinator_key,
        )
        self.membership.save(self.state_dir)
        self._connect(self.membership)
        self._tasks.append(
            asyncio.get_running_loop().create_task(self._stay_in_touch())
        )
