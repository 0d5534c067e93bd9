"""JobRuntime: the jobs of one node. Synchronous and thread-safe; CRIU calls block.

    start(id, spec) ──▶ cgroup <base>/<id> ──▶ spawn ssi-init (PID|IPC|UTS, the user,
                        new session, no pdeathsig; with spec.net, into the job's own
                        netns: netjobs.py) ──▶ into the cgroup ──▶ "G" ──▶ CMD
    LocalJob.pidfd readable ──▶ reap(id) ──▶ ExitStatus (the init's status file)
    checkpoint(id, dest) ──▶ freeze ──▶ CRIU dump ──▶ digests + manifest ──▶ rename
    restore(id, ckpt)    ──▶ verify ──▶ CRIU restore (our child) ──▶ same cgroup, PIDs

On disk, so that a new runtime (after an ssid crash) adopts what runs and learns how
the rest ended:

    <root>/<job_id>/job.json         JobRecord
    <root>/<job_id>/dump.log         CRIU's log of the last checkpoint (kept on failure)
    <root>/<job_id>/restore.log      CRIU's log of the last restore here
    <status_dir>/<job_id>.json       the init's status file, written at exit; the same
                                     path on every node, since a restored init keeps its
                                     arguments.
    <status_dir>/<job_id>.cwd/       the init's cwd, made on every node it runs on
                                     (left behind, empty: a copy elsewhere may use it)

The init runs as root (CRIU needs the root task of a PID namespace to mount a /proc
for it); the command runs as the user, who also opens its stdio files and cwd.

Jobs run without a parent-death signal: they outlive ssid. Call set_child_subreaper()
in the daemon so that restored inits, and jobs left by a crashed predecessor, are
reaped by us.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal as _signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

import kernel_shim
from kernel_shim import NsType, PidFd
from ssi.checkpoint import Criu, CriuDaemon, LazyDump, PageServer
from ssi.jobs import checkpointing, netjobs, procfs
from ssi.jobs.cgroups import Cgroups, check_name, detect
from ssi.jobs.local import LocalJob, read_status, readable, wait_readable, waitid
from ssi.jobs.manifest import Manifest
from ssi.jobs.model import ExitStatus, JobRecord, JobSpec, JobState, JobStats
from ssi.net.jobnet import JobNetworks
from ssi.proto.errors import (
    BadRequest,
    Conflict,
    Internal,
    NotFound,
    SsiError,
    Timeout,
)

log = logging.getLogger(__name__)

JOB_NAMESPACES = NsType.PID | NsType.IPC | NsType.UTS
DEFAULT_STATUS_DIR = Path("/run/ssi/job-status")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# Signals ssi-init forwards to the main process (or, once it is gone, to every one).
FORWARDED = frozenset(
    {_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR1, _signal.SIGUSR2}
)


def init_binary() -> Path:
    """ssi-init as installed next to this package."""
    return Path(__file__).resolve().parent / "bin" / "ssi-init"


class JobRuntime:
    """The jobs of one node under `root` (<state_dir>/jobs)."""

    START_TIMEOUT = 10.0  # seconds for a new init to report its stdio open
    EXIT_TIMEOUT = 10.0  # seconds for a killed job's init to go

    def __init__(
        self,
        root: Path,
        criu: Criu,
        node: str,
        *,
        cgroups: Cgroups | None = None,
        cgroup_base: str = "ssi",
        status_dir: Path = DEFAULT_STATUS_DIR,
        init: Path | None = None,
        durable: bool = False,
        networks: JobNetworks | None = None,
    ) -> None:
        """root: this node's job directory. cgroups: default detect(cgroup_base).
        status_dir: where inits write their status files, and their cwd: the same
        path on every node of the cluster (a restored init keeps both).
        durable: fsync every checkpoint before it is reported (costs the whole
        write-back: off by default, a checkpoint counts once it has a replica).
        networks: the namespaces of `--net private` jobs (None: such jobs are
        refused)."""
        self.root = Path(root)
        self.criu = criu
        self.node = node
        self.cgroups = cgroups if cgroups is not None else detect(cgroup_base)
        self.status_dir = Path(status_dir)
        self.init = Path(init) if init is not None else init_binary()
        self.durable = durable
        self.networks = networks
        if not os.access(self.init, os.X_OK):
            raise Internal(f"job init {self.init} is missing: run scripts/setup.sh")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.status_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._jobs: dict[str, LocalJob] = {}
        self._lock = threading.Lock()

    # -- lookup ------------------------------------------------------------------------

    def job(self, job_id: str) -> LocalJob:
        """The job, or NotFound."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no job {job_id} on node {self.node}", details={"job": job_id}
            )
        return job

    def jobs(self) -> list[LocalJob]:
        with self._lock:
            return list(self._jobs.values())

    # -- start -------------------------------------------------------------------------

    def start(self, job_id: str, spec: JobSpec) -> LocalJob:
        """Start the job; returns once its command has been started (or raises).

        BadRequest: a bad spec, a cwd the user cannot enter, a stdio file the user
        cannot open (nothing of the job is left then). A command that cannot be
        executed is the job's exit status (127/126), as in a shell."""
        try:
            check_name("job id", job_id)
            spec.check()
        except ValueError as e:
            raise BadRequest(str(e), details={"job": job_id}) from None
        run_dir = self.root / job_id
        with self._lock:
            if job_id in self._jobs or run_dir.exists():
                raise Conflict(f"job {job_id} exists on node {self.node}")
            run_dir.mkdir(mode=0o700)
            rec = self._new_record(job_id, spec, time.time())
            job = LocalJob(job_id, rec)
            self._jobs[job_id] = job
        try:
            with job.lock:
                self._save(job)
                self._spawn(job)
        except BaseException:
            with self._lock:
                self._jobs.pop(job_id, None)
            self._cleanup_failed(job_id)
            raise
        log.info(
            "op=job.start job=%s pid=%s argv=%s uid=%s",
            job_id, rec.init_pid, spec.argv, spec.uid,
        )  # fmt: skip
        return job

    def _new_record(self, job_id: str, spec: JobSpec, started: float) -> JobRecord:
        def where(path: str, default: str) -> str:
            return os.path.normpath(os.path.join(spec.cwd, path or default))

        return JobRecord(
            job_id=job_id,
            spec=spec,
            node=self.node,
            state=JobState.STARTING,
            started=started,
            status_file=str(self.status_dir / f"{job_id}.json"),
            stdin=where(spec.stdin, "/dev/null"),
            stdout=where(spec.stdout, f"ssi-{job_id}.out"),
            stderr=where(spec.stderr, f"ssi-{job_id}.err"),
            cgroup=self.cgroups.path(job_id),
        )

    def _spawn(self, job: LocalJob) -> None:
        rec, spec = job.record, job.spec
        self._prepare_status(rec)
        self.cgroups.create(job.job_id)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env["SSI_JOB_ID"] = job.job_id
        env.setdefault("SSI_JOB_NAME", spec.name or job.job_id)
        if spec.net is not None:  # its own address, wherever it runs
            env["SSI_JOB_ADDRESS"] = spec.net.address
        netns = netjobs.create(self, job)  # None: the node's network
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        argv = [
            str(self.init),
            "--status-file", rec.status_file,
            "--uid", str(spec.uid),
            "--gid", str(spec.gid),
            "--groups", ",".join(map(str, spec.groups)),
            "--cwd", spec.cwd,
            "--stdin", rec.stdin,
            "--stdout", rec.stdout,
            "--stderr", rec.stderr,
            "--sync-fd", str(theirs.fileno()),
            "--",
            *spec.argv,
        ]  # fmt: skip
        try:
            try:
                pid = kernel_shim.spawn(
                    argv,
                    namespaces=JOB_NAMESPACES,
                    netns=netns,
                    hostname=_hostname(job.job_id, spec.name),
                    cwd=str(self.status_dir / f"{job.job_id}.cwd"),
                    env=env,
                    stdin=null,
                    stdout=null,
                    stderr=null,
                    pass_fds=(theirs.fileno(),),
                    new_session=True,
                )
            except OSError as e:
                raise Internal(
                    f"cannot start the init of job {job.job_id}: {e}"
                ) from None
            finally:
                theirs.close()
                os.close(null)
            rec.init_pid = pid
            job.pidfd = kernel_shim.pidfd_open(pid)
            try:
                self.cgroups.add(job.job_id, pid)
                self._save(job)
                report = _go(ours, self.START_TIMEOUT)
                if report != "ok":
                    why = report.removeprefix("error: ") or "the init said nothing"
                    raise BadRequest(
                        f"cannot start job {job.job_id}: {why}",
                        details={"job": job.job_id},
                    )
            except BaseException:
                ours.close()
                self._kill_and_reap(job)
                raise
            rec.state = JobState.RUNNING
            self._save(job)
        finally:
            ours.close()

    def _prepare_status(self, rec: JobRecord) -> None:
        """No stale status file of an earlier incarnation of the job id; the init's
        cwd. CRIU's parasite makes its /proc mount point there while it dumps the
        job: in a cwd shared by all inits, two dumps at once failed (EEXIST)."""
        (self.status_dir / f"{rec.job_id}.cwd").mkdir(mode=0o700, exist_ok=True)
        for stale in (rec.status_file, rec.status_file + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)

    def _kill_and_reap(self, job: LocalJob) -> None:
        if job.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            job.pidfd.send_signal(_signal.SIGKILL)
        wait_readable(job.pidfd, self.EXIT_TIMEOUT)
        waitid(job.pidfd)
        job.pidfd.close()
        job.pidfd = None

    def _cleanup_failed(self, job_id: str) -> None:
        """Undo a start or restore that failed: nothing of the job may be left."""
        with contextlib.suppress(OSError):
            if self.cgroups.pids(job_id):
                self.cgroups.kill(job_id)
            self.cgroups.remove(job_id)
        netjobs.remove(self, job_id)
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    # -- adopt -------------------------------------------------------------------------

    def adopt(self) -> list[LocalJob]:
        """Take over the jobs a previous runtime on this root left (after an ssid
        restart): every job still running (found in its cgroup, by its init: the
        process whose NSpid ends in 1) gets a pidfd; every job that ended meanwhile
        has its ExitStatus from its status file (state ENDED, pidfd None).
        Jobs this runtime knows already are returned as they are."""
        found: list[LocalJob] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir() or not (Path(entry.path) / "job.json").exists():
                continue
            job_id = entry.name
            with self._lock:
                known = self._jobs.get(job_id)
            if known is not None:
                found.append(known)
                continue
            try:
                rec = _load(Path(entry.path) / "job.json")
            except (OSError, msgspec.DecodeError) as e:
                log.warning("op=job.adopt job=%s unreadable job.json: %s", job_id, e)
                continue
            job = LocalJob(job_id, rec)
            with job.lock:
                self._adopt_one(job)
            with self._lock:
                job = self._jobs.setdefault(job_id, job)
            found.append(job)
            log.info(
                "op=job.adopt job=%s state=%s pid=%s",
                job_id, job.state.value, job.init_pid,
            )  # fmt: skip
        return found

    def _adopt_one(self, job: LocalJob) -> None:
        rec = job.record
        init = self._find_init(job.job_id)
        if init is not None:
            rec.init_pid, job.pidfd = init
            if rec.state in (JobState.STARTING, JobState.RUNNING, JobState.SUSPENDED):
                frozen = self.cgroups.frozen(job.job_id)
                rec.state = JobState.SUSPENDED if frozen else JobState.RUNNING
            self._save(job)
            return
        if rec.state.alive:
            rec.state = JobState.ENDED
            rec.exit = self._final_status(job, None)
            self._save(job)

    def _find_init(self, job_id: str) -> tuple[int, PidFd] | None:
        """The job's init in its cgroup, with a pidfd opened on it (then checked to
        still be there, so a recycled PID cannot pass for it)."""
        for pid in self.cgroups.pids(job_id):
            if not procfs.is_ns_init(pid):
                continue
            try:
                pidfd = kernel_shim.pidfd_open(pid)
            except ProcessLookupError:
                continue
            if self.cgroups.contains(job_id, pid) and procfs.is_ns_init(pid):
                return pid, pidfd
            pidfd.close()
        return None

    # -- exits -------------------------------------------------------------------------

    def exit_status(self, job_id: str) -> ExitStatus | None:
        """How the job ended; None while it runs. For a job that ended but was not
        reaped yet: the init's status file, without reaping (prefer reap())."""
        job = self.job(job_id)
        if job.record.exit is not None:
            return job.record.exit
        if job.state is JobState.CHECKPOINTED:
            return ExitStatus("checkpoint")
        if job.pidfd is not None and not readable(job.pidfd):
            return None
        # Ended, not reaped yet: what its init said, if it could (reap() knows more).
        return read_status(job) or ExitStatus("unknown")

    def reap(self, job_id: str) -> ExitStatus:
        """Collect a job whose init has exited (its pidfd is readable): waits for the
        init if it is our child, closes the pidfd, records the ExitStatus (state
        ENDED, or CHECKPOINTED for a job a checkpoint stopped). Conflict if the job
        still runs. Idempotent."""
        job = self.job(job_id)
        with job.lock:
            rec = job.record
            if rec.exit is not None:
                return rec.exit
            wait_status = None
            if job.pidfd is not None:
                if not readable(job.pidfd):
                    raise Conflict(f"job {job_id} is still running")
                wait_status = waitid(job.pidfd)
                job.pidfd.close()
                job.pidfd = None
            if rec.state is not JobState.CHECKPOINTED:
                rec.state = JobState.ENDED
            rec.exit = self._final_status(job, wait_status)
            self._save(job)
            log.info("op=job.end job=%s %s", job_id, rec.exit.describe())
            return rec.exit

    def wait(self, job_id: str, timeout: float | None = None) -> ExitStatus:
        """Block until the job ends (Timeout after `timeout` s), then reap it."""
        job = self.job(job_id)
        pidfd = job.pidfd
        if pidfd is not None and not pidfd.closed:
            if not wait_readable(pidfd, timeout):
                raise Timeout(f"job {job_id} still running after {timeout}s")
        return self.reap(job_id)

    def _final_status(self, job: LocalJob, wait_status: int | None) -> ExitStatus:
        cpu = None
        with contextlib.suppress(OSError):
            cpu = self.cgroups.usage(job.job_id).cpu_seconds
        if job.state is JobState.CHECKPOINTED:
            return ExitStatus(
                "checkpoint", signaled=int(_signal.SIGKILL), cpu_seconds=cpu
            )
        status = read_status(job)
        if status is None and wait_status is not None:
            code = os.waitstatus_to_exitcode(wait_status)
            status = (
                ExitStatus("wait", signaled=-code, ended=time.time())
                if code < 0
                else ExitStatus("wait", exited=code, ended=time.time())
            )
        if status is None:
            status = ExitStatus("unknown")
        return msgspec.structs.replace(status, cpu_seconds=cpu)

    # -- control -----------------------------------------------------------------------

    def signal(self, job_id: str, sig: int, *, every_process: bool = False) -> None:
        """Send `sig` to the job.

        SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 go through the init, to the main
        process (to every process once the main has exited). SIGKILL kills every
        process but the init (frozen meanwhile, so that none escapes by forking):
        the init then reports the main as killed by SIGKILL and exits. Any other
        signal goes to the main process, or to every process once it is gone.
        every_process: to every process of the job but the init, whatever the signal.
        Conflict once the job has ended."""
        job = self.job(job_id)
        if not job.state.alive or job.pidfd is None:
            raise Conflict(f"job {job_id} is not running ({job.state.value})")
        try:
            if sig == _signal.SIGKILL:
                self._kill_all_but_init(job, sig)
            elif every_process:
                self._signal_others(job, sig)
            elif sig in FORWARDED:
                job.pidfd.send_signal(sig)
            else:
                main = self._main_pid(job)
                if main is not None:
                    os.kill(main[0], sig)
                else:
                    self._signal_others(job, sig)
        except ProcessLookupError:
            raise Conflict(f"job {job_id} has ended") from None
        log.info("op=job.signal job=%s sig=%s", job_id, sig)

    def _others(self, job: LocalJob) -> list[int]:
        return [p for p in self.cgroups.pids(job.job_id) if p != job.init_pid]

    def _signal_others(self, job: LocalJob, sig: int) -> None:
        for pid in self._others(job):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill_all_but_init(self, job: LocalJob, sig: int) -> None:
        with job.lock:
            self.cgroups.freeze(job.job_id)
            try:
                self._signal_others(job, sig)
            finally:
                self.cgroups.thaw(job.job_id)  # frozen tasks die only once thawed
            if job.state is JobState.SUSPENDED:
                job.record.state = JobState.RUNNING
                self._save(job)
            # The init reaps them all and exits at once: return with the job gone.
            if job.pidfd is not None:
                wait_readable(job.pidfd, self.EXIT_TIMEOUT)

    def _main_pid(self, job: LocalJob) -> tuple[int, int] | None:
        """(host PID, PID inside the job) of the main process, None once it is gone:
        the init's first child, PID 2 of the namespace."""
        for kid in procfs.children(job.init_pid):
            ns = procfs.nspids(kid)
            if ns and ns[-1] == 2:
                return kid, 2
        return None

    def suspend(self, job_id: str) -> None:
        """Freeze every process of the job (cgroup freezer)."""
        job = self.job(job_id)
        with job.lock:
            self._require_alive(job)
            self.cgroups.freeze(job_id)
            job.record.state = JobState.SUSPENDED
            self._save(job)
        log.info("op=job.suspend job=%s", job_id)

    def resume(self, job_id: str) -> None:
        job = self.job(job_id)
        with job.lock:
            self._require_alive(job)
            self.cgroups.thaw(job_id)
            job.record.state = JobState.RUNNING
            self._save(job)
        log.info("op=job.resume job=%s", job_id)

    def _require_alive(self, job: LocalJob) -> None:
        if job.state not in (JobState.RUNNING, JobState.SUSPENDED):
            raise Conflict(f"job {job.job_id} is not running ({job.state.value})")
        if job.pidfd is None or readable(job.pidfd):
            raise Conflict(f"job {job.job_id} has ended")

    def stats(self, job_id: str) -> JobStats:
        job = self.job(job_id)
        rec = job.record
        pids = self.cgroups.pids(job_id) if job.state.alive else []
        usage = None
        with contextlib.suppress(OSError):
            usage = self.cgroups.usage(job_id)
        cpu = usage.cpu_seconds if usage is not None else None
        if cpu is None:
            stats = [procfs.stat(p) for p in pids]
            cpu = sum(s.utime + s.stime for s in stats if s is not None)
        main = self._main_pid(job) if pids else None
        end = rec.exit.ended if rec.exit is not None and rec.exit.ended else time.time()
        return JobStats(
            job_id=job_id,
            state=job.state.value,
            init_pid=rec.init_pid,
            main_pid=main[1] if main else None,
            main_host_pid=main[0] if main else None,
            nprocs=len(pids),
            cpu_seconds=cpu,
            rss_bytes=sum(procfs.rss_bytes(p) for p in pids),
            memory_bytes=usage.memory_bytes if usage is not None else None,
            started=rec.started,
            runtime_seconds=max(0.0, end - rec.started),
        )

    # -- checkpoint and restore ------------------------------------------------------

    def checkpoint(
        self,
        job_id: str,
        dest: Path,
        *,
        leave_running: bool,
        hold: bool = False,
        on_staging: Callable[[Path], None] | None = None,
        ps_fd: int | None = None,
    ) -> Manifest:
        """Dump the job's whole namespace into `dest` (must not exist; its parent
        must) and write its manifest. The job is frozen from the start of the dump
        until the manifest is written; then it runs on (leave_running) or is killed
        (state CHECKPOINTED: it lives on in `dest`).

        hold: stay frozen after the dump until settle() (a migration's source).
        on_staging: called (in this thread) with the directory CRIU is about to
        write into, renamed to `dest` when whole: a copy may follow it as it grows.
        On any failure nothing of `dest` is left and the job runs on (as it was:
        a suspended job stays suspended): CriuError (`.blocker` names what CRIU
        could not dump), CheckpointFailed (e.g. the disk filled up).
        ps_fd: a TCP socket connected to a `criu page-server` (Criu.start_page_server,
        a cold move's target): the pages go there, not into `dest`; the manifest
        says how many bytes (pages_sent)."""
        return checkpointing.checkpoint(
            self, self.job(job_id), Path(dest), leave_running, hold, on_staging, ps_fd
        )

    def checkpoint_lazy(
        self,
        job_id: str,
        dest: Path,
        *,
        port: int,
        ready_timeout: float = 30.0,
        address: str | None = None,
        ps_fd: int | None = None,
    ) -> tuple[Manifest, LazyDump]:
        """The post-copy variant of checkpoint(hold=True), a live migration's source:
        freeze, dump every image but the memory pages into `dest` (must not exist),
        write its manifest, and serve the pages on TCP `address`:`port` (an address
        of this node's network namespace; None: all) to one `criu lazy-pages`
        daemon, or on `ps_fd`, a TCP socket connected to where that daemon will
        run (ssi.migration.channel), listening on nothing. The job is frozen from
        CRIU's seizure of it. Returns once `dest` is whole and the server listens;
        the job stays frozen until settle(). Before settling,
        LazyDump.wait() (every page delivered) or, to abort,
        LazyDump.close_page_server() must end CRIU. On failure nothing of `dest` is
        left and the job runs on: CriuError, CheckpointFailed."""
        return checkpointing.checkpoint_lazy(
            self, self.job(job_id), Path(dest), port, ready_timeout, address, ps_fd
        )

    def restore_lazy(
        self,
        job_id: str,
        ckpt: Path,
        source: PageServer,
        *,
        verified: bool = False,
        daemon: CriuDaemon | None = None,
    ) -> tuple[LocalJob, CriuDaemon]:
        """restore(), post-copy: `ckpt` holds the images of checkpoint_lazy (no
        pages); a `criu lazy-pages` daemon fetches the pages from the page server at
        `source` while the job runs. The daemon exits once the last page arrived
        (CriuDaemon.wait() == 0); if it fails, the job's memory is incomplete:
        kill the job. `source.fd`: a socket already connected to the page server.
        verified: the images were checked against the manifest's digests on
        arrival, and are not hashed again. daemon: one started already for these
        images (Criu.start_lazy_pages, work_dir the job's run directory), used
        instead of starting one. Errors as restore()."""
        return checkpointing.restore_lazy(
            self, job_id, Path(ckpt), source, verified, daemon
        )

    def settle(self, job_id: str, *, moved: bool) -> None:
        """After checkpoint(hold=True), which leaves the job frozen: it moved (killed
        here, still frozen: state CHECKPOINTED) or not (thawed: it runs on here).
        The two-phase end of a migration: the source keeps the job until the target
        confirms."""
        checkpointing.settle(self, self.job(job_id), moved)

    def restore(
        self, job_id: str, ckpt: Path, *, checked: bool = False, frozen: bool = False
    ) -> LocalJob:
        """Restore the job from a checkpoint: verify() it first (CorruptCheckpoint
        before CRIU reads anything), then CRIU; the init becomes our child, in the
        job's cgroup, with the PIDs inside unchanged. Conflict if the job runs here.
        CriuError if CRIU fails (nothing of the job is left then).
        checked: the caller has just verified the digests (sizes are checked
        again, not the digest of every byte).
        frozen: leave it frozen (SUSPENDED) until resume() (a cold move's target
        waits so for the coordinator's record)."""
        return checkpointing.restore(
            self, job_id, Path(ckpt), checked=checked, frozen=frozen
        )

    # -- forget ------------------------------------------------------------------------

    def forget(self, job_id: str, *, kill: bool = False) -> None:
        """Drop an ended (or checkpointed-away) job: its cgroup, its directory, its
        status file. Conflict if it still runs, unless kill (then it is SIGKILLed,
        reaped, and dropped). Stop watching its pidfd first.

        Once the job has ended here, whatever is in a cgroup of its path belongs to
        another incarnation of it (restored on another node of a local cluster,
        which shares this machine's cgroups and status files): the cgroup is then
        left alone, and so is the status file of a job that a checkpoint stopped."""
        job = self.job(job_id)
        with job.lock:
            if job.pidfd is not None:
                if not readable(job.pidfd):
                    if not kill:
                        raise Conflict(f"job {job_id} is still running")
                    # A copy killed here (its job lives on elsewhere, or never
                    # will) must not reset the connections: cut it off first.
                    with contextlib.suppress(OSError, SsiError):
                        netjobs.cut(self, job)
                    with contextlib.suppress(OSError):
                        self.cgroups.kill(job_id)
                    wait_readable(job.pidfd, self.EXIT_TIMEOUT)
                self.reap(job_id)
            elif job.state.alive:  # never ran: a start or restore cut short
                with contextlib.suppress(OSError):
                    if kill and self.cgroups.pids(job_id):
                        self.cgroups.kill(job_id)
            try:
                self.cgroups.remove(job_id, timeout=2.0)
            except OSError as e:
                log.info("op=job.forget job=%s cgroup left in place: %s", job_id, e)
            if job.state is not JobState.CHECKPOINTED:
                for f in (job.record.status_file, job.record.status_file + ".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
            netjobs.remove(self, job_id)
            shutil.rmtree(self.root / job_id, ignore_errors=True)
            with self._lock:
                self._jobs.pop(job_id, None)
        log.info("op=job.forget job=%s", job_id)

    # -- persistence -------------------------------------------------------------------

    def _save(self, job: LocalJob) -> None:
        path = self.root / job.job_id / "job.json"
        tmp = path.with_name("job.json.tmp")
        data = msgspec.json.encode(job.record)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)


def _load(path: Path) -> JobRecord:
    return msgspec.json.decode(path.read_bytes(), type=JobRecord)


def _hostname(job_id: str, name: str) -> str:
    """The job's name if it is a usable host name, else its id."""
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-._" for c in name)
    return name if ok else job_id[:64]


def _go(sock: socket.socket, timeout: float) -> str:
    """Tell a new init it is in its cgroup; its answer: "ok" or "error: WHY"."""
    sock.settimeout(timeout)
    buf = b""
    try:
        sock.sendall(b"G")
        while not buf.endswith(b"\n") and len(buf) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        return f"error: the job init said nothing within {timeout}s"
    except OSError as e:  # it died before it could read or answer
        return f"error: the job init went away ({e.strerror})"
    return buf.decode(errors="replace").strip()
