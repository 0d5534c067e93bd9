"""ssi node list | show | token | join | drain | resume | evict"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ssi.cli import output as o
from ssi.proto import messages as m

if TYPE_CHECKING:
    from ssi.cli.main import Ctx


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = groups.add_parser(
        "node",
        help="list, add, drain and evict nodes",
        description="Nodes of the cluster: list them, issue join tokens, "
        "drain a node for maintenance, evict it.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(
        name: str, func: Any, help: str, *, json: bool = False
    ) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help, description=help)
        v.set_defaults(func=func)
        if json:
            v.add_argument(
                "--json", action="store_true", help="versioned JSON for scripts"
            )
        return v

    verb(
        "list", cmd_list, "every node: state, address, load, last heartbeat", json=True
    )
    verb("show", cmd_show, "one node in detail", json=True).add_argument("name")
    t = verb("token", cmd_token, "issue a single-use join token (admin)", json=True)
    t.add_argument(
        "--ttl", type=float, help="lifetime in seconds (default from config: 1h)"
    )
    j = verb(
        "join",
        cmd_join,
        "make this node join the cluster a token names (admin)",
        json=True,
    )
    j.add_argument("token", help="from `ssi node token` on a member of the cluster")
    d = verb("drain", cmd_drain, "stop placing new jobs on a node (admin)", json=True)
    d.add_argument("name")
    d.add_argument("--reason", default="", help="shown in `ssi node list`")
    verb(
        "resume", cmd_resume, "place jobs on a drained node again (admin)", json=True
    ).add_argument("name")
    e = verb(
        "evict",
        cmd_evict,
        "remove a node: drain it, move its jobs, revoke its key (admin)",
        json=True,
    )
    e.add_argument("name")
    e.add_argument("--force", action="store_true", help="even if jobs cannot be moved")
    e.add_argument("--wait", action="store_true", help="show progress until done")


def _rows(nodes: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            n["name"] + (" *" if n.get("coordinator") else ""),
            o.state(n["state"]),
            f"{n['address']}:{n['port']}",
            n.get("resources", {}).get("cpus"),
            f"{n['load']['load1']:.2f}" if n.get("load") else None,
            o.ago(n.get("last_heard_ago")),
            n.get("reason"),
        ]
        for n in nodes
    ]


COLUMNS = ["NODE", "STATE", "ADDRESS", "CPUS", "LOAD", "HEARD", "REASON"]


def cmd_list(ctx: Ctx) -> int:
    nodes = ctx.call(m.NodeList())
    if ctx.json:
        o.emit_json("nodes", nodes)
    else:
        o.table(None, COLUMNS, _rows(nodes))
        o.out.print("[dim]* holds the coordinator role[/]")
    return 0


def cmd_show(ctx: Ctx) -> int:
    node = ctx.call(m.NodeShow(name=ctx.args.name))
    if ctx.json:
        o.emit_json("node", node)
        return 0
    res = node.get("resources", {})
    fields = [
        ("name", node["name"]),
        ("state", o.state(node["state"])),
        ("reason", node.get("reason") or "-"),
        ("address", f"{node['address']}:{node['port']}"),
        ("coordinator", "yes" if node.get("coordinator") else "no"),
        ("key", node["public_key"]),
        ("joined", o.when(node["joined_at"])),
        ("changed", o.when(node["changed_at"])),
        ("last heartbeat", o.ago(node.get("last_heard_ago"))),
        ("cpus", res.get("cpus")),
        ("memory", f"{res.get('memory', 0) / 2**30:.1f} GiB"),
        ("load", node.get("load") or "-"),
    ]
    for k, v in fields:
        o.out.print(f"[bold]{k:>15}[/]  {v}")
    return 0


def cmd_token(ctx: Ctx) -> int:
    value = ctx.call(m.NodeToken(ttl=ctx.args.ttl))
    if ctx.json:
        o.emit_json("token", value)
        return 0
    o.out.print(value["token"], soft_wrap=True)
    o.err.print(
        f"[dim]single use, valid {value['expires_in']:g}s; on the new node run:[/] "
        "ssi node join <token>"
    )
    return 0


def cmd_join(ctx: Ctx) -> int:
    welcome = ctx.call(m.ClusterJoin(token=ctx.args.token))
    if ctx.json:
        o.emit_json("joined", welcome)
    else:
        o.out.print(
            f"joined cluster [bold]{welcome['cluster']}[/] "
            f"(coordinator {welcome['coordinator']})"
        )
    return 0


def _one(ctx: Ctx, body: m.Request, done: str) -> int:
    node = ctx.call(body)
    if ctx.json:
        o.emit_json("node", node)
    else:
        o.out.print(f"{node['name']}: {done} (state {o.state(node['state'])})")
    return 0


def cmd_drain(ctx: Ctx) -> int:
    return _one(
        ctx, m.NodeDrain(name=ctx.args.name, reason=ctx.args.reason), "draining"
    )


def cmd_resume(ctx: Ctx) -> int:
    return _one(ctx, m.NodeResume(name=ctx.args.name), "resumed")


def cmd_evict(ctx: Ctx) -> int:
    a = ctx.args
    result = ctx.call(m.NodeEvict(name=a.name, force=a.force, wait=a.wait))
    if ctx.json:
        o.emit_json("eviction", result)
    else:
        o.out.print(f"{result['evicted']}: evicted, key revoked")
        for move in result.get("moved", []):
            if move["to"]:
                o.out.print(
                    f"  job {move['job']} → {move['to']} ({move['how']}, "
                    f"frozen {move['freeze_seconds'] * 1000:.0f} ms)"
                )
            else:
                o.out.print(f"  job {move['job']}: [red]not moved[/]: {move['error']}")
    return 0
