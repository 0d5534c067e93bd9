"""The job runtime's data types, and small pieces of the runtime that need no root."""

from __future__ import annotations

import signal

import msgspec
import pytest

from ssi.jobs import ExitStatus, JobRecord, JobSpec, JobState
from ssi.jobs import runtime as rt


def test_spec_defaults_and_wire_form() -> None:
    a, b = JobSpec(argv=["x"]), JobSpec(argv=["y"])
    assert a.env is not b.env and a.groups is not b.groups  # no shared defaults
    assert (a.cwd, a.stdin, a.stdout, a.stderr, a.uid) == ("/", "/dev/null", "", "", 0)
    spec = JobSpec(argv=["sh", "-c", "x"], env={"A": "1"}, uid=5, gid=6, groups=[7])
    assert msgspec.json.decode(msgspec.json.encode(spec), type=JobSpec) == spec
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"argv": ["x"], "bogus": 1}, JobSpec)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(argv=[]), "argv"),
        (JobSpec(argv=[""]), "argv"),
        (JobSpec(argv=["x"], cwd="relative"), "cwd"),
        (JobSpec(argv=["x"], uid=-1), "negative"),
        (JobSpec(argv=["x"], groups=[-3]), "negative"),
        (JobSpec(argv=["x\0y"]), "NUL"),
        (JobSpec(argv=["x"], env={"A=B": "1"}), "env"),
        (JobSpec(argv=["x"], env={"": "1"}), "env"),
    ],
)
def test_spec_check(spec: JobSpec, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        spec.check()


def test_spec_check_accepts_a_good_one() -> None:
    JobSpec(argv=["sleep", "1"], cwd="/tmp", env={"PATH": "/bin"}).check()


def test_exit_status_code_and_words() -> None:
    assert ExitStatus("init", exited=7).code == 7
    killed = ExitStatus("init", signaled=int(signal.SIGTERM))
    assert killed.code == 143 and killed.describe() == "killed by SIGTERM"
    dumped = ExitStatus("init", signaled=int(signal.SIGSEGV), core_dumped=True)
    assert dumped.describe() == "killed by SIGSEGV (core dumped)"
    assert ExitStatus("unknown").code is None
    assert ExitStatus("unknown").describe() == "ended, status unknown"
    assert ExitStatus("checkpoint", signaled=9).checkpointed
    assert "stopped by a checkpoint" in ExitStatus("checkpoint").describe()
    assert (
        "could not start" in ExitStatus("init", exited=125, setup_error="x").describe()
    )
    not_found = ExitStatus("init", exited=127, exec_errno=2, exec_error="No such file")
    assert "could not run the command" in not_found.describe()


def test_exit_status_from_an_init_status_line() -> None:
    line = (
        '{"exited": 125, "setup_error": "--stdout /x\\"y: Permission denied",'
        ' "utime": 0.000, "stime": 0.001, "maxrss_kb": 1608,'
        ' "started": 1795384689.308, "ended": 1795384689.309}'
    )
    st = msgspec.convert({"source": "init", **msgspec.json.decode(line)}, ExitStatus)
    assert st.setup_error == '--stdout /x"y: Permission denied' and st.maxrss_kb == 1608


def test_record_round_trip() -> None:
    rec = JobRecord(
        job_id="3",
        spec=JobSpec(argv=["true"]),
        node="n1",
        state=JobState.ENDED,
        started=1.0,
        status_file="/run/ssi/job-status/3.json",
        stdin="/dev/null",
        stdout="/ssi-3.out",
        stderr="/ssi-3.err",
        cgroup="/ssi/3",
        exit=ExitStatus("init", exited=0),
    )
    data = msgspec.json.encode(rec)
    assert b'"state":"ended"' in data
    back = msgspec.json.decode(data, type=JobRecord)
    assert back == rec and back.exit is not None and back.exit.code == 0


def test_states() -> None:
    alive = {s for s in JobState if s.alive}
    assert alive == {JobState.STARTING, JobState.RUNNING, JobState.SUSPENDED}


@pytest.mark.parametrize(
    ("job_id", "name", "host"),
    [("17", "", "17"), ("17", "train-net", "train-net"), ("17", "a b", "17"),
     ("17", "x" * 65, "17")],
)  # fmt: skip
def test_hostname(job_id: str, name: str, host: str) -> None:
    assert rt._hostname(job_id, name) == host
