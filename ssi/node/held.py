"""What a migration cut short by the death of an ssid leaves on its node, and how the
next ssid takes it back (the executor calls these; the store decides, through
job.here or agent.settle, which copy runs on).

    a source's copy:  frozen by the dump; a live one also held under ptrace by a
                      CRIU page server that outlived its ssid
    a target's copy:  frozen by the restore guard, maybe still stopped by CRIU
                      (restored with leave_stopped for the commit)
    CRIU killed mid-restore: its cgroup yard left mounted in the job's directory

    held ─▶ resume_held: end such a CRIU ─▶ SIGCONT while frozen ─▶ thaw
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ssi.jobs import JobRuntime

log = logging.getLogger(__name__)


def held(rt: JobRuntime, job_id: str) -> bool:
    """Whether the job is frozen, or held under ptrace by our CRIU."""
    return rt.cgroups.frozen(job_id) or bool(_criu_tracers(rt, job_id))


def resume_held(rt: JobRuntime, job_id: str) -> None:
    """Run again a job that a move held here. Not one instruction runs before the
    thaw: the SIGCONTs reach tasks still frozen."""
    _end_orphan_criu(rt, job_id)
    for pid in rt.cgroups.pids(job_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    if rt.cgroups.frozen(job_id):
        rt.resume(job_id)


def _criu_tracers(rt: JobRuntime, job_id: str) -> set[int]:
    """CRIU processes that trace the job's tasks and outlived the ssid that ran
    them (a CRIU of ours at work is our child); never another tracer (a
    debugger)."""
    criu = os.path.realpath(shutil.which(rt.criu.binary) or rt.criu.binary)
    tracers = {_tracer(pid) for pid in rt.cgroups.pids(job_id)} - {0}
    return {t for t in tracers if _exe(t) == criu and _parent(t) != os.getpid()}


def _end_orphan_criu(rt: JobRuntime, job_id: str, timeout: float = 5.0) -> None:
    """A live source's CRIU serves pages as long as no one tells it to stop, and
    holds the job's tasks under ptrace meanwhile (its cgroup thawed): the job runs
    here again only once that CRIU is gone."""
    tracers = _criu_tracers(rt, job_id)
    for tracer in tracers:
        log.warning("job %s: ending CRIU %s, orphaned by a cut move", job_id, tracer)
        with contextlib.suppress(ProcessLookupError):
            os.kill(tracer, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_tracer(p) in tracers for p in rt.cgroups.pids(job_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still traced by CRIU {tracers}")
        time.sleep(0.01)


def _tracer(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def _exe(pid: int) -> str:
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return ""


def unmount_cgroup_yards(jobs_root: Path) -> None:
    """A CRIU killed mid-restore (its node lost power, or OOM) leaves its cgroup
    yard mounted in the job's directory, which then cannot be removed."""
    for yard in jobs_root.glob("*/.criu.cgyard.*"):
        log.warning("unmounting %s, left by a CRIU killed midway", yard)
        subprocess.run(["umount", "-R", "-l", str(yard)], capture_output=True)
        with contextlib.suppress(OSError):
            yard.rmdir()
