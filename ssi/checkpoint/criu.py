"""CRIU through its RPC: pycriu's messages on a socketpair to `criu swrk`, one CRIU
per request (ssi.checkpoint.swrk: started for it, or ahead of it as a spare).

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
import errno as _errno
import logging
import os
import select
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycriu import rpc_pb2 as rpc

from ssi.checkpoint.errors import CriuError
from ssi.checkpoint.lazy import CriuDaemon, LazyDump, page_server_config
from ssi.checkpoint.options import (
    DumpOptions,
    Features,
    RestoreOptions,
    TreeOptions,
)
from ssi.checkpoint.outcome import (
    SWRK_EXIT_TIMEOUT,
    DumpResult,
    RestoreResult,
    last_line,
    log_errors,
    stats_of,
)
from ssi.checkpoint.swrk import PROBE_AND_FDS, Spare, Swrk, named_fds, spawn_criu

log = logging.getLogger(__name__)

ImagesDir = str | os.PathLike[str] | int  # a path, or an open directory fd (kept open)

# What `criu lazy-pages` reads before it listens for the restore (the rest later).
EARLY_IMAGES = ("inventory.img", "pstree.img")
_REQUIRED = ("inventory.img", "pstree.img")  # a restore reads nothing without them


class Criu:
    """One CRIU binary, driven through RPC. Each call runs its own `criu swrk` child:
    a fresh one, or the spare started ahead (keep_spare)."""

    SWRK_EXIT_TIMEOUT = SWRK_EXIT_TIMEOUT

    def __init__(self, binary: str, *, netns: str | None = None) -> None:
        """binary: CRIU's path (ssi.config.resolve_criu). netns: a network namespace
        (path or /run/netns name) for CRIU to run in, entering that one only: a
        restore lands there; a dump must run in the job's own network namespace."""
        self.binary = binary
        self.netns = netns
        self._spare: Spare | None = None
        self._version_answer: Any = None  # CRIU's VERSION answer, asked once

    def keep_spare(self) -> bool:
        """From now on keep a `criu swrk` started ahead, its kernel probe done, for
        the next request (ssi.checkpoint.swrk). Only a CRIU built with
        packaging/criu's patches can take one: False (and none) otherwise."""
        if self._spare is None:
            name = self._version().name
            if name != PROBE_AND_FDS:
                log.info(
                    "op=criu.spare: %s cannot start ahead of its requests (no patch "
                    "0006): each request starts its own",
                    self.binary,
                )
                return False
            self._spare = Spare(self.binary, self.netns)
            self._spare.refill()
        return True

    def close(self) -> None:
        """Stop the spare, if any (requests go on starting their own)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    def __repr__(self) -> str:
        extra = f", netns={self.netns!r}" if self.netns else ""
        return f"Criu({self.binary!r}{extra})"

    # -- queries --------------------------------------------------------------

    def version(self) -> str:
        """CRIU's version, e.g. "4.1.1" (with "-g<gitid>" for a git build)."""
        v = self._version()
        text = f"{v.major_number}.{v.minor_number}"
        if v.HasField("sublevel"):
            text += f".{v.sublevel}"
        if v.HasField("gitid") and v.gitid:
            text += f"-g{v.gitid}"
        return text

    def _version(self) -> Any:
        """CRIU's VERSION answer, asked of the binary once (keep_spare and every
        manifest's criu_version read it)."""
        if self._version_answer is None:
            req = rpc.criu_req()
            req.type = rpc.VERSION
            resp = self._call("version", req)
            if not resp.success:
                raise CriuError("version", "CRIU did not report its version")
            self._version_answer = resp.version
        return self._version_answer

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
        req = _dump_request(pid, o, leave_running, tcp_established)
        resp, path, log_path, seconds = self._run(
            "dump", f"dump of pid {pid}", req, images_dir, log_file, o.log_level,
            o.work_dir,
        )  # fmt: skip
        log.info("op=criu.dump pid=%s dir=%s took %.3fs", pid, path, seconds)
        return DumpResult(
            path,
            log_path,
            seconds,
            stats_of(log_path.parent / "stats-dump", "dump"),  # in the work dir
        )

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
        outlives its root is reaped too. Its parent is the *thread* that started
        CRIU: the calling one, or the spare's (keep_spare). A job whose init has a
        parent-death signal (spawn's pdeathsig) gets it when that thread ends, so
        call this from a long-lived thread, never from a pool worker or a helper
        process that exits (tried: the job dies).
        """
        o = options or RestoreOptions()
        req = _tree_request(rpc.RESTORE, o, tcp_established)
        opts = req.opts
        opts.rst_sibling = o.sibling
        for ctrl, root in o.cgroup_root:
            cg = opts.cg_root.add()
            if ctrl:
                cg.ctrl = ctrl
            cg.path = root
        for key, fd in o.inherit_fd:
            inh = opts.inherit_fd.add()
            inh.key = key
            inh.fd = fd
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
        )
        pid = int(resp.restore.pid)
        log.info("op=criu.restore dir=%s pid=%s took %.3fs", path, pid, seconds)
        stats = stats_of(
            log_path.parent / "stats-restore", "restore"
        )  # in the work dir
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
        req = _dump_request(pid, o, leave_running=True)
        opts = req.opts
        opts.lazy_pages = True
        opts.ps.port = port
        opts.notify_scripts = True  # "status-ready": images whole, server listening
        opts.log_file = log_file
        opts.log_level = o.log_level
        path = Path(images_dir)
        work = Path(o.work_dir or path)
        if ps_fd is not None or address is not None:
            opts.config_file = str(page_server_config(work, address, ps_fd))
        log_path = work / log_file
        return LazyDump(self, req, path, log_path, o.work_dir, port, on_ready, ps_fd)

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
    ) -> CriuDaemon:
        """Start `criu lazy-pages` (in self.netns) for the images in images_dir,
        fetching pages from the page server at address:port, or on ps_fd, a socket
        already connected to it (Criu.dump_lazy's ps_fd). It exits once every page
        of the restored tree has arrived (CriuDaemon.wait).
        Returns at once: the daemon may start before its images are whole. It
        spends its first tens of ms probing the kernel (no kdat cache on a /run
        that is not tmpfs), then reads inventory.img and pstree.img, and the other
        images only once the restore connects; those two may be FIFOs the caller
        fills later. CriuDaemon.wait_started() before the restore (whose work_dir
        must be the same)."""
        images = Path(images_dir)
        work = Path(work_dir) if work_dir else images
        log_path = work / log_file
        r, w = os.pipe2(os.O_CLOEXEC)
        argv = [
            self.binary, "lazy-pages", "-D", str(images), "-W", str(work),
            "--page-server", "-o", log_file, f"-v{log_level}", "--status-fd", str(w),
        ]  # fmt: skip
        if ps_fd is None:
            argv += ["--address", address, "--port", str(port)]
        else:  # already connected to the dump's page server: CRIU connects nowhere
            argv += ["--ps-socket", str(ps_fd)]
        try:
            child = self._spawn(
                "lazy-pages", argv, (w,) if ps_fd is None else (w, ps_fd)
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        return CriuDaemon(child, log_path, r, images)

    def start_page_server(
        self,
        images_dir: str | os.PathLike[str],
        ps_fd: int,
        *,
        work_dir: str | None = None,
        log_file: str = "page-server.log",
        log_level: int = 2,
    ) -> CriuDaemon:
        """Start `criu page-server` on `ps_fd`, a TCP socket already connected to
        a dump's side (DumpOptions.page_server with that socket's other end): it
        writes the pagemap and pages images the dump sends into images_dir, and
        exits (CriuDaemon.wait() == 0) once the dump closed the session, leaving
        the socket open for the caller. Listens on nothing."""
        images = Path(images_dir)
        work = Path(work_dir) if work_dir else images
        argv = [
            self.binary, "page-server", "-D", str(images), "-W", str(work),
            "-o", log_file, f"-v{log_level}", "--ps-socket", str(ps_fd),
        ]  # fmt: skip
        child = self._spawn("page-server", argv, (ps_fd,))
        return CriuDaemon(child, work / log_file, images=images, op="page-server")

    def _spawn(self, op: str, argv: list[str], pass_fds: tuple[int, ...]) -> int:
        """A long-lived CRIU process (in CRIU's netns, stdio on /dev/null); its PID."""
        try:
            return spawn_criu(argv, self.netns, pass_fds)
        except OSError as e:
            raise CriuError(op, f"cannot start {self.binary}: {e}") from None

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
            resp = self._call(op, req)
            seconds = time.perf_counter() - start
        if not resp.success:
            if op == "restore" and resp.HasField("restore"):
                _reap_failed_root(int(resp.restore.pid))
            raise CriuError(
                op,
                f"{what} failed",
                errors=log_errors(log_path) or last_line(log_path),
                errno=int(resp.cr_errno) if resp.HasField("cr_errno") else None,
                errmsg=resp.cr_errmsg if resp.HasField("cr_errmsg") else None,
                log_path=log_path,
                images_dir=path,
            )
        return resp, path, log_path, seconds

    def _call(self, op: str, req: Any) -> Any:
        """One request to a `criu swrk` and its answer: the spare, with the fds the
        request names sent along (ssi.checkpoint.swrk), else a fresh one that
        inherits them under their numbers."""
        if not os.access(self.binary, os.X_OK):
            raise CriuError(
                op, f"CRIU binary {self.binary} is missing or not executable"
            )
        fds = named_fds(req)
        worker = self._spare.take() if self._spare is not None else None
        try:
            if worker is not None:
                try:
                    worker.send(req, fds)
                except OSError:  # the spare died: nothing was asked of it yet
                    worker.close()
                    worker = None
            if worker is None:
                try:
                    worker = Swrk.start(self.binary, self.netns, fds)
                except OSError as e:
                    raise CriuError(
                        op, f"cannot start {self.binary} swrk: {e}"
                    ) from None
                worker.send(req)
            return worker.recv()
        except OSError as e:
            status = worker.close() if worker is not None else "not started"
            worker = None
            raise CriuError(
                op, f"no answer from {self.binary} swrk ({status}): {e}"
            ) from None
        finally:
            if worker is not None:
                worker.close()  # swrk exits when its socket closes
            if self._spare is not None:
                self._spare.refill_later()


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


def _tree_request(kind: Any, o: TreeOptions, tcp_established: bool = False) -> Any:
    """A request of `kind` (rpc.DUMP, rpc.RESTORE) with what dumps and restores
    share set from `o`."""
    req = rpc.criu_req()
    req.type = kind
    opts = req.opts
    opts.tcp_established = tcp_established or o.tcp_established
    opts.file_locks = o.file_locks
    opts.ext_unix_sk = o.ext_unix_sk
    opts.shell_job = o.shell_job
    opts.manage_cgroups_mode = rpc.criu_cg_mode.Value(o.manage_cgroups.value)
    opts.external.extend(o.external)
    if o.lazy_pages:
        opts.lazy_pages = True
    return req


def _dump_request(
    pid: int, o: DumpOptions, leave_running: bool, tcp_established: bool = False
) -> Any:
    """A dump request of the tree rooted at `pid`, set from `o` (Criu.dump and,
    with its page-server settings on top, Criu.dump_lazy)."""
    req = _tree_request(rpc.DUMP, o, tcp_established)
    opts = req.opts
    opts.pid = pid
    opts.leave_running = leave_running
    opts.cgroup_dump_controller.extend(o.cgroup_controllers)
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
    if o.page_server:
        opts.ps.address = o.page_server.address
        opts.ps.port = o.page_server.port
        if o.page_server.fd is not None:
            opts.ps.fd = o.page_server.fd
    return req
