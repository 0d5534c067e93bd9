"""The library as a file: what it exports, what it links to, and how it fails when
the Python inside it cannot start or a call goes wrong."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssi.drmaa import _build
from ssi.drmaa.template import SCALAR_ATTRIBUTES, VECTOR_ATTRIBUTES
from ssi.proto import messages as m
from ssi.rpc.local import LocalServer

DRMS_INIT_FAILED = 10
INTERNAL_ERROR = 1
INT_FUNCTIONS = 32  # the 36 functions but drmaa_strerror and the three releases


def exported(lib: Path) -> list[str]:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line.split()[-1] for line in out.splitlines() if line.strip())


def test_exports_exactly_the_36_functions_of_the_c_binding(libdrmaa: Path) -> None:
    names = exported(libdrmaa)
    declared = sorted(name for _, name, _ in _build.API)
    assert len(declared) == 36
    assert names == declared


def test_header_and_library_sit_together_with_the_dev_link(libdrmaa: Path) -> None:
    assert (libdrmaa.parent / "drmaa.h").is_file()
    link = libdrmaa.parent / "libdrmaa.so"
    assert link.is_symlink() and link.resolve() == libdrmaa.resolve()


def test_runpath_names_the_libpython_it_was_built_for(libdrmaa: Path) -> None:
    layout = _build.PythonLayout.current()
    dyn = subprocess.run(
        ["readelf", "-d", str(libdrmaa)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"\(SONAME\).*\[libdrmaa\.so\.1\]", dyn)
    runpath = re.search(r"\(RUNPATH\).*\[(.*)\]", dyn)
    assert runpath is not None and runpath.group(1) == layout.libdir
    ldd = subprocess.run(
        ["ldd", str(libdrmaa)], capture_output=True, text=True, check=True
    ).stdout
    resolved = re.search(r"libpython\S+ => (\S+)", ldd)
    assert resolved is not None
    assert Path(resolved.group(1)).resolve() == Path(layout.libpython)


def test_cli_prints_the_library_path(libdrmaa: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ssi.cli.main", "drmaa", "library"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == f"{libdrmaa}\n"
    header = subprocess.run(
        [sys.executable, "-m", "ssi.cli.main", "drmaa", "library", "--header"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert header == f"{libdrmaa.parent / 'drmaa.h'}\n"


def test_attribute_tables_match_the_header() -> None:
    header = _build.HEADER.read_text()
    defined = set(re.findall(r'#define DRMAA_\w+\s+"(drmaa_\w+)"', header))
    assert set(SCALAR_ATTRIBUTES) | set(VECTOR_ATTRIBUTES) <= defined


def init_failed_run(program: Path, lib_dir: Path | None, **env: str) -> list[str]:
    """drmaa_check init-failed with libdrmaa taken from lib_dir: stdout lines."""
    full = {"LD_LIBRARY_PATH": str(lib_dir)} if lib_dir else {}
    full.update(env)
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in full.items()), str(program)]
    done = subprocess.run(
        [*cmd, "init-failed"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def assert_every_call_failed(lines: list[str], why: str) -> None:
    codes = [int(x.split()[1]) for x in lines if x.startswith("rc ")]
    assert len(codes) == INT_FUNCTIONS
    assert set(codes) == {DRMS_INIT_FAILED}, lines
    diagnosis = next(x for x in lines if x.startswith("diagnosis "))
    assert why in diagnosis, diagnosis


@pytest.fixture(scope="module")
def broken_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Libraries whose Python cannot start: a missing home, missing site-packages."""
    layout = _build.PythonLayout.current()
    root = tmp_path_factory.mktemp("broken-drmaa")
    no_home = layout.but(
        home="/nonexistent/python", stdlib_path=("/nonexistent/python/lib",)
    )
    no_site = layout.but(site_dirs=("/nonexistent/site-packages",))
    return {
        "no-home": _build.build(root / "no-home", no_home).parent,
        "no-site": _build.build(root / "no-site", no_site).parent,
    }


def test_every_call_fails_init_when_python_cannot_start(
    drmaa_check: Path, broken_builds: dict[str, Path]
) -> None:
    lines = init_failed_run(drmaa_check, broken_builds["no-home"])
    assert_every_call_failed(lines, "cannot start Python (home /nonexistent/python)")


def test_every_call_fails_init_when_our_packages_are_missing(
    drmaa_check: Path, broken_builds: dict[str, Path]
) -> None:
    lines = init_failed_run(drmaa_check, broken_builds["no-site"])
    assert_every_call_failed(lines, "the Python side of libdrmaa failed to load")


def test_another_libpython_of_the_same_soname_is_refused(
    drmaa_check: Path, tmp_path: Path
) -> None:
    layout = _build.PythonLayout.current()
    soname = Path(layout.libpython).name
    # a copy of libpython elsewhere stands for a distribution's one
    other = tmp_path / "other-lib"
    other.mkdir()
    (other / soname).write_bytes(Path(layout.libpython).read_bytes())
    lines = init_failed_run(drmaa_check, other)
    assert_every_call_failed(lines, f"this process uses {other / soname}")


def test_no_ssid_is_an_init_failure_with_what_to_do(drmaa_check: Path) -> None:
    lines = init_failed_run(drmaa_check, None, SSI_SOCKET="/nonexistent/ssid.sock")
    codes = [int(x.split()[1]) for x in lines if x.startswith("rc ")]
    assert codes[6] == DRMS_INIT_FAILED  # drmaa_init
    diagnosis = next(x for x in lines if x.startswith("diagnosis "))
    assert "ssid is not running" in diagnosis and "/nonexistent/ssid.sock" in diagnosis


CTYPES_INTERNAL = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
diag = ctypes.create_string_buffer(1024)
rc = lib.drmaa_init(None, diag, ctypes.c_size_t(1024))
rc_null = lib.drmaa_init(None, None, ctypes.c_size_t(0))
print(json.dumps({"rc": rc, "diag": diag.value.decode(), "rc_null": rc_null}))
"""


def test_an_exception_inside_a_call_is_an_internal_error_with_its_message(
    libdrmaa: Path, drmaa_check: Path
) -> None:
    # a unix socket path longer than sun_path: connect() raises a plain OSError,
    # which nothing in ssi expects
    long_socket = "/tmp/" + "x" * 200 + ".sock"
    lines = init_failed_run(drmaa_check, None, SSI_SOCKET=long_socket)
    codes = [int(x.split()[1]) for x in lines if x.startswith("rc ")]
    assert codes[6] == INTERNAL_ERROR  # drmaa_init, from a C program
    diagnosis = next(x for x in lines if x.startswith("diagnosis "))
    assert diagnosis.startswith("diagnosis internal error: OSError")
    # from a Python host (ctypes), with a diagnosis buffer and with NULL
    done = subprocess.run(
        [sys.executable, "-c", CTYPES_INTERNAL, str(libdrmaa)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SSI_SOCKET": long_socket, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rc"] == INTERNAL_ERROR
    assert result["diag"].startswith("internal error: OSError")
    assert result["rc_null"] == INTERNAL_ERROR  # and a NULL buffer is fine


def test_first_calls_from_many_threads_at_once(drmaa_check: Path) -> None:
    done = subprocess.run(
        ["env", "-i", str(drmaa_check), "first-calls"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "ok first-calls" in done.stdout, done.stderr


def test_a_vanished_ssid_is_a_communication_failure_not_a_sigpipe(
    drmaa_check: Path, tmp_path: Path
) -> None:
    """A C host that leaves SIGPIPE at its default would die writing to an ssid
    that went away between two calls; libdrmaa blocks and consumes that SIGPIPE."""
    sock = tmp_path / "ssid.sock"

    async def ping(env: m.Envelope, peer: object) -> dict[str, object]:
        return {"node": "fake", "version": "0", "time": time.time()}

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    server = LocalServer(sock, {m.Ping.op: ping})
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    proc = subprocess.Popen(
        ["env", "-i", f"SSI_SOCKET={sock}", str(drmaa_check), "sigpipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n"
        # ssid goes away: the session's kept connection is closed under it
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err}"
    assert "ok sigpipe" in out
