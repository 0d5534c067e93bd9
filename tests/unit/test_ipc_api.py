"""ssi.ipc API over the in-process transport: threads blocking and woken, timeouts,
interruption, undo at exit, shared memory attachments, the asyncio transport."""

from __future__ import annotations

import asyncio
import errno
import signal
import threading
import time
from collections.abc import Callable

import pytest

from ssi.ipc import Caller, IpcTable, Limits
from ssi.ipc.api import (
    Interrupt,
    MessageQueue,
    SemaphoreSet,
    SharedMemory,
    exit_client,
)
from ssi.ipc.local import LocalHub, LocalTransport, this_process
from ssi.ipc.ops import Message


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def hub() -> LocalHub:
    return LocalHub(IpcTable(Limits(msgmnb=256, page_size=64)))


def proc(hub: LocalHub, n: int, uid: int = 1000) -> LocalTransport:
    return hub.transport(Caller(uid=uid, gid=100, pid=100 + n, client=f"p{n}"))


class Runner(threading.Thread):
    """Runs `fn` in a thread, keeping its result or exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # kept for the test to look at
            self.error = exc

    def outcome(self, timeout: float = 5.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), "thread still blocked"
        if self.error is not None:
            raise self.error
        return self.result


def test_receive_blocks_until_another_thread_sends(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1), key=0x51)
    consumer = MessageQueue.get(proc(hub, 2), 0x51)
    r = Runner(lambda: consumer.receive(mtype=3))
    wait_for(lambda: len(hub.table.waiters()) == 1, "the receiver to park")
    q.send(b"not for you", mtype=1)
    q.send(b"for you", mtype=3)
    assert r.outcome() == Message(3, b"for you")
    assert q.receive() == Message(1, b"not for you")


def test_many_threads_typed_messages_none_lost_or_reordered(hub: LocalHub) -> None:
    producer = MessageQueue.create(proc(hub, 0), key=0x52, mode=0o666)
    n_types, per_type = 3, 200
    consumers = [
        Runner(
            lambda t=t: [
                MessageQueue.get(proc(hub, t), 0x52).receive(mtype=t).data
                for _ in range(per_type)
            ]
        )
        for t in range(1, n_types + 1)
    ]
    for i in range(per_type):
        for t in range(1, n_types + 1):
            producer.send(f"{t}:{i}".encode(), mtype=t)  # blocks when full
    for t, c in enumerate(consumers, start=1):
        assert c.outcome(timeout=20) == [f"{t}:{i}".encode() for i in range(per_type)]
    assert hub.table.message_queue(producer.id).qnum == 0


def test_send_blocks_on_full_queue_until_received(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1))
    q.send(b"x" * 200)
    with pytest.raises(BlockingIOError):
        q.send(b"y" * 100, block=False)
    r = Runner(lambda: q.send(b"y" * 100))
    wait_for(lambda: len(hub.table.waiters()) == 1, "the sender to park")
    assert q.receive().data == b"x" * 200
    r.outcome()
    assert q.receive().data == b"y" * 100


def test_receive_timeout_consumes_nothing(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        q.receive(timeout=0.1)
    assert info.value.errno == errno.EAGAIN
    assert 0.09 < time.monotonic() - t0 < 2
    assert hub.table.waiters() == []
    q.send(b"later")
    assert q.receive(timeout=0.1) == Message(1, b"later")
    with pytest.raises(OSError) as nomsg:
        q.receive(block=False)
    assert nomsg.value.errno == errno.ENOMSG


def test_interrupt_from_another_thread(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1))
    stop = Interrupt()
    r = Runner(lambda: q.receive(interrupt=stop))
    wait_for(lambda: len(hub.table.waiters()) == 1, "the receiver to park")
    stop.set()
    with pytest.raises(InterruptedError):
        r.outcome()
    assert hub.table.waiters() == []
    with pytest.raises(InterruptedError):
        q.receive(interrupt=stop)  # already set: never parks


def test_exception_from_a_signal_handler_cancels_the_wait(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1))

    class Alarm(Exception):
        pass

    def on_alarm(signum: int, frame: object) -> None:
        raise Alarm

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Alarm):
            q.receive()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hub.table.waiters() == []
    q.send(b"kept")
    assert q.receive().data == b"kept"


def test_errors_are_python_oserror_subclasses(hub: LocalHub) -> None:
    t = proc(hub, 1)
    q = MessageQueue.create(t, key=0x53, mode=0o600)
    with pytest.raises(FileExistsError):
        MessageQueue.create(t, key=0x53, exclusive=True)
    with pytest.raises(FileNotFoundError):
        MessageQueue.get(t, 0x54)
    with pytest.raises(PermissionError):
        MessageQueue.get(proc(hub, 2, uid=2000), 0x53, flags=0o400)
    q.send(b"12345")
    with pytest.raises(OSError) as info:
        q.receive(size=2)
    assert info.value.errno == errno.E2BIG
    assert q.receive(size=2, truncate=True).data == b"12"
    with pytest.raises(OSError) as info:
        t.call("ipc.nope")
    assert info.value.errno == errno.EINVAL
    q.remove()
    with pytest.raises(OSError) as info:
        q.send(b"x")
    assert info.value.errno == errno.EINVAL


def test_rmid_wakes_a_blocked_receiver_with_eidrm(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1))
    r = Runner(lambda: q.receive())
    wait_for(lambda: len(hub.table.waiters()) == 1, "the receiver to park")
    q.remove()
    with pytest.raises(OSError) as info:
        r.outcome()
    assert info.value.errno == errno.EIDRM


def test_peek_stat_set(hub: LocalHub) -> None:
    q = MessageQueue.create(proc(hub, 1), mode=0o600)
    q.send(b"a", mtype=1)
    q.send(b"b", mtype=2)
    assert q.peek(1) == Message(2, b"b")
    ds = q.stat()
    assert (ds.qnum, ds.cbytes, ds.lspid) == (2, 2, 101)
    q.set(mode=0o640, qbytes=100)
    assert q.stat().perm.mode == 0o640 and q.stat().qbytes == 100


def test_semaphore_protected_counter_from_threads(hub: LocalHub) -> None:
    key, workers, rounds = 0x60, 4, 50
    sems = SemaphoreSet.create(proc(hub, 0), 2, key=key)
    sems.set_value(0, 1)

    def work(n: int) -> None:
        s = SemaphoreSet.get(proc(hub, n), key)
        for _ in range(rounds):
            s.acquire(0)
            # a read-modify-write of semaphore 1 inside the critical section
            value = s.value(1)
            time.sleep(0)
            s.set_value(1, value + 1)
            s.release(0)

    runners = [Runner(lambda n=n: work(n)) for n in range(1, workers + 1)]
    for r in runners:
        r.outcome(timeout=30)
    assert sems.values() == [1, workers * rounds]


def test_sem_undo_at_client_exit_wakes_a_waiter(hub: LocalHub) -> None:
    holder_t = proc(hub, 1)
    sems = SemaphoreSet.create(holder_t, 1, mode=0o666)
    sems.set_value(0, 1)
    sems.acquire(undo=True)  # the holder "dies" holding it
    other = SemaphoreSet(proc(hub, 2), sems.id)
    r = Runner(lambda: other.acquire(undo=False, timeout=5))
    wait_for(lambda: other.ncount() == 1, "the waiter to park")
    exit_client(holder_t)
    r.outcome()
    assert sems.value() == 0


def test_semaphore_timeout_and_nowait(hub: LocalHub) -> None:
    s = SemaphoreSet.create(proc(hub, 1), 1)
    with pytest.raises(TimeoutError):
        s.acquire(timeout=0.05)
    with pytest.raises(BlockingIOError):
        s.acquire(block=False)
    assert s.ncount() == 0
    s.release(undo=False)
    with pytest.raises(TimeoutError):
        s.wait_zero(timeout=0.05)
    s.acquire(undo=False)
    s.wait_zero(timeout=0.05)
    assert s.pid() == 101 and s.stat().nsems == 1


def test_shared_memory_explicit_and_attached(hub: LocalHub) -> None:
    a, b = proc(hub, 1), proc(hub, 2)
    seg = SharedMemory.create(a, 200, key=0x70, mode=0o600)
    seg.write(10, b"home")
    assert SharedMemory.get(b, 0x70).read(10, 4) == b"home"
    with seg.attach() as one, SharedMemory(b, seg.id).attach() as two:
        assert bytes(one.buf[10:14]) == b"home"
        one.buf[0:3] = b"one"
        two.buf[100:103] = b"two"
        assert bytes(two.buf[0:3]) == bytes(3)  # explicit sync only
        one.sync()
        two.sync()
        one.sync()
        assert one.buf == two.buf
        assert seg.stat().nattch == 2
    assert seg.stat().nattch == 0
    assert seg.read(0, 3) == b"one" and seg.read(100, 3) == b"two"
    with seg.attach(readonly=True) as ro:
        ro.buf[0] = 0
        with pytest.raises(PermissionError):
            ro.sync()
        ro.buf[0] = ord("o")
    seg.remove()


def test_detach_publishes_and_removed_segment_dies_at_last_detach(
    hub: LocalHub,
) -> None:
    seg = SharedMemory.create(proc(hub, 1), 64)
    att = seg.attach()
    seg.remove()
    att.buf[0] = 7
    assert seg.read(0, 1) == b"\0"
    assert seg.stat().nattch == 1
    att.detach()
    with pytest.raises(OSError) as info:
        seg.stat()
    assert info.value.errno == errno.EINVAL


def test_async_transport_woken_by_a_thread(hub: LocalHub) -> None:
    sender = MessageQueue.create(proc(hub, 1), key=0x80)

    async def main() -> None:
        t = hub.async_transport(Caller(uid=1000, gid=100, pid=9, client="async"))
        qid = await t.call("ipc.msgget", key=0x80)
        task = asyncio.create_task(t.call("ipc.msgrcv", id=qid, size=100))
        while not hub.table.waiters():
            await asyncio.sleep(0.005)
        threading.Thread(target=sender.send, args=(b"hello",)).start()
        assert await asyncio.wait_for(task, 5) == Message(1, b"hello")
        with pytest.raises(TimeoutError):
            await t.call("ipc.msgrcv", id=qid, size=100, timeout=0.05)
        stop = Interrupt()
        task = asyncio.create_task(t.call("ipc.msgrcv", id=qid, size=9, interrupt=stop))
        while not hub.table.waiters():
            await asyncio.sleep(0.005)
        stop.set()
        with pytest.raises(InterruptedError):
            await task
        task = asyncio.create_task(t.call("ipc.msgrcv", id=qid, size=9))
        while not hub.table.waiters():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hub.table.waiters() == []

    asyncio.run(main())


def test_this_process_caller() -> None:
    me = this_process()
    assert me.pid > 0 and me.client and me.client != this_process().client
