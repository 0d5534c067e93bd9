"""Live (post-copy) migration of a job between two nodes, node-level mechanics.

    source node                                   target node
    LiveSource.begin ─ freeze, CRIU lazy dump ─┐
      (images but pages; page server :port)    │ send_dir(images) ─▶ LiveTarget.begin
                                               │   criu lazy-pages ─▶ source :port
                                               │   criu restore --lazy-pages: job runs
      CRIU serves pages ◀──── on demand + background ───  (userfaultfd)
                                               │ LiveTarget.wait_pages: daemon exit 0
    LiveSource.commit ◀── target confirms ─────┘  (job runs, every page arrived)
      (settle moved: the frozen copy dies)
    any failure before the confirmation: LiveTarget.abort + LiveSource.abort (thaw)

state.py holds the tunables and the measured report (no I/O); driver.py does the
CRIU and runtime calls.
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
