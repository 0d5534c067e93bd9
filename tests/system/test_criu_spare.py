"""Criu.keep_spare against the real (patched) CRIU: a `criu swrk` started ahead,
its kernel probe done, takes the next request, with the fds it names sent along.

    keep_spare ─▶ spare swrk (probe) ─▶ dump / restore through it ─▶ refilled
    dump, pages to a page server on a TCP socket: the socket sent with the request
    a dead spare: the request starts its own; fds the request does not name: refused
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kernel_shim

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks/

from pycriu import rpc_pb2 as rpc  # noqa: E402

from benchmarks._workloads import (  # noqa: E402
    Job,
    counter_problems,
    read_ticks,
    start_counter,
    wait_for,
    wait_ticks,
)
from ssi import config  # noqa: E402
from ssi.checkpoint import Criu, DumpOptions, PageServer  # noqa: E402
from ssi.checkpoint.swrk import Spare, Swrk  # noqa: E402


@pytest.fixture
def criu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Criu]:
    kernel_shim.set_child_subreaper()  # restored trees' orphans come to us
    monkeypatch.setattr(Spare, "REFILL_DELAY", 0.05)
    c = Criu(config.resolve_criu(config.load()))
    assert c.keep_spare(), "the provisioned CRIU carries patch 0006"
    yield c
    c.close()


def counter(jobs: list[Job], where: Path, ticks: int) -> tuple[Job, Path]:
    """A counter job, once it has ticked `ticks` times; killed at teardown."""
    job, out = start_counter(where)
    jobs.append(job)
    wait_ticks(out, ticks)
    return job, out


def spare_pid(criu: Criu) -> int:
    """The pid of the spare once it is started (it probes in the background)."""
    spare = criu._spare
    assert spare is not None
    wait_for(lambda: spare._worker is not None, 10, "the spare is started")
    assert spare._worker is not None
    return spare._worker.pid


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def test_dump_and_restore_through_spares(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    job, out = counter(jobs, tmp_path, 10)
    images = tmp_path / "images"
    images.mkdir()
    first = spare_pid(criu)

    criu.dump(job.pid, images)

    job.reaped()
    assert gone(first), "the dump ran in the spare, which exited with its request"
    before = read_ticks(out)
    second = spare_pid(criu)  # refilled after the request
    assert second != first

    restored = criu.restore(images)
    back = Job(pid=restored.pid, reap=restored.pid)
    jobs.append(back)

    assert gone(second)
    assert parent_of(restored.pid) == os.getpid(), "the restored tree is our child"
    ticks = wait_ticks(out, len(before) + 10)
    assert counter_problems(ticks) == []


def test_page_server_socket_goes_with_the_request(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    """A cold move's dump: every page to a `criu page-server` on a TCP socket the
    spare did not inherit; the job restored from what the page server wrote."""
    job, out = counter(jobs, tmp_path, 10)
    images, served = tmp_path / "images", tmp_path / "served"
    images.mkdir()
    served.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    with ours, theirs:
        server = criu.start_page_server(served, theirs.fileno())
        used = spare_pid(criu)
        dumped = criu.dump(
            job.pid,
            images,
            options=DumpOptions(page_server=PageServer("", 0, ours.fileno())),
        )
        assert server.wait(30) == 0
    job.reaped()
    assert gone(used)
    assert dumped.pages_written_bytes > 0
    assert list(served.glob("pages-*.img")) and not list(images.glob("pages-*.img"))
    for f in images.iterdir():  # the other images, as a move sends them
        if not (served / f.name).exists():
            (served / f.name).write_bytes(f.read_bytes())
    before = read_ticks(out)

    restored = criu.restore(served)
    jobs.append(Job(pid=restored.pid, reap=restored.pid))

    ticks = wait_ticks(out, len(before) + 10)
    assert counter_problems(ticks) == []


def test_a_dead_spare_is_replaced_by_a_fresh_worker(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    job, out = counter(jobs, tmp_path, 5)
    dead = spare_pid(criu)
    os.kill(dead, signal.SIGKILL)
    wait_for(
        lambda: Path(f"/proc/{dead}/stat").read_text().split()[2] == "Z",
        10,
        "the spare is dead (a zombie, not reaped yet)",
    )

    criu.dump(job.pid, tmp_path, leave_running=True)

    assert gone(dead), "the dead spare was reaped"
    assert job.alive()
    assert (tmp_path / "inventory.img").exists()


def test_fds_the_request_does_not_name_are_refused(
    criu: Criu, jobs: list[Job], tmp_path: Path
) -> None:
    """CRIU (patch 0006) fails a request that came with more fds than it names,
    rather than guess what they are for."""
    job, out = counter(jobs, tmp_path, 5)
    worker = Swrk.start(criu.binary, None, probe=True)
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.pid = job.pid
    req.opts.leave_running = True
    req.opts.log_file = "dump.log"
    req.opts.log_level = 4
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        req.opts.images_dir_fd = fd
        extra = os.open(os.devnull, os.O_RDONLY)
        try:
            worker.send(req, (extra,))
            resp = worker.recv()
        finally:
            os.close(extra)
    finally:
        os.close(fd)
        worker.close()
    assert not resp.success
    log = (tmp_path / "dump.log").read_text()
    assert "1 fds came with the request, it names 0" in log
    assert job.alive(), "nothing was done to the job"
