"""ssi-init's options for the job runtime, without namespaces or root: stdio files,
the --sync-fd handshake, the status file's JSON, bad arguments."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from ssi.jobs import init_binary

INIT = init_binary()
pytestmark = pytest.mark.skipif(
    not os.access(INIT, os.X_OK), reason=f"{INIT} not built: run scripts/setup.sh"
)


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INIT), *args], capture_output=True, text=True, timeout=10, **kw
    )  # type: ignore[call-overload, no-any-return]


def test_stdio_files_and_status(tmp_path: Path) -> None:
    (tmp_path / "in").write_text("hello\n")
    status = tmp_path / "status.json"
    r = run(
        "--status-file", str(status), "--cwd", str(tmp_path),
        "--stdin", "in", "--stdout", "both", "--stderr", str(tmp_path / "both"),
        "--", "sh", "-c", "cat; echo oops >&2; exit 3",
    )  # fmt: skip
    assert r.returncode == 3 and r.stdout == ""
    assert (tmp_path / "both").read_text() == "hello\noops\n"
    got = json.loads(status.read_text())
    assert got["exited"] == 3 and "setup_error" not in got
    assert status.stat().st_mode & 0o777 == 0o600


def test_output_is_appended(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for word in ("one", "two"):
        assert run("--stdout", str(out), "--", "echo", word).returncode == 0
    assert out.read_text() == "one\ntwo\n"


def test_setup_error_is_json_escaped(tmp_path: Path) -> None:
    status = tmp_path / "s.json"
    bad = str(tmp_path / 'no "such"\\dir\n' / "out")
    r = run("--status-file", str(status), "--stdout", bad, "--", "true")
    assert r.returncode == 125
    got = json.loads(status.read_text())
    assert got["exited"] == 125
    assert got["setup_error"] == f"--stdout {bad}: No such file or directory"
    r = run("--status-file", str(status), "--cwd", str(tmp_path / "nope"), "--", "true")
    assert json.loads(status.read_text())["setup_error"].startswith("chdir(")


def handshake(tmp_path: Path, *args: str, go: bytes = b"G") -> tuple[int, str, dict]:  # type: ignore[type-arg]
    ours, theirs = socket.socketpair()
    status = tmp_path / "s.json"
    status.unlink(missing_ok=True)
    with ours:
        proc = subprocess.Popen(
            [str(INIT), "--status-file", str(status), "--sync-fd", str(theirs.fileno()),
             *args],
            pass_fds=(theirs.fileno(),), stderr=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        if go:
            ours.sendall(go)
        else:
            ours.shutdown(socket.SHUT_WR)
        ours.settimeout(10)
        answer = b""
        while chunk := ours.recv(1024):
            answer += chunk
    code = proc.wait(10)
    return code, answer.decode(), json.loads(status.read_text())


def test_sync_fd_ok_then_the_command_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, answer, st = handshake(tmp_path, "--", "touch", str(marker))
    assert (code, answer, st["exited"]) == (0, "ok\n", 0) and marker.exists()


def test_sync_fd_without_go_never_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, answer, st = handshake(tmp_path, "--", "touch", str(marker), go=b"")
    assert code == 125 and not marker.exists()
    assert answer.startswith("error: the runtime went away")
    assert "runtime went away" in st["setup_error"]


def test_sync_fd_reports_a_setup_error(tmp_path: Path) -> None:
    code, answer, st = handshake(tmp_path, "--stdin", "/nonexistent", "--", "true")
    assert (
        code == 125
        and answer == "error: --stdin /nonexistent: No such file or directory\n"
    )


def test_sync_fd_exec_failure_is_the_jobs_status(tmp_path: Path) -> None:
    code, answer, st = handshake(tmp_path, "--", "/nonexistent/prog")
    assert (code, answer) == (127, "ok\n")
    assert st["exec_errno"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--uid", "x", "true"], ["--uid", "-1", "true"], ["--gid", "", "true"],
        ["--groups", "1,x", "true"], ["--sync-fd", "2", "true"],
        ["--sync-fd", "9x", "true"], ["--cwd"], ["--bogus", "true"], [],
    ],
)  # fmt: skip
def test_bad_arguments(args: list[str]) -> None:
    assert run(*args).returncode == 125


def test_ids_need_privilege() -> None:
    if os.geteuid() == 0:
        r = run("--uid", "65534", "--gid", "65534", "--groups", "", "--", "id", "-u")
        assert (r.returncode, r.stdout) == (0, "65534\n")
    else:  # setgroups is refused to an ordinary user: the job does not start
        assert run("--uid", str(os.getuid()), "--", "true").returncode == 125
