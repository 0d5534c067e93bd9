"""Cluster IPC on a real 3-node local cluster: typed messages between jobs on three
nodes (Python API and unmodified C programs through the interposer), semaphore-
protected counters, a blocked consumer checkpointed and moved, the home of a busy
queue evicted mid-traffic, a home killed and its objects back from their replicas,
permissions, the admin view.

The default run exchanges MESSAGES typed messages; `-m slow` runs the 100,000."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ssi.ipc.api import MessageQueue, SemaphoreSet, SharedMemory
from ssi.ipc.client import SocketTransport
from ssi.local.ssids import LocalSsiCluster
from ssi.proto import messages as m

from .conftest import HB_TIMEOUT, wait_for

MESSAGES = 6000  # typed messages in the default run (the slow test: 100,000)
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534

PRODUCER = r"""
/* producer KEY COUNT NTYPES [FIRST]: COUNT messages, type 1 + i % NTYPES, text i */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>
struct msg { long mtype; char text[32]; };
int main(int argc, char **argv)
{
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    long count = atol(argv[2]), ntypes = atol(argv[3]);
    long first = argc > 4 ? atol(argv[4]) : 0;
    int id = msgget(key, IPC_CREAT | 0666);
    if (id < 0) { perror("msgget"); return 1; }
    for (long i = first; i < first + count; i++) {
        struct msg m = { 1 + i % ntypes, "" };
        int n = snprintf(m.text, sizeof m.text, "%ld", i);
        while (msgsnd(id, &m, (size_t)n + 1, 0) < 0) {
            if (errno == EINTR) continue;
            perror("msgsnd"); return 1;
        }
    }
    printf("sent %ld\n", count);
    return 0;
}
"""

CONSUMER = r"""
/* consumer KEY TYPE NTYPES COUNT: COUNT messages of TYPE, which must carry
 * TYPE-1, TYPE-1+NTYPES, ... in that order; prints "ok COUNT eintr N" (N: how
 * often msgrcv failed with EINTR: no signal is sent, so 0) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/ipc.h>
#include <sys/msg.h>
struct msg { long mtype; char text[32]; };
int main(int argc, char **argv)
{
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    long type = atol(argv[2]), ntypes = atol(argv[3]), count = atol(argv[4]);
    int id;
    while ((id = msgget(key, 0666)) < 0) {
        if (errno != ENOENT) { perror("msgget"); return 1; }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    printf("waiting\n");
    fflush(stdout);
    long expect = type - 1, eintr = 0;
    for (long i = 0; i < count; i++) {
        struct msg m;
        while (msgrcv(id, &m, sizeof m.text, type, 0) < 0) {
            if (errno == EINTR) { eintr++; continue; }
            perror("msgrcv"); return 1;
        }
        long v = atol(m.text);
        if (m.mtype != type || v != expect) {
            printf("bad: type %ld value %ld, expected %ld\n", m.mtype, v, expect);
            return 2;
        }
        expect += ntypes;
    }
    printf("ok %ld eintr %ld\n", count, eintr);
    return 0;
}
"""

SEMCOUNT = r"""
/* semcount KEY N: N times, under semaphore 0 of set KEY, increments the long at
 * the start of segment KEY (an attached copy, synced around semop) */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
int main(int argc, char **argv)
{
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    long n = atol(argv[2]);
    int sem = semget(key, 1, 0666), shm = shmget(key, 0, 0666);
    if (sem < 0 || shm < 0) { perror("get"); return 1; }
    volatile long *counter = shmat(shm, NULL, 0);
    if (counter == (void *)-1) { perror("shmat"); return 1; }
    struct sembuf p = {0, -1, SEM_UNDO}, v = {0, 1, SEM_UNDO};
    for (long i = 0; i < n; i++) {
        if (semop(sem, &p, 1) < 0) { perror("semop P"); return 1; }
        *counter = *counter + 1;
        if (semop(sem, &v, 1) < 0) { perror("semop V"); return 1; }
    }
    shmdt((void *)counter);
    printf("done %ld\n", n);
    return 0;
}
"""

PY_PRODUCER = """
import sys
from ssi.ipc import client
from ssi.ipc.api import MessageQueue
key, count, ntypes = int(sys.argv[1], 0), int(sys.argv[2]), int(sys.argv[3])
q = MessageQueue.create(client.connect(), key=key, mode=0o666)
for i in range(count):
    q.send(str(i).encode(), mtype=1 + i % ntypes)
print("sent", count)
"""

PY_CONSUMER = """
import sys
from ssi.ipc import client
from ssi.ipc.api import MessageQueue
key, mtype, ntypes, count = (int(a, 0) for a in sys.argv[1:5])
q = MessageQueue.create(client.connect(), key=key, mode=0o666)
expect = mtype - 1
for _ in range(count):
    msg = q.receive(mtype=mtype, timeout=120)
    if msg.mtype != mtype or int(msg.data) != expect:
        print("bad", msg, "expected", expect)
        sys.exit(2)
    expect += ntypes
print("ok", count)
"""

PY_SEMCOUNT = """
import sys
from ssi.ipc import client
from ssi.ipc.api import SemaphoreSet, SharedMemory
key, n = int(sys.argv[1], 0), int(sys.argv[2])
t = client.connect()
sem, shm = SemaphoreSet.get(t, key), SharedMemory.get(t, key)
for _ in range(n):
    sem.acquire(undo=True)
    value = int.from_bytes(shm.read(8, 8), "little")
    shm.write(8, (value + 1).to_bytes(8, "little"))
    sem.release(undo=True)
print("done", n)
"""


@pytest.fixture
def cluster(
    ssi_cluster: Callable[..., LocalSsiCluster], request: pytest.FixtureRequest
) -> Iterator[LocalSsiCluster]:
    c = ssi_cluster(3)
    yield c
    keep = os.environ.get("SSI_TEST_KEEP_LOGS")  # a directory to copy ssid logs to
    if keep:
        dest = Path(keep) / request.node.name
        dest.mkdir(parents=True, exist_ok=True)
        for node in c.node_names:
            with contextlib.suppress(OSError):
                shutil.copy(c.log_path(node), dest / f"{node}.log")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory every node sees at the same path, usable by any user, with the
    C test programs compiled in it."""
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    for name, source in (
        ("producer", PRODUCER),
        ("consumer", CONSUMER),
        ("semcount", SEMCOUNT),
    ):
        src = tmp_path / f"{name}.c"
        src.write_text(source)
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", str(tmp_path / name), str(src)], check=True
        )
    for name, source in (
        ("producer.py", PY_PRODUCER),
        ("consumer.py", PY_CONSUMER),
        ("semcount.py", PY_SEMCOUNT),
    ):
        (tmp_path / name).write_text(textwrap.dedent(source))
    return tmp_path


_keys = iter(range(0x5100, 0x7FFFFFFF, 7))


def as_user(uid: int, checks: dict[str, Callable[[], object]]) -> dict[str, int]:
    """Each check run by a forked child that became `uid`: its errno (0: passed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        out: dict[str, int] = {}
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for name, check in checks.items():
                try:
                    check()
                    out[name] = 0
                except OSError as e:
                    out[name] = e.errno or -1
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: dict[str, int] = json.loads(data)
    return result


def new_key() -> int:
    return next(_keys) + (os.getpid() % 1000) * 0x10000


def transport(c: LocalSsiCluster, node: str) -> SocketTransport:
    return SocketTransport(c.socket(node), poll=2.0)


def submit(c: LocalSsiCluster, node: str, argv: list[str], cwd: Path, **kw: Any) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    job = c.call(
        node,
        m.JobSubmit(
            argv=argv, cwd=str(cwd), env=env, node=node, cluster_ipc=True, **kw
        ),
    )
    return int(job["id"])


def finished(c: LocalSsiCluster, job: int, cwd: Path, timeout: float) -> str:
    """The job's stdout once it ended well; fails with its stderr otherwise."""
    info = c.call("node1", m.JobWait(job=job, timeout=timeout), timeout + 10)
    out = (cwd / f"ssi-{job}.out").read_text()
    err = (cwd / f"ssi-{job}.err").read_text()
    assert info["state"] == "done", f"job {job}: {info['state']}: {out} {err}"
    return out


def output(cwd: Path, job: int) -> str:
    path = cwd / f"ssi-{job}.out"
    return path.read_text() if path.exists() else ""


def exchange(
    c: LocalSsiCluster, cwd: Path, count: int, python: bool, timeout: float
) -> None:
    """A producer on node1, consumers of types 1 and 2 on node2 and node3."""
    key = f"{new_key():#x}"
    if python:
        run = [sys.executable]
        prod, cons = [*run, "producer.py"], [*run, "consumer.py"]
    else:
        prod, cons = [str(cwd / "producer")], [str(cwd / "consumer")]
    half = str(count // 2)
    consumers = [
        submit(c, "node2", [*cons, key, "1", "2", half], cwd),
        submit(c, "node3", [*cons, key, "2", "2", half], cwd),
    ]
    producer = submit(c, "node1", [*prod, key, str(count), "2"], cwd)
    started = time.monotonic()
    assert f"sent {count}" in finished(c, producer, cwd, timeout)
    for job in consumers:
        assert f"ok {half}" in finished(c, job, cwd, timeout)
    took = time.monotonic() - started
    print(f"{count} messages node1 -> node2+node3 in {took:.1f} s")


# ---- messages ----------------------------------------------------------------------


def test_python_api_across_nodes(cluster: LocalSsiCluster) -> None:
    t1, t2, t3 = (transport(cluster, n) for n in ("node1", "node2", "node3"))
    key = new_key()
    q2 = MessageQueue.create(t2, key=key, mode=0o640)
    q1, q3 = MessageQueue.get(t1, key), MessageQueue.get(t3, key)
    assert q1.id == q2.id == q3.id
    for i in range(30):
        q1.send(b"%d" % i, mtype=1 + i % 3)
    assert q3.receive(mtype=-2).data == b"0"  # lowest type <= 2
    assert q3.receive(mtype=3).data == b"2"
    assert q3.receive(mtype=2, except_type=True).data == b"3"
    assert q2.stat().qnum == 27
    with pytest.raises(TimeoutError):
        q3.receive(mtype=7, timeout=0.5)
    with pytest.raises(OSError) as e:
        q3.receive(mtype=7, block=False)
    assert e.value.errno == errno.ENOMSG
    with pytest.raises(FileExistsError):
        MessageQueue.create(t3, key=key, exclusive=True)
    with pytest.raises(FileNotFoundError):
        MessageQueue.get(t3, new_key())
    with pytest.raises(OSError) as e:
        q1.send(b"x" * 9000)  # above msgmax
    assert e.value.errno == errno.EINVAL
    # a parked receiver on node3 woken by a send from node1
    import threading

    got: list[bytes] = []
    waiter = threading.Thread(target=lambda: got.append(q3.receive(mtype=9).data))
    waiter.start()
    time.sleep(0.5)
    q1.send(b"late", mtype=9)
    waiter.join(10)
    assert got == [b"late"]
    # removal: stale ids get EINVAL everywhere
    q2.remove()
    with pytest.raises(OSError) as e:
        q3.send(b"x")
    assert e.value.errno == errno.EINVAL


def test_permissions_are_the_kernels(cluster: LocalSsiCluster) -> None:
    """uid checks as ipc/util.c:ipcperms does them, with the caller's real uid from
    the socket: nobody may not read a 0600 queue of root, nor remove it."""
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node2"), key=key, mode=0o600)
    q.send(b"secret")
    t = transport(cluster, "node3")
    checks: dict[str, Callable[[], object]] = {
        "get": lambda: MessageQueue.get(t, key, 0o400),
        "receive": lambda: MessageQueue(t, q.id).receive(block=False),
        "remove": lambda: MessageQueue(t, q.id).remove(),
    }
    assert as_user(NOBODY, checks) == {
        "get": errno.EACCES,
        "receive": errno.EACCES,
        "remove": errno.EPERM,
    }
    assert q.receive().data == b"secret"


def test_typed_messages_python_jobs(cluster: LocalSsiCluster, workdir: Path) -> None:
    exchange(cluster, workdir, 1000, python=True, timeout=240)


def test_typed_messages_c_programs(cluster: LocalSsiCluster, workdir: Path) -> None:
    """Unmodified C programs through the interposer (`--cluster-ipc`)."""
    exchange(cluster, workdir, MESSAGES, python=False, timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_typed_messages_100k(cluster: LocalSsiCluster, workdir: Path) -> None:
    exchange(cluster, workdir, 100_000, python=False, timeout=1500)


# ---- semaphores ----------------------------------------------------------------------


def _counter(c: LocalSsiCluster, key: int) -> tuple[SemaphoreSet, SharedMemory]:
    t = transport(c, "node1")
    sem = SemaphoreSet.create(t, 1, key=key, mode=0o666)
    sem.set_value(0, 1)
    return sem, SharedMemory.create(t, 4096, key=key, mode=0o666)


def test_semaphore_protected_counters(cluster: LocalSsiCluster, workdir: Path) -> None:
    """Jobs on all nodes, C programs (counter in an attached segment) and Python
    ones (explicit reads and writes), each increment under the semaphore."""
    key = new_key()
    sem, shm = _counter(cluster, key)
    c_n, py_n = 150, 40
    jobs = [
        submit(cluster, node, [str(workdir / "semcount"), hex(key), str(c_n)], workdir)
        for node in ("node1", "node2", "node3")
    ] + [
        submit(
            cluster, node, [sys.executable, "semcount.py", hex(key), str(py_n)], workdir
        )
        for node in ("node1", "node2", "node3")
    ]
    for job in jobs:
        assert "done" in finished(cluster, job, workdir, 240)
    c_total = int.from_bytes(shm.read(0, 8), "little")
    py_total = int.from_bytes(shm.read(8, 8), "little")
    assert (c_total, py_total) == (3 * c_n, 3 * py_n)
    assert sem.value(0) == 1  # every P was matched by its V


# ---- survival ------------------------------------------------------------------------


def test_blocked_consumer_checkpointed_and_moved(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    """A C consumer blocked in msgrcv on node2 is checkpointed (left running),
    then stopped by a checkpoint and restarted on node3, then moved again to node1
    while it waits, then migrated live to node2: it receives every message, in
    order, and its msgrcv never fails with EINTR (CRIU interrupts the interposer's
    poll: no signal)."""
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node1"), key=key, mode=0o666)
    total = 40
    job = submit(
        cluster, "node2", [str(workdir / "consumer"), hex(key), "1", "1", str(total)],
        workdir,
    )  # fmt: skip
    wait_for("the consumer to wait", lambda: "waiting" in output(workdir, job), 30)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            q.send(b"%d\0" % sent, mtype=1)
            sent += 1

    send(5)
    wait_for("the queue to drain", lambda: q.stat().qnum == 0, 30)
    ckpt = cluster.call("node1", m.JobCheckpoint(job=job), 60)  # blocked, kept running
    assert ckpt["info"]["replicated_to"]
    send(5)
    wait_for("the queue to drain", lambda: q.stat().qnum == 0, 30)
    cluster.call("node1", m.JobCheckpoint(job=job, stop=True), 60)
    send(5)  # while it is nowhere: the first wakes its parked msgrcv at the home
    restarted = cluster.call("node1", m.JobRestart(job=job, node="node3"), 60)
    assert restarted["node"] == "node3"
    send(5)
    wait_for("the queue to drain", lambda: q.stat().qnum == 0, 30)
    wait_for("it to wait again", lambda: _info(cluster, "msg", q.id)["waiters"], 30)
    cluster.call("node1", m.JobCheckpoint(job=job, stop=True), 60)
    restarted = cluster.call("node1", m.JobRestart(job=job, node="node1"), 60)
    assert restarted["node"] == "node1"
    send(5)
    wait_for("the queue to drain", lambda: q.stat().qnum == 0, 30)
    wait_for("it to wait again", lambda: _info(cluster, "msg", q.id)["waiters"], 30)
    moved = cluster.call("node1", m.JobMigrate(job=job, node="node2", live=True), 120)
    assert moved["to"] == "node2", moved
    time.sleep(0.5)  # parked again at the home, from its new node
    send(total - sent)
    out = finished(cluster, job, workdir, 120)
    assert f"ok {total} eintr 0" in out
    assert q.stat().qnum == 0


def test_blocked_python_consumer_moved(cluster: LocalSsiCluster, workdir: Path) -> None:
    """The same with a Python job (ssi.ipc through the node's preload server)."""
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node1"), key=key, mode=0o666)
    argv = [sys.executable, "consumer.py", hex(key), "1", "1", "12"]
    job = submit(cluster, "node2", argv, workdir)
    waiting = lambda: _info(cluster, "msg", q.id)["waiters"] == 1  # noqa: E731
    wait_for("the consumer to wait", waiting, 30)
    for i in range(4):
        q.send(b"%d" % i, mtype=1)
    wait_for("the consumer to wait again", waiting, 30)
    cluster.call("node1", m.JobCheckpoint(job=job, stop=True), 60)
    q.send(b"4", mtype=1)  # taken by its parked receive while it is nowhere
    cluster.call("node1", m.JobRestart(job=job, node="node3"), 60)
    for i in range(5, 12):
        q.send(b"%d" % i, mtype=1)
    assert "ok 12" in finished(cluster, job, workdir, 120)
    assert q.stat().qnum == 0


def test_home_evicted_mid_traffic(cluster: LocalSsiCluster, workdir: Path) -> None:
    """The queue lives on node2; a producer on node1 streams to a consumer on node3;
    node2 is drained, then evicted, mid-traffic: nothing lost or reordered."""
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node2"), key=key, mode=0o666)
    home = lambda: _entry(cluster, "msg", q.id)["home"]  # noqa: E731
    assert home() == "node2"
    count = 4000
    consumer = submit(
        cluster, "node3", [str(workdir / "consumer"), hex(key), "1", "1", str(count)],
        workdir,
    )  # fmt: skip
    producer = submit(
        cluster, "node1", [str(workdir / "producer"), hex(key), str(count), "1"],
        workdir,
    )  # fmt: skip
    wait_for("traffic", lambda: q.stat().rtime > 0, 60)
    cluster.call("node1", m.NodeDrain(name="node2", reason="maintenance"))
    wait_for("the queue to leave node2", lambda: home() != "node2", 30)
    cluster.call("node1", m.NodeEvict(name="node2", force=True))
    assert "sent" in finished(cluster, producer, workdir, 240)
    assert f"ok {count}" in finished(cluster, consumer, workdir, 240)
    entry = _entry(cluster, "msg", q.id)
    assert "node2" not in (entry["home"], entry["replica"])


def test_forced_eviction_moves_objects(cluster: LocalSsiCluster, workdir: Path) -> None:
    """node3 is evicted at once (no drain) while it homes a queue with messages
    and a receiver parked on it from node2: the coordinator takes the queue from
    node3 before forgetting it; nothing is lost and the receiver is served."""
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node3"), key=key, mode=0o666)
    for i in range(20):
        q.send(b"%d\0" % i, mtype=1)
    waiter = submit(
        cluster, "node2", [str(workdir / "consumer"), hex(key), "2", "2", "1"], workdir
    )
    wait_for("the receiver to park", lambda: _info(cluster, "msg", q.id)["waiters"], 30)
    cluster.call("node1", m.NodeEvict(name="node3", force=True))
    wait_for(
        "the queue to leave node3",
        lambda: _entry(cluster, "msg", q.id)["home"] != "node3",
        30,
    )
    entry = _entry(cluster, "msg", q.id)
    assert "node3" not in (entry["home"], entry["replica"])
    q1 = MessageQueue(transport(cluster, "node1"), q.id)
    assert q1.stat().qnum == 20
    q1.send(b"1\0", mtype=2)
    assert "ok 1 eintr 0" in finished(cluster, waiter, workdir, 60)
    assert [q1.receive().data for _ in range(20)] == [b"%d\0" % i for i in range(20)]


def test_killed_home_recovers_from_replica(
    cluster: LocalSsiCluster, workdir: Path
) -> None:
    """node2 homes a queue (with messages and a parked receiver), a semaphore set
    and a segment; its ssid is killed: the objects come back from their replicas
    with their content, and the parked receiver gets its message."""
    t2, t3 = transport(cluster, "node2"), transport(cluster, "node3")
    key = new_key()
    q = MessageQueue.create(t2, key=key, mode=0o666)
    sem = SemaphoreSet.create(t2, 3, key=key, mode=0o666)
    shm = SharedMemory.create(t2, 10000, key=key, mode=0o666)
    for i in range(10):
        q.send(b"m%d" % i, mtype=1)
    sem.set_values([5, 6, 7])
    shm.write(5000, b"hello segment")
    waiter = submit(
        cluster, "node3", [str(workdir / "consumer"), hex(key), "3", "1", "1"], workdir
    )
    wait_for("the receiver to park", lambda: _info(cluster, "msg", q.id)["waiters"], 30)
    entries = {kind: _entry(cluster, kind, id) for kind, id in
               (("msg", q.id), ("sem", sem.id), ("shm", shm.id))}  # fmt: skip
    assert {e["home"] for e in entries.values()} == {"node2"}
    cluster.stop("node2", signal.SIGKILL)
    wait_for(
        "node2 to be lost and its objects rehomed",
        lambda: all(
            _entry(cluster, kind, e["id"], via="node3")["home"] != "node2"
            for kind, e in entries.items()
        ),
        HB_TIMEOUT * 10,
    )
    q3 = MessageQueue(t3, q.id)
    assert q3.stat().qnum == 10
    assert [q3.receive().data for _ in range(10)] == [b"m%d" % i for i in range(10)]
    assert SemaphoreSet(t3, sem.id).values() == [5, 6, 7]
    assert SharedMemory(t3, shm.id).read(5000, 13) == b"hello segment"
    MessageQueue(transport(cluster, "node1"), q.id).send(b"2\0", mtype=3)
    assert "ok 1" in finished(cluster, waiter, workdir, 60)
    # and they are replicated again, off the dead node
    for kind, e in entries.items():
        assert _entry(cluster, kind, e["id"], via="node3")["replica"] not in (
            None,
            "node2",
        )


# ---- admin view ---------------------------------------------------------------------


def _entry(c: LocalSsiCluster, kind: str, id: int, via: str = "node1") -> Any:
    return c.call(via, m.IpcObject(kind=kind, id=id))


def _info(c: LocalSsiCluster, kind: str, id: int) -> Any:
    return _entry(c, kind, id)["info"]


def ssi_cli(
    c: LocalSsiCluster, node: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssi.cli.main", "--socket", str(c.socket(node)), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_admin_list_show_rm(cluster: LocalSsiCluster) -> None:
    key = new_key()
    q = MessageQueue.create(transport(cluster, "node3"), key=key, mode=0o644)
    q.send(b"hello", mtype=4)
    listed = ssi_cli(cluster, "node1", "ipc", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["version"] == 1
    (row,) = [r for r in doc["ipc_objects"] if r["kind"] == "msg" and r["id"] == q.id]
    assert row["home"] == "node3" and row["replica"] in ("node1", "node2")
    assert row["key"] == key and row["info"]["count"] == 1
    shown = ssi_cli(cluster, "node2", "ipc", "show", "msg", str(q.id), "--json")
    assert json.loads(shown.stdout)["ipc_object"]["info"]["size"] == 5
    table = ssi_cli(cluster, "node2", "ipc", "list")
    assert f"0x{key:08x}" in table.stdout
    moved = ssi_cli(cluster, "node1", "ipc", "move", "msg", str(q.id), "--to", "node1")
    assert moved.returncode == 0, moved.stderr
    assert _entry(cluster, "msg", q.id)["home"] == "node1"
    assert MessageQueue(transport(cluster, "node2"), q.id).receive().data == b"hello"
    removed = ssi_cli(cluster, "node2", "ipc", "rm", "msg", str(q.id))
    assert removed.returncode == 0, removed.stderr
    gone = ssi_cli(cluster, "node2", "ipc", "show", "msg", str(q.id))
    assert gone.returncode == 3


# ---- the same machinery in one process (no root, no network) ---------------------


class Net:
    """Three nodes' HomeShards and Routers and a coordinator's Directory in one
    event loop; a call to a node goes through the wire encodings, and fails while
    that node is `down`."""

    def __init__(self, tmp: Path, names: tuple[str, ...] = ("n1", "n2", "n3")):
        from ssi.cluster.store import NodeRecord, SqliteStore
        from ssi.ipc.directory import Directory
        from ssi.ipc.home import HomeShard
        from ssi.ipc.model import Limits
        from ssi.ipc.router import Router, RouterTunables

        self.down: set[str] = set()
        self.store = SqliteStore(tmp / "store.db")
        for n in names:
            self.store.put_node(NodeRecord(n, f"key-{n}", "127.0.0.1", 1))
        self.directory = Directory(self.store, self.call)
        self.shards: dict[str, HomeShard] = {}
        self.routers: dict[str, Router] = {}
        fast = RouterTunables(probe=0.2, call_timeout=1.0, unreachable=5.0, hold=0.2)
        for n in names:
            self.shards[n] = HomeShard(
                n, Limits(), self.call, self._gone(n), self._wake(n)
            )
            self.routers[n] = Router(
                n, self.shards[n], self.call, self.coordinator,
                self.nodes, Limits(), fast,
            )  # fmt: skip

    async def start(self) -> None:
        for s in self.shards.values():
            await s.start()

    async def close(self) -> None:
        for s in self.shards.values():
            await s.close()
        self.store.close()

    async def nodes(self) -> list[str]:
        return [n for n in self.shards if n not in self.down]

    def _gone(self, node: str) -> Any:
        async def gone(kind: Any, id: int) -> None:
            await self.directory.gone(kind, id, node)

        return gone

    def _wake(self, node: str) -> Any:
        def wake(origin: str, results: list[Any]) -> None:
            from ssi.ipc.remote import decode_results, encode

            async def push() -> None:
                if origin not in self.down:
                    self.routers[origin].on_wake(decode_results(encode(results)))

            asyncio.get_running_loop().create_task(push())

        return wake

    async def coordinator(self, body: m.Request[Any], timeout: float) -> Any:
        from ssi.ipc.constants import Kind

        if isinstance(body, m.IpcGet):
            return await self.directory.get(body)
        if isinstance(body, m.IpcWhere):
            e = self.directory.where(Kind(body.kind), body.id)
            return None if e is None else {"home": e.home}
        raise AssertionError(body)

    async def call(self, node: str, body: m.Request[Any], timeout: float) -> Any:
        from ssi.ipc import remote
        from ssi.ipc.constants import CancelReason, Kind
        from ssi.proto.errors import NoReply

        if node in self.down:
            await asyncio.sleep(0.01)
            raise NoReply(f"{node} is down")
        shard = self.shards[node]
        if isinstance(body, m.IpcApply):
            answer = await shard.apply(
                remote.decode_op(body.operation),
                remote.decode_caller(body.caller),
                body.request,
                body.origin,
                reserve=body.reserve,
                replica=body.replica,
                wait=body.wait,
            )
            return remote.encode(answer)
        if isinstance(body, m.IpcCancelAt):
            reason = CancelReason(body.reason)
            answer = await shard.cancel(Kind(body.kind), body.id, body.request, reason)
            return remote.encode(answer)
        if isinstance(body, m.IpcReplicate):
            shard.on_replicate(remote.decode_items(body.items))
            return {}
        if isinstance(body, m.IpcRelease):
            return remote.encode(shard.release(Kind(body.kind), body.id))
        if isinstance(body, m.IpcAdopt):
            await shard.adopt(remote.decode_bundle(body.bundle), body.replica)
            return {}
        if isinstance(body, m.IpcPromote):
            await shard.promote(Kind(body.kind), body.id, body.replica)
            return {}
        if isinstance(body, m.IpcSetReplica):
            await shard.set_replica(Kind(body.kind), body.id, body.replica)
            return {}
        if isinstance(body, m.IpcDrop):
            shard.drop(Kind(body.kind), body.id, home=body.home, replica=body.replica)
            return {}
        if isinstance(body, m.IpcExitAt):
            await shard.exit(remote.decode_caller(body.caller))
            return {}
        raise AssertionError(body)


def _run(tmp: Path, scenario: Callable[[Net], Any]) -> None:
    async def main() -> None:
        net = Net(tmp)
        await net.start()
        try:
            await asyncio.wait_for(scenario(net), 30)
        finally:
            await net.close()

    asyncio.run(main())


def _caller(client: str) -> Any:
    from ssi.ipc.model import Caller

    return Caller(uid=0, gid=0, pid=1, client=client)


def test_in_process_exactly_once_and_replicated(tmp_path: Path) -> None:
    from ssi.ipc.constants import IPC_CREAT, Kind
    from ssi.ipc.ops import MsgGet, MsgRcv, MsgSnd

    async def scenario(net: Net) -> None:
        r2, r3 = net.routers["n2"], net.routers["n3"]
        c = _caller("p1")
        qid = await r2.call(c, MsgGet(key=7, flags=IPC_CREAT | 0o600), "p1#1")
        entry = net.directory.where(Kind.MSG, qid)
        assert entry is not None and entry.home == "n2" and entry.replica
        for i in range(5):
            await r3.call(c, MsgSnd(id=qid, mtype=1, data=b"%d" % i), f"p1#s{i}")
        first = await r3.call(c, MsgRcv(id=qid, size=100), "p1#r")
        again = await r3.call(c, MsgRcv(id=qid, size=100), "p1#r")  # a re-send
        assert first == again and first.data == b"0"
        assert net.shards["n2"].table.message_queue(qid).qnum == 4
        copy = net.shards[entry.replica].copies.message_queue(qid)
        assert copy.qnum == 4  # acknowledged ops are at the replica

    _run(tmp_path, scenario)


def test_in_process_parked_waiter_moves_and_survives_home_loss(
    tmp_path: Path,
) -> None:
    """A receiver parked at n1 follows its queue to another home (release and
    adopt), then to the replica when that home is lost; a send then wakes it at
    its origin n3, and the message it took is gone from the queue everywhere."""
    from ssi.cluster.events import NodeEvent, NodeEventKind
    from ssi.cluster.store import NodeState
    from ssi.ipc.constants import IPC_CREAT, Kind
    from ssi.ipc.ops import MsgGet, MsgRcv, MsgSnd

    async def scenario(net: Net) -> None:
        c = _caller("p")
        qid = await net.routers["n1"].call(c, MsgGet(key=9, flags=IPC_CREAT), "p#g")
        receive = asyncio.ensure_future(
            net.routers["n3"].call(c, MsgRcv(id=qid, size=10, mtype=5), "p#r")
        )
        await asyncio.sleep(0.3)
        assert [w.id for w in net.shards["n1"].table.waiters()] == ["p#r"]
        moved = await net.directory.move(Kind.MSG, qid)
        assert moved.home != "n1" and not receive.done()
        home = moved.home
        await net.routers["n1"].call(c, MsgSnd(id=qid, mtype=1, data=b"a"), "p#s1")
        net.down.add(home)  # the new home dies; its replica has everything acked
        rec = net.store.node(home)
        assert rec is not None
        net.store.put_node(rec.with_state(NodeState.LOST))
        await net.directory.on_event(NodeEvent(NodeEventKind.LOST, home))
        entry = net.directory.where(Kind.MSG, qid)
        assert entry is not None and entry.home not in (home, None)
        survivor = entry.home
        await net.routers["n1"].call(c, MsgSnd(id=qid, mtype=5, data=b"b"), "p#s2")
        got = await asyncio.wait_for(receive, 10)
        assert got.data == b"b"
        q = net.shards[survivor].table.message_queue(qid)
        assert q.qnum == 1  # "a" is still there, "b" went to the receiver

    _run(tmp_path, scenario)


def test_in_process_timeout_cancels_at_home(tmp_path: Path) -> None:
    from ssi.ipc.constants import IPC_CREAT
    from ssi.ipc.ops import SemBuf, SemGet, SemOp

    async def scenario(net: Net) -> None:
        c = _caller("p")
        r1, r2 = net.routers["n1"], net.routers["n2"]
        sid = await r1.call(c, SemGet(key=3, nsems=1, flags=IPC_CREAT), "p#g")
        down = SemOp(id=sid, sops=(SemBuf(0, -1),))
        with pytest.raises(TimeoutError):
            await r2.call(c, down, "p#1", timeout=0.3)
        assert net.shards["n1"].table.waiters() == []  # nobody left parked
        await r2.call(c, SemOp(id=sid, sops=(SemBuf(0, 1),)), "p#2")
        assert net.shards["n1"].table.semaphore_set(sid).values == [1]

    _run(tmp_path, scenario)


def test_limits_from_configuration(tmp_path: Path) -> None:
    """ipc.toml next to ssi.toml sets the tables' limits (msgmnb: a new queue's
    capacity, msgmax: the largest message, ...)."""
    from ssi import config
    from ssi.ipc.ops import MsgGet, MsgSnd
    from ssi.ipc.service import load_limits
    from ssi.ipc.table import IpcTable

    (tmp_path / "ipc.toml").write_text("[limits]\nmsgmnb = 65536\nmsgmax = 100\n")
    limits = load_limits(tmp_path / "ipc.toml")
    assert (limits.msgmnb, limits.msgmax) == (65536, 100)
    table = IpcTable(limits)
    created = table.apply(MsgGet(key=1, flags=0o1600), _caller("p"))
    qid = getattr(created, "value", None)
    assert table.message_queue(qid).stat().qbytes == 65536
    with pytest.raises(OSError) as e:
        table.apply(MsgSnd(id=qid, mtype=1, data=b"x" * 101), _caller("p"))
    assert e.value.errno == errno.EINVAL
    (tmp_path / "ipc.toml").write_text("[limits]\nmsgmnb = -1\n")
    with pytest.raises(config.ConfigError):
        load_limits(tmp_path / "ipc.toml")
    from ssi.ipc.model import Limits

    assert load_limits(tmp_path / "absent.toml") == Limits()
