"""The cluster-wide pool of job addresses: which one a new `--net private` job gets.
No I/O: the coordinator passes what is taken (addresses of live jobs, of nodes).

Example: pool "10.87.0.128/26" hands out 10.87.0.129, .130, ... .190, the lowest
free one first; an address comes back when the job that held it has ended (a
stopped, checkpointed job keeps its address: it restarts with it).

Each address has one MAC, 02:73 followed by its four bytes, so that a job keeps
its MAC across nodes and its peers' ARP caches stay right after a move.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass


class PoolError(ValueError):
    """The pool setting is unusable, or has no free address left."""


@dataclass(frozen=True, slots=True)
class AddressPool:
    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, text: str) -> AddressPool:
        """PoolError naming what is wrong with a `[net] pool` value."""
        if not text:
            raise PoolError(
                'no address pool: set [net] pool (e.g. "10.87.0.128/26", inside '
                "the nodes' cluster subnet) in the coordinator's ssi.toml"
            )
        try:
            net = ipaddress.IPv4Network(text, strict=True)
        except ValueError as e:
            raise PoolError(
                f"[net] pool = {text!r} is not an IPv4 network: {e}"
            ) from None
        if net.num_addresses < 4:
            raise PoolError(f"[net] pool = {text!r} holds no usable address")
        return cls(net)

    def contains(self, address: str) -> bool:
        return ipaddress.IPv4Address(address) in self.network

    def take(self, taken: Collection[str]) -> str:
        """The lowest address of the pool not in `taken`; PoolError when full."""
        used = {ipaddress.IPv4Address(a) for a in taken if a}
        for host in self.network.hosts():
            if host not in used:
                return str(host)
        raise PoolError(
            f"no free address in [net] pool {self.network}: all "
            f"{self.network.num_addresses - 2} are held by jobs or nodes"
        )


def mac_for(address: str) -> str:
    """The job interface's MAC for an IPv4 address (locally administered)."""
    raw = ipaddress.IPv4Address(address).packed
    return "02:73:" + ":".join(f"{b:02x}" for b in raw)
