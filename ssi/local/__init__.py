"""Local clusters: N nodes on one machine, for the demo, `ssi cluster up --local N`
and the multi-node tests.

    host ── <prefix>-br (.254) ──┬── <prefix>-v1 ══ eth0 (.1)  netns <prefix>-node1
                                 ├── <prefix>-v2 ══ eth0 (.2)  netns <prefix>-node2
                                 └── ...

    naming.py   names and addresses from (prefix, subnet); pure
    net.py      bridge, veth pairs, namespaces (pyroute2)
    procs.py    find / kill the processes living in our namespaces (/proc scan)
    cluster.py  LocalCluster (up, down, add_node, remove_node, spawn, wait), cleanup
    testing.py  unique_prefix, free_subnet, wait_for, leftovers: for tests and demos

`LocalCluster.spawn` enters the node's network namespace only (kernel_shim), never a
mount namespace, so what it starts can be checkpointed by CRIU.
"""

from .cluster import (
    RUN_DIR,
    LocalCluster,
    LocalClusterError,
    LocalNode,
    SubnetInUse,
    cleanup,
)
from .naming import Naming

__all__ = [
    "RUN_DIR",
    "LocalCluster",
    "LocalClusterError",
    "LocalNode",
    "Naming",
    "SubnetInUse",
    "cleanup",
]
