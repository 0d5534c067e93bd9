"""The coordinator's authoritative state behind one interface.

The embedded default is SQLite in WAL mode with synchronous=FULL: every write the
coordinator acknowledged is on disk, so a `kill -9` of the coordinator loses nothing.
Writes carry a per-record revision (etcd's mod_revision) and may demand the revision
they expect, so an etcd-backed store can fence a deposed coordinator the same way.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ssi.proto.errors import Conflict, NotFound


class NodeState(enum.StrEnum):
    ONLINE = "online"
    DRAINING = "draining"  # no new placements; still a member
    LOST = "lost"  # missed its heartbeats; may come back
    EVICTING = "evicting"  # being emptied before removal


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    public_key: str  # z85 CURVE public key: how the cluster knows this node
    address: str
    port: int
    state: NodeState = NodeState.ONLINE
    reason: str = ""
    joined_at: float = field(default_factory=time.time)
    changed_at: float = field(default_factory=time.time)
    resources: dict[str, Any] = field(default_factory=dict)
    rev: int = 0  # store revision of the last write to this record

    def with_state(self, state: NodeState, reason: str = "") -> NodeRecord:
        return replace(self, state=state, reason=reason, changed_at=time.time())


class JobState(enum.StrEnum):
    HELD = "held"  # queued, not to be placed until released
    QUEUED = "queued"
    STARTING = "starting"  # sent to a node
    RUNNING = "running"
    SUSPENDED = "suspended"  # frozen in its cgroup
    STOPPED = "stopped"  # checkpointed and stopped: restartable
    RESTARTING = "restarting"
    MIGRATING = "migrating"  # frozen on its node while it moves to another
    DONE = "done"  # exited 0
    FAILED = "failed"  # exited non-zero, never ran, or lost without a checkpoint
    KILLED = "killed"  # ended by a signal

    @property
    def ended(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.KILLED)

    @property
    def live(self) -> bool:
        """Has (or is getting) a process tree on some node."""
        return self in (
            JobState.STARTING,
            JobState.RUNNING,
            JobState.SUSPENDED,
            JobState.RESTARTING,
            JobState.MIGRATING,
        )


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    name: str
    uid: int
    gid: int
    user: str
    spec: dict[str, Any]  # what ssi.jobs.JobSpec needs: argv, cwd, env, stdio, groups
    require: str = ""
    node: str = ""  # where it runs or last ran
    state: JobState = JobState.QUEUED
    reason: str = ""  # the last decision or failure about it, for `ssi why`
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    exit: dict[str, Any] | None = None  # the job init's status: exited/signaled, rusage
    ckpt_every: float = 0.0
    submit_node: str = ""
    session: str = ""  # DRMAA session (contact string), "" for none
    rev: int = 0

    def but(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    id: str
    job: int
    node: str  # where it was taken
    holders: list[str]  # nodes with a verified copy
    taken_at: float
    size: int
    stopped: bool  # the job was left stopped after it
    info: dict[str, Any] = field(default_factory=dict)  # dump figures, CRIU version


class StateStore(Protocol):
    """What the coordinator needs from its store. Not thread-safe."""

    def revision(self) -> int: ...
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def nodes(self) -> list[NodeRecord]: ...
    def node(self, name: str) -> NodeRecord | None: ...
    def node_by_key(self, public_key: str) -> NodeRecord | None: ...
    def put_node(
        self, rec: NodeRecord, *, expect_rev: int | None = None
    ) -> NodeRecord: ...
    def delete_node(self, name: str, *, expect_rev: int | None = None) -> None: ...
    def add_token(self, digest: str, expires_at: float) -> None: ...
    def use_token(self, digest: str, now: float) -> str: ...
    def next_job_ids(self, count: int = 1) -> range: ...
    def put_jobs(self, jobs: list[JobRecord]) -> list[JobRecord]: ...
    def put_job(
        self, job: JobRecord, *, expect_rev: int | None = None
    ) -> JobRecord: ...
    def job(self, job_id: int) -> JobRecord | None: ...
    def jobs(self, *, ended: bool = False) -> list[JobRecord]: ...
    def add_job_event(self, job_id: int, kind: str, data: dict[str, Any]) -> None: ...
    def job_events(self, job_id: int) -> list[dict[str, Any]]: ...
    def put_checkpoint(self, ckpt: CheckpointRecord) -> None: ...
    def checkpoints(self, job_id: int) -> list[CheckpointRecord]: ...
    def delete_checkpoint(self, ckpt_id: str) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, public_key TEXT NOT NULL UNIQUE, address TEXT NOT NULL,
    port INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    joined_at REAL NOT NULL, changed_at REAL NOT NULL, resources TEXT NOT NULL,
    rev INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY, expires_at REAL NOT NULL, used_at REAL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, state TEXT NOT NULL, ended INTEGER NOT NULL,
    body TEXT NOT NULL, rev INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_live ON jobs (ended);
CREATE TABLE IF NOT EXISTS job_events (
    job INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job INTEGER NOT NULL, taken_at REAL NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job);
"""
_NODE_COLS = (
    "name, public_key, address, port, state, reason, joined_at, changed_at, resources, "
    "rev"
)

_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in _NODE_COLS.split(", ")[1:])


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def _bump(self) -> int:
        rev = self.revision() + 1
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (str(rev),)
        )
        return rev

    def revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        return int(row[0]) if row else 0

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            self._bump()

    @staticmethod
    def _row(row: tuple[Any, ...]) -> NodeRecord:
        name, key, addr, port, state, reason, joined, changed, res, rev = row
        return NodeRecord(
            name,
            key,
            addr,
            port,
            NodeState(state),
            reason,
            joined,
            changed,
            json.loads(res),
            rev,
        )

    def nodes(self) -> list[NodeRecord]:
        q = f"SELECT {_NODE_COLS} FROM nodes ORDER BY name"
        return [self._row(r) for r in self._db.execute(q)]

    def node(self, name: str) -> NodeRecord | None:
        q = f"SELECT {_NODE_COLS} FROM nodes WHERE name=?"
        row = self._db.execute(q, (name,)).fetchone()
        return self._row(row) if row else None

    def node_by_key(self, public_key: str) -> NodeRecord | None:
        q = f"SELECT {_NODE_COLS} FROM nodes WHERE public_key=?"
        row = self._db.execute(q, (public_key,)).fetchone()
        return self._row(row) if row else None

    def _check_rev(self, name: str, expect_rev: int | None) -> None:
        if expect_rev is None:
            return
        row = self._db.execute("SELECT rev FROM nodes WHERE name=?", (name,)).fetchone()
        current = row[0] if row else 0
        if current != expect_rev:
            raise Conflict(
                f"node {name} changed meanwhile (rev {current}, not {expect_rev})"
            )

    def put_node(self, rec: NodeRecord, *, expect_rev: int | None = None) -> NodeRecord:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._check_rev(rec.name, expect_rev)
            rec = replace(rec, rev=self._bump())
            try:
                # An upsert on the name: REPLACE would silently delete another node
                # that holds the same key.
                self._db.execute(
                    f"INSERT INTO nodes ({_NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    f"ON CONFLICT(name) DO UPDATE SET {_UPDATE}",
                    (
                        rec.name,
                        rec.public_key,
                        rec.address,
                        rec.port,
                        rec.state.value,
                        rec.reason,
                        rec.joined_at,
                        rec.changed_at,
                        json.dumps(rec.resources),
                        rec.rev,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"key of node {rec.name} already belongs to another node"
                ) from None
        return rec

    def delete_node(self, name: str, *, expect_rev: int | None = None) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._check_rev(name, expect_rev)
            if (
                self._db.execute("DELETE FROM nodes WHERE name=?", (name,)).rowcount
                == 0
            ):
                raise NotFound(f"no node named {name}")
            self._bump()

    def add_token(self, digest: str, expires_at: float) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM tokens WHERE expires_at < ?", (time.time() - 86400,)
            )
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, NULL)", (digest, expires_at)
            )

    def use_token(self, digest: str, now: float) -> str:
        """Marks a token used: "ok", or why not: "unknown", "used", "expired"."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT expires_at, used_at FROM tokens WHERE digest=?", (digest,)
            ).fetchone()
            if row is None:
                return "unknown"
            if row[1] is not None:
                return "used"
            if row[0] < now:
                return "expired"
            self._db.execute(
                "UPDATE tokens SET used_at=? WHERE digest=?", (now, digest)
            )
            return "ok"

    # --- jobs ---

    def next_job_ids(self, count: int = 1) -> range:
        """Reserves `count` new job ids."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            last = int(self.meta("last_job_id") or 0)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_job_id', ?)",
                (str(last + count),),
            )
            return range(last + 1, last + count + 1)

    def put_jobs(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """New jobs in one transaction (one fsync for a whole batch)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            out = [replace(j, rev=self._bump()) for j in jobs]
            rows = [
                (j.id, j.state.value, int(j.state.ended), _job_json(j), j.rev)
                for j in out
            ]
            self._db.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)", rows)
        return out

    def put_job(self, job: JobRecord, *, expect_rev: int | None = None) -> JobRecord:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if expect_rev is not None:
                row = self._db.execute(
                    "SELECT rev FROM jobs WHERE id=?", (job.id,)
                ).fetchone()
                if (row[0] if row else 0) != expect_rev:
                    raise Conflict(f"job {job.id} changed meanwhile")
            job = replace(job, rev=self._bump())
            self._db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.state.value,
                    int(job.state.ended),
                    _job_json(job),
                    job.rev,
                ),
            )
        return job

    def job(self, job_id: int) -> JobRecord | None:
        row = self._db.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job_from_json(row[0]) if row else None

    def jobs(self, *, ended: bool = False) -> list[JobRecord]:
        q = (
            "SELECT body FROM jobs"
            + ("" if ended else " WHERE ended=0")
            + " ORDER BY id"
        )
        return [_job_from_json(r[0]) for r in self._db.execute(q)]

    def add_job_event(self, job_id: int, kind: str, data: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO job_events VALUES (?, ?, ?, ?)",
                (job_id, time.time(), kind, json.dumps(data)),
            )

    def job_events(self, job_id: int) -> list[dict[str, Any]]:
        q = "SELECT at, kind, data FROM job_events WHERE job=? ORDER BY rowid"
        return [
            {"at": at, "kind": kind, **json.loads(data)}
            for at, kind, data in self._db.execute(q, (job_id,))
        ]

    def put_checkpoint(self, ckpt: CheckpointRecord) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                (ckpt.id, ckpt.job, ckpt.taken_at, json.dumps(asdict(ckpt))),
            )

    def checkpoints(self, job_id: int) -> list[CheckpointRecord]:
        q = "SELECT body FROM checkpoints WHERE job=? ORDER BY taken_at"
        return [
            CheckpointRecord(**json.loads(r[0])) for r in self._db.execute(q, (job_id,))
        ]

    def delete_checkpoint(self, ckpt_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM checkpoints WHERE id=?", (ckpt_id,))

    def close(self) -> None:
        self._db.close()


def _job_json(job: JobRecord) -> str:
    return json.dumps(asdict(job))


def _job_from_json(text: str) -> JobRecord:
    d = json.loads(text)
    d["state"] = JobState(d["state"])
    return JobRecord(**d)
