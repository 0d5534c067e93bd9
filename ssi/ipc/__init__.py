"""ssi.ipc: cluster-wide System V message queues, semaphore sets and shared memory.

    Python program                         unmodified C program
    api.py MessageQueue/SemaphoreSet/          │ LD_PRELOAD interposer/ssi_ipc_preload.c
    SharedMemory (+ Attachment)                │ frames of wire.py, unix socket
          │ Transport.call(op, **args)         ▼
          │                              preload_server.py (peer credentials)
          │                                    │ AsyncTransport.call(op, **args)
          ▼                                    ▼
    local.py LocalHub (in process)  |  the daemon's client  ──▶  the object's home:
                                                     IpcTable.apply(op, caller)
                                                     -> Done | Blocked | OSError
                                                     cancel(waiter), exit(client),
                                                     snapshot()/restore()

    table.py IpcTable: ids, keys, the kernel's checks in order, waiters, snapshots
    msg.py / sem.py / shm.py: one object kind each; ops.py: ops, results, outcomes;
    model.py: Caller, Perm, Limits, ipcperms. All sans-IO (no sockets, no threads);
    api.py and local.py use locks, preload_server.py asyncio, interposer/ C.

Shared memory consistency: see ssi.ipc.shm (home-serialised explicit read/write,
versioned pages; attached copies are explicit-sync with twins and diffs).

In the cluster (ssid): service.py IpcService wires it into the daemon; router.py
takes a process's op from its node to the object's home; home.py HomeShard holds
a node's tables (objects it homes, copies it replicates); directory.py is the
coordinator's key/id -> home map (moves, recovery); remote.py what travels
between them; client.py the Python programs' transports (ssid socket, preload
server).
"""

from ssi.ipc.constants import CancelReason, Kind
from ssi.ipc.model import Caller, Limits
from ssi.ipc.ops import Blocked, Done, Outcome, Wakeup
from ssi.ipc.table import IpcTable, SequentialIds

__all__ = [
    "Blocked",
    "CancelReason",
    "Caller",
    "Done",
    "IpcTable",
    "Kind",
    "Limits",
    "Outcome",
    "SequentialIds",
    "Wakeup",
]
