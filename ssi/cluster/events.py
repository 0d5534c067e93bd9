"""Node events, in one place: every service that cares about membership subscribes here,
as with Kerrighed's reconfiguration framework (added, draining, evicted, lost...)."""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class NodeEventKind(enum.StrEnum):
    ADDED = "added"
    DRAINING = "draining"
    RESUMED = "resumed"
    EVICTED = "evicted"
    LOST = "lost"
    RETURNED = "returned"  # a lost node heard from again


@dataclass(frozen=True, slots=True)
class NodeEvent:
    kind: NodeEventKind
    node: str
    cause: str = ""  # what led to it: an admin's request id, "heartbeat timeout", ...


Callback = Callable[[NodeEvent], Awaitable[None] | None]


class NodeEvents:
    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Callback]] = []

    def subscribe(self, name: str, callback: Callback) -> None:
        self._subscribers.append((name, callback))

    async def emit(self, event: NodeEvent) -> None:
        log.info(
            "node event %s %s (cause: %s)", event.kind, event.node, event.cause or "-"
        )
        for name, callback in self._subscribers:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one broken service must not stop the others hearing it
                log.exception("node event subscriber %s failed on %s", name, event)
