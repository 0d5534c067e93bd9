"""NodeIndex: nodes ordered by a policy's key, kept current from the change log.

A lazy heap: an update pushes a fresh entry and bumps the node's stamp, stale entries
are skipped when they surface, and the heap is rebuilt when stale ones outnumber live
ones. A placement walks the heap from the best key and stops at the first nodes that
pass the job's filters, so a decision costs O(k log n) for k nodes examined instead
of a scan of every node.

Example: key = normalised load; nodes a=0.5, b=0.1, c=0.9 -> ordered() yields
(0.1, b), (0.5, a), (0.9, c); after load("b") rises to 1.0 and the cluster logs b,
the next ordered() yields a, c, b.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Generator

from schedulers.cluster import ClusterView

KeyFn = Callable[[ClusterView, str], float | None]  # None: leave the node out


class NodeIndex:
    def __init__(self, key: KeyFn) -> None:
        self.key = key
        self._heap: list[tuple[float, int, str, int]] = []
        self._live: dict[str, tuple[float, int]] = {}  # name -> (key, stamp)
        self._counter = itertools.count()
        self._seq = -1
        self._cluster_id = 0

    def invalidate(self) -> None:
        """Forget everything: the next use rebuilds (e.g. after a parameter change)."""
        self._seq = -1

    def __len__(self) -> int:
        return len(self._live)

    def sync(self, cluster: ClusterView) -> None:
        changed = None
        if self._seq >= 0 and self._cluster_id == id(cluster):
            changed = cluster.changes_since(self._seq)
        if changed is None:
            self._rebuild(cluster)
        else:
            for name in dict.fromkeys(changed):
                self._update(cluster, name)
            if len(self._heap) > 2 * len(self._live) + 64:
                self._compact()
        self._seq = cluster.seq
        self._cluster_id = id(cluster)

    def _rebuild(self, cluster: ClusterView) -> None:
        self._live.clear()
        self._heap = []
        for name in cluster.nodes:
            k = self.key(cluster, name)
            if k is not None:
                stamp = next(self._counter)
                self._live[name] = (k, stamp)
                self._heap.append((k, stamp, name, stamp))
        heapq.heapify(self._heap)

    def _update(self, cluster: ClusterView, name: str) -> None:
        k = self.key(cluster, name) if name in cluster.nodes else None
        if k is None:
            self._live.pop(name, None)
            return
        old = self._live.get(name)
        if old is not None and old[0] == k:
            return
        stamp = next(self._counter)
        self._live[name] = (k, stamp)
        heapq.heappush(self._heap, (k, stamp, name, stamp))

    def _compact(self) -> None:
        self._heap = [(k, s, n, s) for n, (k, s) in self._live.items()]
        heapq.heapify(self._heap)

    def ordered(self, cluster: ClusterView) -> Generator[tuple[float, str], None, None]:
        """Live (key, node) pairs from the best (lowest) key. Close the iterator (or
        exhaust it) before the next call: closing puts the popped entries back."""
        self.sync(cluster)
        heap = self._heap
        popped: list[tuple[float, int, str, int]] = []
        try:
            while heap:
                entry = heapq.heappop(heap)
                live = self._live.get(entry[2])
                if live is None or live[1] != entry[3]:
                    continue
                popped.append(entry)
                yield entry[0], entry[2]
        finally:
            for entry in popped:
                heapq.heappush(heap, entry)

    def best(self, cluster: ClusterView) -> tuple[float, str] | None:
        it = self.ordered(cluster)
        try:
            return next(it, None)
        finally:
            it.close()
