"""ssi ipc list | show KIND ID | rm KIND ID | move KIND ID [--to NODE]

The cluster's System V objects (message queues, semaphore sets, shared memory
segments), like ipcs/ipcrm, with the node each lives on (home) and the node holding
its copy (replica). `rm` runs IPC_RMID with the caller's credentials (the owner,
the creator or root may); `move` (root) rehomes an object, waiters included.
"""

from __future__ import annotations

import argparse
import errno
from typing import TYPE_CHECKING, Any

from ssi.cli import output as o
from ssi.ipc.client import SocketTransport
from ssi.ipc.constants import IPC_RMID
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest, Denied, NotFound, SsiError

if TYPE_CHECKING:
    from ssi.cli.main import Ctx

KINDS = {"msg": "msg", "q": "msg", "sem": "sem", "s": "sem", "shm": "shm", "m": "shm"}
CTL = {"msg": "ipc.msgctl", "sem": "ipc.semctl", "shm": "ipc.shmctl"}


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = groups.add_parser(
        "ipc",
        help="cluster-wide System V IPC objects (like ipcs, ipcrm)",
        description="Message queues, semaphore sets and shared memory segments "
        "shared by the jobs of the whole cluster (`ssi submit --cluster-ipc`, or "
        "ssi.ipc in Python), with their home and replica nodes.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="every object, its home and replica")
    ls.add_argument("--kind", choices=sorted(set(KINDS.values())), default="")
    ls.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    ls.set_defaults(func=cmd_list)
    for name, func, helptext in (
        ("show", cmd_show, "one object in detail"),
        ("rm", cmd_rm, "remove an object (IPC_RMID, as you)"),
    ):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("kind", choices=KINDS, metavar="KIND", help="msg|sem|shm")
        v.add_argument("id", type=int)
        v.add_argument("--json", action="store_true", help="versioned JSON for scripts")
        v.set_defaults(func=func)
    mv = verbs.add_parser("move", help="move an object to another home (root)")
    mv.add_argument("kind", choices=KINDS, metavar="KIND", help="msg|sem|shm")
    mv.add_argument("id", type=int)
    mv.add_argument("--to", default="", help="the new home (default: chosen)")
    mv.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    mv.set_defaults(func=cmd_move)


def _mode(row: dict[str, Any]) -> str:
    info = row.get("info") or {}
    perm = info.get("perm") or {}
    return f"{perm.get('mode', 0) & 0o777:03o}" if perm else "-"


def _owner(row: dict[str, Any]) -> str:
    perm = (row.get("info") or {}).get("perm") or {}
    return f"{perm.get('uid')}:{perm.get('gid')}" if perm else "-"


def _detail(row: dict[str, Any]) -> str:
    info = row.get("info") or {}
    if not info:
        return "-"
    kind = row["kind"]
    if kind == "msg":
        return f"{info['count']} msgs, {info['size']} B"
    if kind == "sem":
        return f"{info['size']} sems"
    return f"{info['size']} B, {info['count']} attached"


def cmd_list(ctx: Ctx) -> int:
    rows = ctx.call(m.IpcObjects(kind=ctx.args.kind))
    if ctx.json:
        o.emit_json("ipc_objects", rows)
        return 0
    o.table(
        None,
        ["KIND", "ID", "KEY", "MODE", "OWNER", "DETAIL", "WAITERS", "HOME", "REPLICA"],
        [
            [
                r["kind"],
                r["id"],
                f"0x{r['key'] & 0xFFFFFFFF:08x}",
                _mode(r),
                _owner(r),
                _detail(r),
                (r.get("info") or {}).get("waiters", "-"),
                r["home"],
                r.get("replica"),
            ]
            for r in rows
        ],
    )
    return 0


def cmd_show(ctx: Ctx) -> int:
    row = ctx.call(m.IpcObject(kind=KINDS[ctx.args.kind], id=ctx.args.id))
    if ctx.json:
        o.emit_json("ipc_object", row)
        return 0
    info = row.get("info") or {}
    perm = info.get("perm") or {}
    fields = [
        ("kind", row["kind"]),
        ("id", row["id"]),
        ("key", f"0x{row['key'] & 0xFFFFFFFF:08x}"),
        ("home", row["home"]),
        ("replica", row.get("replica") or "-"),
        ("owner", f"uid {perm.get('uid')} gid {perm.get('gid')}"),
        ("creator", f"uid {perm.get('cuid')} gid {perm.get('cgid')}"),
        ("mode", _mode(row)),
        ("content", _detail(row)),
        ("waiters", info.get("waiters", "-")),
    ]
    o.table(None, ["FIELD", "VALUE"], fields)
    return 0


def _os_error(e: OSError, what: str) -> SsiError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return Denied(f"{what}: {e.strerror or e}")
    if e.errno in (errno.EINVAL, errno.EIDRM, errno.ENOENT):
        return NotFound(f"{what}: no such object (see `ssi ipc list`)")
    return BadRequest(f"{what}: {e}")


def cmd_rm(ctx: Ctx) -> int:
    kind = KINDS[ctx.args.kind]
    what = f"{kind} {ctx.args.id}"
    transport = SocketTransport(ctx.socket_path())
    try:
        transport.call(CTL[kind], id=ctx.args.id, cmd=IPC_RMID)
    except OSError as e:
        raise _os_error(e, f"removing {what}") from None
    finally:
        try:
            transport.close()
        except OSError:
            pass
    if ctx.json:
        o.emit_json("ipc_removed", {"kind": kind, "id": ctx.args.id})
    else:
        o.out.print(f"removed {what}")
    return 0


def cmd_move(ctx: Ctx) -> int:
    kind = KINDS[ctx.args.kind]
    entry = ctx.call(m.IpcMove(kind=kind, id=ctx.args.id, to=ctx.args.to), timeout=60)
    if ctx.json:
        o.emit_json("ipc_object", entry)
    else:
        o.out.print(
            f"{kind} {ctx.args.id} lives on {entry['home']} now "
            f"(replica {entry.get('replica') or 'none'})"
        )
    return 0
