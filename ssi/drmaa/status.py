"""How an ended job's record becomes DRMAA's stat, rusage and job state.

stat (an int the drmaa_w* functions decode):

    bit 16  exited      bits 8..15  exit status (0..255)
    bit 17  signaled    bits 0..6   signal number      bit 18  core dumped
    bit 19  aborted     (never ran: bad working directory or stdio, cancelled while
                        queued or held, lost before it could be checkpointed)

    {"exited": 3}                    ─▶ 0x10300   wifexited, wexitstatus 3
    {"signaled": 15}                 ─▶ 0x2000f   wifsignaled, wtermsig "SIGTERM"
    {"aborted": True, "error": ...}  ─▶ 0x80000   wifaborted

Job states: held → USER_ON_HOLD, queued/starting → QUEUED_ACTIVE, running → RUNNING,
suspended and stopped (checkpointed, resumable) → USER_SUSPENDED, restarting →
SYSTEM_SUSPENDED, an exit of its own (any status) → DONE, killed or aborted → FAILED.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from typing import Any

__all__ = [
    "Ps",
    "encode",
    "exited",
    "exit_status",
    "signaled",
    "term_signal",
    "core_dumped",
    "aborted",
    "signal_name",
    "rusage",
    "ps",
]

EXITED = 1 << 16
SIGNALED = 1 << 17
CORE = 1 << 18
ABORTED = 1 << 19
ENDED_STATES = ("done", "failed", "killed")


class Ps(enum.IntEnum):
    UNDETERMINED = 0x00
    QUEUED_ACTIVE = 0x10
    SYSTEM_ON_HOLD = 0x11
    USER_ON_HOLD = 0x12
    USER_SYSTEM_ON_HOLD = 0x13
    RUNNING = 0x20
    SYSTEM_SUSPENDED = 0x21
    USER_SUSPENDED = 0x22
    USER_SYSTEM_SUSPENDED = 0x23
    DONE = 0x30
    FAILED = 0x40


_LIVE_PS = {
    "held": Ps.USER_ON_HOLD,
    "queued": Ps.QUEUED_ACTIVE,
    "starting": Ps.QUEUED_ACTIVE,
    "running": Ps.RUNNING,
    "suspended": Ps.USER_SUSPENDED,
    "stopped": Ps.USER_SUSPENDED,
    "restarting": Ps.SYSTEM_SUSPENDED,
}


def encode(job: Mapping[str, Any]) -> int:
    """The stat of an ended job's record."""
    ex = job.get("exit")
    if not ex or ex.get("aborted"):
        return ABORTED
    if ex.get("exited") is not None:
        return EXITED | (int(ex["exited"]) & 0xFF) << 8
    if ex.get("signaled") is not None:
        return (
            SIGNALED
            | (int(ex["signaled"]) & 0x7F)
            | (CORE if ex.get("core_dumped") else 0)
        )
    return 0  # it ran, and nobody saw how it ended


def exited(stat: int) -> bool:
    return bool(stat & EXITED)


def exit_status(stat: int) -> int:
    return (stat >> 8) & 0xFF if stat & EXITED else 0


def signaled(stat: int) -> bool:
    return bool(stat & SIGNALED)


def term_signal(stat: int) -> int:
    return stat & 0x7F if stat & SIGNALED else 0


def core_dumped(stat: int) -> bool:
    return bool(stat & SIGNALED and stat & CORE)


def aborted(stat: int) -> bool:
    return bool(stat & ABORTED)


def signal_name(number: int) -> str:
    """ "SIGTERM" for 15; real-time signals as "SIGRTMIN+3"."""
    try:
        return signal.Signals(number).name
    except ValueError:
        pass
    lo, hi = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if lo < number < hi:
        return f"SIGRTMIN+{number - lo}"
    return f"SIG{number}"


def ps(job: Mapping[str, Any]) -> Ps:
    state = str(job.get("state", ""))
    if state in _LIVE_PS:
        return _LIVE_PS[state]
    if state in ENDED_STATES:
        return Ps.DONE if exited(encode(job)) else Ps.FAILED
    return Ps.UNDETERMINED


def _num(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def rusage(job: Mapping[str, Any]) -> list[str]:
    """name=value strings of an ended job's resource use and times (unix seconds)."""
    ex: Mapping[str, Any] = job.get("exit") or {}
    out: dict[str, Any] = {"submission_time": job.get("submitted_at")}
    if not ex.get("aborted"):  # the init's clock, as end_time's
        out["start_time"] = ex.get("started") or job.get("started_at")
    out["end_time"] = job.get("ended_at")
    if out.get("start_time") and out["end_time"]:
        out["wallclock"] = max(0.0, float(out["end_time"]) - float(out["start_time"]))
    cpu = ex.get("cpu_seconds")
    if cpu is None and ("utime" in ex or "stime" in ex):
        cpu = float(ex.get("utime", 0.0)) + float(ex.get("stime", 0.0))
    out["cpu"] = cpu
    out["ru_utime"] = ex.get("utime")
    out["ru_stime"] = ex.get("stime")
    out["ru_maxrss"] = ex.get("maxrss_kb")  # KiB, as getrusage reports it
    out["exit_status"] = ex.get("exited")
    out["signal"] = ex.get("signaled")
    out["hostname"] = job.get("node") or None
    return [f"{k}={_num(v)}" for k, v in out.items() if v is not None]
