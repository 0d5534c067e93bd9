"""Live (post-copy) migration of a job between two nodes, node-level mechanics.

    source node                                   target node
                                                  Incoming: listens for the source
    connect (before the freeze) ─────────────────▶ (its address + a one-time token)
                                                  criu lazy-pages starts at once
    LiveSource.begin ─ CRIU seizes the job, lazy     (on FIFOs: inventory, pstree)
      dump (images but pages), serves on the socket
    send_images ──────── same socket ────────────▶ images, digest each
                                                  LiveTarget.begin: digests checked
                                                    (from the control channel),
                                                    criu restore --lazy-pages: runs
      CRIU serves pages ◀── same socket: on demand + background (userfaultfd)
                                                  LiveTarget.wait_pages: daemon exit 0
    LiveSource.commit ◀── target confirms ────────┘  (job runs, every page arrived)
      (settle moved: the frozen copy dies)
    any failure before the confirmation: LiveTarget.abort + LiveSource.abort (thaw)

Without a channel (node-level use, the benchmark's "node live"), CRIU's own page
server listens on the source's address, a port of PortPool, and the images are
copied by the caller. state.py holds the tunables and the measured report (no
I/O); channel.py the connection; driver.py the CRIU and runtime calls.
"""

from ssi.migration.driver import LiveSource, LiveTarget, PortPool
from ssi.migration.state import LiveTunables, SourceReport, TargetReport

__all__ = [
    "LiveSource",
    "LiveTarget",
    "LiveTunables",
    "PortPool",
    "SourceReport",
    "TargetReport",
]
