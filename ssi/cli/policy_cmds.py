"""ssi policy list | show | set NAME [key=value ...]"""

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
        "policy",
        help="the scheduler's placement and balancing policy",
        description="Which policy places new jobs and rebalances running ones; "
        "switching takes effect at once, cluster-wide, without a restart.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="installed policies (built-in and third-party)")
    ls.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    ls.set_defaults(func=cmd_list)
    sh = verbs.add_parser("show", help="the active policy: algorithm and parameters")
    sh.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    sh.set_defaults(func=cmd_show)
    st = verbs.add_parser(
        "set",
        help="switch policy or change its parameters (admin)",
        epilog="example: ssi policy set mosix interval=2s stability=1.3",
    )
    st.add_argument("name")
    st.add_argument("params", nargs="*", metavar="KEY=VALUE")
    st.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    st.set_defaults(func=cmd_set)


def cmd_list(ctx: Ctx) -> int:
    policies = ctx.call(m.PolicyList())
    if ctx.json:
        o.emit_json("policies", policies)
        return 0
    o.table(
        None,
        ["POLICY", "ACTIVE", "FROM", "SUMMARY"],
        [
            [
                p["name"],
                "*" if p["active"] else "",
                p["dist"],
                p["error"] and f"[red]broken: {p['error']}[/]" or p["summary"],
            ]
            for p in policies
        ],
    )
    return 0


def _describe(policy: dict[str, object]) -> None:
    o.out.print(f"[bold]{policy['name']}[/]: {policy['summary']}\n")
    o.out.print(str(policy["doc"]).strip() + "\n")
    params = policy.get("params") or []
    assert isinstance(params, list)
    o.table(
        "parameters",
        ["NAME", "VALUE", "DEFAULT", "MEANING"],
        [[p["name"], p["value"], p["default"], p["doc"]] for p in params],
    )


def cmd_show(ctx: Ctx) -> int:
    policy = ctx.call(m.PolicyShow())
    if ctx.json:
        o.emit_json("policy", policy)
    else:
        _describe(policy)
    return 0


def cmd_set(ctx: Ctx) -> int:
    params = {}
    for item in ctx.args.params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"parameters are KEY=VALUE, not {item!r}")
        params[key] = value
    policy = ctx.call(m.PolicySet(name=ctx.args.name, params=params))
    if ctx.json:
        o.emit_json("policy", policy)
    else:
        o.out.print(f"policy is now [bold]{policy['name']}[/], cluster-wide")
    return 0
