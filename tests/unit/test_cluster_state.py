"""The coordinator's state without I/O beyond a temp SQLite file: store, tokens,
failure detection."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from ssi.cluster import tokens
from ssi.cluster.membership import Membership
from ssi.cluster.store import NodeRecord, NodeState, SqliteStore
from ssi.proto.errors import BadRequest, Conflict, NotFound


def rec(name: str, key: str = "") -> NodeRecord:
    return NodeRecord(name, key or f"key-of-{name}", "10.0.0.1", 7070)


def test_store_round_trip_and_revisions(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    a = s.put_node(rec("node1"))
    b = s.put_node(rec("node2"))
    assert (a.rev, b.rev) == (1, 2) and s.revision() == 2
    assert [n.name for n in s.nodes()] == ["node1", "node2"]
    assert s.node_by_key("key-of-node2") == b
    drained = s.put_node(b.with_state(NodeState.DRAINING, "disk"), expect_rev=b.rev)
    assert s.node("node2") == drained and drained.reason == "disk"
    with pytest.raises(Conflict):  # a writer that read an older revision is fenced off
        s.put_node(b.with_state(NodeState.ONLINE), expect_rev=b.rev)
    with pytest.raises(Conflict):  # one key, one node
        s.put_node(rec("node3", key="key-of-node1"))
    s.delete_node("node2")
    with pytest.raises(NotFound):
        s.delete_node("node2")


def _write_then_die(path: str) -> None:
    s = SqliteStore(path)
    s.put_node(rec("survivor"))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint of the WAL


def test_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    p = multiprocessing.get_context("fork").Process(
        target=_write_then_die, args=(path,)
    )
    p.start()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert SqliteStore(path).node("survivor") is not None


def test_tokens_single_use_and_expiry(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    t = tokens.new_token("c1", "10.0.0.1", 7071, "K" * 40)
    assert tokens.decode(t.encode()) == t
    s.add_token(t.digest, time.time() + 60)
    assert s.use_token(t.digest, time.time()) == "ok"
    assert s.use_token(t.digest, time.time()) == "used"
    old = tokens.new_token("c1", "10.0.0.1", 7071, "K" * 40)
    s.add_token(old.digest, time.time() - 1)
    assert s.use_token(old.digest, time.time()) == "expired"
    assert s.use_token(tokens.digest("never issued"), time.time()) == "unknown"
    # only the hash is stored
    assert t.secret.encode() not in (tmp_path / "c.db").read_bytes()


@pytest.mark.parametrize("text", ["", "hello", "ssi1.", "ssi1.!!!!", "ssi1.aGVsbG8"])
def test_bad_tokens_are_refused_clearly(text: str) -> None:
    with pytest.raises(BadRequest, match="token"):
        tokens.decode(text)


def test_membership_detects_silence_and_return() -> None:
    ms = Membership(timeout=6.0)
    ms.watch("node1", 0.0)
    ms.watch("node2", 0.0)
    assert ms.tick(5.0) == []
    assert ms.heard("node1", 5.0) is False
    assert ms.tick(6.5) == ["node2"]
    assert ms.tick(7.0) == []  # declared once
    assert ms.heard("node2", 8.0) is True
    assert ms.tick(11.5) == ["node1"]
    ms.forget("node1")
    assert ms.tick(100.0) == ["node2"]
