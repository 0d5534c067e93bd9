"""DRMAA semantics that need neither a cluster nor the C library: attribute formats,
placeholders, what a template submits, stat encoding, rusage, job states."""

from __future__ import annotations

import datetime as dt
import signal

import pytest

from ssi.drmaa import status
from ssi.drmaa.errors import DrmaaError, Errno, from_ssi_error
from ssi.drmaa.session import _batches
from ssi.drmaa.template import (
    JobTemplate,
    SubmitContext,
    parse_duration,
    parse_start_time,
    split_host,
)
from ssi.proto import errors as e
from ssi.proto import messages as m

CTX = SubmitContext(session="s1", cwd="/work", home="/home/u", environ={"A": "1"})


def code_of(fn: object, *args: object) -> Errno:
    with pytest.raises(DrmaaError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1:30") == 90
    assert parse_duration("2:00:05") == 7205
    assert code_of(parse_duration, "1h") is Errno.INVALID_ATTRIBUTE_FORMAT
    assert code_of(parse_duration, "1:2:3:4") is Errno.INVALID_ATTRIBUTE_FORMAT


def test_start_times() -> None:
    utc = dt.UTC
    now = dt.datetime(2030, 6, 15, 12, 0, tzinfo=utc)
    at = parse_start_time("2031/12/24 18:30 +00:00", now)
    assert dt.datetime.fromtimestamp(at, utc) == dt.datetime(
        2031, 12, 24, 18, 30, tzinfo=utc
    )
    at = parse_start_time("13:45:10 +02:00", now)
    assert dt.datetime.fromtimestamp(at, utc) == dt.datetime(
        2030, 6, 15, 11, 45, 10, tzinfo=utc
    )
    at = parse_start_time("31/12/24 18:30 -01:30", now)  # YY/MM/DD
    assert dt.datetime.fromtimestamp(at, utc) == dt.datetime(
        2031, 12, 24, 20, 0, tzinfo=utc
    )
    assert code_of(parse_start_time, "noon") is Errno.INVALID_ATTRIBUTE_FORMAT
    assert (
        code_of(parse_start_time, "2031/02/30 10:00") is Errno.INVALID_ATTRIBUTE_VALUE
    )


def test_attribute_names_and_formats() -> None:
    jt = JobTemplate()
    assert jt.get("drmaa_js_state") == "drmaa_active"
    assert jt.get("drmaa_wd") == ""
    assert code_of(jt.set, "drmaa_bogus", "x") is Errno.INVALID_ARGUMENT
    assert code_of(jt.get, "drmaa_bogus") is Errno.INVALID_ARGUMENT
    assert code_of(jt.set, "drmaa_deadline_time", "10:00") is Errno.INVALID_ARGUMENT
    assert code_of(jt.set, "drmaa_v_argv", "x") is Errno.INVALID_ARGUMENT
    assert code_of(jt.set_vector, "drmaa_wd", ["x"]) is Errno.INVALID_ARGUMENT
    assert code_of(jt.set, "drmaa_js_state", "run") is Errno.INVALID_ATTRIBUTE_VALUE
    assert code_of(jt.set, "drmaa_block_email", "y") is Errno.INVALID_ATTRIBUTE_VALUE
    assert code_of(jt.set, "drmaa_join_files", "1") is Errno.INVALID_ATTRIBUTE_VALUE
    assert (
        code_of(jt.set_vector, "drmaa_v_env", ["X"]) is Errno.INVALID_ATTRIBUTE_FORMAT
    )
    jt.set("drmaa_wct_hlimit", "")  # empty: unset (drmaa-python sends that)
    jt.set_vector("drmaa_v_email", ["a@b.c"])
    assert jt.get_vector("drmaa_v_email") == ["a@b.c"]
    assert jt.get_vector("drmaa_v_argv") == []


def test_host_paths() -> None:
    assert split_host("node2:/data/x") == ("node2", "/data/x")
    assert split_host(":/data/x") == ("", "/data/x")
    assert split_host("/data/a:b") == ("", "/data/a:b")
    assert split_host("out.txt") == ("", "out.txt")


def template(**attrs: str) -> JobTemplate:
    jt = JobTemplate()
    jt.set("drmaa_remote_command", "/bin/echo")
    for k, v in attrs.items():
        jt.set(f"drmaa_{k}", v)
    return jt


def test_a_plain_template_submits_in_the_callers_directory() -> None:
    jt = template(job_name="hi")
    jt.set_vector("drmaa_v_argv", ["a", "b"])
    jt.set_vector("drmaa_v_env", ["B=2", "A=override"])
    sub = jt.checked().submission(CTX)
    assert sub == m.JobSubmit(
        argv=["/bin/echo", "a", "b"],
        name="hi",
        cwd="/work",
        env={"A": "override", "B": "2"},
        stdin="/dev/null",
        stdout="",
        stderr="",
        session="s1",
    )


def test_placeholders_in_a_bulk_job() -> None:
    jt = template(
        wd="$drmaa_hd_ph$/run.$drmaa_incr_ph$",
        input_path="host:$drmaa_wd_ph$/in",
        output_path=":out.$drmaa_incr_ph$",
        error_path="$drmaa_hd_ph$/err",
        js_state="drmaa_hold",
        wct_hlimit="1:00",
        duration_hlimit="30",
        native_specification="cpus>=2",
    )
    sub = jt.checked().submission(CTX, index=7)
    assert sub.cwd == "/home/u/run.7"
    assert sub.stdin == "/home/u/run.7/in"
    assert sub.stdout == "/home/u/run.7/out.7"  # relative: to the working directory
    assert sub.stderr == "/home/u/err"
    assert sub.hold and sub.wall_limit == 30.0 and sub.require == "cpus>=2"
    assert sub.env["SSI_TASK_ID"] == "7"


def test_join_files_puts_stderr_with_stdout() -> None:
    sub = template(join_files="y", output_path="/o", error_path="/e").checked()
    assert sub.submission(CTX).stderr == "/o"
    unnamed = template(join_files="y").checked().submission(CTX)
    assert unnamed.stdout == unnamed.stderr and unnamed.stdout.startswith(
        "/work/echo.o"
    )


def test_what_refuses_a_submission() -> None:
    assert code_of(JobTemplate().checked) is Errno.INVALID_ATTRIBUTE_VALUE
    bad = template(native_specification="cpu>=2")
    with pytest.raises(DrmaaError) as info:
        bad.checked()
    assert info.value.code is Errno.INVALID_ATTRIBUTE_VALUE
    assert "did you mean 'cpus'" in info.value.message and "^" in info.value.message
    wd_loop = template(wd="$drmaa_wd_ph$/x").checked()
    assert code_of(wd_loop.submission, CTX) is Errno.INVALID_ATTRIBUTE_VALUE


def test_a_future_start_time_holds_the_command_back() -> None:
    sub = template(start_time="2099/01/01 00:00 +00:00").checked().submission(CTX)
    assert sub.argv[:2] == ["/bin/sh", "-c"] and sub.argv[-1] == "/bin/echo"
    assert "4070908800" in sub.argv[2]


@pytest.mark.parametrize(
    ("exit", "exited", "code", "signaled", "name", "core", "aborted"),
    [
        ({"exited": 0}, True, 0, False, "", False, False),
        ({"exited": 255}, True, 255, False, "", False, False),
        ({"signaled": 15}, False, 0, True, "SIGTERM", False, False),
        ({"signaled": 11, "core_dumped": True}, False, 0, True, "SIGSEGV", True, False),
        ({"aborted": True, "setup_error": "chdir"}, False, 0, False, "", False, True),
        (None, False, 0, False, "", False, True),
        ({"source": "unknown"}, False, 0, False, "", False, False),
    ],
)
def test_stat(
    exit: dict[str, object] | None,
    exited: bool,
    code: int,
    signaled: bool,
    name: str,
    core: bool,
    aborted: bool,
) -> None:
    stat = status.encode({"exit": exit})
    assert status.exited(stat) is exited and status.exit_status(stat) == code
    assert status.signaled(stat) is signaled
    assert (status.signal_name(status.term_signal(stat)) if signaled else "") == name
    assert status.core_dumped(stat) is core and status.aborted(stat) is aborted


def test_signal_names() -> None:
    assert status.signal_name(9) == "SIGKILL"
    assert status.signal_name(int(signal.SIGRTMIN) + 2) == "SIGRTMIN+2"


def test_job_states() -> None:
    ps = status.ps
    assert ps({"state": "held"}) is status.Ps.USER_ON_HOLD
    assert ps({"state": "queued"}) is status.Ps.QUEUED_ACTIVE
    assert ps({"state": "running"}) is status.Ps.RUNNING
    assert ps({"state": "suspended"}) is status.Ps.USER_SUSPENDED
    assert ps({"state": "failed", "exit": {"exited": 3}}) is status.Ps.DONE
    assert ps({"state": "killed", "exit": {"signaled": 9}}) is status.Ps.FAILED
    assert ps({"state": "failed", "exit": {"aborted": True}}) is status.Ps.FAILED


def test_rusage() -> None:
    job = {
        "submitted_at": 100.0,
        "started_at": 101.0,
        "ended_at": 103.5,
        "node": "node2",
        "exit": {
            "exited": 0,
            "utime": 1.25,
            "stime": 0.5,
            "maxrss_kb": 2048,
            "started": 101.0,
            "ended": 103.5,
            "cpu_seconds": 1.75,
        },
    }
    assert status.rusage(job) == [
        "submission_time=100",
        "start_time=101",
        "end_time=103.5",
        "wallclock=2.5",
        "cpu=1.75",
        "ru_utime=1.25",
        "ru_stime=0.5",
        "ru_maxrss=2048",
        "exit_status=0",
        "hostname=node2",
    ]


def test_errors_from_ssid() -> None:
    assert from_ssi_error(e.NotFound("x")).code is Errno.INVALID_JOB
    assert from_ssi_error(e.Denied("x")).code is Errno.AUTH_FAILURE
    assert from_ssi_error(e.Unavailable("x")).code is Errno.DRM_COMMUNICATION_FAILURE
    assert from_ssi_error(e.Timeout("x")).code is Errno.EXIT_TIMEOUT
    assert from_ssi_error(e.BadRequest("x")).code is Errno.DENIED_BY_DRM


def test_bulk_batches_stay_small() -> None:
    env = {f"V{i}": "x" * 100 for i in range(40)}
    bodies = [m.JobSubmit(argv=["true"], cwd="/", env=env) for _ in range(2000)]
    batches = list(_batches(bodies))
    assert sum(len(b) for b in batches) == 2000 and len(batches) > 1
    assert [b for batch in batches for b in batch] == bodies
