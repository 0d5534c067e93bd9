"""Shared memory segments: the home's copy (SegmentObject) and a node- or
process-local copy (Mirror). Pure: no mapping, no sockets.

Consistency model
-----------------
* Home-serialised explicit access. `read(offset, length)` and `write(offset, data)`
  (and a mirror's `push`) are executed by the segment's home one at a time, each
  write atomic as a whole: for explicit reads and writes the segment is
  sequentially consistent (linearizable): a read returns the bytes of the last write
  acknowledged before it started, on any node.
* Versions. The segment has a version, bumped by every write; each page records
  the version of the last write that touched it (0: never written, all zeros). A
  node-local cache is valid for a page as long as its version is the page's
  version: `pull(since, known)` returns just the pages written after `since` that
  the caller does not already hold.
* Attached copies (Mirror; the interposer's shmat does the same in C) are
  explicit-sync, multiple-writer, with twins and diffs (Munin/TreadMarks style):
  - attach fills a private copy from the home and keeps a twin (the copy as of the
    last sync);
  - sync = push, then pull. Push sends only the bytes that differ from the twin
    (byte runs), so writers of disjoint bytes of one page merge correctly; pull
    takes the pages others wrote since, byte by byte keeping the local bytes
    changed since the last sync (they go out with the next push);
  - detach pushes first.
  What it gives: everything a process wrote before its sync is visible to any
  process that syncs after that sync returned (release/acquire at sync points).
  The interposer syncs around every semop/semtimedop/msgsnd/msgrcv by default, so
  a program that guards its segment with System V semaphores or messages sees a
  coherent segment. What it does not give: plain loads and stores are NOT coherent
  between syncs; a process spinning on a flag in the segment never sees it change;
  two writers of the same byte between syncs: the last push wins; there are no
  atomic read-modify-write instructions across processes. Nothing is silently
  shared: a copy changes only at a sync.
"""

from __future__ import annotations

import errno

import msgspec

from ssi.ipc.constants import SHM_DEST, Kind
from ssi.ipc.model import Perm, ipc_error
from ssi.ipc.ops import (
    PermInfo,
    PermSet,
    ShmAttach,
    ShmidDs,
    ShmPage,
    ShmPages,
    ShmWritten,
    Waiter,
)

__all__ = ["SegmentObject", "SegmentState", "Mirror", "PageRecord"]


class PageRecord(msgspec.Struct, array_like=True):
    version: int
    data: bytes


class SegmentState(msgspec.Struct, kw_only=True, tag="shm"):
    """A segment's state in a snapshot. With `since` set it is a delta: only the
    pages written after that version (replication of a big segment)."""

    id: int
    perm: Perm
    segsz: int
    page_size: int
    atime: int
    dtime: int
    ctime: int
    cpid: int
    lpid: int
    version: int
    attaches: dict[str, int]
    pages: dict[int, PageRecord]
    since: int | None = None


class SegmentObject:
    kind = Kind.SHM

    def __init__(
        self, id: int, perm: Perm, segsz: int, page_size: int, pid: int, now: int
    ) -> None:
        self.id = id
        self.perm = perm
        self.segsz = segsz
        self.page_size = page_size
        self.atime = 0
        self.dtime = 0
        self.ctime = now
        self.cpid = pid
        self.lpid = 0
        self.version = 0
        self.attaches: dict[str, int] = {}
        self._pages: dict[int, bytearray] = {}
        self._versions: dict[int, int] = {}

    @property
    def npages(self) -> int:
        return -(-self.segsz // self.page_size)

    @property
    def nattch(self) -> int:
        return sum(self.attaches.values())

    @property
    def removed(self) -> bool:
        return bool(self.perm.mode & SHM_DEST)

    def _page_len(self, index: int) -> int:
        return min(self.page_size, self.segsz - index * self.page_size)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.segsz:
            raise ipc_error(
                errno.EINVAL,
                f"range {offset}+{length} outside segment {self.id} of {self.segsz}",
            )

    # ---- explicit access -------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray(length)
        pos = offset
        while pos < offset + length:
            index, start = divmod(pos, self.page_size)
            n = min(self.page_size - start, offset + length - pos)
            page = self._pages.get(index)
            if page is not None:
                out[pos - offset : pos - offset + n] = page[start : start + n]
            pos += n
        return bytes(out)

    def write(self, runs: tuple[tuple[int, bytes], ...]) -> ShmWritten:
        """All runs as one write: one new version for every page they touch."""
        for offset, data in runs:
            self._check_range(offset, len(data))
        if not any(data for _, data in runs):
            return ShmWritten(version=self.version, pages=())
        self.version += 1
        before: dict[int, int] = {}
        for offset, data in runs:
            pos = offset
            while pos < offset + len(data):
                index, start = divmod(pos, self.page_size)
                n = min(self.page_size - start, offset + len(data) - pos)
                page = self._pages.get(index)
                if page is None:
                    page = self._pages[index] = bytearray(self._page_len(index))
                page[start : start + n] = data[pos - offset : pos - offset + n]
                before.setdefault(index, self._versions.get(index, 0))
                self._versions[index] = self.version
                pos += n
        return ShmWritten(
            version=self.version,
            pages=tuple((i, old, self.version) for i, old in sorted(before.items())),
        )

    def pull(
        self, since: int, known: dict[int, int], start: int, max_pages: int
    ) -> ShmPages:
        if start < 0 or max_pages < 1:
            raise ipc_error(errno.EINVAL, "bad pull window")
        wanted = sorted(
            i
            for i, v in self._versions.items()
            if v > since and i >= start and known.get(i) != v
        )
        chosen = wanted[:max_pages]
        pages = tuple(
            ShmPage(i, self._versions[i], bytes(self._pages[i])) for i in chosen
        )
        more = len(wanted) > max_pages
        return ShmPages(
            version=self.version, pages=pages, next=wanted[max_pages] if more else None
        )

    def waiters(self) -> list[Waiter]:
        """Segments never park anyone."""
        return []

    def drop_waiter(self, waiter_id: str) -> Waiter | None:
        return None

    def attach_info(self) -> ShmAttach:
        return ShmAttach(
            segsz=self.segsz, page_size=self.page_size, version=self.version
        )

    # ---- bookkeeping -----------------------------------------------------------

    def set(self, change: PermSet, now: int) -> None:
        if change.uid is not None:
            self.perm.uid = change.uid
        if change.gid is not None:
            self.perm.gid = change.gid
        if change.mode is not None:
            self.perm.mode = (self.perm.mode & ~0o777) | (change.mode & 0o777)
        self.ctime = now

    def stat(self) -> ShmidDs:
        return ShmidDs(
            perm=PermInfo(**msgspec.structs.asdict(self.perm)),
            segsz=self.segsz,
            atime=self.atime,
            dtime=self.dtime,
            ctime=self.ctime,
            cpid=self.cpid,
            lpid=self.lpid,
            nattch=self.nattch,
        )

    # ---- snapshots -------------------------------------------------------------

    def state(self, since: int | None = None) -> SegmentState:
        floor = -1 if since is None else since
        return SegmentState(
            id=self.id,
            perm=msgspec.structs.replace(self.perm),
            segsz=self.segsz,
            page_size=self.page_size,
            atime=self.atime,
            dtime=self.dtime,
            ctime=self.ctime,
            cpid=self.cpid,
            lpid=self.lpid,
            version=self.version,
            attaches=dict(self.attaches),
            pages={
                i: PageRecord(self._versions[i], bytes(p))
                for i, p in self._pages.items()
                if self._versions[i] > floor
            },
            since=since,
        )

    @classmethod
    def from_state(cls, s: SegmentState) -> SegmentObject:
        if s.since is not None:
            raise ValueError("a delta snapshot needs the segment it updates")
        obj = cls(s.id, msgspec.structs.replace(s.perm), s.segsz, s.page_size, 0, 0)
        obj.merge(s)
        return obj

    def merge(self, s: SegmentState) -> None:
        """Take a (full or delta) snapshot's metadata and pages."""
        if s.segsz != self.segsz or s.page_size != self.page_size:
            raise ValueError("snapshot of a segment of another geometry")
        self.perm = msgspec.structs.replace(s.perm)
        self.atime, self.dtime, self.ctime = s.atime, s.dtime, s.ctime
        self.cpid, self.lpid = s.cpid, s.lpid
        self.version = s.version
        self.attaches = dict(s.attaches)
        if s.since is None:
            self._pages.clear()
            self._versions.clear()
        for i, rec in s.pages.items():
            if not 0 <= i < self.npages or len(rec.data) != self._page_len(i):
                raise ValueError(f"snapshot page {i} does not fit the segment")
            self._pages[i] = bytearray(rec.data)
            self._versions[i] = rec.version


class Mirror:
    """A private copy of a segment kept coherent at explicit syncs (see the
    consistency model above). Sans-IO: the owner sends `push_runs()` as a ShmPush
    and feeds the answer to `pushed()`, sends `pull_args()` as ShmPull and feeds
    each answer to `pulled()` until it says the pull is complete.

    `buf` is the memory the program reads and writes."""

    GAP = 32  # runs closer than this are sent as one (fewer, larger runs)

    def __init__(self, segsz: int, page_size: int) -> None:
        self.segsz = segsz
        self.page_size = page_size
        self.buf = bytearray(segsz)
        self._twin = bytearray(segsz)
        self._versions: dict[int, int] = {}
        self.since = 0
        self._pull_version: int | None = None

    def dirty(self) -> bool:
        return self.buf != self._twin

    def push_runs(self, max_bytes: int = 1 << 20) -> list[tuple[int, bytes]]:
        """Byte runs that differ from the twin, from the start, at most about
        `max_bytes` of data (push, then ask again until it is empty)."""
        runs: list[tuple[int, bytes]] = []
        total = 0
        buf, twin = memoryview(self.buf), memoryview(self._twin)
        for page_start in range(0, self.segsz, self.page_size):
            page_end = min(page_start + self.page_size, self.segsz)
            if buf[page_start:page_end] == twin[page_start:page_end]:
                continue
            i = page_start
            while i < page_end:
                if buf[i] == twin[i]:
                    i += 1
                    continue
                j = i
                last = i
                while j < page_end and j - last <= self.GAP:
                    if buf[j] != twin[j]:
                        last = j
                    j += 1
                runs.append((i, bytes(buf[i : last + 1])))
                total += last + 1 - i
                i = last + 1
            if total >= max_bytes:
                break
        return runs

    def pushed(self, runs: list[tuple[int, bytes]], written: ShmWritten) -> None:
        for offset, data in runs:
            self._twin[offset : offset + len(data)] = data
        for index, old, new in written.pages:
            if self._versions.get(index, 0) == old:
                self._versions[index] = new

    def pull_args(self, start: int = 0) -> dict[str, object]:
        """Arguments of the ShmPull that continues a pull at page `start`."""
        return {
            "since": self.since,
            "known": {i: v for i, v in self._versions.items() if v > self.since},
            "start": start,
        }

    def pulled(self, answer: ShmPages) -> int | None:
        """Merge one pull answer; the next `start`, or None when the pull is done."""
        if self._pull_version is None:
            self._pull_version = answer.version
        for page in answer.pages:
            offset = page.index * self.page_size
            end = offset + len(page.data)
            if end > self.segsz or offset < 0:
                raise ValueError(f"page {page.index} outside the segment")
            if self.buf[offset:end] == self._twin[offset:end]:
                self.buf[offset:end] = page.data
            else:
                for k, byte in enumerate(page.data):
                    if self.buf[offset + k] == self._twin[offset + k]:
                        self.buf[offset + k] = byte
            self._twin[offset:end] = page.data
            self._versions[page.index] = page.version
        if answer.next is None:
            # pages written during a multi-answer pull come again next time
            self.since = self._pull_version
            self._pull_version = None
        return answer.next
