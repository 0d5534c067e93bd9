"""The restored copy of a job that is moving here must not outlive this node's ssid
before the coordinator has recorded the move: if ssid dies first, the coordinator
never hears the confirmation and resumes the source's copy, and the job would run
twice. A small helper process, started with ssid, is told which job cgroups to
guard; when ssid dies (the helper's stdin closes) it freezes them, so that the
returning ssid finds them frozen and asks the coordinator (job.here) whether to
kill or resume each.

    ssid ── "arm DIR\\n" / "disarm DIR\\n" ──▶ helper stdin   ◀── "ok\\n" ── stdout
    ssid dies ─▶ EOF ─▶ the helper freezes every armed DIR ─▶ exits

DIR is the job's freezer cgroup directory (cgroup v1: freezer.state; v2:
cgroup.freeze). This file runs as the helper by path (`python guard.py`), so it
imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path


class RestoreGuard:
    """ssid's side: arm() before restoring a job that moves here, disarm() once the
    coordinator recorded the move (or the restore failed and left nothing).
    Thread-safe; OSError if the helper cannot be started or has died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: set[str] = set()
        self._proc = self._spawn()

    @staticmethod
    def _spawn() -> subprocess.Popen[str]:
        # Its own session: a signal to ssid's process group must not end it too.
        return subprocess.Popen(
            [sys.executable, "-I", __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

    def arm(self, cgroup_dir: Path) -> None:
        with self._lock:
            if self._proc.poll() is not None:  # it died: a new one, told all again
                self._proc = self._spawn()
                for d in self._armed:
                    self._say(f"arm {d}")
            self._say(f"arm {cgroup_dir}")
            self._armed.add(str(cgroup_dir))

    def disarm(self, cgroup_dir: Path) -> None:
        with self._lock:
            if str(cgroup_dir) not in self._armed:
                return
            self._armed.discard(str(cgroup_dir))
            with contextlib.suppress(OSError):  # a dead helper freezes nothing
                self._say(f"disarm {cgroup_dir}")

    def close(self) -> None:
        """ssid stops: what is still armed freezes, as if ssid had died."""
        with self._lock:
            if self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5.0)

    def _say(self, line: str) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        if "\n" in line:
            raise ValueError(f"bad cgroup path {line!r}")
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline() != "ok\n":
            raise OSError(f"the restore guard did not acknowledge {line!r}")


def freeze(cgroup_dir: Path) -> None:
    """Freeze a job cgroup, v1 or v2; nothing if it is gone already."""
    v1 = cgroup_dir / "freezer.state"
    with contextlib.suppress(OSError):
        if v1.exists():
            v1.write_text("FROZEN")
        else:
            (cgroup_dir / "cgroup.freeze").write_text("1")


def main() -> None:
    armed: set[str] = set()
    for line in sys.stdin:
        verb, _, path = line.rstrip("\n").partition(" ")
        if verb == "arm":
            armed.add(path)
        elif verb == "disarm":
            armed.discard(path)
        with contextlib.suppress(BrokenPipeError):  # ssid died before reading it
            print("ok", flush=True)
    for path in armed:  # ssid is gone before it could confirm: hold them still
        freeze(Path(path))


if __name__ == "__main__":
    main()
