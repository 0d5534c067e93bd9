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
from dataclasses import dataclass, field, replace
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

    def close(self) -> None:
        self._db.close()
