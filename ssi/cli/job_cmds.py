"""ssi submit | ps | show | wait | kill | suspend | resume | hold | release | history
| checkpoint | ckpt list | restart | why"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import time
from typing import TYPE_CHECKING, Any

from ssi.cli import output as o
from ssi.proto import messages as m
from ssi.proto.errors import BadRequest

if TYPE_CHECKING:
    from ssi.cli.main import Ctx


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def cmd(
        name: str,
        func: Any,
        help: str,
        *,
        json: bool = False,
        job: bool = True,
        **kw: Any,
    ) -> argparse.ArgumentParser:
        p = groups.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        if job:
            p.add_argument(
                "job", type=int, help="job id (from `ssi submit` or `ssi ps`)"
            )
        if json:
            p.add_argument(
                "--json", action="store_true", help="versioned JSON for scripts"
            )
        return p

    s = cmd(
        "submit",
        cmd_submit,
        "run a command as a job somewhere in the cluster",
        job=False,
        json=True,
        epilog="example: ssi submit --name sim -o sim.out --ckpt-every 600 -- ./sim",
    )
    s.add_argument(
        "--name", default="", help="a name to find it by (default: the program)"
    )
    s.add_argument("--node", default="", help="run it on this node")
    s.add_argument(
        "--cwd", default="", help="working directory (default: the current one)"
    )
    s.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (repeatable); the job gets your "
        "environment plus these",
    )
    s.add_argument(
        "--clean-env",
        action="store_true",
        help="start from an empty environment instead of yours",
    )
    s.add_argument("-i", "--input", default="/dev/null", help="stdin file")
    s.add_argument(
        "-o", "--output", default="", help="stdout file (default ssi-ID.out)"
    )
    s.add_argument("-e", "--error", default="", help="stderr file (default ssi-ID.err)")
    s.add_argument(
        "--require", default="", help="resource request, e.g. 'cpus>=2 mem>=1G'"
    )
    s.add_argument(
        "--hold", action="store_true", help="queue it held: `ssi release` starts it"
    )
    s.add_argument(
        "--ckpt-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="checkpoint it periodically",
    )
    s.add_argument(
        "--wait", action="store_true", help="wait for it and exit with its status"
    )
    s.add_argument(
        "--cluster-ipc",
        action="store_true",
        help="its System V IPC (msg*, sem*, shm*) uses cluster-wide objects",
    )
    s.add_argument(
        "--net",
        choices=("host", "private"),
        default="host",
        help="private: a network namespace and cluster address of its own, which "
        "follow it when it moves (its TCP connections too); host: its node's",
    )
    s.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        help="the command to run",
    )

    ps = cmd("ps", cmd_ps, "jobs of the whole cluster", job=False, json=True)
    ps.add_argument("-a", "--all", action="store_true", help="include ended jobs")
    ps.add_argument("-u", "--user", type=int, help="only this uid's jobs")
    cmd(
        "show",
        cmd_show,
        "one job in detail, with its events and checkpoints",
        json=True,
    )
    w = cmd("wait", cmd_wait, "wait for a job to end; exits with its status", json=True)
    w.add_argument(
        "--timeout", type=float, help="give up after this many seconds (exit 5)"
    )
    k = cmd(
        "kill",
        cmd_kill,
        "send a signal to a job (default TERM), or cancel a queued one",
        json=True,
    )
    k.add_argument("-s", "--signal", default="TERM", help="signal name or number")
    cmd("suspend", cmd_suspend, "freeze a running job (cgroup freezer)", json=True)
    cmd("resume", cmd_resume, "thaw a suspended job", json=True)
    cmd("hold", cmd_hold, "keep a queued job from starting", json=True)
    cmd("release", cmd_release, "let a held job start", json=True)
    h = cmd("history", cmd_history, "ended jobs too, newest last", job=False, json=True)
    h.add_argument("-n", type=int, default=50, help="how many (default 50)")
    c = cmd(
        "checkpoint",
        cmd_checkpoint,
        "checkpoint a job (CRIU), copied to another node",
        json=True,
    )
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--leave-running", action="store_true", help="the default")
    mode.add_argument(
        "--stop",
        action="store_true",
        help="stop it after the dump; `ssi restart` brings it back",
    )
    ck = groups.add_parser(
        "ckpt",
        help="a job's checkpoints",
        description="A job's checkpoints: where they are, how big.",
    )
    ckv = ck.add_subparsers(dest="verb", metavar="VERB", required=True)
    cl = ckv.add_parser("list", help="checkpoints of a job, oldest first")
    cl.add_argument("job", type=int)
    cl.add_argument("--json", action="store_true", help="versioned JSON for scripts")
    cl.set_defaults(func=cmd_ckpt_list)
    r = cmd(
        "restart",
        cmd_restart,
        "restart a stopped or failed job from a checkpoint",
        json=True,
    )
    r.add_argument(
        "--from",
        dest="checkpoint",
        default="",
        metavar="CKPT",
        help="checkpoint id (default: the latest)",
    )
    r.add_argument("--node", default="", help="restart it on this node")
    cmd("why", cmd_why, "the last decision or failure about a job", json=True)
    mg = cmd(
        "migrate",
        cmd_migrate,
        "move a running job to another node",
        json=True,
        epilog="example: ssi migrate 7 node3   (or auto: the policy chooses)",
    )
    mg.add_argument("node", nargs="?", default="auto", help="target node, or auto")
    mg.add_argument(
        "--live",
        action="store_true",
        help="post-copy: resume on the target first, pages follow",
    )


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise BadRequest(f"unknown signal {text!r}") from None


def exit_text(job: dict[str, Any]) -> str:
    e = job.get("exit") or {}
    if e.get("cancelled"):
        return "cancelled"
    if e.get("aborted"):
        return "aborted: " + str(e.get("error") or e.get("exec_error") or job["reason"])
    if "signaled" in e:
        return f"signal {e['signaled']} ({signal.Signals(e['signaled']).name})"
    if "exited" in e:
        return f"exit {e['exited']}"
    return ""


def exit_code(job: dict[str, Any]) -> int:
    """What `ssi wait` exits with: the job's own code, 128+N for signal N."""
    e = job.get("exit") or {}
    if "exited" in e:
        return int(e["exited"])
    if "signaled" in e:
        return 128 + int(e["signaled"])
    return 1


def duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_submit(ctx: Ctx) -> int:
    a = ctx.args
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise BadRequest("nothing to run: ssi submit [options] -- CMD ARGS")
    env = {} if a.clean_env else dict(os.environ)
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--env takes K=V, not {item!r}")
        env[key] = value
    cwd = os.path.abspath(a.cwd or os.getcwd())
    job = ctx.call(
        m.JobSubmit(
            argv=argv,
            name=a.name,
            cwd=cwd,
            env=env,
            stdin=a.input,
            stdout=a.output,
            stderr=a.error,
            node=a.node,
            require=a.require,
            hold=a.hold,
            ckpt_every=a.ckpt_every,
            cluster_ipc=a.cluster_ipc,
            net="" if a.net == "host" else a.net,
        )
    )
    if not a.wait:
        if ctx.json:
            o.emit_json("job", job)
        else:
            o.out.print(job["id"])
        return 0
    done = ctx.call(m.JobWait(job=job["id"]), timeout=10 * 365 * 86400)
    if ctx.json:
        o.emit_json("job", done)
    return exit_code(done)


def _rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for j in jobs:
        st = j.get("stats") or {}
        rows.append(
            [
                j["id"],
                j["name"],
                j["user"],
                j["node"] or "-",
                o.state(j["state"]),
                st.get("main_pid"),
                f"{st['cpu_seconds']:.1f}" if "cpu_seconds" in st else None,
                f"{st['rss_bytes'] / 2**20:.0f}M" if "rss_bytes" in st else None,
                duration(j["runtime"]),
                exit_text(j),
            ]
        )
    return rows


PS_COLUMNS = [
    "JOB",
    "NAME",
    "USER",
    "NODE",
    "STATE",
    "PID",
    "CPU s",
    "RSS",
    "TIME",
    "EXIT",
]


def cmd_ps(ctx: Ctx) -> int:
    jobs = ctx.call(m.JobList(all=ctx.args.all, user=ctx.args.user))
    if ctx.json:
        o.emit_json("jobs", jobs)
    else:
        o.table(None, PS_COLUMNS, _rows(jobs))
    return 0


def cmd_history(ctx: Ctx) -> int:
    jobs = ctx.call(m.JobList(all=True))[-ctx.args.n :]
    if ctx.json:
        o.emit_json("jobs", jobs)
    else:
        o.table(None, PS_COLUMNS, _rows(jobs))
    return 0


def cmd_show(ctx: Ctx) -> int:
    job = ctx.call(m.JobShow(job=ctx.args.job))
    if ctx.json:
        o.emit_json("job", job)
        return 0
    spec = job["spec"]
    for k, v in [
        ("job", job["id"]),
        ("name", job["name"]),
        ("user", f"{job['user']} ({job['uid']})"),
        ("state", o.state(job["state"])),
        ("node", job["node"] or "-"),
        ("address", (spec.get("net") or {}).get("address") or "its node's"),
        ("command", _short(shlex.join(spec["argv"]), 100)),
        ("cwd", spec["cwd"]),
        ("stdout", spec["stdout"]),
        ("stderr", spec["stderr"]),
        ("submitted", o.when(job["submitted_at"])),
        ("runtime", duration(job["runtime"])),
        ("exit", exit_text(job) or "-"),
        ("reason", job["reason"] or "-"),
    ]:
        o.out.print(f"[bold]{k:>10}[/]  {v}")
    if job["checkpoints"]:
        o.out.print("[bold]checkpoints[/]")
        _ckpt_table(job["checkpoints"])
    o.out.print("[bold]events[/]")
    _events(job["events"])
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _events(events: list[dict[str, Any]]) -> None:
    """One line per event: its facts, numbers rounded, explanations left to `why`."""
    for ev in events:
        facts = []
        for k, v in ev.items():
            if k in ("at", "kind", "explanation") or v in ("", None, [], {}):
                continue
            if isinstance(v, float):
                v = f"{v:.3f}"
            facts.append(f"{k}={_short(str(v), 60)}")
        o.out.print(f"  {o.when(ev['at'])}  {ev['kind']:<16} {' '.join(facts)}")


def cmd_wait(ctx: Ctx) -> int:
    t = ctx.args.timeout
    job = ctx.call(
        m.JobWait(job=ctx.args.job, timeout=t),
        timeout=(t + 10) if t is not None else 10 * 365 * 86400,
    )
    if ctx.json:
        o.emit_json("job", job)
    else:
        usage = job.get("exit") or {}
        o.out.print(
            f"job {job['id']} {job['state']}: {exit_text(job)}"
            + (
                f"  (user {usage['utime']:.2f}s, sys {usage['stime']:.2f}s, "
                f"max rss {usage['maxrss_kb'] / 1024:.1f} MiB)"
                if "utime" in usage
                else ""
            )
        )
    return exit_code(job)


def _simple(ctx: Ctx, body: m.Request[Any], done: str) -> int:
    job = ctx.call(body)
    if ctx.json:
        o.emit_json("job", job)
    else:
        o.out.print(f"job {job['id']}: {done} ({o.state(job['state'])})")
    return 0


def cmd_kill(ctx: Ctx) -> int:
    sig = parse_signal(ctx.args.signal)
    return _simple(
        ctx, m.JobKill(job=ctx.args.job, signal=sig), f"sent {signal.Signals(sig).name}"
    )


def cmd_suspend(ctx: Ctx) -> int:
    return _simple(ctx, m.JobSuspend(job=ctx.args.job), "suspended")


def cmd_resume(ctx: Ctx) -> int:
    return _simple(ctx, m.JobResume(job=ctx.args.job), "resumed")


def cmd_hold(ctx: Ctx) -> int:
    return _simple(ctx, m.JobHold(job=ctx.args.job), "held")


def cmd_release(ctx: Ctx) -> int:
    return _simple(ctx, m.JobRelease(job=ctx.args.job), "released")


def cmd_checkpoint(ctx: Ctx) -> int:
    t = time.monotonic()
    with o.err.status(f"checkpointing job {ctx.args.job}..."):
        ckpt = ctx.call(
            m.JobCheckpoint(job=ctx.args.job, stop=ctx.args.stop),
            timeout=max(ctx.args.timeout, 900),
        )
    if ctx.json:
        o.emit_json("checkpoint", ckpt)
    else:
        o.out.print(
            f"checkpoint {ckpt['id']}: {ckpt['size'] / 2**20:.1f} MiB on "
            f"{', '.join(ckpt['holders'])} in {time.monotonic() - t:.2f}s"
            + (" (job stopped)" if ckpt["stopped"] else "")
        )
    return 0


def _ckpt_table(ckpts: list[dict[str, Any]]) -> None:
    o.table(
        None,
        ["CHECKPOINT", "TAKEN", "SIZE", "ON", "STOPPED"],
        [
            [
                c["id"],
                o.when(c["taken_at"]),
                f"{c['size'] / 2**20:.1f}M",
                ",".join(c["holders"]),
                "yes" if c["stopped"] else "no",
            ]
            for c in ckpts
        ],
    )


def cmd_ckpt_list(ctx: Ctx) -> int:
    ckpts = ctx.call(m.JobCheckpoints(job=ctx.args.job))
    if ctx.json:
        o.emit_json("checkpoints", ckpts)
    else:
        _ckpt_table(ckpts)
    return 0


def cmd_restart(ctx: Ctx) -> int:
    with o.err.status(f"restarting job {ctx.args.job}..."):
        job = ctx.call(
            m.JobRestart(
                job=ctx.args.job, checkpoint=ctx.args.checkpoint, node=ctx.args.node
            ),
            timeout=max(ctx.args.timeout, 900),
        )
    if ctx.json:
        o.emit_json("job", job)
    else:
        o.out.print(f"job {job['id']}: {job['reason']}")
    return 0


def cmd_why(ctx: Ctx) -> int:
    why = ctx.call(m.JobWhy(job=ctx.args.job))
    if ctx.json:
        o.emit_json("why", why)
        return 0
    o.out.print(f"job {why['job']} is {o.state(why['state'])}: {why['reason'] or '-'}")
    if why.get("scheduler"):
        o.out.print(why["scheduler"])
    _events(why["events"])
    return 0


def cmd_migrate(ctx: Ctx) -> int:
    a = ctx.args
    with o.err.status(f"moving job {a.job} to {a.node}..."):
        moved = ctx.call(
            m.JobMigrate(job=a.job, node=a.node, live=a.live),
            timeout=max(a.timeout, 900),
        )
    if ctx.json:
        o.emit_json("migration", moved)
        return 0
    o.out.print(
        f"job {a.job}: {moved['from']} → {moved['to']} ({moved['mode']}): "
        f"frozen {moved['freeze_seconds'] * 1000:.0f} ms (dump "
        f"{moved['dump_seconds'] * 1000:.0f}, transfer "
        f"{moved['transfer_seconds'] * 1000:.0f}, restore "
        f"{moved['restore_seconds'] * 1000:.0f}), {moved['bytes'] / 2**20:.1f} MiB, "
        f"total {moved['total_seconds'] * 1000:.0f} ms"
        + (
            f" (last page after {moved['pages_seconds'] * 1000:.0f} ms)"
            if "pages_seconds" in moved
            else ""
        )
    )
    return 0
