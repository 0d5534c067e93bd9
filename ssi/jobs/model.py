"""The job runtime's data: what a job is (JobSpec), how it ended (ExitStatus), what it
uses (JobStats), and what the runtime keeps on disk about it (JobRecord, job.json).

All are msgspec structs: they go to disk as JSON and over the wire as they are.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import signal

import msgspec

FORMAT = 1  # of job.json; a newer runtime reads older formats


class NetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job's network of its own (`--net private`): its namespace holds one
    interface with `address`, on the cluster network, wherever the job runs."""

    address: str


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to run and how. Empty strings mean defaults.

    - argv: the command; argv[0] is looked up on env's PATH.
    - env: the job's whole environment; the runtime adds SSI_JOB_ID, SSI_JOB_NAME,
      SSI_JOB_ADDRESS (with net), and PATH when missing.
    - cwd: absolute; where the job starts and where relative stdio paths point.
    - stdin: a file to read ("/dev/null" by default). stdout, stderr: files appended
      to, created 0644; defaults <cwd>/ssi-<job_id>.out and .err (as Slurm's
      slurm-<id>.out). The same path for both shares one open file. All three, and
      cwd, are opened by the job's main process once it is the job's user, never by
      root on its behalf.
    - net: None shares the node's network; a NetSpec gives the job its own.
    """

    argv: list[str]
    name: str = ""
    cwd: str = "/"
    env: dict[str, str] = {}
    uid: int = 0
    gid: int = 0
    groups: list[int] = []
    stdin: str = "/dev/null"
    stdout: str = ""
    stderr: str = ""
    net: NetSpec | None = None

    def check(self) -> None:
        """ValueError naming the first bad field."""
        if not self.argv or not self.argv[0]:
            raise ValueError("argv: empty command")
        if not os.path.isabs(self.cwd):
            raise ValueError(f"cwd: {self.cwd!r} is not an absolute path")
        for ident in (self.uid, self.gid, *self.groups):
            if ident < 0:
                raise ValueError(f"uid/gid/groups: negative id {ident}")
        texts = [*self.argv, self.cwd, self.stdin, self.stdout, self.stderr]
        texts += [*self.env, *self.env.values()]
        if any("\0" in t for t in texts):
            raise ValueError("a NUL byte in argv, env, cwd or a stdio path")
        if any("=" in k or not k for k in self.env):
            raise ValueError("env: a variable name is empty or holds '='")
        if self.net is not None:
            try:
                ipaddress.IPv4Address(self.net.address)
            except ValueError:
                raise ValueError(
                    f"net: {self.net.address!r} is no IPv4 address"
                ) from None


class JobState(enum.Enum):
    STARTING = "starting"  # being set up or restored; not yet running
    RUNNING = "running"
    SUSPENDED = "suspended"  # frozen by suspend()
    ENDED = "ended"  # its init has exited: see ExitStatus
    CHECKPOINTED = "checkpointed"  # stopped by a checkpoint; lives on in its images

    @property
    def alive(self) -> bool:
        return self in (JobState.STARTING, JobState.RUNNING, JobState.SUSPENDED)


class ExitStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a job ended.

    source: "init" (the init's status file: the main process's status and rusage),
    "wait" (no status file; the init's own wait status, e.g. killed by SIGKILL),
    "checkpoint" (stopped by a checkpoint, to be restored), "unknown" (ended while
    nobody could see how: e.g. the init SIGKILLed while ssid was down).
    utime, stime, maxrss_kb come from the init's getrusage (the processes it reaped);
    cpu_seconds from the job's cgroup (every process the job ever had).
    """

    source: str
    exited: int | None = None
    signaled: int | None = None
    core_dumped: bool = False
    exec_errno: int | None = None
    exec_error: str = ""
    setup_error: str = ""  # why the init could not start the command (stdio, runtime)
    utime: float = 0.0
    stime: float = 0.0
    maxrss_kb: int = 0
    started: float = 0.0  # unix time the init started (this incarnation)
    ended: float = 0.0  # unix time it ended
    cpu_seconds: float | None = None

    @property
    def code(self) -> int | None:
        """Shell-style: the exit code, or 128+N for signal N; None when unknown."""
        if self.exited is not None:
            return self.exited
        if self.signaled is not None:
            return 128 + self.signaled
        return None

    @property
    def checkpointed(self) -> bool:
        return self.source == "checkpoint"

    def describe(self) -> str:
        if self.checkpointed:
            return "stopped by a checkpoint"
        if self.setup_error:
            return f"could not start: {self.setup_error}"
        if self.exec_errno:
            return f"could not run the command: {self.exec_error}"
        if self.signaled is not None:
            try:
                name = signal.Signals(self.signaled).name
            except ValueError:
                name = f"signal {self.signaled}"
            return f"killed by {name}" + (" (core dumped)" if self.core_dumped else "")
        if self.exited is not None:
            return f"exited with status {self.exited}"
        return "ended, status unknown"


class JobStats(msgspec.Struct, frozen=True):
    """A job's resource use now. PIDs: host view unless said otherwise."""

    job_id: str
    state: str
    init_pid: int
    main_pid: int | None  # the main process's PID inside the job (2), None once gone
    main_host_pid: int | None
    nprocs: int
    cpu_seconds: float  # user + system, every process past and present (cgroup)
    rss_bytes: int  # resident memory, summed over the processes
    memory_bytes: int | None  # what the cgroup is charged (includes page cache)
    started: float  # unix time the job first started (kept across restores)
    runtime_seconds: float  # wall time since then


class JobRecord(msgspec.Struct, kw_only=True):
    """root/<job_id>/job.json: what a new runtime needs to adopt the job."""

    format: int = FORMAT
    job_id: str
    spec: JobSpec
    node: str  # where it runs now
    state: JobState
    init_pid: int = 0  # host PID of the init on this node, 0 before it exists
    started: float  # unix time the job first started (kept across restores)
    status_file: str  # where the init writes its ExitStatus (as the job's user)
    stdin: str
    stdout: str
    stderr: str
    cgroup: str  # e.g. "/ssi/17"
    restores: int = 0  # how many times it was restored
    restored_from: str = ""  # the checkpoint of the last restore
    exit: ExitStatus | None = None
