"""Each workload of the checkpoint issue, through the cluster: submitted on node1,
checkpointed and stopped (images copied to a second node), restarted on another
node, and finished there with its state intact. The workloads themselves are the
ones tests/system/test_checkpoint_workloads.py runs on one node."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from tests.system.test_checkpoint_workloads import (
    APPENDER,
    DAEMON,
    LOOP,
    NUMPY,
    SYSV,
    THREADS,
)

from .conftest import wait_for

SEQ_N = 3_000_000


@pytest.fixture(scope="module")
def cluster() -> Any:
    from ssi.local.testing import free_subnet, unique_prefix

    c = LocalSsiCluster(
        3,
        prefix=unique_prefix(),
        subnet=free_subnet(),
        heartbeat_interval=0.25,
        heartbeat_timeout=3.0,
    )
    try:
        yield c.up()
    finally:
        c.down()


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def run(
    c: LocalSsiCluster, work: Path, argv: list[str], ready: Callable[[], Any], name: str
) -> int:
    job = c.call(
        "node1",
        m.JobSubmit(
            argv=argv,
            cwd=str(work),
            name=name,
            node="node1",
            env={"PATH": os.environ["PATH"]},
            stdout=str(work / f"ssi-{name}.out"),
        ),
    )["id"]
    wait_for(f"{name} to reach its steady state", ready, 60)
    wait_for(
        f"{name} running",
        lambda: c.call("node1", m.JobShow(job=job))["state"] == "running",
        20,
    )
    ck = c.call("node1", m.JobCheckpoint(job=job, stop=True), timeout=300)
    assert len(ck["holders"]) == 2
    back = c.call("node2", m.JobRestart(job=job, node="node3"), timeout=300)
    assert back["node"] == "node3" and back["state"] == "running"
    return int(job)


def finish(c: LocalSsiCluster, job: int, work: Path, timeout: float = 60) -> None:
    (work / "stop").touch()
    done = c.call("node1", m.JobWait(job=job, timeout=timeout), timeout=timeout + 10)
    assert done["state"] == "done", done


def test_python_loop(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    out = tmp_path / "ssi-loop.out"
    job = run(
        cluster,
        tmp_path,
        [sys.executable, "-c", LOOP],
        lambda: len(lines(out)) >= 20,
        "loop",
    )
    n = len(lines(out))
    wait_for("more lines on node3", lambda: len(lines(out)) > n + 20, 20)
    finish(cluster, job, tmp_path)
    rows = [tuple(map(int, line.split())) for line in lines(out)]
    assert [r[0] for r in rows] == list(range(len(rows)))  # no gap, no repeat
    for k, size, total in rows:
        assert size == k + 1 and total == sum(i * i for i in range(k + 1))


def test_pipeline_seq_into_gzip(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    gz = tmp_path / "numbers.gz"
    cmd = f"seq 1 {SEQ_N} | gzip > numbers.gz; while [ ! -e stop ]; do sleep 0.05; done"
    job = run(
        cluster,
        tmp_path,
        ["sh", "-c", cmd],
        lambda: gz.exists() and gz.stat().st_size > 64 << 10,
        "gz",
    )
    finish(cluster, job, tmp_path, timeout=120)
    subprocess.run(["gzip", "-t", str(gz)], check=True)
    got = subprocess.run(
        ["sh", "-c", f"gzip -dc {gz} | sha256sum"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    want = subprocess.run(
        ["sh", "-c", f"seq 1 {SEQ_N} | sha256sum"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert got == want


def test_multithreaded(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    out = tmp_path / "ssi-mt.out"
    job = run(
        cluster,
        tmp_path,
        [sys.executable, "-c", THREADS],
        lambda: len(lines(out)) >= 10,
        "mt",
    )
    n = len(lines(out))
    wait_for("threads counting on node3", lambda: len(lines(out)) > n + 10, 20)
    finish(cluster, job, tmp_path)
    rows = [list(map(int, line.split())) for line in lines(out)]
    for row in rows[:-1]:  # the last line comes after the threads were joined
        assert row[0] == 5 and row[1] == sum(row[2:])
    assert rows[-1][0] == 1 and rows[-1][1] == sum(rows[-1][2:])


def test_sysv_queue_and_semaphore(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    src = tmp_path / "sysv.c"
    src.write_text(SYSV)
    prog = tmp_path / "sysv"
    subprocess.run(["cc", "-O2", "-o", str(prog), str(src)], check=True)
    out = tmp_path / "ssi-ipc.out"
    job = run(cluster, tmp_path, [str(prog)], lambda: lines(out) == ["ready"], "ipc")
    finish(cluster, job, tmp_path)
    assert lines(out) == ["ready", *(f"message {i}" for i in range(5)), "sem 2"]


def test_appending_to_an_open_file(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    log = tmp_path / "appended.txt"
    job = run(
        cluster,
        tmp_path,
        [sys.executable, "-c", APPENDER],
        lambda: len(lines(log)) >= 50,
        "app",
    )
    n = len(lines(log))
    wait_for("appending on node3", lambda: len(lines(log)) > n + 50, 20)
    finish(cluster, job, tmp_path)
    got = lines(log)
    assert got == [f"line {i}" for i in range(len(got))]


def test_numpy_200_mb(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    out = tmp_path / "ssi-np.out"
    job = run(
        cluster,
        tmp_path,
        [sys.executable, "-c", NUMPY],
        lambda: len(lines(out)) >= 1,
        "np",
    )
    finish(cluster, job, tmp_path, timeout=120)
    first, second = lines(out)
    assert first == second and first.split()[0] == str(200_000_000)
    assert hashlib.sha256(b"").hexdigest() not in first


def test_daemonizing_job(cluster: LocalSsiCluster, tmp_path: Path) -> None:
    log = tmp_path / "daemon.txt"
    job = run(
        cluster,
        tmp_path,
        [sys.executable, "-c", DAEMON],
        lambda: len(lines(log)) >= 10,
        "dmn",
    )
    n = len(lines(log))
    wait_for("the daemon on node3", lambda: len(lines(log)) > n + 10, 20)
    finish(cluster, job, tmp_path)
    rows = [line.split() for line in lines(log)]
    assert {r[0] for r in rows} == {rows[0][0]}
    assert [int(r[1]) for r in rows] == list(range(len(rows)))
