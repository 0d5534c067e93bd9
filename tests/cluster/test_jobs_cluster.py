"""Jobs across a real 3-node cluster: submission as the user, control, checkpoints
copied to another node, restarts elsewhere, agent restarts, node loss, bad images,
full disks, and other users' jobs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._workloads import COUNTER, counter_problems, read_ticks
from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m
from ssi.proto.errors import Conflict, SsiError

from .conftest import HB_TIMEOUT, wait_for

NOBODY = 65534


@pytest.fixture
def cluster(ssi_cluster: Callable[..., LocalSsiCluster]) -> LocalSsiCluster:
    return ssi_cluster(3)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory every node sees at the same path, writable by any user."""
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)  # traversable
    return tmp_path


def as_user(uid: int, fn: Callable[[], Any]) -> Any:
    """fn() run by a forked child that became `uid`; its result or its SsiError."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = {"ok": fn()}
        except SsiError as e:
            out = {"error": type(e).__name__, "message": str(e), "exit": e.exit_code}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"error": type(e).__name__, "message": str(e), "exit": 99}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def submit(
    c: LocalSsiCluster, argv: list[str], cwd: Path, via: str = "node1", **kw: Any
) -> dict[str, Any]:
    """Submits through `via`'s ssid; keywords go to JobSubmit (e.g. node= pins it)."""
    return c.call(
        via,
        m.JobSubmit(argv=argv, cwd=str(cwd), env={"PATH": os.environ["PATH"]}, **kw),
    )


def job(c: LocalSsiCluster, job_id: int) -> dict[str, Any]:
    return c.call("node1", m.JobShow(job=job_id))


def wait_state(
    c: LocalSsiCluster, job_id: int, state: str, timeout: float = 20
) -> dict:
    return wait_for(
        f"job {job_id} {state}",
        lambda: (j := job(c, job_id))["state"] == state and j,
        timeout,
    )


def counter(c: LocalSsiCluster, cwd: Path, **kw: Any) -> tuple[int, Path]:
    out = cwd / f"counter-{time.monotonic_ns()}.txt"
    j = submit(c, [sys.executable, "-c", COUNTER, str(out)], cwd, **kw)
    try:
        wait_for("the counter to count", lambda: len(read_ticks(out)) >= 10, 20)
    except TimeoutError:
        raise AssertionError(f"counter job never counted: {job(c, j['id'])}") from None
    return j["id"], out


def test_job_runs_as_its_user_and_reports_its_exit(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    script = (
        "import os; print(os.getuid(), os.getgid(), os.getcwd()); raise SystemExit(3)"
    )
    sock = str(cluster.socket("node2"))

    def go() -> Any:
        from ssi.rpc.local import LocalClient

        c = LocalClient(sock, timeout=30)
        # our venv python lives under /root (0700): nobody runs the system one
        argv = ["/usr/bin/python3", "-c", script]
        j = c.call(m.JobSubmit(argv=argv, cwd=str(workdir)))
        return c.call(m.JobWait(job=j["id"], timeout=30))

    res = as_user(NOBODY, go)
    assert "ok" in res, res
    done = res["ok"]
    assert done["state"] == "failed" and done["exit"]["exited"] == 3
    assert done["user"] == "nobody" and done["uid"] == NOBODY
    out = Path(done["spec"]["stdout"])
    assert out == workdir / f"ssi-{done['id']}.out"
    assert out.read_text().split() == [str(NOBODY), str(NOBODY), str(workdir)]
    assert out.stat().st_uid == NOBODY  # opened as the user, not as root


def test_control_verbs_and_history(cluster: LocalSsiCluster, workdir: Path) -> None:
    job_id, out = counter(cluster, workdir)
    j = wait_for("live stats", lambda: (x := job(cluster, job_id))["stats"] and x, 10)
    assert j["state"] == "running" and j["stats"]["main_pid"] == 2
    cluster.call("node3", m.JobSuspend(job=job_id))
    frozen_at = len(read_ticks(out))
    time.sleep(0.5)
    assert len(read_ticks(out)) <= frozen_at + 1  # frozen: at most one in-flight line
    cluster.call("node3", m.JobResume(job=job_id))
    wait_for("counting again", lambda: len(read_ticks(out)) > frozen_at + 5, 10)
    held = submit(cluster, ["true"], workdir, hold=True)
    assert held["state"] == "held"
    with pytest.raises(Conflict):
        cluster.call("node1", m.JobSuspend(job=held["id"]))
    cluster.call("node1", m.JobRelease(job=held["id"]))
    assert (
        cluster.call("node1", m.JobWait(job=held["id"], timeout=20))["state"] == "done"
    )
    cluster.call("node2", m.JobKill(job=job_id, signal=signal.SIGTERM))
    done = cluster.call("node1", m.JobWait(job=job_id, timeout=20))
    assert done["state"] == "killed" and done["exit"]["signaled"] == signal.SIGTERM
    ids = [x["id"] for x in cluster.call("node1", m.JobList(all=True))]
    assert job_id in ids and held["id"] in ids
    assert job_id not in [x["id"] for x in cluster.call("node1", m.JobList())]


def test_checkpoint_stop_and_restart_on_another_node(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, node="node2")
    ckpt = cluster.call("node1", m.JobCheckpoint(job=job_id, stop=True), timeout=120)
    assert (
        ckpt["stopped"] and len(ckpt["holders"]) == 2 and ckpt["holders"][0] == "node2"
    )
    assert job(cluster, job_id)["state"] == "stopped"
    stopped = len(read_ticks(out))
    restarted = cluster.call(
        "node1", m.JobRestart(job=job_id, node="node3"), timeout=120
    )
    assert restarted["state"] == "running" and restarted["node"] == "node3"
    wait_for("counting on node3", lambda: len(read_ticks(out)) > stopped + 10, 20)
    ticks = read_ticks(out)
    assert counter_problems(ticks) == []  # same PID inside, no gap, no repeat
    listed = cluster.call("node1", m.JobCheckpoints(job=job_id))
    assert [c["id"] for c in listed] == [ckpt["id"]]


def test_agent_restart_keeps_its_jobs_and_their_exit(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    flag = workdir / "go"
    script = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n"
        "    time.sleep(0.05)\n"
        "raise SystemExit(5)"
    )
    j = submit(
        cluster, [sys.executable, "-c", script, str(flag)], workdir, node="node2"
    )
    wait_state(cluster, j["id"], "running")
    cluster.stop("node2", signal.SIGKILL)
    cluster.start("node2")
    wait_for("node2 back", lambda: job(cluster, j["id"])["stats"], 10)
    flag.touch()
    done = cluster.call("node1", m.JobWait(job=j["id"], timeout=30))
    assert done["state"] == "failed" and done["exit"]["exited"] == 5
    # and a job that ends while its agent is down is still reported
    flag2 = workdir / "go2"
    j2 = submit(
        cluster,
        [sys.executable, "-c", script, str(flag2)],
        workdir,
        node="node3",
    )
    wait_state(cluster, j2["id"], "running")
    cluster.stop("node3", signal.SIGKILL)
    flag2.touch()
    time.sleep(0.5)
    cluster.start("node3")
    done2 = cluster.call("node1", m.JobWait(job=j2["id"], timeout=30))
    assert done2["exit"]["exited"] == 5


def kill_node(c: LocalSsiCluster, node: str) -> None:
    """The node dies: its ssid and every process in its namespace."""
    c.stop(node, signal.SIGKILL)
    for pid in c.topology.processes(node):
        with contextlib.suppress(ProcessLookupError):  # gone with its parent
            os.kill(pid, signal.SIGKILL)


def test_lost_node_jobs_restart_from_their_checkpoint(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    with_ckpt, out = counter(cluster, workdir, node="node2")
    ckpt = cluster.call("node1", m.JobCheckpoint(job=with_ckpt), timeout=120)
    at_ckpt = ckpt["info"]
    without = submit(cluster, ["sleep", "600"], workdir, node="node2")
    wait_state(cluster, without["id"], "running")
    before = len(read_ticks(out))
    kill_node(cluster, "node2")
    moved = wait_for(
        "the job running again elsewhere",
        lambda: (
            (j := job(cluster, with_ckpt))["node"] != "node2"
            and j["state"] == "running"
            and j
        ),
        20 + HB_TIMEOUT,
    )
    assert moved["node"] in ("node1", "node3")
    wait_for("counting again", lambda: len(read_ticks(out)) > before + 10, 20)
    lost = wait_state(cluster, without["id"], "failed")
    assert "no checkpoint" in lost["reason"]
    assert at_ckpt  # the dump's figures were recorded


def test_shared_spool_checkpoint_outlives_its_node(
    ssi_cluster: Callable[..., LocalSsiCluster], workdir: Path
) -> None:
    """With a shared spool a checkpoint is written once, where every node sees it:
    no copy to a peer, and its node's loss does not lose it."""
    c = ssi_cluster(3, shared_spool=True)
    job_id, out = counter(c, workdir, node="node2")
    ckpt = c.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
    assert ckpt["holders"] == ["node2"] and ckpt["info"]["shared"]
    assert (c.base / "shared" / ckpt["id"] / "manifest.json").is_file()
    for node in c.node_names:  # nothing in any node's own spool
        assert not (c.node_dir(node) / "state" / "checkpoints" / ckpt["id"]).exists()
    assert "shared spool" in job(c, job_id)["reason"]
    before = len(read_ticks(out))
    kill_node(c, "node2")
    wait_for(
        "the job running again elsewhere",
        lambda: (j := job(c, job_id))["node"] != "node2" and j["state"] == "running",
        20 + HB_TIMEOUT,
    )
    wait_for("counting again", lambda: len(read_ticks(out)) > before + 10, 20)
    restarted = [e for e in job(c, job_id)["events"] if e["kind"] == "restarted"]
    assert restarted[-1]["fetched_from"] == "shared"


def test_corrupt_image_falls_back_to_replica_then_previous(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, node="node2")
    first = cluster.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
    second = cluster.call("node1", m.JobCheckpoint(job=job_id, stop=True), timeout=120)
    local, replica = second["holders"]

    def pages(node: str, ckpt: str) -> Path:
        d = cluster.node_dir(node) / "state" / "checkpoints" / ckpt
        return max(d.glob("pages-*.img"), key=lambda p: p.stat().st_size)

    img = pages(local, second["id"])
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # truncated
    back = cluster.call("node1", m.JobRestart(job=job_id, node=local), timeout=120)
    assert back["state"] == "running"
    events = job(cluster, job_id)["events"]
    assert events[-1]["fetched_from"] == replica
    # now both copies of the newest checkpoint are bad: the previous one is used
    cluster.call("node1", m.JobCheckpoint(job=job_id, stop=True), timeout=120)
    third = cluster.call("node1", m.JobCheckpoints(job=job_id))[-1]
    for holder in third["holders"]:
        p = pages(holder, third["id"])
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit
        p.write_bytes(bytes(data))
    again = cluster.call("node1", m.JobRestart(job=job_id), timeout=120)
    assert again["state"] == "running"
    events = job(cluster, job_id)["events"]
    assert (
        events[-1]["kind"] == "restarted" and events[-1]["checkpoint"] == second["id"]
    )
    assert [e["checkpoint"] for e in events if e["kind"] == "restore-failed"][
        -1
    ] == third["id"]
    assert first["id"] != second["id"]


def test_full_disk_fails_the_checkpoint_and_the_job_runs_on(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, out = counter(cluster, workdir, node="node2")
    spool = cluster.node_dir("node2") / "state" / "checkpoints"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)], check=True
    )
    try:
        with pytest.raises(SsiError) as info:
            cluster.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
        assert "space" in str(info.value).lower()
        assert list(spool.iterdir()) == []
    finally:
        subprocess.run(["umount", str(spool)], check=True)
    n = len(read_ticks(out))
    wait_for("still counting", lambda: len(read_ticks(out)) > n + 5, 10)
    assert job(cluster, job_id)["state"] == "running"
    assert cluster.call("node1", m.JobCheckpoints(job=job_id)) == []
    assert "checkpoint failed" in cluster.call("node1", m.JobWhy(job=job_id))["reason"]


def test_a_replica_out_of_space_passes_the_copy_on(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    """The copy follows CRIU to the first replica; when that one fails (its disk is
    full) the next takes it; when none can, the checkpoint does not count and the
    job runs on."""
    job_id, out = counter(cluster, workdir, node="node1")
    spool = {
        n: cluster.node_dir(n) / "state" / "checkpoints" for n in cluster.node_names
    }
    tiny = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs"]
    subprocess.run([*tiny, str(spool["node2"])], check=True)
    try:
        ckpt = cluster.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
        assert ckpt["holders"] == ["node1", "node3"]
        assert "node2" in ckpt["info"]["errors"][0]
        assert "space" in ckpt["info"]["errors"][0].lower()
        assert (spool["node3"] / ckpt["id"] / "manifest.json").is_file()
        assert list(spool["node2"].iterdir()) == []  # nothing half-copied left
        subprocess.run([*tiny, str(spool["node3"])], check=True)
        try:
            with pytest.raises(SsiError, match="could not be copied"):
                cluster.call("node1", m.JobCheckpoint(job=job_id), timeout=120)
        finally:
            subprocess.run(["umount", str(spool["node3"])], check=True)
    finally:
        subprocess.run(["umount", str(spool["node2"])], check=True)
    n = len(read_ticks(out))
    wait_for("still counting", lambda: len(read_ticks(out)) > n + 5, 10)
    assert len(cluster.call("node1", m.JobCheckpoints(job=job_id))) == 1
    assert [p.name for p in spool["node1"].iterdir()] == [ckpt["id"]]


def test_other_users_jobs_are_not_yours(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, _ = counter(cluster, workdir)
    sock = str(cluster.socket("node3"))

    def attempt(body: m.Request[Any]) -> Callable[[], Any]:
        def go() -> Any:
            from ssi.rpc.local import LocalClient

            return LocalClient(sock, timeout=30).call(body)

        return go

    for body in (
        m.JobCheckpoint(job=job_id),
        m.JobKill(job=job_id, signal=9),
        m.JobSuspend(job=job_id),
    ):
        res = as_user(NOBODY, attempt(body))
        assert res.get("error") == "Denied" and res["exit"] == 4, res
    assert job(cluster, job_id)["state"] == "running"
    assert "ok" in as_user(NOBODY, attempt(m.JobList()))  # but may look


def test_batch_submit_sessions_wait_any_and_wall_limit(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    env = {"PATH": os.environ["PATH"]}
    batch = [
        m.JobSubmit(
            argv=["sh", "-c", f"exit {i}"], cwd=str(workdir), env=env, session="s1"
        )
        for i in range(5)
    ]
    jobs = cluster.call("node2", m.JobSubmitBatch(jobs=batch))
    ids = [j["id"] for j in jobs]
    assert ids == list(range(ids[0], ids[0] + 5))
    first = cluster.call("node1", m.JobWaitAny(jobs=ids, timeout=20))
    assert first["id"] in ids and first["state"] in ("done", "failed")
    for job_id in ids:
        cluster.call("node1", m.JobWait(job=job_id, timeout=20))
    listed = cluster.call("node1", m.JobList(session="s1", all=True))
    assert sorted(j["id"] for j in listed) == ids
    assert sorted(j["exit"]["exited"] for j in listed) == [0, 1, 2, 3, 4]
    # a bad job refuses the whole batch: nothing half-submitted
    bad = [*batch[:2], m.JobSubmit(argv=["true"], cwd="relative")]
    with pytest.raises(SsiError, match="absolute"):
        cluster.call("node1", m.JobSubmitBatch(jobs=bad))
    assert len(cluster.call("node1", m.JobList(session="s1", all=True))) == 5
    slow = submit(cluster, ["sleep", "60"], workdir, wall_limit=0.5)
    ended = cluster.call("node1", m.JobWait(job=slow["id"], timeout=20))
    assert ended["state"] == "killed" and ended["exit"]["signaled"] == signal.SIGTERM
    with pytest.raises(SsiError, match="none of 1|job"):
        never = submit(cluster, ["sleep", "60"], workdir)
        cluster.call("node1", m.JobWaitAny(jobs=[never["id"]], timeout=0.2))


def test_a_job_criu_cannot_dump_says_what_blocks_it(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    import socket

    server = socket.create_server((cluster.topology.host_address, 0))
    port = server.getsockname()[1]
    script = (
        "import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "print('connected', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    out = workdir / "tcp.out"
    j = submit(
        cluster,
        [sys.executable, "-c", script, cluster.topology.host_address, str(port)],
        workdir,
        stdout=str(out),
    )
    conn, _ = server.accept()
    try:
        wait_state(cluster, j["id"], "running")
        with pytest.raises(SsiError) as info:
            cluster.call("node1", m.JobCheckpoint(job=j["id"]), timeout=60)
        assert "TCP" in str(info.value)
        why = cluster.call("node2", m.JobWhy(job=j["id"]))
        assert why["state"] == "running" and "TCP" in why["reason"]
        assert cluster.call("node1", m.JobCheckpoints(job=j["id"])) == []
    finally:
        cluster.call("node1", m.JobKill(job=j["id"], signal=9))
        conn.close()
        server.close()


def test_periodic_checkpoints_keep_the_last_three(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    job_id, _ = counter(cluster, workdir, node="node2", ckpt_every=1.0)

    def listed() -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = cluster.call("node1", m.JobCheckpoints(job=job_id))
        assert len(kept) <= 3, kept  # ckpt_keep, at every moment
        return kept

    def checkpointed() -> int:
        listed()
        return sum(e["kind"] == "checkpointed" for e in job(cluster, job_id)["events"])

    wait_for("five periodic checkpoints", lambda: checkpointed() >= 5, 30)
    cluster.call("node1", m.JobKill(job=job_id, signal=9))  # no more of them
    wait_state(cluster, job_id, "killed")
    spool = [cluster.node_dir(n) / "state" / "checkpoints" for n in cluster.node_names]

    def older_copies_gone() -> bool:
        ids = {c["id"] for c in listed()}
        on_disk = {p.name for d in spool for p in d.iterdir() if p.name[0] != "."}
        return bool(ids) and on_disk <= ids

    wait_for("older copies deleted everywhere", older_copies_gone, 15)
