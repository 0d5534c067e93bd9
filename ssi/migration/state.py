"""Tunables and measurements of a live migration: data only, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    """Where a live migration's source stands."""

    SERVING = "serving"  # frozen, images written, page server listening
    COMMITTED = "committed"  # the target confirmed: the copy here is gone
    ABORTED = "aborted"  # it runs on here


@dataclass(frozen=True, slots=True)
class LiveTunables:
    """ports: the TCP range the source's page server may listen on (inclusive).
    Seconds: ready_timeout for the lazy dump to write its images and listen;
    pages_timeout for the last page to arrive; close_timeout for an abort."""

    ports: tuple[int, int] = (27100, 27163)
    ready_timeout: float = 30.0
    pages_timeout: float = 600.0
    close_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class SourceReport:
    """Seconds from the freeze; bytes of the non-memory images."""

    job_id: str
    port: int
    dump_seconds: float  # freeze to images written and page server listening
    serve_seconds: float  # freeze to the last page served (CRIU's dump ended)
    image_bytes: int


@dataclass(frozen=True, slots=True)
class TargetReport:
    """Seconds from LiveTarget.begin; pages as counted by the lazy-pages daemon."""

    job_id: str
    pid: int  # host PID of the restored init
    restore_seconds: float  # begin to the job running here
    pages_seconds: float  # begin to the last page arrived (daemon exited)
    page_bytes: int  # bytes of memory pages fetched from the source (0: unknown)
