"""Failure detection, sans-IO: fed heartbeats and clock ticks, returns the nodes it
declares lost. The coordinator does the I/O and the store writes.

Example: timeout 6 s, node2 heard at t=10; tick(t=15) -> []; tick(t=16.5) -> ["node2"];
a heartbeat at t=17 -> heard() returns True (it was lost: the caller emits RETURNED).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Membership:
    timeout: float
    last_heard: dict[str, float] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)

    def watch(self, node: str, now: float) -> None:
        """Start (or restart, e.g. after a coordinator restart) the clock of a node."""
        self.last_heard[node] = now
        self.lost.discard(node)

    def forget(self, node: str) -> None:
        self.last_heard.pop(node, None)
        self.lost.discard(node)

    def heard(self, node: str, now: float) -> bool:
        """Records a sign of life; True when the node had been declared lost."""
        was_lost = node in self.lost
        self.watch(node, now)
        return was_lost

    def tick(self, now: float) -> list[str]:
        """Nodes whose silence just passed the timeout."""
        newly = sorted(
            n
            for n, t in self.last_heard.items()
            if n not in self.lost and now - t > self.timeout
        )
        self.lost.update(newly)
        return newly
