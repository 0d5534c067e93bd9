"""libdrmaa driven by a C program linked with -ldrmaa (tests/drmaa/c/drmaa_check.c),
against a real 2-node cluster: each scenario's checks are in the C program; here we
run it (mostly under `env -i`, so that nothing of this Python's environment helps
the library find its own) and look at what it left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)"),
    pytest.mark.root,
]

# A hostile environment: no PATH, and Python variables that would break an
# interpreter that listened to them.
HOSTILE = {
    "PYTHONHOME": "/nonexistent/home",
    "PYTHONPATH": "/nonexistent/path",
    "PYTHONSTARTUP": "/nonexistent/startup.py",
    "PATH": "/nonexistent/bin",
}


def run(
    program: Path,
    socket: str,
    *args: str,
    cwd: Path | None = None,
    extra: dict[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """Runs the program under `env -i` (plus SSI_SOCKET and `extra`); its stdout."""
    env = {"SSI_SOCKET": socket, **(extra or {})}
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(program), *args]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or "/"
    )
    assert done.returncode == 0, (
        f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.mark.parametrize(
    "scenario", ["no-session", "timeouts", "control", "signals", "attrs"]
)
def test_scenario(drmaa_check: Path, socket_path: str, scenario: str) -> None:
    out = run(drmaa_check, socket_path, scenario, extra=HOSTILE)
    assert f"ok {scenario}" in out


def test_submit_wait_rusage_in_an_empty_environment(
    drmaa_check: Path, socket_path: str, workdir: Path
) -> None:
    out = run(drmaa_check, socket_path, "basic", cwd=workdir)
    assert "ok basic" in out
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    usage = dict(
        line.split(" ", 1)[1].split("=", 1)
        for line in out.splitlines()
        if line.startswith("rusage ")
    )
    assert usage["exit_status"] == "7"
    assert usage["hostname"] in ("node1", "node2")
    assert float(usage["end_time"]) >= float(usage["start_time"])
    assert float(usage["start_time"]) >= float(usage["submission_time"]) - 1
    # the job ran in the caller's directory, with drmaa_v_env over an empty one
    text = (workdir / f"ssi-{job}.out").read_text()
    assert text == f"hello from {workdir}\n"


def test_exit_codes_0_to_255_through_a_bulk_job(
    drmaa_check: Path, socket_path: str
) -> None:
    assert "ok exit-codes" in run(drmaa_check, socket_path, "exit-codes", timeout=240)


def test_bulk_jobs_expand_placeholders(
    drmaa_check: Path, socket_path: str, workdir: Path
) -> None:
    for i in (2, 5, 8):
        (workdir / f"wd.{i}").mkdir()
    out = run(drmaa_check, socket_path, "bulk", str(workdir))
    assert "ok bulk" in out
    assert len([line for line in out.splitlines() if line.startswith("bulk ")]) == 3
    for i in (2, 5, 8):
        wd = workdir / f"wd.{i}"
        assert (wd / f"out.{i}").read_text() == f"task {i} in {wd}\n"
        assert (workdir / f"err.{i}").read_text() == ""
    assert (workdir / "home.out").read_text() == f"{Path.home()}\n"


def test_jobs_that_cannot_start_fail_aborted_and_the_session_goes_on(
    drmaa_check: Path, socket_path: str, workdir: Path
) -> None:
    out = run(drmaa_check, socket_path, "aborted", str(workdir))
    assert "ok aborted" in out
    assert (workdir / "fine.out").read_text() == "fine\n"


def test_threads_share_the_library_and_a_blocked_wait_blocks_nobody_else(
    drmaa_check: Path, socket_path: str
) -> None:
    assert "ok threads" in run(drmaa_check, socket_path, "threads", extra=HOSTILE)


def test_fork_while_a_thread_waits(drmaa_check: Path, socket_path: str) -> None:
    out = run(drmaa_check, socket_path, "fork")
    assert "child ok" in out and "ok fork" in out


def test_reattach_to_a_session_by_its_contact(
    drmaa_check: Path, socket_path: str
) -> None:
    first = run(drmaa_check, socket_path, "reattach-submit")
    lines = first.splitlines()
    contact = next(x.split()[1] for x in lines if x.startswith("contact "))
    jobs = {x.split()[1] for x in lines if x.startswith("job ")}
    # another process, another environment, the same session
    second = run(drmaa_check, socket_path, "reattach-wait", contact, extra=HOSTILE)
    assert "ok reattach-wait" in second
    assert {x.split()[1] for x in second.splitlines() if x.startswith("waited ")} == (
        jobs
    )
