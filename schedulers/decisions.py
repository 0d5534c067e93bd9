"""What policies return: placements and migrations, each with its explanation.

`ssi why J` prints Placement.explain() for the job's last placement, then the
JobNote or MigrationDecision of the last rebalancing round that considered it.
Everything here is plain data (to_dict() gives JSON-able dicts for the wire).

Example of an explanation:

    job 42 -> node2 (least_loaded at 1700000000.0): lowest normalised load 0.25 of
    2 candidates; 3 nodes examined of 3
      node2   score 0.250  load 1.00 on 4 CPUs
      node3   score 0.500  load 2.00 on 4 CPUs
      node1   filtered     state draining
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    """One node's fate in a decision: filtered out (rule, reason) or scored."""

    node: str
    ok: bool
    score: float | None = None  # lower is better
    reason: str = ""  # what the score is made of, or why the node was filtered out
    rule: str = ""  # short class of a filter: "state", "mem", "label", ...


@dataclass(frozen=True, slots=True)
class Placement:
    job: str
    node: str | None  # None: no node fits now (the job waits)
    policy: str
    at: float
    reason: str
    verdicts: tuple[NodeVerdict, ...] = ()  # chosen first, then scored, then filtered
    filtered: Mapping[str, int] = field(default_factory=dict)  # rule -> nodes
    examined: int = 0
    total: int = 0

    @property
    def ok(self) -> bool:
        return self.node is not None

    def explain(self, limit: int = 20) -> str:
        where = self.node or "nowhere"
        head = f"job {self.job} -> {where} ({self.policy} at {self.at:.1f})"
        lines = [
            f"{head}: {self.reason}; {self.examined} nodes examined of {self.total}"
        ]
        if self.filtered:
            counts = ", ".join(
                f"{n} {rule}" for rule, n in sorted(self.filtered.items())
            )
            lines.append(f"  filtered out: {counts}")
        for v in self.verdicts[:limit]:
            if v.ok:
                mark = "*" if v.node == self.node else " "
                score = f"score {v.score:.3f}" if v.score is not None else "ok"
                lines.append(f" {mark}{v.node:<16} {score:<14} {v.reason}")
            else:
                lines.append(f"  {v.node:<16} {'filtered':<14} {v.reason}")
        if len(self.verdicts) > limit:
            lines.append(f"  ... {len(self.verdicts) - limit} more")
        if self.examined < self.total:
            lines.append(
                f"  {self.total - self.examined} nodes not examined: ranked after these"
                " in the policy's index"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["filtered"] = dict(self.filtered)
        return d


@dataclass(frozen=True, slots=True)
class MigrationDecision:
    """Move `job` from source to target; gain and cost in seconds of run time."""

    job: str
    source: str
    target: str
    policy: str
    at: float
    reason: str
    gain: float = 0.0
    cost: float = 0.0
    live: bool = True  # post-copy when the migrator can

    def explain(self) -> str:
        return (
            f"job {self.job}: migrate {self.source} -> {self.target} ({self.policy} at"
            f" {self.at:.1f}): {self.reason}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobNote:
    """Why a job considered in a rebalancing round stayed where it is."""

    job: str
    node: str
    note: str


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    policy: str
    at: float
    migrations: tuple[MigrationDecision, ...] = ()
    notes: tuple[JobNote, ...] = ()
    summary: str = ""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.migrations)

    def __len__(self) -> int:
        return len(self.migrations)

    def explain(self) -> str:
        lines = [f"{self.policy} at {self.at:.1f}: {self.summary}"]
        lines += ["  " + m.explain() for m in self.migrations]
        lines += [f"  job {n.job} stays on {n.node}: {n.note}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
