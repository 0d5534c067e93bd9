"""What a node service (cluster IPC, and later ones) plugs into ssid, in one place.

local clients ──▶ local_handlers()        (env.uid/gid: the caller's credentials)
member nodes  ──▶ peer_handlers()         (cluster socket, members' keys only)
any node      ──▶ coordinator_handlers()  (served only where the coordinator is)
a job's start ──▶ job_env(spec)           (extra environment, e.g. LD_PRELOAD)
a job's dump  ──▶ before_dump(job) … after_dump(job, stopped)   (checkpoint, migration)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

Handler = Callable[[Any, Any], Awaitable[Any]]


class Service(Protocol):
    name: str

    def local_handlers(self) -> Mapping[str, Handler]: ...
    def peer_handlers(self) -> Mapping[str, Handler]: ...
    def coordinator_handlers(self) -> Mapping[str, Handler]: ...
    def job_env(self, spec: Mapping[str, Any]) -> dict[str, str]: ...
    def before_dump(self, job_id: str) -> None: ...
    def after_dump(self, job_id: str, *, stopped: bool) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
