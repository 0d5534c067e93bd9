"""System V IPC flag and command values, as Linux (x86_64 and the generic ABI) has them.

The same numbers travel on every wire (ssi.ipc ops, the interposer's frames), so a C
program's `msgflg` reaches the home table unchanged.
"""

from __future__ import annotations

import enum

# ipc.h
IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
IPC_INFO = 3
IPC_64 = 0x0100  # glibc ORs it into ctl commands; the kernel strips it

# msg.h
MSG_NOERROR = 0o10000
MSG_EXCEPT = 0o20000
MSG_COPY = 0o40000
MSG_STAT = 11
MSG_INFO = 12
MSG_STAT_ANY = 13

# sem.h
SEM_UNDO = 0x1000
GETPID = 11
GETVAL = 12
GETALL = 13
GETNCNT = 14
GETZCNT = 15
SETVAL = 16
SETALL = 17
SEM_STAT = 18
SEM_INFO = 19
SEM_STAT_ANY = 20

# shm.h
SHM_RDONLY = 0o10000
SHM_RND = 0o20000
SHM_REMAP = 0o40000
SHM_EXEC = 0o100000
SHM_LOCK = 11
SHM_UNLOCK = 12
SHM_STAT = 13
SHM_INFO = 14
SHM_STAT_ANY = 15
SHM_DEST = 0o1000  # in shm_perm.mode: removed, destroyed at the last detach
SHM_LOCKED = 0o2000  # in shm_perm.mode: SHM_LOCK was applied
SHM_HUGETLB = 0o4000  # shmget flags accepted and ignored
SHM_NORESERVE = 0o10000

# permission bits (stat.h)
S_IRUGO = 0o444
S_IWUGO = 0o222
S_IXUGO = 0o111
S_IRWXUGO = 0o777

INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)


class Kind(enum.Enum):
    """The three System V object kinds; each has its own key and id spaces."""

    MSG = "msg"
    SEM = "sem"
    SHM = "shm"


class CancelReason(enum.Enum):
    """Why a parked caller stops waiting; decides the errno it gets."""

    TIMEOUT = "timeout"  # semtimedop's expiry, or an ssi.ipc timeout: EAGAIN
    INTERRUPT = "interrupt"  # a signal, a cancelled request: EINTR
