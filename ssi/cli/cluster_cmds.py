"""ssi cluster init | up --local N | down | status"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ssi.cli import output as o
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest

if TYPE_CHECKING:
    from ssi.cli.main import Ctx


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = groups.add_parser(
        "cluster",
        help="form, inspect and tear down clusters",
        description="Form a cluster on this node, see its status, or "
        "build a local cluster of network namespaces on this machine.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    i = verbs.add_parser(
        "init",
        help="make this node the first node (coordinator) of a new cluster (admin)",
    )
    i.add_argument("name", help="the cluster's name")
    i.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    i.set_defaults(func=cmd_init)
    u = verbs.add_parser(
        "up",
        help="start a local cluster: N nodes in network namespaces (root)",
        description="Builds N nodes on this machine (a network namespace each, on a "
        "private bridge), starts an ssid in each, forms one cluster with node1 as "
        "coordinator, and waits until every node is online.",
    )
    u.add_argument(
        "--local", type=int, metavar="N", required=True, help="number of nodes"
    )
    u.add_argument("--subnet", default="10.87.0.0/24", help="private address range")
    u.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=6.0,
        help="seconds of silence before a node is declared lost",
    )
    u.add_argument(
        "--shared-spool",
        action="store_true",
        help="give the nodes one checkpoint directory (they share this machine, as "
        "nodes share NFS or Lustre): checkpoints are written once, not copied",
    )
    u.set_defaults(func=cmd_up)
    d = verbs.add_parser(
        "down",
        help="stop and remove a local cluster: daemons, namespaces, links, state",
    )
    d.set_defaults(func=cmd_down)
    s = verbs.add_parser("status", help="the cluster at a glance")
    s.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    s.set_defaults(func=cmd_status)


def cmd_init(ctx: Ctx) -> int:
    welcome = ctx.call(m.ClusterInit(name=ctx.args.name))
    if ctx.json:
        o.emit_json("cluster", welcome)
    else:
        o.out.print(
            f"cluster [bold]{welcome['cluster']}[/] formed; this node "
            f"({welcome['coordinator']}) is its coordinator."
        )
        o.out.print(
            "add nodes with: ssi node token   (then on the new node: "
            "ssi node join TOKEN)"
        )
    return 0


def cmd_up(ctx: Ctx) -> int:
    from ssi.local.ssids import LocalSsiCluster

    a = ctx.args
    if not 1 <= a.local <= 64:
        raise BadRequest("--local takes a number of nodes between 1 and 64")
    cluster = LocalSsiCluster(
        a.local,
        prefix=a.local_prefix,
        subnet=a.subnet,
        heartbeat_timeout=a.heartbeat_timeout,
        heartbeat_interval=min(1.0, a.heartbeat_timeout / 4),
        shared_spool=a.shared_spool,
    )
    with o.err.status(f"starting {a.local} nodes..."):
        cluster.up()
    nodes = cluster.call("node1", m.NodeList())
    o.out.print(
        f"local cluster [bold]{a.local_prefix}[/] is up: {a.local} nodes online"
    )
    o.table(
        None,
        ["NODE", "ADDRESS", "NETNS", "SOCKET"],
        [
            [
                n["name"] + (" *" if n["coordinator"] else ""),
                n["address"],
                cluster.topology.node(n["name"]).netns,
                cluster.socket(n["name"]),
            ]
            for n in nodes
        ],
    )
    o.out.print(
        "\nnext:\n  ssi node list                 (asks node1)\n"
        "  ssi --on node2 cluster status\n  ssi cluster down\n"
        f"logs: {cluster.base}/NODE/ssid.log"
    )
    return 0


def cmd_down(ctx: Ctx) -> int:
    from ssi.local.ssids import LocalSsiCluster

    removed = LocalSsiCluster.teardown(ctx.args.local_prefix)
    if removed:
        o.out.print(
            f"local cluster {ctx.args.local_prefix} removed "
            f"({len(removed)} namespaces, links and daemons)"
        )
    else:
        o.out.print(
            f"no local cluster {ctx.args.local_prefix!r} here: nothing to remove"
        )
    return 0


def cmd_status(ctx: Ctx) -> int:
    st = ctx.call(m.ClusterStatus())
    if ctx.json:
        o.emit_json("status", st)
        return 0
    me = st["this_node"]
    if st.get("cluster") is None:
        o.out.print(
            f"node {me['node']} is not in a cluster. "
            "`ssi cluster init NAME` forms one; `ssi node join TOKEN` joins one."
        )
        return 0
    if "unreachable" in st:
        o.out.print(
            f"node {me['node']} is in cluster [bold]{st['cluster']}[/] "
            f"(coordinator {st['coordinator']}), but: {st['unreachable']}"
        )
        return 1
    states = ", ".join(f"{n} {o.state(s)}" for s, n in sorted(st["states"].items()))
    o.out.print(f"cluster [bold]{st['cluster']}[/]: {st['nodes']} nodes ({states})")
    o.out.print(f"coordinator: {st['coordinator']}   state revision: {st['revision']}")
    o.out.print(
        f"this node: {me['node']} ({me['role']}, {me['address']}), "
        f"{'connected' if me['connected'] else '[red]not connected[/]'}"
    )
    return 0
