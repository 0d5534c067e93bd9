"""The last value heard from a remote node, until it is older than `ttl`.

Kerrighed's remote_cache_filter let a policy read remote probe values without a
round trip; here the coordinator feeds each report's value as it arrives, and a
consumer reads get(now), which is None once the value is stale (the node went
quiet: better no value than an old one). Example, ttl 5 s: fed 0.7 at t = 10;
get(12) = 0.7, get(16) = None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.params import param, parse_params


@dataclass(frozen=True)
class RemoteCacheParams:
    ttl: float = param(5.0, "seconds a value stays valid", unit="s", min=0)


class RemoteCache:
    """Caches the last value of a remote probe, with a time to live."""

    name: ClassVar[str] = "remote_cache"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self) -> None:
        self.p = RemoteCacheParams()
        self._value: float | None = None
        self._at = 0.0

    def configure(self, **params: object) -> None:
        self.p = parse_params(RemoteCacheParams, params, base=self.p)

    def feed(self, value: float, now: float) -> float | None:
        self._value, self._at = value, now
        return value

    def get(self, now: float) -> float | None:
        if self._value is None or now - self._at > self.p.ttl:
            return None
        return self._value
