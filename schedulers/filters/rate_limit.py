"""At most one value per `period` seconds (Kerrighed's freq_limit_filter).

Example, period 2 s: values at t = 0, 0.5, 1.9, 2.1, 3 -> published at 0 and 2.1;
the others are held back (None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.params import param, parse_params


@dataclass(frozen=True)
class RateLimitParams:
    period: float = param(1.0, "minimum seconds between two values", unit="s", min=0)


class RateLimit:
    """At most one value per period."""

    name: ClassVar[str] = "rate_limit"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self) -> None:
        self.p = RateLimitParams()
        self._last: float | None = None

    def configure(self, **params: object) -> None:
        self.p = parse_params(RateLimitParams, params, base=self.p)

    def feed(self, value: float, now: float) -> float | None:
        if self._last is not None and now - self._last < self.p.period:
            return None
        self._last = now
        return value
