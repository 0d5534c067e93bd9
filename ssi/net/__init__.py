"""Jobs with a network of their own (`ssi submit --net private`): a network namespace
per job, one address on the cluster network that moves with the job, and established
TCP connections that survive a migration.

    coordinator: addresses.AddressPool ── [net] pool ──▶ spec.net.address (job record)
    agent:       JobNetworks.create ── netns <prefix><job> + macvlan on the node's
                 cluster link (MAC derived from the address) ──▶ job init (setns NET)
    move out:    freeze ─▶ cut (link down: nothing leaves or enters) ─▶ CRIU dump
                 (--tcp-established, the netns external) ─▶ held
    move in:     create(locked) ─▶ CRIU restore into it (inherit_fd) ─▶ CRIU lifts
                 the lock ─▶ gratuitous ARP ─▶ thaw
    settle:      moved: the source's netns is removed; not moved: link up + ARP

addresses.py: the pool, no I/O. jobnet.py: namespaces and links (pyroute2).
lock.py: the nftables lock CRIU lifts at the end of a restore. garp.py: the
gratuitous ARP that tells the cluster network where the address lives now.
"""

from ssi.net.addresses import AddressPool, PoolError, mac_for

# jobnet (pyroute2) is imported where a node needs it, not by the configuration.
__all__ = ["AddressPool", "PoolError", "mac_for"]
