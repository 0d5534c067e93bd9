"""Each workload of the checkpoint issue, through the cluster: submitted on node1,
moved to node3 in one of three ways, and finished there with its state intact.

    restart: checkpointed and stopped (images copied to a second node), restarted
    cold:    migrated (frozen, dumped, pushed, restored)
    live:    migrated post-copy (resumed on node3 before its pages arrive)

The workloads themselves are the ones tests/system/test_checkpoint_workloads.py runs
on one node: a Python loop with in-memory state; seq | gzip; a multithreaded
program; a SysV message queue and semaphore; a file appended to; a 200 MB numpy
array; a double-forking daemon. Each ends through a trigger file, `stop`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
PY = sys.executable


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class Workload:
    """argv: the command, given its directory; ready: it reached its steady state;
    output: the file whose lines show it progressing (None: it does not, e.g. it
    only waits for `stop`); check: its state was intact, once it has finished."""

    name: str
    argv: Callable[[Path], list[str]]
    ready: Callable[[Path], bool]
    output: str | None
    check: Callable[[Path], None]
    finish_timeout: float = 60.0


def _check_loop(work: Path) -> None:
    rows = [tuple(map(int, line.split())) for line in lines(work / "ssi-loop.out")]
    assert [r[0] for r in rows] == list(range(len(rows)))  # no gap, no repeat
    for k, size, total in rows:
        assert size == k + 1 and total == sum(i * i for i in range(k + 1))


def _check_gzip(work: Path) -> None:
    gz = work / "numbers.gz"
    subprocess.run(["gzip", "-t", str(gz)], check=True)
    assert _sha256_of(f"gzip -dc {gz}") == _sha256_of(f"seq 1 {SEQ_N}")


def _check_threads(work: Path) -> None:
    rows = [list(map(int, line.split())) for line in lines(work / "ssi-mt.out")]
    for row in rows[:-1]:  # the last line comes after the threads were joined
        assert row[0] == 5 and row[1] == sum(row[2:])
    assert rows[-1][0] == 1 and rows[-1][1] == sum(rows[-1][2:])


def _sysv(work: Path) -> list[str]:
    (work / "sysv.c").write_text(SYSV)
    subprocess.run(
        ["cc", "-O2", "-o", str(work / "sysv"), str(work / "sysv.c")], check=True
    )
    return [str(work / "sysv")]


def _check_sysv(work: Path) -> None:
    want = ["ready", *(f"message {i}" for i in range(5)), "sem 2"]
    assert lines(work / "ssi-ipc.out") == want


def _check_appender(work: Path) -> None:
    got = lines(work / "appended.txt")
    assert got == [f"line {i}" for i in range(len(got))]  # none lost, none repeated


def _check_numpy(work: Path) -> None:
    first, second = lines(work / "ssi-np.out")
    assert first == second and first.split()[0] == str(200_000_000)


def _check_daemon(work: Path) -> None:
    rows = [line.split() for line in lines(work / "daemon.txt")]
    assert {r[0] for r in rows} == {rows[0][0]}  # same PID inside throughout
    assert [int(r[1]) for r in rows] == list(range(len(rows)))


def _gz_ready(work: Path) -> bool:
    gz = work / "numbers.gz"
    return gz.exists() and gz.stat().st_size > 64 << 10


GZIP = f"seq 1 {SEQ_N} | gzip > numbers.gz; while [ ! -e stop ]; do sleep 0.05; done"

WORKLOADS = [
    Workload(
        "loop",
        lambda w: [PY, "-c", LOOP],
        lambda w: len(lines(w / "ssi-loop.out")) >= 20,
        "ssi-loop.out",
        _check_loop,
    ),
    Workload("gz", lambda w: ["sh", "-c", GZIP], _gz_ready, None, _check_gzip, 120),
    Workload(
        "mt",
        lambda w: [PY, "-c", THREADS],
        lambda w: len(lines(w / "ssi-mt.out")) >= 10,
        "ssi-mt.out",
        _check_threads,
    ),
    Workload(
        "ipc",
        _sysv,
        lambda w: lines(w / "ssi-ipc.out") == ["ready"],
        None,
        _check_sysv,
    ),
    Workload(
        "app",
        lambda w: [PY, "-c", APPENDER],
        lambda w: len(lines(w / "appended.txt")) >= 50,
        "appended.txt",
        _check_appender,
    ),
    Workload(
        "np",
        lambda w: [PY, "-c", NUMPY],
        lambda w: len(lines(w / "ssi-np.out")) >= 1,
        None,
        _check_numpy,
        120,
    ),
    Workload(
        "dmn",
        lambda w: [PY, "-c", DAEMON],
        lambda w: len(lines(w / "daemon.txt")) >= 10,
        "daemon.txt",
        _check_daemon,
    ),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSsiCluster]:
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


def move(c: LocalSsiCluster, job: int, way: str) -> None:
    """From node1 to node3."""
    if way == "restart":
        ck = c.call("node1", m.JobCheckpoint(job=job, stop=True), timeout=300)
        assert len(ck["holders"]) == 2
        back = c.call("node2", m.JobRestart(job=job, node="node3"), timeout=300)
        assert back["node"] == "node3" and back["state"] == "running"
        return
    moved = c.call(
        "node2", m.JobMigrate(job=job, node="node3", live=way == "live"), timeout=300
    )
    assert (moved["from"], moved["to"], moved["mode"]) == ("node1", "node3", way)
    assert c.call("node1", m.JobShow(job=job))["node"] == "node3"


@pytest.mark.parametrize("way", ["restart", "cold", "live"])
@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_workload_moves_to_another_node_intact(
    cluster: LocalSsiCluster, tmp_path: Path, w: Workload, way: str
) -> None:
    tmp_path.chmod(0o755)
    job = cluster.call(
        "node1",
        m.JobSubmit(
            argv=w.argv(tmp_path),
            cwd=str(tmp_path),
            name=w.name,
            node="node1",
            env={"PATH": os.environ["PATH"]},
            stdout=str(tmp_path / f"ssi-{w.name}.out"),
        ),
    )["id"]
    wait_for(f"{w.name} to reach its steady state", lambda: w.ready(tmp_path), 60)
    wait_for(f"{w.name} running", lambda: state(cluster, job) == "running", 20)
    move(cluster, job, way)
    if w.output is not None:
        out = tmp_path / w.output
        n = len(lines(out))
        wait_for(f"{w.name} going on on node3", lambda: len(lines(out)) > n + 10, 20)
    (tmp_path / "stop").touch()
    done = cluster.call(
        "node1",
        m.JobWait(job=job, timeout=w.finish_timeout),
        timeout=w.finish_timeout + 10,
    )
    assert done["state"] == "done", done
    assert done["node"] == "node3"
    w.check(tmp_path)


def state(c: LocalSsiCluster, job: int) -> Any:
    return c.call("node1", m.JobShow(job=job))["state"]


def _sha256_of(shell: str) -> str:
    proc = subprocess.Popen(["sh", "-c", shell], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
    assert proc.wait() == 0
    return h.hexdigest()
