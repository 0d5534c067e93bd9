"""libdrmaa's C ABI driven through ctypes, in this process: buffers (NULL, short,
empty), opaque handles (foreign, released, of the wrong kind), string vectors, and
calls from several Python threads at once."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)"),
    pytest.mark.root,
]

SUCCESS, INVALID_ARGUMENT, NO_ACTIVE_SESSION = 0, 4, 5
INVALID_CONTACT_STRING, ALREADY_ACTIVE_SESSION = 7, 11
INVALID_JOB, EXIT_TIMEOUT, NO_MORE_ELEMENTS = 18, 23, 25
P = ctypes.c_void_p
SZ = ctypes.c_size_t


@pytest.fixture
def lib(
    libdrmaa: Path, socket_path: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> ctypes.CDLL:
    monkeypatch.setenv("SSI_SOCKET", socket_path)
    monkeypatch.chdir(workdir)
    dll = ctypes.CDLL(str(libdrmaa))
    dll.drmaa_strerror.restype = ctypes.c_char_p
    dll.drmaa_wait.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, SZ, ctypes.POINTER(ctypes.c_int),
        ctypes.c_long, ctypes.POINTER(P), ctypes.c_char_p, SZ,
    ]  # fmt: skip
    return dll


@pytest.fixture
def session(lib: ctypes.CDLL) -> Iterator[ctypes.CDLL]:
    diag = ctypes.create_string_buffer(1024)
    assert lib.drmaa_init(None, diag, SZ(1024)) == SUCCESS, diag.value
    try:
        yield lib
    finally:
        lib.drmaa_exit(None, SZ(0))


def template(lib: ctypes.CDLL, *argv: str) -> P:
    jt = P()
    assert lib.drmaa_allocate_job_template(ctypes.byref(jt), None, SZ(0)) == SUCCESS
    cmd, *args = argv
    assert (
        lib.drmaa_set_attribute(jt, b"drmaa_remote_command", cmd.encode(), None, SZ(0))
        == 0
    )
    vector = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)
    assert lib.drmaa_set_vector_attribute(jt, b"drmaa_v_argv", vector, None, SZ(0)) == 0
    return jt


def run(lib: ctypes.CDLL, jt: P) -> bytes:
    jid = ctypes.create_string_buffer(64)
    diag = ctypes.create_string_buffer(1024)
    assert lib.drmaa_run_job(jid, SZ(64), jt, diag, SZ(1024)) == SUCCESS, diag.value
    return jid.value


def test_strerror_and_library_strings(lib: ctypes.CDLL) -> None:
    assert lib.drmaa_strerror(0) == b"success"
    assert lib.drmaa_strerror(EXIT_TIMEOUT) == b"timed out"
    assert lib.drmaa_strerror(-1) == b"unknown DRMAA error code"
    small = ctypes.create_string_buffer(b"\xff" * 8)
    assert lib.drmaa_get_DRM_system(small, SZ(4), None, SZ(0)) == SUCCESS
    assert small.raw[:4] == b"ssi\0"  # cut to 3 bytes and the NUL
    assert small.raw[4:8] == b"\xff" * 4  # nothing written past the length
    assert lib.drmaa_get_DRM_system(small, SZ(0), None, SZ(0)) == SUCCESS
    assert lib.drmaa_get_DRM_system(None, SZ(100), None, SZ(0)) == SUCCESS


def test_session_errors_with_and_without_a_diagnosis_buffer(lib: ctypes.CDLL) -> None:
    diag = ctypes.create_string_buffer(1024)
    assert lib.drmaa_exit(diag, SZ(1024)) == NO_ACTIVE_SESSION
    assert b"no DRMAA session" in diag.value
    assert lib.drmaa_exit(None, SZ(0)) == NO_ACTIVE_SESSION
    assert lib.drmaa_init(b"white space", None, SZ(0)) == INVALID_CONTACT_STRING
    short = ctypes.create_string_buffer(8)
    assert lib.drmaa_init(b"white space", short, SZ(8)) == INVALID_CONTACT_STRING
    assert len(short.value) == 7
    assert lib.drmaa_init(None, None, SZ(0)) == SUCCESS
    try:
        assert lib.drmaa_init(None, None, SZ(0)) == ALREADY_ACTIVE_SESSION
    finally:
        assert lib.drmaa_exit(None, SZ(0)) == SUCCESS


def test_string_vectors(session: ctypes.CDLL) -> None:
    lib = session
    names = P()
    assert lib.drmaa_get_attribute_names(ctypes.byref(names), None, SZ(0)) == 0
    n = SZ()
    assert lib.drmaa_get_num_attr_names(names, ctypes.byref(n)) == SUCCESS
    buf = ctypes.create_string_buffer(1024)
    got = []
    while lib.drmaa_get_next_attr_name(names, buf, SZ(1024)) == SUCCESS:
        got.append(buf.value.decode())
    assert len(got) == n.value and "drmaa_remote_command" in got
    assert lib.drmaa_get_next_attr_name(names, buf, SZ(1024)) == NO_MORE_ELEMENTS
    # the wrong kind of vector, a NULL size, then a release (twice: harmless)
    assert lib.drmaa_get_next_job_id(names, buf, SZ(1024)) == INVALID_ARGUMENT
    assert lib.drmaa_get_num_attr_names(names, None) == INVALID_ARGUMENT
    lib.drmaa_release_attr_values(names)  # wrong kind: ignored
    assert lib.drmaa_get_num_attr_names(names, ctypes.byref(n)) == SUCCESS
    lib.drmaa_release_attr_names(names)
    lib.drmaa_release_attr_names(names)
    assert lib.drmaa_get_next_attr_name(names, buf, SZ(1024)) == INVALID_ARGUMENT
    lib.drmaa_release_job_ids(None)


def test_foreign_and_deleted_templates(session: ctypes.CDLL) -> None:
    lib = session
    foreign = ctypes.create_string_buffer(64)
    assert (
        lib.drmaa_set_attribute(foreign, b"drmaa_wd", b"/", None, SZ(0))
        == INVALID_ARGUMENT
    )
    assert lib.drmaa_delete_job_template(None, None, SZ(0)) == INVALID_ARGUMENT
    jt = template(lib, "/bin/true")
    assert lib.drmaa_allocate_job_template(None, None, SZ(0)) == INVALID_ARGUMENT
    assert lib.drmaa_delete_job_template(jt, None, SZ(0)) == SUCCESS
    jid = ctypes.create_string_buffer(64)
    assert lib.drmaa_run_job(jid, SZ(64), jt, None, SZ(0)) == INVALID_ARGUMENT


def test_run_and_wait_with_optional_outputs_left_null(session: ctypes.CDLL) -> None:
    lib = session
    jid = run(lib, template(lib, "/bin/sh", "-c", "exit 42"))
    assert lib.drmaa_wait(jid, None, SZ(0), None, -1, None, None, SZ(0)) == SUCCESS
    assert lib.drmaa_wait(jid, None, SZ(0), None, 0, None, None, SZ(0)) == INVALID_JOB
    # a job id that is not a number
    assert (
        lib.drmaa_wait(b"abc", None, SZ(0), None, 0, None, None, SZ(0)) == INVALID_JOB
    )
    state = ctypes.c_int()
    assert lib.drmaa_job_ps(b"abc", ctypes.byref(state), None, SZ(0)) == INVALID_JOB
    assert lib.drmaa_job_ps(jid, None, None, SZ(0)) == INVALID_ARGUMENT


def test_python_threads_call_at_once(session: ctypes.CDLL) -> None:
    lib = session
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            for i in range(4):
                code = (n * 4 + i) % 256
                jid = run(lib, template(lib, "/bin/sh", "-c", f"exit {code}"))
                stat, exited, status = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
                out = ctypes.create_string_buffer(64)
                rc = lib.drmaa_wait(
                    jid, out, SZ(64), ctypes.byref(stat), 60, None, None, SZ(0)
                )
                assert rc == SUCCESS and out.value == jid
                lib.drmaa_wifexited(ctypes.byref(exited), stat, None, SZ(0))
                lib.drmaa_wexitstatus(ctypes.byref(status), stat, None, SZ(0))
                assert exited.value == 1 and status.value == code, (jid, stat.value)
        except AssertionError as e:
            errors.append(f"thread {n}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # every job reaped: nothing left for "any"
    rc = lib.drmaa_wait(
        b"DRMAA_JOB_IDS_SESSION_ANY", None, SZ(0), None, 0, None, None, SZ(0)
    )
    assert rc == INVALID_JOB
