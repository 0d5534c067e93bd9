"""One RpcClient per peer node, made on first use and replaced when the node's address
or key changes (a node that rejoined)."""

from __future__ import annotations

from typing import Any

import zmq.asyncio

from ssi.cluster.store import NodeRecord
from ssi.proto import messages as m
from ssi.rpc.keys import KeyPair
from ssi.rpc.zmq_rpc import RpcClient


def endpoint(rec: NodeRecord) -> dict[str, Any]:
    """How another node reaches this one, as agents receive it in requests."""
    return {
        "name": rec.name,
        "address": rec.address,
        "port": rec.port,
        "key": rec.public_key,
    }


class Peers:
    def __init__(self, ctx: zmq.asyncio.Context, keypair: KeyPair, sender: str) -> None:
        self.ctx = ctx
        self.keypair = keypair
        self.sender = sender
        self._clients: dict[str, tuple[tuple[str, int, str], RpcClient]] = {}

    def client(self, rec: NodeRecord) -> RpcClient:
        ident = (rec.address, rec.port, rec.public_key)
        held = self._clients.get(rec.name)
        if held is not None and held[0] == ident:
            return held[1]
        if held is not None:
            held[1].close()
        client = RpcClient(
            self.ctx,
            f"tcp://{rec.address}:{rec.port}",
            rec.public_key,
            self.keypair,
            sender=self.sender,
        )
        self._clients[rec.name] = (ident, client)
        return client

    async def call(
        self, rec: NodeRecord, body: m.Request[Any], *, timeout: float, cause: str = ""
    ) -> Any:
        return await self.client(rec).call(body, timeout=timeout, cause=cause)

    def drop(self, name: str) -> None:
        held = self._clients.pop(name, None)
        if held is not None:
            held[1].close()

    def close(self) -> None:
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()
