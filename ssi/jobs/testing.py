"""Helpers for tests that run real jobs (root): a throwaway runtime whose cgroups,
status files and processes are all removed afterwards, and checked for leaks.

    with scratch_runtime(tmp_path) as rt:      # cgroup base ssi-t-XXXX, /run/ssi-t-XXXX
        job = rt.start("1", JobSpec(argv=[...], cwd=str(tmp_path)))
        ...
    # every job killed and forgotten; no cgroup, status dir or process left
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ssi.checkpoint import Criu, CriuError
from ssi.jobs.cgroups import Cgroups, detect
from ssi.jobs.model import JobSpec
from ssi.jobs.runtime import JobRuntime

T = TypeVar("T")
NOBODY = 65534


def wait_for(
    cond: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `cond` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def criu() -> Criu:
    from ssi import config

    return Criu(config.resolve_criu(config.load()))


def leftovers(cgroups: Cgroups) -> list[str]:
    """What is left of a base: job cgroups, and processes in them."""
    left = []
    for job_id in cgroups.job_ids():
        left.append(f"cgroup {cgroups.path(job_id)} pids {cgroups.pids(job_id)}")
    return left


def purge(cgroups: Cgroups) -> None:
    """Kill what runs in a base's job cgroups and remove them, and the base."""
    for job_id in cgroups.job_ids():
        with contextlib.suppress(OSError):
            if cgroups.pids(job_id):
                cgroups.kill(job_id)
            cgroups.remove(job_id, timeout=10.0)
    for base in cgroups._base_dirs():
        with contextlib.suppress(FileNotFoundError):
            base.rmdir()


def job_ns_view(rt: JobRuntime, job_id: str) -> list[tuple[str, int]]:
    """(command name, PID inside the job) of each of the job's processes, sorted; one
    that ends while they are read (before a file of it is opened, or between the open
    and the read) is left out."""
    out = []
    for pid in rt.cgroups.pids(job_id):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        nspid = status.split("NSpid:")[1].split("\n")[0].split()
        out.append((comm, int(nspid[-1])))
    return sorted(out)


def job_comms(rt: JobRuntime, job_id: str) -> list[str]:
    """The command names of the job's processes (as job_ns_view)."""
    return [comm for comm, _ in job_ns_view(rt, job_id)]


@contextlib.contextmanager
def scratch_runtime(
    tmp: Path,
    criu_: Criu | None = None,
    *,
    node: str = "test",
    cgroups: Cgroups | None = None,
    name: str = "jobs",
) -> Iterator[JobRuntime]:
    """A JobRuntime on tmp/<name>, its own cgroup base and status dir (under /run,
    searchable by every user); at exit every job is killed and forgotten, and what
    is left (cgroups, processes) fails the test after being removed."""
    token = secrets.token_hex(4)
    run = Path(f"/run/ssi-t-{token}")
    run.mkdir(mode=0o755)
    cg = cgroups if cgroups is not None else detect(f"ssi-t-{token}")
    rt = JobRuntime(
        tmp / name, criu_ or criu(), node, cgroups=cg, status_dir=run / "status"
    )
    try:
        yield rt
    finally:
        for job in rt.jobs():
            with contextlib.suppress(Exception):
                rt.forget(job.job_id, kill=True)
        left = leftovers(cg)
        purge(cg)
        shutil.rmtree(run, ignore_errors=True)
        if left:
            raise AssertionError(f"jobs left behind: {left}")


@contextlib.contextmanager
def user_dir(uid: int = NOBODY, gid: int = NOBODY) -> Iterator[Path]:
    """A fresh directory owned by `uid` where every user can reach it (/tmp);
    removed afterwards."""
    d = Path(f"/tmp/ssi-t-{secrets.token_hex(4)}")
    d.mkdir(mode=0o755)
    try:
        os.chown(d, uid, gid)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_OTHER_USERS: dict[str, str | None] = {}


def other_users_blocker(criu_: Criu) -> str | None:
    """None if this CRIU can dump a job of another user than root here, else what
    stops it: e.g. a root without CAP_SYS_RESOURCE cannot read the task's rlimits
    with stock CRIU 4.1.1 ("Can't get rlimit 0: Operation not permitted").
    Found by trying once per CRIU binary."""
    if criu_.binary not in _OTHER_USERS:
        with (
            tempfile.TemporaryDirectory(prefix="ssi-t-") as tmp,
            user_dir() as work,
            scratch_runtime(Path(tmp), criu_) as rt,
        ):
            spec = JobSpec(argv=["sleep", "60"], cwd=str(work), uid=NOBODY, gid=NOBODY)
            rt.start("probe", spec)
            try:
                rt.checkpoint("probe", Path(tmp) / "ck", leave_running=True)
                _OTHER_USERS[criu_.binary] = None
            except CriuError as e:
                _OTHER_USERS[criu_.binary] = e.blocker or str(e)
    return _OTHER_USERS[criu_.binary]
