"""What a CRIU call sets beyond its arguments (Criu.dump, Criu.restore), and what
CRIU says it can do (Criu.features). The module docstring of ssi.checkpoint.criu
says why each default is what it is for ssi's jobs."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    """Where a dump sends its pages instead of the images dir: a `criu page-server`
    at address:port, or on `fd` (a cold move's channel, ssi.migration.channel)."""

    address: str
    port: int
    fd: int | None = None  # an already connected socket to use instead of connecting


@dataclass(frozen=True, slots=True)
class TreeOptions:
    """What a dump and a restore both set (DumpOptions, RestoreOptions)."""

    file_locks: bool = True
    ext_unix_sk: bool = False
    shell_job: bool = False
    manage_cgroups: CgroupMode = CgroupMode.SOFT
    external: tuple[str, ...] = ()  # CRIU --external resources, e.g. "mnt[/x]:x"
    # Dump: established TCP connections (repair mode); restore: the images hold them.
    tcp_established: bool = False
    log_level: int = 4  # 0 (errors only) … 4 (debug); 4 costs a few ms and finds bugs
    work_dir: str | None = None  # where the log goes; default: the images dir
    lazy_pages: bool = False  # pages left to (dump) or from (restore) lazy-pages


@dataclass(frozen=True, slots=True)
class DumpOptions(TreeOptions):
    """What a dump sets beyond its per-call arguments. Units: seconds, pages, bytes."""

    freeze_cgroup: str | None = None  # freeze through this cgroup's freezer, not ptrace
    # The cgroup hierarchies (CRIU's names, e.g. "freezer") whose place of the tree
    # is dumped; () dumps every one (mounting each, ~15 ms with ten v1 of them).
    cgroup_controllers: tuple[str, ...] = ()
    network_lock: NetworkLock | None = None  # None: CRIU's default (iptables)
    timeout: int | None = None  # seconds CRIU may spend freezing and collecting
    ghost_limit: int | None = None  # bytes of deleted-but-open files kept in images
    # Incremental dumps, memory tracking, page server.
    parent_img: str | None = None  # relative to the images dir
    track_mem: bool = False
    page_server: PageServer | None = None


@dataclass(frozen=True, slots=True)
class RestoreOptions(TreeOptions):
    """What a restore sets beyond its per-call arguments."""

    cgroup_root: tuple[tuple[str, str], ...] = ()  # (controller or "", new root path)
    inherit_fd: tuple[tuple[str, int], ...] = ()  # (resource key, our fd) CRIU reuses
    sibling: bool = True  # restored root becomes the caller's child (see module doc)
    leave_stopped: bool = False  # tasks left SIGSTOPped, not one instruction run


@dataclass(frozen=True, slots=True)
class Features:
    mem_track: bool  # soft-dirty tracking, needed by pre-dump
    lazy_pages: bool  # userfaultfd, needed by post-copy migration
    pidfd_store: bool
