"""Job cgroups, v1 or v2 behind one interface: one cgroup `<base>/<job_id>` per job.

    detect(base) ── /proc/self/mountinfo ──▶ CgroupV1 (a dir per hierarchy: cpu,
                                              cpuacct, memory, freezer, pids)
                                           ▶ CgroupV2 (one dir in the unified tree)

v1 is chosen when a v1 freezer hierarchy is mounted (the controllers live there even
if a controller-less cgroup2 is mounted too, as on hybrid systems); else v2 where
cgroup2 is mounted (pure v2: /sys/fs/cgroup/cgroup.controllers exists).

Paths: `path(job_id)` is the cgroup as /proc/PID/cgroup shows it, e.g. "/ssi/17",
identical on every node for the same base, so that CRIU restores a job into the same
cgroup wherever it lands. Freezing: v1 freezer.state FROZEN/THAWED, v2 cgroup.freeze;
both wait until the kernel says the cgroup is frozen (or thawed).

Every failure is an OSError naming the file; a frozen cgroup that does not settle within
the timeout is a TimeoutError.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

MOUNTINFO = "/proc/self/mountinfo"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "freezer", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_POLL = 0.005  # seconds between polls of a freezer's state, at most


def _pauses() -> Iterator[float]:
    """Pauses between polls of a freezer's state: short first (a freeze usually
    settles within a millisecond, and every checkpoint waits for one), then _POLL."""
    pause = 0.0002
    while True:
        yield pause
        pause = min(pause * 2, _POLL)


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    """What the kernel accounts to a job's cgroup. None: not available here."""

    cpu_seconds: float | None  # user + system time of every process, past and present
    memory_bytes: int | None  # charged memory (anonymous + page cache), now
    nprocs: int  # processes (not threads) in the cgroup now


@dataclass(frozen=True, slots=True)
class Mount:
    """One cgroup file system mount, from mountinfo."""

    point: Path  # where it is mounted
    root: str  # the cgroup path mounted there, "/" unless in a container
    fstype: str  # "cgroup" or "cgroup2"
    controllers: frozenset[str]  # v1: from the super options; v2: empty


def mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """The cgroup mounts of this mount namespace."""
    found: list[Mount] = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            fstype = rfields[0]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            point = _unescape(fields[4])
            ctrls: frozenset[str] = frozenset()
            if fstype == "cgroup":
                ctrls = frozenset(o for o in rfields[2].split(",") if o not in _V1_OPTS)
            found.append(Mount(Path(point), _unescape(fields[3]), fstype, ctrls))
    return found


_V1_OPTS = frozenset(
    {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "xattr"}
)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def check_name(kind: str, name: str) -> str:
    """`name` if it is safe as one path component (job ids, cgroup bases)."""
    if not _NAME.match(name) or len(name) > 128:
        raise ValueError(
            f"bad {kind} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.', '_' or '-'"
        )
    return name


class Cgroups(ABC):
    """The job cgroups of one base ("ssi": /sys/fs/cgroup/<ctrl>/ssi/<job_id>)."""

    version: ClassVar[int]

    def __init__(self, base: str) -> None:
        self.base = "/".join(check_name("cgroup base", p) for p in base.split("/"))

    # -- where ---------------------------------------------------------------

    def path(self, job_id: str) -> str:
        """The job's cgroup as /proc/PID/cgroup shows it, e.g. "/ssi/17"."""
        return f"{self._mount_root()}/{self.base}/{check_name('job id', job_id)}"

    @abstractmethod
    def dirs(self, job_id: str) -> list[Path]:
        """The job's cgroup directories, one per hierarchy."""

    @abstractmethod
    def freezer_dir(self, job_id: str) -> Path:
        """The directory whose freezer CRIU may use (DumpOptions.freeze_cgroup)."""

    @abstractmethod
    def controllers(self) -> dict[str, str]:
        """CRIU controller name → mount root of each hierarchy a job cgroup is in."""

    @abstractmethod
    def _mount_root(self) -> str: ...

    @abstractmethod
    def _base_dirs(self) -> list[Path]: ...

    # -- life cycle ------------------------------------------------------------

    def create(self, job_id: str) -> None:
        """Make the job's cgroup (and the base) in every hierarchy, if missing."""
        for base in self._base_dirs():
            if not base.is_dir():
                base.mkdir(parents=True, exist_ok=True)
                self._setup_base(base)
        for d in self.dirs(job_id):
            d.mkdir(exist_ok=True)

    def _setup_base(self, base: Path) -> None:  # noqa: B027 (an optional hook)
        """Hook: prepare a freshly made base directory (v2 enables controllers)."""

    def exists(self, job_id: str) -> bool:
        return any(d.is_dir() for d in self.dirs(job_id))

    def job_ids(self) -> list[str]:
        """Ids of the job cgroups under the base (in any hierarchy), sorted."""
        ids: set[str] = set()
        for base in self._base_dirs():
            try:
                ids.update(e.name for e in os.scandir(base) if e.is_dir())
            except FileNotFoundError:
                continue
        return sorted(i for i in ids if _NAME.match(i))

    def add(self, job_id: str, pid: int) -> None:
        """Move process `pid` (and its threads) into the job's cgroup everywhere."""
        for d in self.dirs(job_id):
            _write(d / "cgroup.procs", str(pid))

    def pids(self, job_id: str) -> list[int]:
        """Host PIDs of the processes in the job's cgroup (empty if none or gone)."""
        try:
            text = (self.freezer_dir(job_id) / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return sorted({int(p) for p in text.split()})

    def remove(self, job_id: str, timeout: float = 5.0) -> None:
        """Remove the job's cgroup everywhere, once the processes in it are gone
        (exiting ones linger a moment: retried until `timeout`, then OSError EBUSY)."""
        deadline = time.monotonic() + timeout
        for d in self.dirs(job_id):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise OSError(e.errno, f"{e.strerror}: rmdir {d}") from None
                    time.sleep(_POLL)

    def kill(self, job_id: str, timeout: float = 5.0) -> None:
        """SIGKILL every process of the job, without letting any fork away; the
        cgroup is thawed afterwards (frozen tasks die only once thawed)."""
        self.freeze(job_id, timeout)
        try:
            self._kill_all(job_id)
        finally:
            self.thaw(job_id, timeout)

    def _kill_all(self, job_id: str) -> None:
        for pid in self.pids(job_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- freezer ---------------------------------------------------------------

    @abstractmethod
    def frozen(self, job_id: str) -> bool:
        """True when the job's cgroup is frozen (or freezing)."""

    @abstractmethod
    def freeze(self, job_id: str, timeout: float = 10.0) -> None:
        """Freeze every process of the job; returns once all are frozen."""

    @abstractmethod
    def thaw(self, job_id: str, timeout: float = 10.0) -> None:
        """Let the job run again; returns once the kernel says it is thawed."""

    @abstractmethod
    def freeze_later(self, job_id: str) -> None:
        """Ask for the job's freeze without waiting for it: for processes a tracer
        (CRIU) holds stopped, which enter the freezer only once it lets them go."""

    # -- accounting --------------------------------------------------------------

    @abstractmethod
    def usage(self, job_id: str) -> CgroupUsage: ...

    def contains(self, job_id: str, pid: int) -> bool:
        """Whether process `pid` is in the job's cgroup (its freezer's, for v1)."""
        return pid in self.pids(job_id)


class CgroupV1(Cgroups):
    """cgroup v1: the job's cgroup in each of cpu, cpuacct, memory, freezer, pids
    (those mounted; freezer is required)."""

    version = 1

    def __init__(self, base: str, hierarchies: dict[str, Mount]) -> None:
        """hierarchies: controller → its mount (combined mounts appear once each)."""
        super().__init__(base)
        if "freezer" not in hierarchies:
            raise ValueError("cgroup v1 without a freezer hierarchy")
        self.hierarchies = dict(hierarchies)
        roots = {m.root for m in hierarchies.values()}
        self._root = "" if roots == {"/"} else hierarchies["freezer"].root.rstrip("/")

    @classmethod
    def from_mounts(cls, base: str, found: Sequence[Mount]) -> CgroupV1:
        hier: dict[str, Mount] = {}
        for m in found:
            if m.fstype != "cgroup":
                continue
            for c in V1_CONTROLLERS:
                if c in m.controllers and c not in hier:
                    hier[c] = m
        return cls(base, hier)

    def _mount_root(self) -> str:
        return self._root

    def _points(self) -> list[Path]:
        seen: list[Path] = []
        for m in self.hierarchies.values():
            if m.point not in seen:
                seen.append(m.point)
        return seen

    def _base_dirs(self) -> list[Path]:
        return [p / self.base for p in self._points()]

    def dirs(self, job_id: str) -> list[Path]:
        return [p / self.base / check_name("job id", job_id) for p in self._points()]

    def freezer_dir(self, job_id: str) -> Path:
        return self.hierarchies["freezer"].point / self.base / job_id

    def controllers(self) -> dict[str, str]:
        return {c: m.root for c, m in self.hierarchies.items()}

    def _state(self, job_id: str) -> str:
        return (self.freezer_dir(job_id) / "freezer.state").read_text().strip()

    def frozen(self, job_id: str) -> bool:
        try:
            return self._state(job_id) in ("FROZEN", "FREEZING")
        except FileNotFoundError:
            return False

    def freeze(self, job_id: str, timeout: float = 10.0) -> None:
        self._set(job_id, "FROZEN", timeout)

    def thaw(self, job_id: str, timeout: float = 10.0) -> None:
        self._set(job_id, "THAWED", timeout)

    def freeze_later(self, job_id: str) -> None:
        _write(self.freezer_dir(job_id) / "freezer.state", "FROZEN")

    def _set(self, job_id: str, want: str, timeout: float) -> None:
        state_file = self.freezer_dir(job_id) / "freezer.state"
        deadline = time.monotonic() + timeout
        pauses = _pauses()
        while True:
            # FREEZING may stall on a task in an uninterruptible sleep: writing FROZEN
            # again retries the tasks still running.
            _write(state_file, want)
            if self._state(job_id) == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"{state_file} still {self._state(job_id)} after {timeout}s",
                )
            time.sleep(next(pauses))

    def usage(self, job_id: str) -> CgroupUsage:
        cpu = mem = None
        if "cpuacct" in self.hierarchies:
            d = self.hierarchies["cpuacct"].point / self.base / job_id
            ns = _read_int(d / "cpuacct.usage")
            cpu = ns / 1e9 if ns is not None else None
        if "memory" in self.hierarchies:
            d = self.hierarchies["memory"].point / self.base / job_id
            mem = _read_int(d / "memory.usage_in_bytes")
        return CgroupUsage(cpu, mem, len(self.pids(job_id)))


class CgroupV2(Cgroups):
    """cgroup v2: one directory in the unified hierarchy; cpu, memory and pids are
    enabled for the jobs in the base's cgroup.subtree_control where available."""

    version = 2

    def __init__(self, base: str, mount: Mount) -> None:
        super().__init__(base)
        self.mount = mount
        self._root = "" if mount.root == "/" else mount.root.rstrip("/")

    def _mount_root(self) -> str:
        return self._root

    def _base_dirs(self) -> list[Path]:
        return [self.mount.point / self.base]

    def _setup_base(self, base: Path) -> None:
        # Every level from the mount down to the base must delegate the controllers;
        # the mount's root usually does (systemd), and the base has no processes of
        # its own, so enabling them there is allowed.
        level = self.mount.point
        for part in [*self.base.split("/")]:
            _enable(level, V2_CONTROLLERS)
            level = level / part
        _enable(level, V2_CONTROLLERS)

    def dirs(self, job_id: str) -> list[Path]:
        return [self.mount.point / self.base / check_name("job id", job_id)]

    def freezer_dir(self, job_id: str) -> Path:
        return self.dirs(job_id)[0]

    def controllers(self) -> dict[str, str]:
        return {"": self.mount.root}

    def _events(self, job_id: str) -> dict[str, str]:
        text = (self.freezer_dir(job_id) / "cgroup.events").read_text()
        return dict(line.split(None, 1) for line in text.splitlines() if " " in line)

    def frozen(self, job_id: str) -> bool:
        try:
            return (
                self.freezer_dir(job_id) / "cgroup.freeze"
            ).read_text().strip() == "1"
        except FileNotFoundError:
            return False

    def freeze(self, job_id: str, timeout: float = 10.0) -> None:
        self._set(job_id, "1", timeout)

    def thaw(self, job_id: str, timeout: float = 10.0) -> None:
        self._set(job_id, "0", timeout)

    def freeze_later(self, job_id: str) -> None:
        _write(self.freezer_dir(job_id) / "cgroup.freeze", "1")

    def _set(self, job_id: str, want: str, timeout: float) -> None:
        d = self.freezer_dir(job_id)
        _write(d / "cgroup.freeze", want)
        deadline = time.monotonic() + timeout
        pauses = _pauses()
        while self._events(job_id).get("frozen", want).strip() != want:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"{d}/cgroup.events not frozen {want} after {timeout}s",
                )
            time.sleep(next(pauses))

    def kill(self, job_id: str, timeout: float = 5.0) -> None:
        killer = self.freezer_dir(job_id) / "cgroup.kill"
        if killer.exists():  # Linux >= 5.14: atomic, no fork can escape
            _write(killer, "1")
            return
        super().kill(job_id, timeout)

    def usage(self, job_id: str) -> CgroupUsage:
        d = self.freezer_dir(job_id)
        cpu = None
        stat = _read_keyed(d / "cpu.stat")
        if "usage_usec" in stat:
            cpu = stat["usage_usec"] / 1e6
        return CgroupUsage(cpu, _read_int(d / "memory.current"), len(self.pids(job_id)))


def detect(base: str = "ssi", mountinfo: str = MOUNTINFO) -> Cgroups:
    """The cgroup flavour this machine uses for jobs: v1 when a v1 freezer hierarchy
    is mounted, else the unified (v2) hierarchy. OSError ENOENT when neither."""
    found = mounts(mountinfo)
    if any(m.fstype == "cgroup" and "freezer" in m.controllers for m in found):
        return CgroupV1.from_mounts(base, found)
    v2 = [m for m in found if m.fstype == "cgroup2"]
    if v2:
        # The real unified tree is the one holding cgroup.controllers with the most
        # controllers; on pure v2 systems there is exactly one, /sys/fs/cgroup.
        v2.sort(key=lambda m: (str(m.point) != "/sys/fs/cgroup", len(str(m.point))))
        return CgroupV2(base, v2[0])
    raise OSError(
        errno.ENOENT, "no cgroup v1 freezer hierarchy nor cgroup2 mounted (mountinfo)"
    )


def proc_cgroup(pid: int | str, proc: str = "/proc") -> dict[str, str]:
    """/proc/PID/cgroup as {controller: path}; the v2 line's key is ""."""
    out: dict[str, str] = {}
    with open(f"{proc}/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _write(path: Path, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}: open {path}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}: write {value!r} to {path}") from None
    finally:
        os.close(fd)


def _enable(level: Path, controllers: Iterable[str]) -> None:
    try:
        available = set((level / "cgroup.controllers").read_text().split())
    except OSError:
        return
    for c in controllers:
        if c in available:
            try:
                _write(level / "cgroup.subtree_control", f"+{c}")
            except OSError:
                pass  # not delegated to us, or processes in the way: accounting only


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out
