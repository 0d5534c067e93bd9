"""Wiring of one ssid: keys, sockets, the agent, readiness, orderly stop.

Stopping ssid (or its crash) never stops the jobs of the node: they run in their own
sessions and namespaces, and a restarted ssid adopts them again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import zmq.asyncio

from ssi.cluster.coordinator import Coordinator
from ssi.config import Config
from ssi.node.agent import Agent
from ssi.node.sdnotify import notify
from ssi.proto import messages as m
from ssi.proto.errors import Denied, NotFound, Unavailable
from ssi.rpc.keys import load_or_create_keypair
from ssi.rpc.local import LocalServer
from ssi.rpc.zmq_rpc import RpcServer

log = logging.getLogger(__name__)

JOIN_OPS = frozenset({m.NodeJoin.op, m.Ping.op})
Handler = Callable[[m.Envelope, Any], Awaitable[Any]]


def advertised_address(cfg: Config) -> str:
    """The configured address, else this node's first non-loopback IPv4 address."""
    if cfg.node.advertise:
        return cfg.node.advertise
    for _, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return "127.0.0.1"


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.node.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ctx = zmq.asyncio.Context()
        self.keypair = load_or_create_keypair(self.state_dir / "keys")
        self.agent = Agent(cfg, self.keypair, self.ctx, advertised_address(cfg))
        listen, port = cfg.node.listen, cfg.node.port
        self.server = RpcServer(
            self.ctx,
            f"tcp://{listen}:{port}",
            self.keypair,
            self._cluster_handlers(),
            allowed_keys=self.agent.key_allowed,
            join_endpoint=f"tcp://{listen}:{port + 1}",
            join_ops=JOIN_OPS,
        )
        self.local = LocalServer(str(cfg.socket_path), self.agent.local_handlers())

    def _cluster_handlers(self) -> Mapping[str, Handler]:
        """Coordinator ops, served only while this node holds the role, and only to
        keys that are still members (a revoked key's open connection gets nothing)."""

        def route(op: str) -> Handler:
            async def handler(env: m.Envelope, peer: Any) -> Any:
                coordinator = self.agent.coordinator
                if coordinator is None:
                    raise Unavailable(
                        f"node {self.cfg.node.name} is not the coordinator"
                    )
                if op != m.NodeJoin.op and not coordinator.key_allowed(peer.public_key):
                    # NotFound tells an evicted agent to forget its cluster.
                    raise NotFound(
                        "this node is not a member of the cluster (evicted?)"
                    )
                return await coordinator.handlers[op](env, peer)

            return handler

        def where_coordinator(op: str, handler: Handler) -> Handler:
            async def guarded(env: m.Envelope, peer: Any) -> Any:
                if self.agent.coordinator is None:
                    raise Unavailable(
                        f"node {self.cfg.node.name} is not the coordinator"
                    )
                return await handler(env, peer)

            return guarded

        def from_coordinator(op: str, handler: Handler) -> Handler:
            async def guarded(env: m.Envelope, peer: Any) -> Any:
                mf = self.agent.membership
                if mf is None or peer.public_key.decode() != mf.coordinator_key:
                    raise Denied(f"{op} is for this cluster's coordinator only")
                return await handler(env, peer)

            return guarded

        handlers = {op: route(op) for op in Coordinator.OPS}
        handlers.update(
            (op, from_coordinator(op, h))
            for op, h in self.agent.executor.handlers().items()
        )
        for service in self.agent.services:
            # peers reach these through the cluster socket, whose keys are members'
            handlers.update(service.peer_handlers())
            handlers.update(
                (op, where_coordinator(op, h))
                for op, h in service.coordinator_handlers().items()
            )
        handlers[m.Ping.op] = self.agent.on_ping
        return handlers

    async def run(self, stop: asyncio.Event) -> None:
        await self.server.start()
        await self.local.start()
        await self.agent.start()
        notify("READY=1")
        log.info(
            "ssid ready: node %s at %s:%d, socket %s",
            self.cfg.node.name,
            self.agent.address,
            self.cfg.node.port,
            self.cfg.socket_path,
        )
        try:
            await stop.wait()
        finally:
            notify("STOPPING=1")
            await self.agent.close()
            await self.local.close()
            await self.server.close()
            self.ctx.destroy(linger=0)
            log.info("ssid stopped")


async def serve(cfg: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Daemon(cfg).run(stop)
