"""LocalJob: one job of this node as the runtime holds it; waiting on its pidfd, and
reading the status file its init leaves."""

from __future__ import annotations

import json
import logging
import os
import select
import stat
import threading
from dataclasses import dataclass, field

import msgspec

from kernel_shim import PidFd
from ssi.jobs.model import ExitStatus, JobRecord, JobSpec, JobState

log = logging.getLogger(__name__)

_STATUS_MAX = 64 * 1024  # bytes of a status file we are willing to read


@dataclass(eq=False)
class LocalJob:
    """A job of this node, as the runtime sees it now (the runtime updates it).

    pidfd: readable once the init has exited (asyncio: loop.add_reader(job.fileno(),
    ...)); then call runtime.reap(job_id). None for a job that had ended before we saw
    it (adopt) or once reaped. Owned by the runtime: never close it yourself, and stop
    watching it before reap() or forget() closes it.
    """

    job_id: str
    record: JobRecord
    pidfd: PidFd | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # set while a held checkpoint (a migration) keeps it frozen: was it suspended?
    held_suspended: bool | None = None

    @property
    def spec(self) -> JobSpec:
        return self.record.spec

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def init_pid(self) -> int:
        return self.record.init_pid

    @property
    def pid(self) -> int:
        """Host PID of the job's init (PID 1 inside)."""
        return self.record.init_pid

    @property
    def running(self) -> bool:
        """Alive here: starting, running or suspended (its pidfd is set)."""
        return self.record.state.alive and self.pidfd is not None

    @property
    def exit(self) -> ExitStatus | None:
        return self.record.exit

    def fileno(self) -> int:
        if self.pidfd is None:
            raise ValueError(
                f"job {self.job_id} has no pidfd (state {self.state.value})"
            )
        return self.pidfd.fd


def read_status(job: LocalJob) -> ExitStatus | None:
    """The init's status file, if it is there and root (the init) wrote it;
    opened without following links, size-capped."""
    path = job.record.status_file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
            log.warning(
                "op=job.status job=%s ignoring %s: not root's", job.job_id, path
            )
            return None
        raw = os.read(fd, _STATUS_MAX)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        fields = {k: data[k] for k in _STATUS_FIELDS if k in data}
        return msgspec.convert({"source": "init", **fields}, ExitStatus)
    except (ValueError, TypeError, msgspec.ValidationError) as e:
        log.warning("op=job.status job=%s bad status file %s: %s", job.job_id, path, e)
        return None


_STATUS_FIELDS = tuple(
    f for f in ExitStatus.__struct_fields__ if f not in ("source", "cpu_seconds")
)


def readable(pidfd: PidFd) -> bool:
    return wait_readable(pidfd, 0)


def wait_readable(pidfd: PidFd, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(pidfd.fd, select.POLLIN)
    ms = None if timeout is None else int(timeout * 1000)
    return bool(poller.poll(ms))


def waitid(pidfd: PidFd) -> int | None:
    """Reap the process behind `pidfd` if it is our child and has exited; its wait
    status (os.waitpid style), or None if it is not ours to reap."""
    try:
        res = os.waitid(os.P_PIDFD, pidfd.fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None
    if res is None:
        return None
    if res.si_code == os.CLD_EXITED:
        return (res.si_status & 0xFF) << 8
    return res.si_status & 0x7F | (0x80 if res.si_code == os.CLD_DUMPED else 0)
