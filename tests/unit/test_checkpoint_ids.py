"""A job's checkpoint ids ("<job>-<seq>-<unix time>") never repeat, even once
retention has deleted the older ones."""

from __future__ import annotations

from ssi.cluster.checkpoints import _next_seq
from ssi.cluster.store import CheckpointRecord


def record(ckpt_id: str) -> CheckpointRecord:
    return CheckpointRecord(ckpt_id, 7, "node1", ["node1"], 0.0, 1, False)


def test_first_checkpoint_is_one() -> None:
    assert _next_seq([]) == 1


def test_one_past_the_newest_after_retention() -> None:
    # ckpt_keep = 3: 1 and 2 deleted; a count would give 4 again, in the same second
    kept = [record(f"7-{seq}-1795400000") for seq in (3, 4, 5)]
    assert _next_seq(kept) == 6


def test_ids_of_another_shape_count_as_taken() -> None:
    assert _next_seq([record("imported"), record("7-2-1795400000")]) == 3
    assert _next_seq([record("imported")]) == 2
