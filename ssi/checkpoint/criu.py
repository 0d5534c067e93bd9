"""CRIU through its RPC: pycriu on a socketpair to `criu swrk`, one CRIU per request.

    Criu(binary).dump(pid, dir) ──socketpair──▶ criu swrk ──▶ images + dump.log in dir
    Criu(binary).restore(dir)   ──socketpair──▶ criu swrk ──▶ restored tree, our child

CRIU is started by kernel_shim.spawn (vfork-like: no os.fork of a threaded daemon, which
pycriu's use_binary would do), optionally inside another network namespace only.

The dumped tree is a job: PID 1 of its own PID/IPC/UTS namespaces (the job init), so
CRIU dumps those namespaces with it and restores them fresh, the PIDs inside unchanged.

Choices made for such jobs, each tried on this machine (DumpOptions, RestoreOptions):
- shell_job off: the init is the leader of a session of its own (spawn's new_session);
  otherwise CRIU refuses: "A session leader of N(1) is outside of its pid namespace".
- file_locks on: a job holding a lock (flock, sqlite) is otherwise refused ("Some file
  locks are hold by dumping tasks!"); restored, it holds the lock again.
- ext_unix_sk off: job stdio is files or /dev/null. A unix socket to the outside (say a
  journald stdout) blocks the dump: "unix: External socket is used".
- cgroups in CRIU's default "soft" mode: a job in cgroups of its own is restored into
  them, recreated with their limits when missing (v1 memory and v2 both); IGNORE would
  put it in CRIU's. All processes of a job must share one cgroup set, or the restore
  fails with "cg: No set N found".
- restore as a sibling of CRIU (rst_sibling): the root becomes the caller's child, which
  reaps it; a root with a parent-death signal keeps it (detached under CRIU, it would
  get it as soon as CRIU exits). A failed restore's root is reaped here.

Every failure is a CriuError that names what blocked the operation, taken from the
"Error (...)" lines of CRIU's log, and the log's path.
"""

from __future__ import annotations

import contextlib
import enum
import errno as _errno
import ipaddress
import logging
import os
import re
import select
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycriu
from pycriu import rpc_pb2 as rpc

import kernel_shim
from ssi.checkpoint.errors import CriuError

log = logging.getLogger(__name__)

ImagesDir = str | os.PathLike[str] | int  # a path, or an open directory fd (kept open)

# Error lines CRIU logs on this machine on every run without failing because of them:
# no CAP_SYS_RESOURCE, so it cannot raise its own RLIMIT_NOFILE.
_BENIGN = ("rlimit: Can't setup RLIMIT_NOFILE",)
# What `criu lazy-pages` reads before it listens for the restore (the rest later).
EARLY_IMAGES = ("inventory.img", "pstree.img")
_REQUIRED = ("inventory.img", "pstree.img")  # a restore reads nothing without them
# Closing lines that only repeat that the operation failed.
_GENERIC = re.compile(r"^(Dumping|Restoring|Pre-dumping) FAILED\.?$")
_ERROR_LINE = re.compile(r"\bError \(([^)]*)\):\s*(.*\S)")


class CgroupMode(enum.Enum):
    """CRIU's --manage-cgroups modes (see criu(8)); SOFT is CRIU's default."""

    IGNORE = "IGNORE"  # leave cgroups alone: the tree lands in the caller's cgroups
    NONE = "CG_NONE"  # put tasks into the dumped cgroups, restore no properties
    PROPS = "PROPS"  # restore properties of the dumped cgroups only
    SOFT = "SOFT"  # restore properties of cgroups CRIU had to create
    FULL = "FULL"  # restore all properties
    STRICT = "STRICT"  # like FULL, and fail if a cgroup exists already


class NetworkLock(enum.Enum):
    """CRIU's --network-lock: how it stops a dumped namespace's traffic while its
    TCP connections are dumped (nftables here: these machines have no iptables)."""

    IPTABLES = "IPTABLES"
    NFTABLES = "NFTABLES"
    SKIP = "SKIP"  # the caller locks the network itself


@dataclass(frozen=True, slots=True)
class PageServer:
    """Where a dump sends its pages instead of the images dir (for migration, later)."""

    address: str
    port: int
    fd: int | None = None  # an already connected socket to use instead of connecting


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """What a dump sets beyond its per-call arguments. Units: seconds, pages, bytes."""

    file_locks: bool = True
    ext_unix_sk: bool = False
    shell_job: bool = False
    manage_cgroups: CgroupMode = CgroupMode.SOFT
    freeze_cgroup: str | None = None  # freeze through this cgroup's freezer, not ptrace
    external: tuple[str, ...] = ()  # CRIU --external resources, e.g. "mnt[/x]:x"
    tcp_established: bool = False  # dump established TCP connections (repair mode)
    network_lock: NetworkLock | None = None  # None: CRIU's default (iptables)
    timeout: int | None = None  # seconds CRIU may spend freezing and collecting
    ghost_limit: int | None = None  # bytes of deleted-but-open files kept in images
    log_level: int = 4  # 0 (errors only) … 4 (debug); 4 costs a few ms and finds bugs
    work_dir: str | None = None  # where the log goes; default: the images dir
    # Migration, later: incremental dumps, memory tracking, lazy pages, page server.
    parent_img: str | None = None  # relative to the images dir
    track_mem: bool = False
    lazy_pages: bool = False
    page_server: PageServer | None = None


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """What a restore sets beyond its per-call arguments."""

    file_locks: bool = True
    ext_unix_sk: bool = False
    shell_job: bool = False
    manage_cgroups: CgroupMode = CgroupMode.SOFT
    cgroup_root: tuple[tuple[str, str], ...] = ()  # (controller or "", new root path)
    external: tuple[str, ...] = ()
    inherit_fd: tuple[tuple[str, int], ...] = ()  # (resource key, our fd) CRIU reuses
    tcp_established: bool = False  # the images hold established TCP connections
    sibling: bool = True  # restored root becomes the caller's child (see module doc)
    log_level: int = 4
    work_dir: str | None = None
    lazy_pages: bool = False  # pages come later from a lazy-pages daemon
    leave_stopped: bool = False  # tasks left SIGSTOPped, not one instruction run


@dataclass(frozen=True, slots=True)
class DumpResult:
    images_dir: Path
    log_path: Path
    seconds: float  # wall time of the RPC, CRIU's start included
    stats: dict[str, int] = field(default_factory=dict)  # CRIU's stats-dump, µs/pages

    @property
    def image_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.images_dir.iterdir() if p.is_file())


@dataclass(frozen=True, slots=True)
class RestoreResult:
    pid: int  # host PID of the restored root, a child of the caller
    images_dir: Path
    log_path: Path
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)  # CRIU's stats-restore


@dataclass(frozen=True, slots=True)
class Features:
    mem_track: bool  # soft-dirty tracking, needed by pre-dump
    lazy_pages: bool  # userfaultfd, needed by post-copy migration
    pidfd_store: bool


def log_errors(log_path: Path) -> list[str]:
    """The distinct "Error (...)" messages of a CRIU log, in order, noise left out."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    seen: list[str] = []
    for m in _ERROR_LINE.finditer(text):
        msg = m.group(2)
        if msg in seen or msg.startswith(_BENIGN) or _GENERIC.match(msg):
            continue
        seen.append(msg)
    return seen


class Criu:
    """One CRIU binary, driven through RPC. Each call runs its own `criu swrk` child."""

    SWRK_EXIT_TIMEOUT = 30.0  # seconds CRIU may take to exit once it has answered

    def __init__(self, binary: str, *, netns: str | None = None) -> None:
        """binary: CRIU's path (ssi.config.resolve_criu). netns: a network namespace
        (path or /run/netns name) for CRIU to run in, entering that one only: a
        restore lands there; a dump must run in the job's own network namespace."""
        self.binary = binary
        self.netns = netns

    def __repr__(self) -> str:
        extra = f", netns={self.netns!r}" if self.netns else ""
        return f"Criu({self.binary!r}{extra})"

    # -- queries --------------------------------------------------------------

    def version(self) -> str:
        """CRIU's version, e.g. "4.1.1" (with "-g<gitid>" for a git build)."""
        req = rpc.criu_req()
        req.type = rpc.VERSION
        resp = self._call("version", req)
        if not resp.success:
            raise CriuError("version", "CRIU did not report its version")
        v = resp.version
        text = f"{v.major_number}.{v.minor_number}"
        if v.HasField("sublevel"):
            text += f".{v.sublevel}"
        if v.HasField("gitid") and v.gitid:
            text += f"-g{v.gitid}"
        return text

    def check(self, work_dir: str | None = None) -> None:
        """Raise CriuError naming what CRIU misses on this kernel; None when usable.

        The log goes to work_dir (default: a temporary directory, kept on failure).
        """
        tmp = None if work_dir else tempfile.mkdtemp(prefix="ssi-criu-check-")
        directory = Path(work_dir or tmp or ".")
        req = rpc.criu_req()
        req.type = rpc.CHECK
        with _open_dir(directory, "check") as fd:
            req.opts.images_dir_fd = fd
            req.opts.log_file = "check.log"
            req.opts.log_level = 4
            resp = self._call("check", req)
        log_path = directory / "check.log"
        if not resp.success:
            raise CriuError(
                "check",
                "CRIU cannot checkpoint on this machine",
                errors=log_errors(log_path),
                log_path=log_path,
            )
        if tmp:
            log_path.unlink(missing_ok=True)
            os.rmdir(tmp)

    def features(self) -> Features:
        """Which optional kernel features CRIU can use here."""
        req = rpc.criu_req()
        req.type = rpc.FEATURE_CHECK
        req.features.mem_track = True
        req.features.lazy_pages = True
        req.features.pidfd_store = True
        resp = self._call("features", req)
        if not resp.success:
            raise CriuError("features", "CRIU's feature check failed")
        f = resp.features
        return Features(bool(f.mem_track), bool(f.lazy_pages), bool(f.pidfd_store))

    # -- dump and restore -------------------------------------------------------

    def dump(
        self,
        pid: int,
        images_dir: ImagesDir,
        *,
        leave_running: bool = False,
        tcp_established: bool = False,
        log_file: str = "dump.log",
        options: DumpOptions | None = None,
    ) -> DumpResult:
        """Dump the process tree whose root is `pid` (host PID) into images_dir.

        The tree is killed once dumped unless leave_running; on failure it runs on.
        Raises CriuError naming the blocker (e.g. an established TCP connection when
        not tcp_established) and the log's path.
        """
        o = options or DumpOptions()
        req = rpc.criu_req()
        req.type = rpc.DUMP
        opts = req.opts
        opts.pid = pid
        opts.leave_running = leave_running
        opts.tcp_established = tcp_established or o.tcp_established
        opts.file_locks = o.file_locks
        opts.ext_unix_sk = o.ext_unix_sk
        opts.shell_job = o.shell_job
        opts.manage_cgroups_mode = rpc.criu_cg_mode.Value(o.manage_cgroups.value)
        opts.external.extend(o.external)
        if o.network_lock is not None:
            opts.network_lock = rpc.criu_network_lock_method.Value(o.network_lock.value)
        if o.freeze_cgroup:
            opts.freeze_cgroup = o.freeze_cgroup
        if o.timeout is not None:
            opts.timeout = o.timeout
        if o.ghost_limit is not None:
            opts.ghost_limit = o.ghost_limit
        if o.parent_img:
            opts.parent_img = o.parent_img
        if o.track_mem:
            opts.track_mem = True
        if o.lazy_pages:
            opts.lazy_pages = True
        if o.page_server:
            opts.ps.address = o.page_server.address
            opts.ps.port = o.page_server.port
            if o.page_server.fd is not None:
                opts.ps.fd = o.page_server.fd
        what = f"dump of pid {pid}"
        resp, path, log_path, seconds = self._run(
            "dump", what, req, images_dir, log_file, o.log_level, o.work_dir
        )
        log.info("op=criu.dump pid=%s dir=%s took %.3fs", pid, path, seconds)
        return DumpResult(path, log_path, seconds, _stats(path / "stats-dump", "dump"))

    def restore(
        self,
        images_dir: ImagesDir,
        *,
        tcp_established: bool = False,
        log_file: str = "restore.log",
        options: RestoreOptions | None = None,
    ) -> RestoreResult:
        """Restore the tree dumped in images_dir, detached, as a child of the caller.

        It lands in CRIU's network namespace (self.netns, else the caller's). The
        caller must reap it, and should be a child subreaper
        (kernel_shim.set_child_subreaper()) so that anything of the tree that
        outlives its root is reaped too. Its parent is the calling *thread*: a job
        whose init has a parent-death signal (spawn's pdeathsig) gets it when that
        thread ends, so call this from a long-lived thread, never from a pool
        worker or a helper process that exits (tried: the job dies).
        """
        o = options or RestoreOptions()
        req = rpc.criu_req()
        req.type = rpc.RESTORE
        opts = req.opts
        opts.tcp_established = tcp_established or o.tcp_established
        opts.file_locks = o.file_locks
        opts.ext_unix_sk = o.ext_unix_sk
        opts.shell_job = o.shell_job
        opts.rst_sibling = o.sibling
        opts.manage_cgroups_mode = rpc.criu_cg_mode.Value(o.manage_cgroups.value)
        opts.external.extend(o.external)
        for ctrl, root in o.cgroup_root:
            cg = opts.cg_root.add()
            if ctrl:
                cg.ctrl = ctrl
            cg.path = root
        for key, fd in o.inherit_fd:
            inh = opts.inherit_fd.add()
            inh.key = key
            inh.fd = fd
        if o.lazy_pages:
            opts.lazy_pages = True
        if o.leave_stopped:
            opts.leave_stopped = True
        resp, path, log_path, seconds = self._run(
            "restore",
            "restore",
            req,
            images_dir,
            log_file,
            o.log_level,
            o.work_dir,
            pass_fds=tuple(fd for _, fd in o.inherit_fd),
        )
        pid = int(resp.restore.pid)
        log.info("op=criu.restore dir=%s pid=%s took %.3fs", path, pid, seconds)
        stats = _stats(path / "stats-restore", "restore")
        return RestoreResult(pid, path, log_path, seconds, stats)

    # -- post-copy (lazy pages) ----------------------------------------------------

    def dump_lazy(
        self,
        pid: int,
        images_dir: str | os.PathLike[str],
        port: int,
        *,
        address: str | None = None,
        ps_fd: int | None = None,
        on_ready: Callable[[], None] | None = None,
        log_file: str = "dump.log",
        options: DumpOptions | None = None,
    ) -> LazyDump:
        """Start a post-copy dump of the tree rooted at `pid`: CRIU writes every image
        but the memory pages to images_dir, then serves the pages on TCP
        `address`:`port` (an IP address of CRIU's network namespace; None: all of
        them) to the first `criu lazy-pages` daemon that connects, and ends once it
        has them all. ValueError if `address` is no IP address.

        ps_fd: a TCP socket already connected to where the daemon will run (its
        `--ps-socket`), served instead: CRIU then listens on nothing (`port` and
        `address` unused). The caller keeps its own copy open until the end.

        Returns at once; LazyDump.wait_ready() says when the images are whole and the
        page server listens. on_ready() is called (from another thread) at that
        moment, while CRIU still holds the tree stopped; if it raises, the dump
        fails. The tree is left running at the end (leave_running): the caller
        holds it frozen through its cgroup (freezing it from on_ready keeps it
        stopped from CRIU's seizure on) and kills it once moved.
        """
        o = options or DumpOptions()
        req = rpc.criu_req()
        req.type = rpc.DUMP
        opts = req.opts
        opts.pid = pid
        opts.leave_running = True
        opts.file_locks = o.file_locks
        opts.ext_unix_sk = o.ext_unix_sk
        opts.shell_job = o.shell_job
        opts.manage_cgroups_mode = rpc.criu_cg_mode.Value(o.manage_cgroups.value)
        opts.external.extend(o.external)
        opts.tcp_established = o.tcp_established
        if o.network_lock is not None:
            opts.network_lock = rpc.criu_network_lock_method.Value(o.network_lock.value)
        if o.freeze_cgroup:
            opts.freeze_cgroup = o.freeze_cgroup
        if o.timeout is not None:
            opts.timeout = o.timeout
        opts.lazy_pages = True
        opts.ps.port = port
        opts.notify_scripts = True  # "status-ready": images whole, server listening
        opts.log_file = log_file
        opts.log_level = o.log_level
        path = Path(images_dir)
        work = Path(o.work_dir or path)
        if ps_fd is not None or address is not None:
            opts.config_file = str(_page_server_config(work, address, ps_fd))
        log_path = work / log_file
        return LazyDump(self, req, path, log_path, o.work_dir, port, on_ready, ps_fd)

    def lazy_pages(
        self,
        images_dir: str | os.PathLike[str],
        address: str,
        port: int,
        *,
        ps_fd: int | None = None,
        work_dir: str | None = None,
        log_file: str = "lazy-pages.log",
        log_level: int = 4,
    ) -> LazyPagesDaemon:
        """Start `criu lazy-pages` (in self.netns) for the images in images_dir,
        fetching pages from the page server at address:port, or on ps_fd, a socket
        already connected to it (Criu.dump_lazy's ps_fd); returns once it listens
        for the restore (whose work_dir must be the same). It exits once every page
        of the restored tree has arrived (LazyPagesDaemon.wait)."""
        daemon = self.start_lazy_pages(
            images_dir, address, port, ps_fd=ps_fd, work_dir=work_dir,
            log_file=log_file, log_level=log_level,
        )  # fmt: skip
        daemon.wait_started(self.SWRK_EXIT_TIMEOUT)
        return daemon

    def start_lazy_pages(
        self,
        images_dir: str | os.PathLike[str],
        address: str,
        port: int,
        *,
        ps_fd: int | None = None,
        work_dir: str | None = None,
        log_file: str = "lazy-pages.log",
        log_level: int = 4,
    ) -> LazyPagesDaemon:
        """lazy_pages() without waiting: the daemon may start before its images are
        whole. It spends its first tens of ms probing the kernel (no kdat cache on
        a /run that is not tmpfs), then reads inventory.img and pstree.img, and the
        other images only once the restore connects; those two may be FIFOs the
        caller fills later. LazyPagesDaemon.wait_started() before the restore."""
        images = Path(images_dir)
        work = Path(work_dir) if work_dir else images
        log_path = work / log_file
        r, w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        argv = [
            self.binary, "lazy-pages", "-D", str(images), "-W", str(work),
            "--page-server", "-o", log_file, f"-v{log_level}", "--status-fd", str(w),
        ]  # fmt: skip
        if ps_fd is None:
            argv += ["--address", address, "--port", str(port)]
        else:  # already connected to the dump's page server: CRIU connects nowhere
            argv += ["--ps-socket", str(ps_fd)]
        try:
            try:
                child = kernel_shim.spawn(
                    argv,
                    netns=self.netns,
                    stdin=null,
                    stdout=null,
                    stderr=null,
                    pass_fds=(w,) if ps_fd is None else (w, ps_fd),
                    new_session=False,
                )
            except OSError as e:
                raise CriuError(
                    "lazy-pages", f"cannot start {self.binary}: {e}"
                ) from None
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
            os.close(null)
        return LazyPagesDaemon(child, log_path, r, images)

    # -- plumbing ----------------------------------------------------------------

    def _run(
        self,
        op: str,
        what: str,
        req: Any,
        images_dir: ImagesDir,
        log_file: str,
        log_level: int,
        work_dir: str | None,
        pass_fds: tuple[int, ...] = (),
    ) -> tuple[Any, Path, Path, float]:
        if "/" in log_file:
            raise ValueError(f"log_file must be a bare file name, not {log_file!r}")
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(_open_dir(images_dir, op))
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            missing = [i for i in _REQUIRED if not (path / i).exists()]
            if op == "restore" and missing:
                raise CriuError(
                    op,
                    f"{path} holds no CRIU images (no {', '.join(missing)})",
                    images_dir=path,
                )
            req.opts.images_dir_fd = fd
            req.opts.log_file = log_file
            req.opts.log_level = log_level
            log_path = path / log_file
            if work_dir:
                wfd = stack.enter_context(_open_dir(work_dir, op))
                req.opts.work_dir_fd = wfd
                log_path = Path(os.readlink(f"/proc/self/fd/{wfd}")) / log_file
            start = time.perf_counter()
            resp = self._call(op, req, pass_fds)
            seconds = time.perf_counter() - start
        if not resp.success:
            if op == "restore" and resp.HasField("restore"):
                _reap_failed_root(int(resp.restore.pid))
            raise CriuError(
                op,
                f"{what} failed",
                errors=log_errors(log_path) or _last_line(log_path),
                errno=int(resp.cr_errno) if resp.HasField("cr_errno") else None,
                errmsg=resp.cr_errmsg if resp.HasField("cr_errmsg") else None,
                log_path=log_path,
                images_dir=path,
            )
        return resp, path, log_path, seconds

    def _call(self, op: str, req: Any, pass_fds: tuple[int, ...] = ()) -> Any:
        """One request to a fresh `criu swrk` and its answer; `pass_fds` stay open
        in CRIU under their numbers (inherit_fd).

        CRIU is started with kernel_shim.spawn (no os.fork of our threaded heap; in
        self.netns when set) on one end of a socketpair; pycriu talks on the other.
        """
        if not os.access(self.binary, os.X_OK):
            raise CriuError(
                op, f"CRIU binary {self.binary} is missing or not executable"
            )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                swrk = kernel_shim.spawn(
                    [self.binary, "swrk", str(theirs.fileno())],
                    netns=self.netns,
                    stdin=null,
                    stdout=null,
                    stderr=null,
                    pass_fds=(theirs.fileno(), *pass_fds),
                    new_session=False,
                )
            except OSError as e:
                raise CriuError(op, f"cannot start {self.binary} swrk: {e}") from None
        finally:
            theirs.close()
            os.close(null)
        try:
            c = pycriu.criu()
            c.use_fd(ours.fileno())
            try:
                # pycriu's request/response exchange; its public methods drop
                # cr_errmsg and the restore pid of a failure.
                return c._send_req_and_recv_resp(req)
            except pycriu.CRIUException as e:
                ours.close()
                status = _reap(swrk, self.SWRK_EXIT_TIMEOUT)
                raise CriuError(
                    op, f"no answer from {self.binary} swrk ({status}): {e}"
                ) from None
        finally:
            ours.close()  # swrk exits when its socket closes
            _reap(swrk, self.SWRK_EXIT_TIMEOUT)


def _reap(pid: int, timeout: float) -> str:
    """Reap our child `pid`, SIGKILLing it after `timeout` s; how it ended, in words."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    try:
        if fd >= 0 and not select.select([fd], [], [], timeout)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "already reaped"
    finally:
        if fd >= 0:
            os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _open_dir:
    """An images/work directory as an fd for CRIU (it opens /proc/<us>/fd/<fd>)."""

    def __init__(self, where: ImagesDir, op: str) -> None:
        self.where = where
        self.op = op
        self.fd = -1

    def __enter__(self) -> int:
        if isinstance(self.where, int):
            return self.where
        try:
            self.fd = os.open(self.where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            what = "is not a directory" if e.errno == _errno.ENOTDIR else e.strerror
            raise CriuError(
                self.op, f"images directory {os.fspath(self.where)!s}: {what}"
            ) from None
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _reap_failed_root(pid: int, timeout: float = 5.0) -> None:
    """A failed restore leaves its root, killed, as our zombie child (rst_sibling):
    reap it, so that a failure leaks nothing. Not our child: nothing to do."""
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        with open(f"/proc/{pid}/stat") as f:
            if int(f.read().rpartition(")")[2].split()[1]) != os.getpid():
                return
        select.select([fd], [], [], timeout)
        os.waitpid(pid, os.WNOHANG)
    except (OSError, ValueError, IndexError):
        pass
    finally:
        os.close(fd)


def _last_line(log_path: Path) -> list[str]:
    """When CRIU logged no error: its last words, as the best hint there is."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return [f"no error logged; last log line: {last}"] if last else []


def _stats(path: Path, kind: str) -> dict[str, int]:
    """CRIU's stats-dump / stats-restore image as a flat dict (µs and page counts)."""
    try:
        with open(path, "rb") as f:
            img = pycriu.images.load(f)
        entry = img["entries"][0][kind]
        return {k: int(v) for k, v in entry.items()}
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return {}


def _page_server_config(work_dir: Path, address: str | None, fd: int | None) -> Path:
    """A CRIU RPC configuration file for a lazy dump's page server: serve on the
    connected socket `fd` (listen on nothing), else listen on `address` only.
    CRIU 4.1.1's RPC copies ps.address and ps.fd for a plain page server but not
    for a lazy dump (cr-service.c, setup_opts_from_req), which then binds every
    address; options of the request's config_file are applied after the RPC's,
    and `ps-socket` and `address` there are honoured (as on the command line)."""
    if fd is not None:
        line = f"ps-socket {int(fd)}"
    else:
        line = f"address {ipaddress.ip_address(address or '')}"  # ValueError if not
    conf = work_dir / "lazy-dump.conf"
    conf.write_text(line + "\n")
    return conf


# Page server protocol (criu/page-xfer.c): struct page_server_iov {u32 cmd, nr_pages;
# u64 vaddr, dst_id}; PS_IOV_CLOSE ends a lazy dump's page server cleanly.
_PS_IOV = struct.Struct("=IIQQ")
_PS_IOV_CLOSE = 0x1023


class LazyDump:
    """A running post-copy dump (Criu.dump_lazy): CRIU on its RPC socket, answered
    from a thread of ours (notifications), until its final answer."""

    def __init__(
        self,
        criu: Criu,
        req: Any,
        images_dir: Path,
        log_path: Path,
        work_dir: str | None,
        port: int,
        on_ready: Callable[[], None] | None = None,
        ps_fd: int | None = None,
    ) -> None:
        self.images_dir = images_dir
        self._on_ready = on_ready
        self._ps_fd = ps_fd
        self.log_path = log_path
        self.port = port
        self.started = time.perf_counter()
        self.ready_seconds: float | None = None  # start to "images whole, serving"
        self.seconds: float | None = None  # start to CRIU's final answer
        self._ready = threading.Event()
        self._done = threading.Event()
        self._resp: Any = None
        self._failure: str | None = None
        self._criu = criu
        self._dirs: list[int] = []
        try:
            fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._dirs.append(fd)
            req.opts.images_dir_fd = fd
            if work_dir:
                wfd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._dirs.append(wfd)
                req.opts.work_dir_fd = wfd
        except OSError as e:
            self._close_dirs()
            raise CriuError(
                "dump", f"images directory {images_dir}: {e.strerror}"
            ) from None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                self._swrk = kernel_shim.spawn(
                    [criu.binary, "swrk", str(theirs.fileno())],
                    netns=criu.netns,
                    stdin=null,
                    stdout=null,
                    stderr=null,
                    pass_fds=(theirs.fileno(), *self._dirs)
                    + (() if ps_fd is None else (ps_fd,)),
                    new_session=False,
                )
            except OSError as e:
                ours.close()
                self._close_dirs()
                raise CriuError(
                    "dump", f"cannot start {criu.binary} swrk: {e}"
                ) from None
        finally:
            theirs.close()
            os.close(null)
        self._sk = ours
        self._sk.send(req.SerializeToString())
        self._thread = threading.Thread(
            target=self._converse, name=f"criu-lazy-dump-{port}", daemon=True
        )
        self._thread.start()

    def _converse(self) -> None:
        try:
            while True:
                size = len(self._sk.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
                if size == 0:
                    self._failure = "CRIU closed its RPC socket without an answer"
                    return
                resp = rpc.criu_resp()
                resp.ParseFromString(self._sk.recv(size))
                if resp.type != rpc.NOTIFY:
                    self._resp = resp
                    return
                ok = True
                if resp.notify.script == "status-ready":
                    ok = self._ready_now()
                ack = rpc.criu_req()
                ack.type = rpc.NOTIFY
                ack.notify_success = ok
                self._sk.send(ack.SerializeToString())
        except OSError as e:
            self._failure = f"RPC with CRIU failed: {e}"
        finally:
            self.seconds = time.perf_counter() - self.started
            self._sk.close()
            status = _reap(self._swrk, Criu.SWRK_EXIT_TIMEOUT)
            if self._resp is None and self._failure:
                self._failure += f" ({status})"
            self._close_dirs()
            self._done.set()
            self._ready.set()  # wake a waiter: it sees the failure

    def _ready_now(self) -> bool:
        """Images whole, server listening, the tree still held by CRIU: run the
        caller's hook before CRIU goes on (a failing hook fails the dump, and CRIU
        lets the tree run on)."""
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception as e:  # noqa: BLE001 (any failure fails the dump)
                self._failure = f"the ready hook failed: {e}"
                return False
        self.ready_seconds = time.perf_counter() - self.started
        self._ready.set()
        return True

    def _close_dirs(self) -> None:
        for fd in self._dirs:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dirs = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait_ready(self, timeout: float) -> float:
        """Block until the images are whole and the page server listens; seconds
        since the start. CriuError if the dump failed (the tree then runs on, as
        before: CRIU left it), TimeoutError after `timeout` s."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"lazy dump not serving pages after {timeout}s")
        if self.ready_seconds is None:
            self._raise()
        return self.ready_seconds or 0.0

    def wait(self, timeout: float | None = None) -> DumpResult:
        """Block until CRIU has served every page (or failed: CriuError); the
        tree is then left alive but still frozen by the caller's cgroup."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"lazy dump still serving pages after {timeout}s")
        resp = self._resp
        if resp is None or not resp.success:
            self._raise()
        stats = _stats(self.images_dir / "stats-dump", "dump")
        return DumpResult(self.images_dir, self.log_path, self.seconds or 0.0, stats)

    def _raise(self) -> None:
        resp = self._resp
        raise CriuError(
            "dump",
            f"lazy dump failed{': ' + self._failure if self._failure else ''}",
            errors=log_errors(self.log_path) or _last_line(self.log_path),
            errno=int(resp.cr_errno)
            if resp is not None and resp.HasField("cr_errno")
            else None,
            errmsg=resp.cr_errmsg
            if resp is not None and resp.HasField("cr_errmsg")
            else None,
            log_path=self.log_path,
            images_dir=self.images_dir,
        )

    def close_page_server(self, address: str, timeout: float = 10.0) -> None:
        """Abort: end the page server as a lazy-pages daemon would when done (one
        PS_IOV_CLOSE), so that CRIU cures the tree and leaves it (frozen by the
        caller's cgroup) instead of waiting for a daemon that will not come. A
        daemon that is connected already keeps the server busy: kill it first
        (CRIU then sees its connection close and ends too)."""
        if self.done:
            return
        if self._ps_fd is not None:  # its end of the socket reads EOF: CRIU is done
            with contextlib.suppress(OSError):
                with socket.socket(fileno=os.dup(self._ps_fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
        else:
            with contextlib.suppress(OSError):
                with socket.create_connection((address, self.port), timeout) as s:
                    s.sendall(_PS_IOV.pack(_PS_IOV_CLOSE, 0, 0, 0))
                    s.recv(4)
        if not self._done.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """Last resort: SIGKILL CRIU (the tree may keep CRIU's parasite mapped)."""
        with contextlib.suppress(OSError):
            os.kill(self._swrk, signal.SIGKILL)
        self._done.wait(Criu.SWRK_EXIT_TIMEOUT)


class LazyPagesDaemon:
    """A `criu lazy-pages` process of ours (Criu.lazy_pages)."""

    def __init__(
        self, pid: int, log_path: Path, status_fd: int = -1, images: Path | None = None
    ) -> None:
        self.pid = pid
        self.log_path = log_path
        self.images = images
        self._status_fd = status_fd  # readable once it listens for the restore
        self.started = time.perf_counter()
        self.seconds: float | None = None  # start to exit
        self.returncode: int | None = None
        self.status = "running"

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the daemon's exit (every page delivered, when 0); its exit
        code (negative: killed by that signal). TimeoutError after `timeout` s."""
        if self.returncode is not None:
            return self.returncode
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            fd = -1
        try:
            if fd >= 0 and not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError(
                    f"lazy-pages daemon {self.pid} runs after {timeout}s"
                )
            _, st = os.waitpid(self.pid, 0)
        except ChildProcessError:
            st = 0xFF00  # reaped elsewhere: unknown
        finally:
            if fd >= 0:
                os.close(fd)
        self.seconds = time.perf_counter() - self.started
        self.returncode = os.waitstatus_to_exitcode(st)
        rc = self.returncode
        self.status = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return rc

    def wait_started(self, timeout: float) -> None:
        """Block until it listens for the restore; CriuError (and killed) if it
        ended or did not get there within `timeout` s. Idempotent."""
        if self._status_fd < 0:
            return
        try:
            ready = select.select([self._status_fd], [], [], timeout)[0]
            got = os.read(self._status_fd, 1) if ready else b""
        finally:
            os.close(self._status_fd)
            self._status_fd = -1
        if not got:
            self.kill()
            raise CriuError(
                "lazy-pages",
                f"lazy-pages daemon did not start ({self.status})",
                errors=log_errors(self.log_path) or _last_line(self.log_path),
                log_path=self.log_path,
                images_dir=self.images,
            )

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait(Criu.SWRK_EXIT_TIMEOUT)
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1

    def error(self) -> CriuError:
        """What went wrong, as a CriuError (call after a non-zero wait())."""
        return CriuError(
            "lazy-pages",
            f"lazy-pages daemon ended before every page arrived ({self.status})",
            errors=log_errors(self.log_path) or _last_line(self.log_path),
            log_path=self.log_path,
        )
