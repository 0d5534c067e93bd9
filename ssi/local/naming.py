"""Names and addresses of a local cluster, computed from its prefix and subnet.

No I/O here: the same plan is used to build a cluster, to find what an earlier run of
the same prefix left behind, and by unit tests.

Example, prefix "ssi", subnet 10.87.0.0/24::

    node3  ->  netns "ssi-node3" (/run/netns/ssi-node3), address 10.87.0.3,
               host-side veth "ssi-v3" on bridge "ssi-br" (10.87.0.254)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IFNAMSIZ = 15
"""Longest Linux interface name, without the terminating NUL."""

NETNS_RUN_DIR = "/run/netns"
"""Where `ip netns` and pyroute2 bind-mount named network namespaces."""

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_NODE_RE = re.compile(r"node([1-9][0-9]*)")
_JOB_NETNS_RE = re.compile(r"node([1-9][0-9]*)-job[0-9]+")


@dataclass(frozen=True)
class Naming:
    """The names and addresses a cluster with this prefix and subnet uses.

    The prefix must leave room for the longest veth name, `<prefix>-v<index>`, with
    an index up to the largest node the subnet holds: 10 characters for a /24.
    Dashes are refused so that one prefix's names never match another's patterns
    ("ssi" never claims "ssi-x-br").
    """

    prefix: str
    subnet: ipaddress.IPv4Network

    @classmethod
    def make(cls, prefix: str, subnet: str) -> Naming:
        """Validate and build; raises ValueError with the reason."""
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(
                f"prefix {prefix!r}: letters, digits and '_' only, starting with a "
                "letter"
            )
        net = ipaddress.IPv4Network(subnet, strict=True)
        if net.num_addresses < 4:
            raise ValueError(f"subnet {subnet}: too small for a host and a node")
        naming = cls(prefix, net)
        longest = max(len(naming.bridge), len(naming.veth(naming.max_index)))
        if longest > IFNAMSIZ:
            raise ValueError(
                f"prefix {prefix!r} too long: interface names would reach "
                f"{longest} characters (limit {IFNAMSIZ})"
            )
        return naming

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def host_address(self) -> str:
        """The bridge's address: the last usable one of the subnet (.254 of a /24)."""
        return str(self.subnet.broadcast_address - 1)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def max_index(self) -> int:
        """Highest node index: every usable address below the host's."""
        return self.subnet.num_addresses - 3

    def node_name(self, index: int) -> str:
        return f"node{index}"

    def node_index(self, name: str) -> int:
        """Index of a node name ("node3" -> 3); ValueError if it is not one."""
        m = _NODE_RE.fullmatch(name)
        if m is None:
            raise ValueError(f"{name!r} is not a node name (node1, node2, ...)")
        return int(m.group(1))

    def netns(self, index: int) -> str:
        return f"{self.prefix}-node{index}"

    def netns_path(self, index: int) -> str:
        return f"{NETNS_RUN_DIR}/{self.netns(index)}"

    def job_netns_prefix(self, index: int) -> str:
        """What node `index`'s ssid names its `--net private` jobs' namespaces by
        ([net] netns_prefix): "ssi-node3-job" + the job id."""
        return f"{self.netns(index)}-job"

    def veth(self, index: int) -> str:
        return f"{self.prefix}-v{index}"

    def address(self, index: int) -> str:
        if not 1 <= index <= self.max_index:
            raise ValueError(
                f"node index {index} outside 1..{self.max_index} for {self.subnet}"
            )
        return str(self.subnet.network_address + index)


def owns_netns(prefix: str, name: str) -> bool:
    """Whether a namespace name is one a cluster with this prefix makes: a node's,
    or one of its jobs' (made by the node's ssid)."""
    rest = _strip(prefix, name)
    return rest is not None and (
        _NODE_RE.fullmatch(rest) is not None
        or _JOB_NETNS_RE.fullmatch(rest) is not None
    )


def node_of_netns(prefix: str, name: str) -> int | None:
    """The node index a namespace of ours belongs to (node's or job's), else None."""
    rest = _strip(prefix, name)
    m = None if rest is None else _NODE_RE.match(rest)
    return int(m.group(1)) if m and owns_netns(prefix, name) else None


def owns_link(prefix: str, name: str) -> bool:
    """Whether a host interface name is one a cluster with this prefix makes."""
    rest = _strip(prefix, name)
    return rest is not None and (
        rest == "br" or re.fullmatch(r"v[1-9][0-9]*", rest) is not None
    )


def _strip(prefix: str, name: str) -> str | None:
    head = f"{prefix}-"
    return name[len(head) :] if name.startswith(head) else None
