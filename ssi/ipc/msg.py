"""A System V message queue as its home holds it: ipc/msg.c's rules, sans-IO.

Receive rules (msgrcv's `mtype`), for a queue holding [A:2, B:1, C:3, D:1] in that
order: 0 -> A (the first); 1 -> B (the first of type 1); 1 with MSG_EXCEPT -> A (the
first not of type 1); -2 -> B (the lowest type <= 2, first of it); MSG_COPY|IPC_NOWAIT
with 2 -> C, left in place (the third message, counted from 0).

Blocking, as the kernel: a receive finding nothing parks; a send first offers its
message to the parked receivers in arrival order (a receiver whose size is too small
without MSG_NOERROR is woken with E2BIG and the message goes on), then queues it. A
send that does not fit (cbytes + size > qbytes, or qnum + 1 > qbytes) parks; every
receive retries the parked senders in arrival order, each one whose message now fits
goes (a smaller later message may pass a larger earlier one, as in Linux).
Within a type, messages leave in the order they were sent.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable

import msgspec

from ssi.ipc.constants import (
    IPC_NOWAIT,
    LONG_MAX,
    LONG_MIN,
    MSG_COPY,
    MSG_EXCEPT,
    MSG_NOERROR,
    S_IRUGO,
    S_IWUGO,
    Kind,
)
from ssi.ipc.model import Caller, Limits, Perm, check_access, denied, ipc_error
from ssi.ipc.ops import (
    Message,
    MsgRcv,
    MsgSnd,
    MsqidDs,
    PermInfo,
    PermSet,
    Waiter,
    Wakeup,
)

__all__ = ["MessageQueueObject", "MessageQueueState"]

_ANY, _EQUAL, _NOTEQUAL, _LESSEQUAL, _NUMBER = range(5)


def _mode(mtype: int, flags: int) -> tuple[int, int]:
    """ipc/msg.c:convert_mode: (search mode, type argument)."""
    if flags & MSG_COPY:
        return _NUMBER, mtype
    if mtype == 0:
        return _ANY, 0
    if mtype < 0:
        return _LESSEQUAL, LONG_MAX if mtype == LONG_MIN else -mtype
    if flags & MSG_EXCEPT:
        return _NOTEQUAL, mtype
    return _EQUAL, mtype


def _matches(msg_type: int, mode: int, t: int) -> bool:
    if mode in (_ANY, _NUMBER):
        return True
    if mode == _LESSEQUAL:
        return msg_type <= t
    if mode == _EQUAL:
        return msg_type == t
    return msg_type != t


class _Entry(msgspec.Struct, array_like=True):
    seq: int
    mtype: int
    data: bytes


class MessageQueueState(msgspec.Struct, kw_only=True, tag="msg"):
    """A queue's whole state, in a snapshot."""

    id: int
    perm: Perm
    stime: int
    rtime: int
    ctime: int
    qbytes: int
    lspid: int
    lrpid: int
    next_seq: int
    messages: list[_Entry]  # in sending order
    receivers: list[Waiter]
    senders: list[Waiter]


Park = Callable[[], str]


class MessageQueueObject:
    kind = Kind.MSG

    def __init__(self, id: int, perm: Perm, qbytes: int, now: int) -> None:
        self.id = id
        self.perm = perm
        self.stime = 0
        self.rtime = 0
        self.ctime = now
        self.qbytes = qbytes
        self.lspid = 0
        self.lrpid = 0
        self.cbytes = 0
        self.qnum = 0
        self._seq = 0
        # FIFO per type; the seq orders types against each other.
        self._by_type: dict[int, deque[tuple[int, bytes]]] = {}
        self.receivers: list[Waiter] = []
        self.senders: list[Waiter] = []

    # ---- queue storage -------------------------------------------------------

    def _fits(self, size: int) -> bool:
        return size + self.cbytes <= self.qbytes and 1 + self.qnum <= self.qbytes

    def _enqueue(self, mtype: int, data: bytes) -> None:
        self._seq += 1
        self._by_type.setdefault(mtype, deque()).append((self._seq, data))
        self.cbytes += len(data)
        self.qnum += 1

    def _find(self, mode: int, t: int) -> tuple[int, int, bytes] | None:
        """(type, seq, data) of the message a receive would take, or None."""
        if mode == _EQUAL:
            q = self._by_type.get(t)
            return (t, *q[0]) if q else None
        if mode == _NUMBER:
            if t < 0 or t >= self.qnum:
                return None
            everything = sorted(
                (seq, mtype, data)
                for mtype, q in self._by_type.items()
                for seq, data in q
            )
            seq, mtype, data = everything[t]
            return mtype, seq, data
        best: tuple[int, int, bytes] | None = None
        for mtype, q in self._by_type.items():
            if not _matches(mtype, mode, t):
                continue
            seq, data = q[0]
            if best is None:
                best = (mtype, seq, data)
            elif mode == _LESSEQUAL:
                if (mtype, seq) < (best[0], best[1]):
                    best = (mtype, seq, data)
            elif seq < best[1]:
                best = (mtype, seq, data)
        return best

    def _take(self, mtype: int) -> bytes:
        q = self._by_type[mtype]
        _, data = q.popleft()
        if not q:
            del self._by_type[mtype]
        self.cbytes -= len(data)
        self.qnum -= 1
        return data

    def messages(self) -> list[Message]:
        """Every queued message in sending order (tests, admin show)."""
        return [Message(e.mtype, e.data) for e in self._entries()]

    def _entries(self) -> list[_Entry]:
        return sorted(
            (
                _Entry(seq, mtype, data)
                for mtype, q in self._by_type.items()
                for seq, data in q
            ),
            key=lambda e: e.seq,
        )

    # ---- operations ------------------------------------------------------------

    def send(
        self, caller: Caller, op: MsgSnd, now: int, park: Park
    ) -> list[Wakeup] | Waiter:
        """msgsnd after the table's argument checks: the wakeups it caused, or the
        parked sender."""
        check_access(self.perm, caller, S_IWUGO, f"msgsnd to queue {self.id}")
        if self._fits(len(op.data)):
            return self._deliver(caller, op, now)
        if op.flags & IPC_NOWAIT:
            raise ipc_error(errno.EAGAIN, f"queue {self.id} is full")
        waiter = Waiter(id=park(), caller=caller, op=op)
        self.senders.append(waiter)
        return waiter

    def _deliver(self, sender: Caller, op: MsgSnd, now: int) -> list[Wakeup]:
        """The message goes to the first parked receiver that takes it, else to
        the queue (ipc/msg.c:pipelined_send)."""
        woken: list[Wakeup] = []
        self.lspid = sender.pid
        self.stime = now
        size = len(op.data)
        for receiver in list(self.receivers):
            rcv = receiver.op
            assert isinstance(rcv, MsgRcv)
            if not _matches(op.mtype, *_mode(rcv.mtype, rcv.flags)):
                continue
            self.receivers.remove(receiver)
            if not rcv.flags & MSG_NOERROR and rcv.size < size:
                woken.append(Wakeup(waiter=receiver.id, errno=errno.E2BIG))
                continue
            self.lrpid = receiver.caller.pid
            self.rtime = now
            message = Message(op.mtype, op.data[: rcv.size])
            woken.append(Wakeup(waiter=receiver.id, value=message))
            return woken
        self._enqueue(op.mtype, op.data)
        return woken

    def receive(
        self, caller: Caller, op: MsgRcv, limits: Limits, now: int, park: Park
    ) -> tuple[Message, list[Wakeup]] | Waiter:
        check_access(self.perm, caller, S_IRUGO, f"msgrcv from queue {self.id}")
        mode, t = _mode(op.mtype, op.flags)
        found = self._find(mode, t)
        if found is not None:
            mtype, _, data = found
            if op.size < len(data) and not op.flags & MSG_NOERROR:
                raise ipc_error(
                    errno.E2BIG,
                    f"message of {len(data)} bytes, receive buffer of {op.size}",
                )
            if op.flags & MSG_COPY:
                if len(data) > min(op.size, limits.msgmax):
                    # ipc/msgutil.c:copy_msg refuses a copy larger than the buffer
                    raise ipc_error(errno.EINVAL, "MSG_COPY of a truncated message")
                return Message(mtype, data), []
            self._take(mtype)
            self.rtime = now
            self.lrpid = caller.pid
            return Message(mtype, data[: op.size]), self._retry_senders(now)
        if op.flags & IPC_NOWAIT:
            raise ipc_error(errno.ENOMSG, f"no matching message in queue {self.id}")
        waiter = Waiter(id=park(), caller=caller, op=op)
        self.receivers.append(waiter)
        return waiter

    def _retry_senders(self, now: int) -> list[Wakeup]:
        """Parked senders whose message now fits go, in arrival order; each
        rechecks its permission as the kernel's woken sender does."""
        woken: list[Wakeup] = []
        for sender in list(self.senders):
            snd = sender.op
            assert isinstance(snd, MsgSnd)
            if not self._fits(len(snd.data)):
                continue
            self.senders.remove(sender)
            if denied(self.perm, sender.caller, S_IWUGO):
                woken.append(Wakeup(waiter=sender.id, errno=errno.EACCES))
                continue
            woken.extend(self._deliver(sender.caller, snd, now))
            woken.append(Wakeup(waiter=sender.id, value=None))
        return woken

    def set(self, change: PermSet, now: int) -> list[Wakeup]:
        """IPC_SET after the table's owner and qbytes checks. As the kernel, parked
        receivers retry (and fail with EACCES if they lost read permission), and
        senders retry."""
        if change.uid is not None:
            self.perm.uid = change.uid
        if change.gid is not None:
            self.perm.gid = change.gid
        if change.mode is not None:
            self.perm.mode = (self.perm.mode & ~0o777) | (change.mode & 0o777)
        if change.qbytes is not None:
            self.qbytes = change.qbytes
        self.ctime = now
        woken: list[Wakeup] = []
        for receiver in list(self.receivers):
            if denied(self.perm, receiver.caller, S_IRUGO):
                self.receivers.remove(receiver)
                woken.append(Wakeup(waiter=receiver.id, errno=errno.EACCES))
        woken.extend(self._retry_senders(now))
        return woken

    def remove_all_waiters(self, err: int) -> list[Wakeup]:
        woken = [Wakeup(waiter=w.id, errno=err) for w in self.receivers + self.senders]
        self.receivers.clear()
        self.senders.clear()
        return woken

    def waiters(self) -> list[Waiter]:
        return self.receivers + self.senders

    def drop_waiter(self, waiter_id: str) -> Waiter | None:
        for lst in (self.receivers, self.senders):
            for w in lst:
                if w.id == waiter_id:
                    lst.remove(w)
                    return w
        return None

    def stat(self) -> MsqidDs:
        return MsqidDs(
            perm=PermInfo(**msgspec.structs.asdict(self.perm)),
            stime=self.stime,
            rtime=self.rtime,
            ctime=self.ctime,
            cbytes=self.cbytes,
            qnum=self.qnum,
            qbytes=self.qbytes,
            lspid=self.lspid,
            lrpid=self.lrpid,
        )

    # ---- snapshots -------------------------------------------------------------

    def state(self) -> MessageQueueState:
        return MessageQueueState(
            id=self.id,
            perm=msgspec.structs.replace(self.perm),
            stime=self.stime,
            rtime=self.rtime,
            ctime=self.ctime,
            qbytes=self.qbytes,
            lspid=self.lspid,
            lrpid=self.lrpid,
            next_seq=self._seq,
            messages=self._entries(),
            receivers=list(self.receivers),
            senders=list(self.senders),
        )

    @classmethod
    def from_state(cls, s: MessageQueueState) -> MessageQueueObject:
        q = cls(s.id, msgspec.structs.replace(s.perm), s.qbytes, s.ctime)
        q.stime, q.rtime, q.lspid, q.lrpid = s.stime, s.rtime, s.lspid, s.lrpid
        for e in s.messages:
            q._by_type.setdefault(e.mtype, deque()).append((e.seq, e.data))
            q.cbytes += len(e.data)
            q.qnum += 1
        q._seq = max([s.next_seq, *(e.seq for e in s.messages)])
        q.receivers = list(s.receivers)
        q.senders = list(s.senders)
        return q
