"""ssid as systemd runs it: Type=notify readiness, journald priority prefixes, a clean
stop on SIGTERM, and a config error that stops it at once with a clear message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssi.proto import messages as m
from ssi.rpc.local import LocalClient


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    yield s, path
    s.close()


def free_port_pair() -> int:
    """A port P with P+1 free too: ssid binds its join socket on the next port."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports")


def test_ready_after_sockets_then_clean_stop(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    cfg = tmp_path / "ssi.toml"
    cfg.write_text(
        f'[node]\nname = "solo"\nstate_dir = "{tmp_path / "state"}"\n'
        f'run_dir = "{tmp_path / "run"}"\nlisten = "127.0.0.1"\n'
        f'advertise = "127.0.0.1"\nport = {free_port_pair()}\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "JOURNAL_STREAM": "8:1234"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssi.node.main", "--config", str(cfg)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sock.recv(100) == b"READY=1"
        # ready means the local socket answers
        pong = LocalClient(str(tmp_path / "run" / "ssid.sock"), timeout=5).call(
            m.Ping()
        )
        assert pong.node == "solo"
        keys = tmp_path / "state" / "keys"
        secret = [f for f in keys.iterdir() if f.stat().st_mode & 0o077 == 0]
        assert secret, "the secret key file must be private (0600)"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        stderr = proc.communicate()[1]
    lines = [line for line in stderr.splitlines() if line]
    assert lines and all(line.startswith("<") for line in lines), stderr
    assert any(line.startswith("<6>") and "ssid ready" in line for line in lines)


def test_bad_config_fails_fast_and_says_why(tmp_path: Path) -> None:
    cfg = tmp_path / "ssi.toml"
    cfg.write_text("[node]\nportt = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "ssi.node.main", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "portt" in r.stderr and str(cfg) in r.stderr
