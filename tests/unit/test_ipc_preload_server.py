"""ssi.ipc.preload_server over a real unix socket, spoken to in the wire format from
Python: HELLO, errnos, CANCEL, resends after a reconnect, exit when a process's last
connection closes, credentials from the kernel."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssi.ipc import wire
from ssi.ipc.constants import GETVAL, IPC_CREAT, IPC_PRIVATE, SEM_UNDO
from ssi.ipc.local import LocalHub
from ssi.ipc.preload_server import PreloadServer, serve_local
from ssi.ipc.wire import Op


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Served:
    """A PreloadServer on its own event loop thread."""

    def __init__(self, path: Path, linger: float) -> None:
        self.hub = LocalHub()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: PreloadServer = serve_local(path, self.hub, linger=linger)
        self.run(self.server.start())
        self.path = path

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "ipc.sock", linger=0.0)
    yield s
    s.stop()


@pytest.fixture
def lingering(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "ipc.sock", linger=2.0)
    yield s
    s.stop()


class Client:
    """One connection of a process identified by `token`."""

    def __init__(self, path: Path, token: int, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        if hello:
            ret, err, payload = self.call(Op.HELLO, struct.pack("<QII", token, 0, 0), 0)
            assert (ret, err) == (0, 0)
            assert struct.unpack("<IIQ", payload)[0] == wire.VERSION

    def send(self, op: int, payload: bytes, seq: int) -> None:
        self.sock.sendall(wire.encode_request(op, seq, payload))

    def recv(self) -> tuple[int, int, int, bytes]:
        head = self._exact(4)
        (n,) = wire.LEN.unpack(head)
        return wire.decode_reply(self._exact(n))

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def call(self, op: int, payload: bytes, seq: int) -> tuple[int, int, bytes]:
        self.send(op, payload, seq)
        got, ret, err, data = self.recv()
        assert got == seq
        return ret, err, data

    def close(self) -> None:
        self.sock.close()


def msgget(c: Client, key: int, flags: int, seq: int = 1) -> int:
    ret, err, _ = c.call(Op.MSGGET, struct.pack("<ii", key, flags), seq)
    assert err == 0
    return ret


def msgsnd(q: int, mtype: int, data: bytes) -> bytes:
    return struct.pack("<iiqQ", q, 0, mtype, len(data)) + data


def msgrcv(q: int, mtype: int = 0, size: int = 100) -> bytes:
    return struct.pack("<iiqQ", q, 0, mtype, size)


def test_hello_first_and_errnos(served: Served) -> None:
    bare = Client(served.path, 1, hello=False)
    bare.send(Op.MSGGET, struct.pack("<ii", 1, 0), 1)
    with pytest.raises(ConnectionError):
        bare.recv()
    c = Client(served.path, 2)
    assert c.call(Op.MSGGET, struct.pack("<ii", 0x77, 0), 2)[1] == errno.ENOENT
    q = msgget(c, IPC_PRIVATE, IPC_CREAT | 0o600, 3)
    assert c.call(Op.MSGSND, msgsnd(q, 0, b"x"), 4)[1] == errno.EINVAL
    assert c.call(Op.MSGSND, msgsnd(q, 5, b"hey"), 5)[:2] == (0, 0)
    ret, err, payload = c.call(Op.MSGRCV, msgrcv(q), 6)
    assert (ret, err, payload) == (3, 0, struct.pack("<q", 5) + b"hey")
    # a malformed request with a readable seq gets EINVAL, the connection lives on
    c.send(Op.MSGGET, b"\x01", 7)
    assert c.recv()[2] == errno.EINVAL
    assert c.call(Op.HELLO, struct.pack("<QII", 2, 0, 0), 8)[1] == errno.EINVAL
    assert msgget(c, IPC_PRIVATE, IPC_CREAT | 0o600, 9) >= 0


def test_cancel_interrupts_a_blocked_receive(served: Served) -> None:
    c = Client(served.path, 3)
    q = msgget(c, IPC_PRIVATE, IPC_CREAT | 0o600)
    c.send(Op.MSGRCV, msgrcv(q), 10)
    wait_for(lambda: len(served.hub.table.waiters()) == 1, "the receive to park")
    c.send(Op.CANCEL, struct.pack("<Q", 10), 11)
    assert c.recv()[:3] == (10, -1, errno.EINTR)
    assert served.hub.table.waiters() == []
    # a cancel of something not pending is ignored (no reply)
    c.send(Op.CANCEL, struct.pack("<Q", 999), 12)
    assert c.call(Op.MSGSND, msgsnd(q, 1, b"a"), 13)[1] == 0
    assert served.hub.table.message_queue(q).qnum == 1


def test_a_blocked_receive_is_woken_by_another_connection(served: Served) -> None:
    a, b = Client(served.path, 4), Client(served.path, 5)
    q = msgget(a, 0x99, IPC_CREAT | 0o666)
    a.send(Op.MSGRCV, msgrcv(q, 2), 20)
    wait_for(lambda: len(served.hub.table.waiters()) == 1, "the receive to park")
    assert b.call(Op.MSGSND, msgsnd(q, 2, b"two"), 1)[1] == 0
    assert a.recv() == (20, 3, 0, struct.pack("<q", 2) + b"two")


def test_resent_request_runs_once(served: Served) -> None:
    c = Client(served.path, 6)
    q = msgget(c, IPC_PRIVATE, IPC_CREAT | 0o600)
    first = c.call(Op.MSGSND, msgsnd(q, 1, b"once"), 30)
    again = c.call(Op.MSGSND, msgsnd(q, 1, b"once"), 30)
    assert first == again == (0, 0, b"")
    assert served.hub.table.message_queue(q).qnum == 1


def test_pending_request_survives_a_reconnect_within_linger(lingering: Served) -> None:
    a = Client(lingering.path, 7)
    q = msgget(a, IPC_PRIVATE, IPC_CREAT | 0o666)
    a.send(Op.MSGRCV, msgrcv(q), 40)
    wait_for(lambda: len(lingering.hub.table.waiters()) == 1, "the receive to park")
    a.close()  # e.g. the process is being moved
    time.sleep(0.2)
    b = Client(lingering.path, 7)  # same process identity
    b.send(Op.MSGRCV, msgrcv(q), 40)  # resent, same seq
    other = Client(lingering.path, 8)
    assert other.call(Op.MSGSND, msgsnd(q, 1, b"moved"), 1)[1] == 0
    assert b.recv() == (40, 5, 0, struct.pack("<q", 1) + b"moved")
    assert lingering.hub.table.message_queue(q).qnum == 0


def test_last_close_is_the_process_exit(served: Served) -> None:
    a = Client(served.path, 9)
    a2 = Client(served.path, 9)  # a second connection of the same process
    s, err, _ = a.call(Op.SEMGET, struct.pack("<iii", 0, 1, IPC_CREAT | 0o666), 1)
    assert err == 0
    up = struct.pack("<iIq", s, 1, -1) + struct.pack("<Hhh", 0, 2, SEM_UNDO)
    assert a.call(Op.SEMOP, up, 2)[1] == 0
    getval = struct.pack("<iiii", s, 0, GETVAL, 0)
    observer = Client(served.path, 10)
    assert observer.call(Op.SEMCTL, getval, 1)[0] == 2
    a.close()
    time.sleep(0.1)
    assert observer.call(Op.SEMCTL, getval, 2)[0] == 2  # a2 still open
    a2.close()
    wait_for(
        lambda: served.hub.table.semaphore_set(s).values == [0], "the undo at exit"
    )


def test_exit_interrupts_a_parked_call(served: Served) -> None:
    a = Client(served.path, 11)
    q = msgget(a, IPC_PRIVATE, IPC_CREAT | 0o600)
    a.send(Op.MSGRCV, msgrcv(q), 50)
    wait_for(lambda: len(served.hub.table.waiters()) == 1, "the receive to park")
    a.close()
    wait_for(lambda: served.hub.table.waiters() == [], "the parked receive to go")
    wait_for(lambda: served.server.clients() == [], "the client to be forgotten")


CHILD = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def call(op, payload, seq):
    s.sendall(struct.pack("<IHHIQ", 16 + len(payload), 1, op, 0, seq) + payload)
    n = struct.unpack("<I", s.recv(4))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return struct.unpack_from("<Qqi", data)
call(1, struct.pack("<QII", 77, 0, 0), 0)
print(call(10, struct.pack("<ii", int(sys.argv[2]), 0o400), 1)[2])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_credentials_come_from_the_kernel() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        served = Served(Path(d) / "ipc.sock", linger=0.0)
        try:
            c = Client(served.path, 12)
            msgget(c, 0x4242, IPC_CREAT | 0o600)
            out = subprocess.run(
                ["/usr/bin/python3", "-c", CHILD, str(served.path), str(0x4242)],
                user=65534,
                group=65534,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
            )
            assert out.returncode == 0, out.stderr
            assert int(out.stdout) == errno.EACCES
            # root passes the same check
            assert msgget(Client(served.path, 13), 0x4242, 0o400) >= 0
        finally:
            served.stop()
