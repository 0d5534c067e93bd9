"""Fixtures for the DRMAA tests: the library (rebuilt when its sources changed), one
local cluster for the whole run, the C test program, and environments for DRMAA
clients.

    libdrmaa ─┐
    drmaa_cluster (2 nodes, session) ─┴─▶ client_env: DRMAA_LIBRARY_PATH + SSI_SOCKET
    drmaa_check (tests/drmaa/c/drmaa_check.c, compiled once)

Each test uses its own DRMAA session, so the shared cluster's other jobs are not in
its way (DRMAA_JOB_IDS_SESSION_ALL/ANY mean the session's jobs only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssi.drmaa import _build
from ssi.local.ssids import LocalSsiCluster
from ssi.local.testing import free_subnet, leftovers, unique_prefix

HERE = Path(__file__).resolve().parent
VENV_BIN = str(Path(sys.executable).parent)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")


@pytest.fixture(scope="session")
def libdrmaa() -> Path:
    """libdrmaa.so.1 in ssi/drmaa/, rebuilt first if built from other sources (an
    editable install does not rebuild it when _build.py or drmaa.h change)."""
    return _build.ensure_built()


@pytest.fixture(scope="session")
def drmaa_cluster() -> Iterator[LocalSsiCluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    c = LocalSsiCluster(
        2,
        prefix=unique_prefix("d"),
        subnet=free_subnet(),
        heartbeat_interval=0.25,
        heartbeat_timeout=3.0,
    )
    try:
        yield c.up()
    finally:
        c.down()
        left = leftovers(c.prefix)
        assert not left, f"local cluster {c.prefix} leaked: {', '.join(left)}"


@pytest.fixture(scope="session")
def socket_path(drmaa_cluster: LocalSsiCluster) -> str:
    return str(drmaa_cluster.socket("node1"))


@pytest.fixture
def client_env(libdrmaa: Path, socket_path: str) -> dict[str, str]:
    """The environment of a DRMAA client process of the test cluster."""
    env = dict(os.environ)
    env["DRMAA_LIBRARY_PATH"] = str(libdrmaa)
    env["SSI_SOCKET"] = socket_path
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory every node sees at the same path, writable by any user."""
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return tmp_path


@pytest.fixture(scope="session")
def drmaa_check(libdrmaa: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/drmaa/c/drmaa_check.c linked with -ldrmaa (RUNPATH: the library's dir)."""
    out = tmp_path_factory.mktemp("drmaa-c") / "drmaa_check"
    lib_dir = str(libdrmaa.parent)
    cmd = [
        "cc",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-parameter",
        "-o",
        str(out),
        str(HERE / "c" / "drmaa_check.c"),
        f"-I{lib_dir}",
        f"-L{lib_dir}",
        "-ldrmaa",
        "-lpthread",
        f"-Wl,-rpath,{lib_dir}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out
