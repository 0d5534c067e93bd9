"""ssi.ipc: cluster-wide System V message queues, semaphore sets and shared memory.

    ssi.ipc API (api.py)          unmodified C program
    MessageQueue/SemaphoreSet/        │ LD_PRELOAD interposer/ssi_ipc_preload.c
    SharedMemory                      │ frames (wire.py) over a unix socket
          │ Transport.call(op, **args)▼
          │                     preload_server.py ── AsyncTransport.call(op, **args)
          ▼                           ▼
    LocalHub (in-process) | the daemon's client  ──▶ the object's home:
                                                     IpcTable.apply(op, caller)
                                                     -> Done | Blocked | OSError
    IpcTable (table.py): msg.py, sem.py, shm.py objects; ops.py the ops, results and
    outcomes; model.py credentials, limits, permission rules. All sans-IO.

Consistency of shared memory: see ssi.ipc.shm (home-serialised explicit access,
versioned pages, explicit-sync twins and diffs for attached copies).
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
