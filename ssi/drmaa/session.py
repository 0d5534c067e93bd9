"""DRMAA sessions over ssid: what each drmaa_* call does, in plain Python.

    init(contact) ─▶ Session(name) ── jobs: ids submitted in it or found by name
        run_job / run_bulk_jobs ─ JobSubmit / JobSubmitBatch(session=name)
        wait / synchronize ─ JobWait / JobWaitAny / JobList, in bounded chunks
        control ─ JobSuspend | JobResume (JobRestart if stopped) | JobHold |
                  JobRelease | JobKill (TERM, then KILL after KILL_GRACE)
        job_ps ─ JobList(ids=[id])

A session is a name that ssid records on each of its jobs (JobSubmit.session): the
contact string. `init(name)` reattaches to the jobs an earlier session of that name
submitted (the caller's own); `init(None)` starts a new one with a fresh name.
Reaping (wait, synchronize with dispose) is this process's: another process that
attaches to the session sees every ended job again.

Thread-safe: calls from several threads share a pool of ssid connections, each
blocking call holds its own. After fork() the child drops the parent's connections
and locks and keeps the session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ssi import __version__
from ssi.client import socket_path
from ssi.config import ConfigError
from ssi.drmaa import status
from ssi.drmaa.errors import DrmaaError, Errno, from_ssi_error
from ssi.drmaa.template import JobTemplate, SubmitContext
from ssi.proto import messages as m
from ssi.proto.codec import DEFAULT_MAX_SIZE
from ssi.proto.errors import Conflict, NotFound, SsiError, Timeout
from ssi.rpc.local import LocalClient

__all__ = [
    "SESSION_ANY",
    "SESSION_ALL",
    "WAIT_FOREVER",
    "NO_WAIT",
    "Session",
    "init",
    "exit_session",
    "current",
    "contact",
    "DRM_SYSTEM",
    "IMPLEMENTATION",
]

SESSION_ANY = "DRMAA_JOB_IDS_SESSION_ANY"
SESSION_ALL = "DRMAA_JOB_IDS_SESSION_ALL"
WAIT_FOREVER = -1
NO_WAIT = 0
SUSPEND, RESUME, HOLD, RELEASE, TERMINATE = range(5)

DRM_SYSTEM = f"ssi {__version__}"
IMPLEMENTATION = f"ssi libdrmaa {__version__} (DRMAA 1.0 C binding, Python via cffi)"

CALL_TIMEOUT = 30.0  # seconds for any request that does not wait for jobs
WAIT_CHUNK = 60.0  # a wait for given jobs asks ssid again this often
ANY_CHUNK = 5.0  # ...and for any job of the session (which may gain jobs meanwhile)
REPLY_MARGIN = 15.0  # how much longer than a wait we give ssid to answer it
KILL_GRACE = 5.0  # seconds between TERM and KILL for drmaa_control(TERMINATE)
BATCH_BYTES = 1 << 20  # a bulk submission is sent in batches of about this size
_CONTACT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise DrmaaError(Errno.INVALID_JOB, f"no job {text!r}") from None
    if value <= 0:
        raise DrmaaError(Errno.INVALID_JOB, f"no job {text!r}")
    return value


def _ended(job: Mapping[str, Any]) -> bool:
    return str(job.get("state")) in status.ENDED_STATES


class Session:
    def __init__(self, name: str, socket: str) -> None:
        self.name = name
        self.socket = socket
        self._lock = threading.Lock()
        self._jobs: dict[int, None] = {}  # not reaped yet, in submission order
        self._reaped: set[int] = set()
        self._pool: list[LocalClient] = []

    # --- plumbing ---------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self) -> Iterator[LocalClient]:
        with self._lock:
            client = self._pool.pop() if self._pool else None
        if client is None:
            client = LocalClient(self.socket, timeout=CALL_TIMEOUT)
            client.__enter__()  # keeps its connection between calls
        try:
            yield client
        finally:
            with self._lock:
                self._pool.append(client)

    def call(self, body: m.Request[Any], timeout: float = CALL_TIMEOUT) -> Any:
        """ssid's answer to body; SsiError as ssid or the connection gave it."""
        with self._client() as client:
            return client.call(body, timeout=timeout)

    def ask(
        self,
        body: m.Request[Any],
        timeout: float = CALL_TIMEOUT,
        *,
        not_found: Errno = Errno.INVALID_JOB,
    ) -> Any:
        """call(), with ssid's errors as DrmaaError."""
        try:
            return self.call(body, timeout)
        except SsiError as e:
            raise from_ssi_error(e, not_found=not_found) from None

    def after_fork(self) -> None:
        """In a forked child: the parent's connections and locks are not ours."""
        self._lock = threading.Lock()
        for client in self._pool:
            with contextlib.suppress(OSError):
                client.close()
        self._pool = []

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for client in pool:
            client.close()

    def _add(self, ids: Sequence[int]) -> None:
        with self._lock:
            for i in ids:
                self._jobs[i] = None

    def _reap(self, job_id: int) -> bool:
        """Marks a job reaped; False if another thread reaped it first."""
        with self._lock:
            if job_id in self._reaped:
                return False
            self._jobs.pop(job_id, None)
            self._reaped.add(job_id)
            return True

    def jobs(self) -> list[int]:
        """The session's jobs not reaped yet."""
        with self._lock:
            return list(self._jobs)

    def attach(self) -> None:
        """Adds the caller's jobs that carry this session's name."""
        found = self.ask(m.JobList(all=True, session=self.name, user=os.getuid()))
        self._add(sorted(int(j["id"]) for j in found))

    # --- submission -------------------------------------------------------------

    def context(self, environ: Mapping[str, str]) -> SubmitContext:
        """What a job takes from the submitting process now: its working directory
        and `environ` (the process's environment at the call)."""
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = environ.get("HOME", "/")
        return SubmitContext(
            session=self.name, cwd=os.getcwd(), home=home, environ=environ
        )

    def run_job(self, template: JobTemplate, environ: Mapping[str, str]) -> str:
        body = template.checked().submission(self.context(environ))
        job = self.ask(body, not_found=Errno.DENIED_BY_DRM)
        self._add([int(job["id"])])
        return str(job["id"])

    def run_bulk_jobs(
        self,
        template: JobTemplate,
        start: int,
        end: int,
        incr: int,
        environ: Mapping[str, str],
    ) -> list[str]:
        if start < 1 or end < start or incr < 1:
            raise DrmaaError(
                Errno.INVALID_ARGUMENT,
                f"bulk job indexes: need 1 <= start <= end and incr >= 1, got "
                f"start={start} end={end} incr={incr}",
            )
        ctx = self.context(environ)
        checked = template.checked()
        bodies = [checked.submission(ctx, i) for i in range(start, end + 1, incr)]
        ids: list[int] = []
        try:
            for batch in _batches(bodies):
                done = self.call(m.JobSubmitBatch(jobs=batch), CALL_TIMEOUT * 4)
                ids += [int(j["id"]) for j in done]
        except SsiError as e:
            self._cancel(ids)  # all or nothing, as one batch would have been
            raise from_ssi_error(e, not_found=Errno.DENIED_BY_DRM) from None
        self._add(ids)
        return [str(i) for i in ids]

    def _cancel(self, ids: Sequence[int]) -> None:
        for job_id in ids:
            with contextlib.suppress(SsiError):
                self.call(m.JobKill(job=job_id, signal=9))

    # --- waiting ----------------------------------------------------------------

    def _wait_call(self, body: m.Request[Any], chunk: float) -> Any | None:
        """A JobWait/JobWaitAny of `chunk` seconds: the ended job, or None when ssid
        answered that none ended within it."""
        started = time.monotonic()
        try:
            return self.call(body, chunk + REPLY_MARGIN)
        except Timeout as e:
            if time.monotonic() - started < chunk + REPLY_MARGIN - 1.0:
                return None  # ssid's answer: nothing ended yet
            raise from_ssi_error(e) from None
        except SsiError as e:
            raise from_ssi_error(e) from None

    def wait(self, job_id: str, timeout: int) -> tuple[str, int, list[str]]:
        """(job id, stat, rusage) of the job once it has ended, reaped."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        single = None if job_id == SESSION_ANY else _job_id(job_id)
        if single is not None and single in self._reaped:
            raise DrmaaError(
                Errno.INVALID_JOB, f"job {single} has already been reaped by a wait"
            )
        while True:
            limit = WAIT_CHUNK if single is not None else ANY_CHUNK
            chunk = (
                limit if deadline is None else min(limit, deadline - time.monotonic())
            )
            chunk = max(chunk, 0.0)
            if single is not None:
                job = self._wait_call(m.JobWait(job=single, timeout=chunk), chunk)
            else:
                pending = self.jobs()
                if not pending:
                    raise DrmaaError(
                        Errno.INVALID_JOB, "no job of this session is left to wait for"
                    )
                try:
                    job = self._wait_call(
                        m.JobWaitAny(jobs=pending, timeout=chunk), chunk
                    )
                except DrmaaError as e:
                    if e.code is not Errno.INVALID_JOB:
                        raise
                    self._forget_unknown(pending)
                    continue
            if job is not None:
                jid = int(job["id"])
                if self._reap(jid) or single is not None:
                    return str(jid), status.encode(job), status.rusage(job)
                continue  # another thread reaped it: wait for another one
            if deadline is not None and time.monotonic() >= deadline:
                what = (
                    f"job {single}" if single is not None else "no job of the session"
                )
                raise DrmaaError(
                    Errno.EXIT_TIMEOUT,
                    f"{what} ended within {timeout} s",
                )

    def _forget_unknown(self, ids: Sequence[int]) -> None:
        """Drops the session's jobs ssid no longer knows (forgotten history)."""
        known = {int(j["id"]) for j in self.ask(m.JobList(all=True, ids=list(ids)))}
        with self._lock:
            for i in ids:
                if i not in known:
                    self._jobs.pop(i, None)

    def synchronize(self, job_ids: Sequence[str], timeout: int, dispose: bool) -> None:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        targets: dict[int, None] = {}
        explicit: set[int] = set()
        for text in job_ids:
            if text in (SESSION_ALL, SESSION_ANY):
                targets.update(dict.fromkeys(self.jobs()))
            else:
                jid = _job_id(text)
                targets[jid] = None
                explicit.add(jid)
        pending = [j for j in targets if j not in self._reaped]
        while pending:
            found = {
                int(j["id"]): j for j in self.ask(m.JobList(all=True, ids=pending))
            }
            unknown = [j for j in pending if j not in found]
            if set(unknown) & explicit:
                missing = ", ".join(str(j) for j in sorted(set(unknown) & explicit))
                raise DrmaaError(Errno.INVALID_JOB, f"no job {missing}")
            pending = [j for j in pending if j in found and not _ended(found[j])]
            if not pending:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DrmaaError(
                    Errno.EXIT_TIMEOUT,
                    f"{len(pending)} job(s) still running after {timeout} s "
                    f"(first: {pending[0]})",
                )
            chunk = WAIT_CHUNK if left is None else min(WAIT_CHUNK, left)
            self._wait_call(m.JobWait(job=pending[0], timeout=chunk), chunk)
        if dispose:
            for jid in targets:
                self._reap(jid)

    # --- control and status ------------------------------------------------------

    def job_ps(self, job_id: str) -> int:
        jid = _job_id(job_id)
        found = self.ask(m.JobList(all=True, ids=[jid]))
        if not found:
            raise DrmaaError(Errno.INVALID_JOB, f"no job {jid}")
        return int(status.ps(found[0]))

    def control(self, job_id: str, action: int) -> None:
        if action not in (SUSPEND, RESUME, HOLD, RELEASE, TERMINATE):
            raise DrmaaError(Errno.INVALID_ARGUMENT, f"no control action {action}")
        if job_id == SESSION_ALL:
            for jid in self.jobs():
                try:
                    self._control(jid, action)
                except DrmaaError as e:
                    # the whole session: each job the action applies to
                    if (
                        e.code not in _INCONSISTENT.values()
                        and e.code is not Errno.INVALID_JOB
                    ):
                        raise
            return
        self._control(_job_id(job_id), action)

    def _control(self, jid: int, action: int) -> None:
        try:
            if action == SUSPEND:
                self.call(m.JobSuspend(job=jid))
            elif action == RESUME:
                self._resume(jid)
            elif action == HOLD:
                self.call(m.JobHold(job=jid))
            elif action == RELEASE:
                self.call(m.JobRelease(job=jid))
            else:
                self._terminate(jid)
        except Conflict as e:
            raise DrmaaError(_INCONSISTENT[action], f"job {jid}: {e}") from None
        except SsiError as e:
            raise from_ssi_error(e) from None

    def _state(self, jid: int) -> str:
        found = self.call(m.JobList(all=True, ids=[jid]))
        if not found:
            raise NotFound(f"no job {jid}")
        return str(found[0]["state"])

    def _resume(self, jid: int) -> None:
        if self._state(jid) == "stopped":  # checkpointed and stopped: bring it back
            self.call(m.JobRestart(job=jid), 300.0)
        else:
            self.call(m.JobResume(job=jid))

    def _terminate(self, jid: int) -> None:
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            try:
                job = self.call(m.JobKill(job=jid, signal=15))
                break
            except Conflict:
                state = self._state(jid)
                if state in status.ENDED_STATES:
                    return  # over already: nothing to terminate
                # on its way to a node: ssid cannot signal it yet
                if state not in _IN_TRANSIT or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if not _ended(job):
            threading.Thread(
                target=self._kill_later,
                args=(jid,),
                name=f"drmaa-kill-{jid}",
                daemon=True,
            ).start()

    def _kill_later(self, jid: int) -> None:
        """Finishes a terminated job off (as long as this process lives): ssid's
        TERM reaches the main process only while it lives, every process after, so
        once the main is gone (its children may go on) the rest get TERM too; KILL
        after KILL_GRACE seconds if anything is left."""
        deadline = time.monotonic() + KILL_GRACE
        rest_termed = False
        with contextlib.suppress(SsiError):
            while time.monotonic() < deadline:
                found = self.call(m.JobList(all=True, ids=[jid]))
                if not found or _ended(found[0]):
                    return
                stats = found[0].get("stats") or {}
                if stats and stats.get("main_pid") is None and not rest_termed:
                    self.call(m.JobKill(job=jid, signal=15))
                    rest_termed = True
                time.sleep(0.05)
            self.call(m.JobKill(job=jid, signal=9))


_IN_TRANSIT = ("starting", "restarting")
_INCONSISTENT = {
    SUSPEND: Errno.SUSPEND_INCONSISTENT_STATE,
    RESUME: Errno.RESUME_INCONSISTENT_STATE,
    HOLD: Errno.HOLD_INCONSISTENT_STATE,
    RELEASE: Errno.RELEASE_INCONSISTENT_STATE,
    TERMINATE: Errno.INVALID_JOB,
}


def _batches(bodies: Sequence[m.JobSubmit]) -> Iterator[list[m.JobSubmit]]:
    """Bulk jobs in batches whose messages (and replies) stay well under the cap."""
    import msgspec

    enc = msgspec.msgpack.Encoder()
    batch: list[m.JobSubmit] = []
    size = 0
    limit = min(BATCH_BYTES, DEFAULT_MAX_SIZE // 4)
    for body in bodies:
        n = len(enc.encode(body))
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += n
    if batch:
        yield batch


# --- the process's one session ------------------------------------------------------

_lock = threading.Lock()
_session: Session | None = None


def init(contact: str | None, environ: Mapping[str, str]) -> Session:
    """Starts the process's DRMAA session: a new one (contact None or ""), or the one
    named `contact`, whose earlier jobs it takes up."""
    global _session
    name = contact or ""
    if name and not _CONTACT.match(name):
        raise DrmaaError(
            Errno.INVALID_CONTACT_STRING,
            f"{contact!r} is not a session name (letters, digits and ._@:+-, "
            "at most 128)",
        )
    with _lock:
        if _session is not None:
            raise DrmaaError(
                Errno.ALREADY_ACTIVE_SESSION,
                f"session {_session.name} is active: drmaa_exit() it first",
            )
        try:
            socket = socket_path(environ=environ)
        except ConfigError as e:
            raise DrmaaError(Errno.DRMS_INIT_FAILED, str(e)) from None
        session = Session(name or f"drmaa-{os.getuid()}-{secrets.token_hex(6)}", socket)
        try:
            session.call(m.Ping(), 10.0)
            if name:
                session.attach()
        except SsiError as e:
            session.close()
            raise DrmaaError(Errno.DRMS_INIT_FAILED, f"ssid at {socket}: {e}") from None
        except DrmaaError as e:
            session.close()
            raise DrmaaError(Errno.DRMS_INIT_FAILED, e.message) from None
        _session = session
        return session


def exit_session() -> None:
    """Ends the session; its jobs go on."""
    global _session
    with _lock:
        if _session is None:
            raise DrmaaError(Errno.NO_ACTIVE_SESSION, "no DRMAA session is active")
        session, _session = _session, None
    session.close()


def current() -> Session:
    session = _session
    if session is None:
        raise DrmaaError(
            Errno.NO_ACTIVE_SESSION, "no DRMAA session is active: call drmaa_init()"
        )
    return session


def contact() -> str:
    """The active session's contact string; "" (the default: a new session) before
    drmaa_init()."""
    session = _session
    return session.name if session is not None else ""


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    if _session is not None:
        _session.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
