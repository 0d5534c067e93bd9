"""The stock `drmaa` package from PyPI (0.7.9) on libdrmaa, in this process: what a
Python DRMAA user does, on a real 2-node cluster."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)"),
    pytest.mark.root,
]

PY = sys.executable


@pytest.fixture
def drmaa(
    libdrmaa: Path, socket_path: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    monkeypatch.setenv("DRMAA_LIBRARY_PATH", str(libdrmaa))
    monkeypatch.setenv("SSI_SOCKET", socket_path)
    monkeypatch.chdir(workdir)  # jobs' default working directory and output files
    import drmaa as module

    return module


@pytest.fixture
def session(drmaa: ModuleType) -> Iterator[Any]:
    s = drmaa.Session()
    s.initialize()
    try:
        yield s
    finally:
        try:
            s.exit()
        except drmaa.errors.NoActiveSessionException:
            pass


def python_job(session: Any, code: str, **attrs: Any) -> Any:
    jt = session.createJobTemplate()
    jt.remoteCommand = PY
    jt.args = ["-c", code]
    for k, v in attrs.items():
        setattr(jt, k, v)
    return jt


def test_run_and_wait(drmaa: ModuleType, session: Any, workdir: Path) -> None:
    jt = python_job(session, "import os; print(os.environ['WHO']); raise SystemExit(4)")
    jt.jobEnvironment = {"WHO": "me"}
    jt.outputPath = f":{workdir}/out.txt"
    jid = session.runJob(jt)
    assert session.jobStatus(jid) in ("queued_active", "running", "done")
    info = session.wait(jid, drmaa.Session.TIMEOUT_WAIT_FOREVER)
    assert info.jobId == jid and info.hasExited and info.exitStatus == 4
    assert not info.hasSignal and not info.wasAborted
    assert {"cpu", "ru_maxrss", "start_time", "end_time", "hostname"} <= set(
        info.resourceUsage
    )
    assert (workdir / "out.txt").read_text() == "me\n"
    session.deleteJobTemplate(jt)


def test_bulk_jobs_with_placeholders(
    drmaa: ModuleType, session: Any, workdir: Path
) -> None:
    jt = python_job(session, "import os; print('task', os.environ['SSI_TASK_ID'])")
    jt.outputPath = (
        ":"
        + drmaa.JobTemplate.WORKING_DIRECTORY
        + "/o."
        + (drmaa.JobTemplate.PARAMETRIC_INDEX)
    )
    jt.errorPath = f":{workdir}/e." + drmaa.JobTemplate.PARAMETRIC_INDEX
    ids = session.runBulkJobs(jt, 1, 7, 3)
    assert len(ids) == 3
    session.synchronize([drmaa.Session.JOB_IDS_SESSION_ALL], 60, True)
    for i in (1, 4, 7):
        assert (workdir / f"o.{i}").read_text() == f"task {i}\n"
    # disposed: nothing left to wait for
    with pytest.raises(drmaa.errors.InvalidJobException):
        session.wait(ids[0], drmaa.Session.TIMEOUT_NO_WAIT)


def test_wait_timeouts(drmaa: ModuleType, session: Any) -> None:
    jid = session.runJob(python_job(session, "import time; time.sleep(30)"))
    t = time.monotonic()
    with pytest.raises(drmaa.errors.ExitTimeoutException):
        session.wait(jid, drmaa.Session.TIMEOUT_NO_WAIT)
    assert time.monotonic() - t < 1
    t = time.monotonic()
    with pytest.raises(drmaa.errors.ExitTimeoutException):
        session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, 1)
    assert 0.9 <= time.monotonic() - t < 5
    with pytest.raises(drmaa.errors.ExitTimeoutException):
        session.synchronize([jid], 1, False)
    session.control(jid, drmaa.JobControlAction.TERMINATE)
    info = session.wait(jid, drmaa.Session.TIMEOUT_WAIT_FOREVER)
    assert info.hasSignal and info.terminatedSignal == "SIGTERM"
    with pytest.raises(drmaa.errors.InvalidJobException):  # reaped
        session.wait(jid, drmaa.Session.TIMEOUT_NO_WAIT)


def wait_status(session: Any, jid: str, want: str) -> None:
    deadline = time.monotonic() + 15
    while (got := session.jobStatus(jid)) != want:
        assert time.monotonic() < deadline, f"job {jid} is {got}, not {want}"
        time.sleep(0.02)


def test_control_each_kind(drmaa: ModuleType, session: Any) -> None:
    A, S = drmaa.JobControlAction, drmaa.JobState
    jid = session.runJob(python_job(session, "import time; time.sleep(30)"))
    wait_status(session, jid, S.RUNNING)
    session.control(jid, A.SUSPEND)
    assert session.jobStatus(jid) == S.USER_SUSPENDED
    with pytest.raises(drmaa.errors.SuspendInconsistentStateException):
        session.control(jid, A.SUSPEND)
    session.control(jid, A.RESUME)
    assert session.jobStatus(jid) == S.RUNNING
    with pytest.raises(drmaa.errors.HoldInconsistentStateException):
        session.control(jid, A.HOLD)
    session.control(jid, A.TERMINATE)
    assert session.wait(jid).terminatedSignal == "SIGTERM"
    jt = python_job(session, "pass")
    jt.jobSubmissionState = drmaa.JobSubmissionState.HOLD_STATE
    held = session.runJob(jt)
    assert session.jobStatus(held) == S.USER_ON_HOLD
    with pytest.raises(drmaa.errors.ReleaseInconsistentStateException):
        session.control(jid, A.RELEASE)
    session.control(held, A.RELEASE)
    assert session.wait(held).exitStatus == 0


def test_exit_codes_and_signals(drmaa: ModuleType, session: Any) -> None:
    codes = [0, 1, 2, 127, 128, 200, 254, 255]
    for code in codes:
        session.runJob(python_job(session, f"raise SystemExit({code})"))
    got = sorted(
        session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, 60).exitStatus for _ in codes
    )
    assert got == codes
    for name in ("SIGTERM", "SIGKILL", "SIGINT", "SIGHUP"):
        code = f"import os, signal; os.kill(os.getpid(), signal.{name})"
        info = session.wait(session.runJob(python_job(session, code)), 60)
        assert info.hasSignal and not info.hasExited and info.terminatedSignal == name


def test_jobs_that_cannot_start(drmaa: ModuleType, session: Any, workdir: Path) -> None:
    for attrs in (
        {"workingDirectory": "/nonexistent"},
        {"inputPath": ":/nonexistent/input"},
        {"outputPath": f":{workdir}/missing/dir/out"},
    ):
        jid = session.runJob(python_job(session, "pass", **attrs))
        session.synchronize([jid], 60, False)
        assert session.jobStatus(jid) == drmaa.JobState.FAILED
        info = session.wait(jid)
        assert info.wasAborted and not info.hasExited and not info.hasSignal
    assert session.wait(session.runJob(python_job(session, "pass"))).exitStatus == 0


def test_reattach_by_contact(drmaa: ModuleType) -> None:
    s = drmaa.Session()
    s.initialize()
    jid = s.runJob(python_job(s, "import time; time.sleep(0.5)"))
    contact = s.contact
    s.exit()
    s.initialize(contact)
    try:
        assert s.contact == contact
        info = s.wait(drmaa.Session.JOB_IDS_SESSION_ANY, 60)
        assert info.jobId == jid and info.exitStatus == 0
    finally:
        s.exit()
    with pytest.raises(drmaa.errors.InvalidContactStringException):
        s.initialize("not a session name")


def test_invalid_attributes(drmaa: ModuleType, session: Any) -> None:
    jt = session.createJobTemplate()
    assert "drmaa_wct_hlimit" in jt.attributeNames
    with pytest.raises(drmaa.errors.InvalidArgumentException):
        jt.deadlineTime = "12:00"  # an optional attribute ssi does not support
    with pytest.raises(drmaa.errors.InvalidAttributeValueException):
        jt.jobSubmissionState = "drmaa_whenever"
    jt.remoteCommand = "/bin/true"
    jt.nativeSpecification = "mem>=lots"
    with pytest.raises(drmaa.errors.InvalidAttributeValueException) as info:
        session.runJob(jt)
    assert "mem>=lots" in str(info.value)
    jt.nativeSpecification = "mem>=1M"
    assert session.wait(session.runJob(jt), 60).exitStatus == 0


def test_a_blocked_wait_lets_other_threads_run(drmaa: ModuleType, session: Any) -> None:
    jid = session.runJob(python_job(session, "import time; time.sleep(2)"))
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.01)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        t = time.monotonic()
        session.wait(jid, 60)
        waited = time.monotonic() - t
    finally:
        done.set()
        counter.join()
    assert waited > 1.0
    assert ticks > 50 * waited  # ~100/s if the GIL is free during the wait


def test_init_reads_the_socket_at_the_call(
    drmaa: ModuleType, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = drmaa.Session()
    monkeypatch.setenv("SSI_SOCKET", "/nonexistent/ssid.sock")
    with pytest.raises(drmaa.errors.DrmsInitException) as info:
        s.initialize()
    assert "/nonexistent/ssid.sock" in str(info.value)
    monkeypatch.setenv("SSI_SOCKET", socket_path)
    s.initialize()
    try:
        assert s.drmsInfo.startswith("ssi ") and str(s.version) == "1.0"
    finally:
        s.exit()
