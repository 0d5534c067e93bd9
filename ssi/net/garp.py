"""A gratuitous ARP from inside a job's namespace: tells the cluster network's
switches (the local cluster's bridge) and the peers' ARP caches that the job's
address and MAC now live behind this node.

The frame goes out of a packet socket made in the job's namespace (enter.run_in).
"""

from __future__ import annotations

import ipaddress
import socket

from ssi.net.enter import run_in

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6


def frame(mac: bytes, address: str) -> bytes:
    """An ARP request for `address` from `address` (sender = target), broadcast."""
    ip = ipaddress.IPv4Address(address).packed
    arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
    raw = _BROADCAST + mac + ETH_P_ARP.to_bytes(2, "big") + arp
    return raw.ljust(60, b"\x00")  # the Ethernet minimum, without FCS


def announce(netns_path: str, ifname: str, address: str) -> None:
    """Send one gratuitous ARP for `address` out of `ifname` in the namespace."""

    def send() -> None:
        with socket.socket(
            socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)
        ) as s:
            s.bind((ifname, ETH_P_ARP))
            s.send(frame(s.getsockname()[4], address))

    run_in(netns_path, send)
