"""ssi.rpc: the transports that carry ssi.proto messages.

    other nodes ──tcp, CURVE──▶ zmq_rpc.RpcServer (ROUTER) ─┐
                 (ZAP: "cluster" = allowed keys, "join" = any key, join ops only)
    local users ──unix socket─▶ local.LocalServer ──────────┤ base.Dispatcher
                 (SO_PEERCRED → LocalPeer)                   ▼
                                              handler(env: Envelope, peer) -> value
    zmq_rpc.RpcClient (DEALER) · local.LocalClient (blocking) · local.AsyncLocalClient

keys.py keeps this node's CURVE key pair on disk; fingerprint() names a key for humans.
"""

from ssi.rpc.base import Handler, LocalPeer, Peer, PeerInfo
from ssi.rpc.keys import KeyPair, fingerprint, load_or_create_keypair
from ssi.rpc.local import AsyncLocalClient, LocalClient, LocalServer
from ssi.rpc.zmq_rpc import RpcClient, RpcServer, ZapAuthenticator

__all__ = [
    "AsyncLocalClient",
    "Handler",
    "KeyPair",
    "LocalClient",
    "LocalPeer",
    "LocalServer",
    "Peer",
    "PeerInfo",
    "RpcClient",
    "RpcServer",
    "ZapAuthenticator",
    "fingerprint",
    "load_or_create_keypair",
]
