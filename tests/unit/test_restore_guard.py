"""ssi.migration.guard: the helper freezes what is armed once its ssid is gone, and
nothing else. Real helper processes; the cgroups are stand-in directories holding a
freezer.state (v1) or cgroup.freeze (v2) file, so no root is needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ssi.migration.guard import RestoreGuard


def cgroup(tmp_path: Path, name: str, v1: bool = True) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / ("freezer.state" if v1 else "cgroup.freeze")).write_text(
        "THAWED" if v1 else "0"
    )
    return d


def state(d: Path) -> str:
    f = d / "freezer.state"
    return (f if f.exists() else d / "cgroup.freeze").read_text()


def frozen_soon(d: Path, value: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while state(d) != value and time.monotonic() < deadline:
        time.sleep(0.01)
    return state(d) == value


def test_what_is_armed_freezes_when_its_ssid_is_killed(tmp_path: Path) -> None:
    armed, disarmed, v2 = (
        cgroup(tmp_path, "a"),
        cgroup(tmp_path, "b"),
        cgroup(tmp_path, "c", v1=False),
    )
    ssid = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from ssi.migration.guard import RestoreGuard
        g = RestoreGuard()
        for d in ({str(armed)!r}, {str(disarmed)!r}, {str(v2)!r}):
            g.arm(Path(d))
        g.disarm(Path({str(disarmed)!r}))
        os.kill(os.getpid(), signal.SIGKILL)  # no goodbye: a crash
        """
    )
    done = subprocess.run([sys.executable, "-c", ssid], timeout=30)
    assert done.returncode == -9
    assert frozen_soon(armed, "FROZEN") and frozen_soon(v2, "1")
    assert state(disarmed) == "THAWED"


def test_nothing_freezes_while_ssid_lives_and_close_holds_the_rest(
    tmp_path: Path,
) -> None:
    a, b = cgroup(tmp_path, "a"), cgroup(tmp_path, "b")
    guard = RestoreGuard()
    guard.arm(a)
    guard.arm(b)
    guard.disarm(a)
    assert (state(a), state(b)) == ("THAWED", "THAWED")
    guard.close()  # ssid stopping with a move unconfirmed: as if it had died
    assert (state(a), state(b)) == ("THAWED", "FROZEN")
