"""kernel_shim without namespaces: errors carry the errno and name the call, spawn's
plain process plumbing works. No root needed."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_shim._kernel_shim import lib

import kernel_shim
from kernel_shim import Kernel, LinuxKernel, NsType


def wait_exit(pid: int, timeout: float = 10.0) -> int:
    with kernel_shim.pidfd_open(pid) as pidfd:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        assert ready, f"pid {pid} still running after {timeout}s"
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run(argv: list[str], **kwargs: object) -> tuple[int, str]:
    """spawn `argv` with stdout to a pipe; return (exit code, output)."""
    r, w = os.pipe()
    try:
        pid = kernel_shim.spawn(argv, stdout=w, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(w)
    with os.fdopen(r) as out:
        text = out.read()
    return wait_exit(pid), text


@pytest.fixture
def dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = kernel_shim.spawn(["true"])
    assert wait_exit(pid) == 0
    return pid


@pytest.fixture
def sleeper() -> Iterator[int]:
    pid = kernel_shim.spawn(["sleep", "30"])
    yield pid
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass  # the test reaped it


# --- constants and the protocol ---------------------------------------------------


@pytest.mark.parametrize("member", list(NsType))
def test_nstype_values_are_the_clone_new_flags(member: NsType) -> None:
    c_name = "CLONE_NEWNS" if member.name == "MNT" else f"CLONE_NEW{member.name}"
    assert member.value == getattr(lib, c_name)
    if hasattr(os, c_name):  # Python >= 3.12
        assert member.value == getattr(os, c_name)


def test_linux_kernel_satisfies_the_protocol() -> None:
    k: Kernel = LinuxKernel()
    assert k.spawn is kernel_shim.spawn
    assert isinstance(kernel_shim.linux, LinuxKernel)


# --- errors: errno right, call named ------------------------------------------------


def test_setns_on_a_bad_fd_is_ebadf() -> None:
    with pytest.raises(OSError) as err:
        kernel_shim.setns(9999, NsType.NET)
    assert err.value.errno == errno.EBADF
    assert "setns(9999, NET)" in str(err.value)


def test_setns_on_a_path_that_is_no_namespace_is_einval() -> None:
    with pytest.raises(OSError) as err:
        kernel_shim.setns("/etc/hostname", NsType.NET)
    assert err.value.errno == errno.EINVAL
    assert str(err.value) == "[Errno 22] Invalid argument: setns(/etc/hostname, NET)"


def test_setns_on_a_missing_path_names_setns() -> None:
    with pytest.raises(FileNotFoundError) as err:
        kernel_shim.setns(Path("/run/netns/ssi-no-such-ns"), NsType.NET)
    assert "setns(/run/netns/ssi-no-such-ns, NET)" in str(err.value)


def test_setns_of_the_wrong_kind_is_einval() -> None:
    with pytest.raises(OSError) as err:
        kernel_shim.setns("/proc/self/ns/uts", NsType.NET)
    assert err.value.errno == errno.EINVAL


def test_unshare_with_a_flag_that_is_no_namespace_is_einval() -> None:
    with pytest.raises(OSError) as err:
        kernel_shim.unshare(NsType(0x1))
    assert err.value.errno == errno.EINVAL
    assert "unshare(0x1)" in str(err.value)


def test_pidfd_open_of_a_dead_pid_is_esrch(dead_pid: int) -> None:
    with pytest.raises(ProcessLookupError) as err:
        kernel_shim.pidfd_open(dead_pid)
    assert err.value.errno == errno.ESRCH
    assert f"pidfd_open({dead_pid})" in str(err.value)


def test_setns_pid_of_a_dead_pid_is_esrch(dead_pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        kernel_shim.setns_pid(dead_pid, NsType.NET)


def test_spawn_with_a_missing_cwd_names_chdir() -> None:
    with pytest.raises(FileNotFoundError) as err:
        kernel_shim.spawn(["true"], cwd="/nope")
    assert err.value.errno == errno.ENOENT
    assert err.value.strerror == "spawn: chdir(/nope): No such file or directory"


def test_spawn_of_a_missing_program_names_execve() -> None:
    with pytest.raises(FileNotFoundError) as err:
        kernel_shim.spawn(["ssi-no-such-program"])
    assert "spawn: execve(ssi-no-such-program)" in str(err.value)


def test_spawn_of_a_file_that_is_not_executable_is_eacces(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a program\n")
    with pytest.raises(PermissionError) as err:
        kernel_shim.spawn([str(data)])
    assert f"execve({data})" in str(err.value)


def test_spawn_path_lookup_reports_eacces_over_enoent(tmp_path: Path) -> None:
    (tmp_path / "prog").write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        kernel_shim.spawn(["prog"], env={"PATH": f"/nonexistent:{tmp_path}:/bin"})


def our_zombies() -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            found.append(int(entry))
    return found


def test_spawn_failures_leave_no_zombie() -> None:
    before = our_zombies()
    for _ in range(3):
        with pytest.raises(OSError):
            kernel_shim.spawn(["true"], cwd="/nope")
    assert our_zombies() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"argv": []},
        {"hostname": "x"},  # without a UTS namespace: would rename the host
        {"netns": "x", "namespaces": NsType.NET},
        {"stdout": -5},
        {"uid": -2},
    ],
)
def test_spawn_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    argv = kwargs.pop("argv", ["true"])
    with pytest.raises(ValueError):
        kernel_shim.spawn(argv, **kwargs)  # type: ignore[arg-type]


# --- spawn plumbing ------------------------------------------------------------------


def test_spawn_returns_our_child_with_its_exit_code() -> None:
    pid = kernel_shim.spawn(["sh", "-c", "exit 9"])
    assert wait_exit(pid) == 9


def test_spawn_uses_env_and_its_path(tmp_path: Path) -> None:
    prog = tmp_path / "hello"
    prog.write_text("#!/bin/sh\necho hi $GREETING\n")
    prog.chmod(0o755)
    env = {"PATH": f"/nonexistent:{tmp_path}", "GREETING": "there"}
    assert run(["hello"], env=env) == (0, "hi there\n")


def test_spawn_environment_is_exactly_env() -> None:
    code, out = run(["/usr/bin/env"], env={"A": "1"})
    assert (code, out) == (0, "A=1\n")


def test_spawn_sets_cwd_and_a_new_session(tmp_path: Path) -> None:
    code, out = run(
        ["sh", "-c", "pwd; cut -d' ' -f6 /proc/$$/stat; echo $$"], cwd=str(tmp_path)
    )
    cwd, session, pid = out.split()
    assert (code, cwd, session) == (0, str(tmp_path), pid)


def test_spawn_can_stay_in_our_session() -> None:
    code, out = run(["sh", "-c", "cut -d' ' -f6 /proc/$$/stat"], new_session=False)
    assert (code, int(out)) == (0, os.getsid(0))


def test_spawn_closes_fds_but_stdio_and_pass_fds() -> None:
    keep = os.open(os.devnull, os.O_RDONLY)
    drop = os.open(os.devnull, os.O_RDONLY)
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    try:
        code, out = run(["ls", "/proc/self/fd"], pass_fds=[keep])
    finally:
        for fd in (keep, drop, inheritable):
            os.close(fd)
    fds = {int(x) for x in out.split()}
    assert code == 0
    assert {0, 1, 2, keep} <= fds
    assert drop not in fds and inheritable not in fds
    assert len(fds) == 5  # plus the one ls opened to list the directory


def test_spawn_swapped_stdio_fds_land_where_asked() -> None:
    r, w = os.pipe()
    saved = os.dup(0), os.dup(1)
    try:
        # Sources sitting on 0 and 1, crossed: dup2 must not clobber one with the other.
        os.dup2(w, 0)
        os.dup2(r, 1)
        pid = kernel_shim.spawn(["sh", "-c", "echo crossed >&1"], stdin=1, stdout=0)
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (*saved, w):
            os.close(fd)
    with os.fdopen(r) as out:
        assert out.read() == "crossed\n"
    assert wait_exit(pid) == 0


def test_spawn_child_has_default_signals_and_empty_mask() -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        code, out = run(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert code == 0
    # Python ignores SIGPIPE and SIGXFSZ; a job must not inherit that.
    assert out == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


def test_spawn_does_not_disturb_our_signal_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert wait_exit(kernel_shim.spawn(["true"])) == 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


# --- pidfds and prctl --------------------------------------------------------------


def test_pidfd_signals_and_polls(sleeper: int) -> None:
    with kernel_shim.pidfd_open(sleeper) as pidfd:
        assert pidfd.pid == sleeper and pidfd.fileno() == pidfd.fd
        pidfd.send_signal(signal.SIGTERM)
        assert select.select([pidfd], [], [], 10)[0]
        assert os.waitstatus_to_exitcode(os.waitpid(sleeper, 0)[1]) == -signal.SIGTERM
        with pytest.raises(ProcessLookupError) as err:
            kernel_shim.pidfd_send_signal(pidfd, signal.SIGTERM)
        assert f"pidfd_send_signal(pid {sleeper}, SIGTERM)" in str(err.value)
    assert pidfd.closed
    with pytest.raises(ValueError):
        pidfd.fileno()


def test_pidfd_send_signal_on_a_bad_fd_is_ebadf() -> None:
    with pytest.raises(OSError) as err:
        kernel_shim.pidfd_send_signal(9999, signal.SIGTERM)
    assert err.value.errno == errno.EBADF
    assert "pidfd_send_signal(pidfd 9999, SIGTERM)" in str(err.value)


def test_child_subreaper_round_trip() -> None:
    before = kernel_shim.get_child_subreaper()
    try:
        kernel_shim.set_child_subreaper(True)
        assert kernel_shim.get_child_subreaper() is True
        kernel_shim.set_child_subreaper(False)
        assert kernel_shim.get_child_subreaper() is False
    finally:
        kernel_shim.set_child_subreaper(before)


def test_pdeathsig_round_trip_and_bad_signal() -> None:
    before = kernel_shim.get_pdeathsig()
    try:
        kernel_shim.set_pdeathsig(signal.SIGUSR2)
        assert kernel_shim.get_pdeathsig() == signal.SIGUSR2
        with pytest.raises(OSError) as err:
            kernel_shim.set_pdeathsig(1000)
        assert err.value.errno == errno.EINVAL
        assert "prctl(PR_SET_PDEATHSIG, 1000)" in str(err.value)
    finally:
        kernel_shim.set_pdeathsig(before)


def test_spawn_from_many_threads_at_once() -> None:
    def worker(codes: list[int], n: int) -> None:
        for i in range(10):
            codes.append(wait_exit(kernel_shim.spawn(["sh", "-c", f"exit {n + i}"])))

    results: list[list[int]] = [[] for _ in range(4)]
    threads = [
        threading.Thread(target=worker, args=(results[t], t * 10)) for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [list(range(t * 10, t * 10 + 10)) for t in range(4)]


def test_spawn_is_quick() -> None:
    started = time.perf_counter()
    for _ in range(20):
        assert wait_exit(kernel_shim.spawn(["true"])) == 0
    per_spawn = (time.perf_counter() - started) / 20
    assert per_spawn < 0.05, f"{per_spawn * 1000:.1f} ms per spawn+exit"
