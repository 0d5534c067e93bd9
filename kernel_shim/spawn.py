"""spawn: start a process in new namespaces without forking the Python heap.

The C side (ssi_spawn in _build.py) uses clone(CLONE_VM | CLONE_VFORK): the child
borrows our memory until execve, does only raw syscalls, and the calling thread waits
(GIL released) until the child has exec'd or failed. Safe from asyncio daemons with
pyzmq threads, where os.fork is not.

Child steps, in order: default signal dispositions and an empty signal mask; setns into
`netns` (network namespace only); unshare(TIME) if asked; sethostname; setsid;
setgroups, setgid, setuid; chdir; dup2 of stdio; close every fd but 0-2 and
`pass_fds`; PR_SET_PDEATHSIG; execve with a PATH lookup like execvp.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._kernel_shim import ffi, lib
from .ns import NO_NS, NsType, ns_name

NETNS_DIR = "/run/netns"

_STEPS: dict[int, str] = {
    lib.SSI_STEP_CLONE: "clone({ns})",
    lib.SSI_STEP_SIGNALS: "rt_sigprocmask",
    lib.SSI_STEP_OPEN_NETNS: "open({netns})",
    lib.SSI_STEP_SETNS: "setns({netns}, NET)",
    lib.SSI_STEP_UNSHARE_TIME: "unshare(TIME)",
    lib.SSI_STEP_SETHOSTNAME: "sethostname({hostname})",
    lib.SSI_STEP_SETSID: "setsid",
    lib.SSI_STEP_SETGROUPS: "setgroups({groups})",
    lib.SSI_STEP_SETGID: "setgid({gid})",
    lib.SSI_STEP_SETUID: "setuid({uid})",
    lib.SSI_STEP_CHDIR: "chdir({cwd})",
    lib.SSI_STEP_DUP2: "dup2({arg_src}, {arg})",
    lib.SSI_STEP_PASS_FD: "fcntl({arg}, F_SETFD, 0)",
    lib.SSI_STEP_CLOSE_RANGE: "close_range({arg}, ~0)",
    lib.SSI_STEP_PDEATHSIG: "prctl(PR_SET_PDEATHSIG, {pdeathsig})",
    lib.SSI_STEP_EXECVE: "execve({prog})",
    lib.SSI_STEP_MMAP: "mmap(child stack)",
}


def netns_path(netns: str) -> str:
    """A bare name means /run/netns/NAME (as `ip netns` creates it)."""
    return netns if "/" in netns else os.path.join(NETNS_DIR, netns)


def spawn(
    argv: Sequence[str],
    *,
    namespaces: NsType = NO_NS,
    netns: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    groups: Sequence[int] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = True,
    hostname: str | None = None,
    pdeathsig: int | None = None,
) -> int:
    """Start `argv` and return its host pid; the caller reaps it (it is our child and
    signals SIGCHLD on exit).

    - namespaces: CLONE_NEW* bits for the new process. With PID it is PID 1 of its
      namespace. Avoid MNT for jobs: CRIU cannot dump a private mount namespace.
    - netns: a network namespace file (/run/netns/NAME, /proc/PID/ns/net) or a bare
      NAME; the child enters that network namespace only, never a mount namespace.
    - hostname: needs UTS in `namespaces` (else it would rename the host).
    - uid, gid, groups: applied as setgroups, setgid, setuid. When uid or gid is given
      and groups is None, the supplementary groups are cleared, so root's do not leak.
    - env: the whole environment (None: ours, os.environ); its PATH (else os.defpath)
      drives the lookup of a program name without a slash. A relative program path
      is resolved after the chdir to `cwd`.
    - stdin, stdout, stderr: fds to dup2 onto 0, 1, 2; None inherits ours.
    - pass_fds: extra fds kept open (made inheritable in the child); all others close.
    - pdeathsig: signal on the death of the calling *thread* (not process): call spawn
      from a long-lived thread (the event loop's), not from a pool worker.

    The calling thread waits (GIL released) until the child has exec'd: a child
    stuck in chdir on a dead NFS mount blocks it too.

    Errors in the child come back as OSError(errno, "spawn: chdir(/x): No such file or
    directory") and the failed child is reaped; bad arguments raise ValueError.
    """
    argv = list(argv)
    if not argv:
        raise ValueError("spawn: empty argv")
    if hostname is not None and not namespaces & NsType.UTS:
        raise ValueError("spawn: hostname needs a new UTS namespace")
    if netns is not None and namespaces & NsType.NET:
        raise ValueError("spawn: netns and a new NET namespace exclude each other")
    environ = dict(os.environ if env is None else env)
    keep = sorted({fd for fd in pass_fds if fd > 2})
    stdio = [-1 if fd is None else fd for fd in (stdin, stdout, stderr)]
    if any(fd < -1 for fd in stdio) or any(fd < 0 for fd in pass_fds):
        raise ValueError("spawn: negative file descriptor")
    if any(i is not None and i < 0 for i in (uid, gid, *(groups or ()))):
        raise ValueError("spawn: negative uid, gid or group")

    alive: list[Any] = []  # cdata the request points to, kept alive until the call ends

    def cstr(s: str | bytes) -> Any:
        c = ffi.new("char[]", os.fsencode(s))
        alive.append(c)
        return c

    def cstrv(items: Sequence[str | bytes]) -> Any:
        v = ffi.new("char *[]", [cstr(s) for s in items] + [ffi.NULL])
        alive.append(v)
        return v

    req = ffi.new("struct ssi_spawn_req *")
    req.argv = cstrv(argv)
    req.envp = cstrv(
        [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items()]
    )
    req.path = cstr(environ.get("PATH", os.defpath))
    netns_file = netns_path(netns) if netns is not None else None
    req.netns = cstr(netns_file) if netns_file is not None else ffi.NULL
    req.hostname = cstr(hostname) if hostname is not None else ffi.NULL
    req.cwd = cstr(cwd) if cwd is not None else ffi.NULL
    req.ns_flags = int(namespaces)
    req.uid = -1 if uid is None else uid
    req.gid = -1 if gid is None else gid
    group_list = list(groups) if groups is not None else []
    req.set_groups = int(groups is not None or uid is not None or gid is not None)
    req.ngroups = len(group_list)
    req.groups = ffi.new("unsigned int[]", group_list) if group_list else ffi.NULL
    alive.append(req.groups)
    req.stdio = stdio
    req.keep_fds = ffi.new("int[]", keep) if keep else ffi.NULL
    alive.append(req.keep_fds)
    req.nkeep = len(keep)
    req.new_session = int(new_session)
    req.pdeathsig = pdeathsig or 0

    pid = int(lib.ssi_spawn(req))
    if pid >= 0:
        return pid
    step, arg = int(req.err_step), int(req.err_arg)
    what = _STEPS.get(step, f"step {step}").format(
        ns=ns_name(namespaces),
        netns=netns_file,
        hostname=hostname,
        groups=",".join(map(str, group_list)),
        gid=gid,
        uid=uid,
        cwd=cwd,
        arg=arg,
        arg_src=stdio[arg] if 0 <= arg < 3 else arg,
        pdeathsig=pdeathsig,
        prog=argv[0],
    )
    err = int(req.err_errno)
    raise OSError(err, f"spawn: {what}: {os.strerror(err)}")
