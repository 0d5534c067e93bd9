"""Only changes that matter: a value is published when it differs from the last one
published by more than `delta` (absolute) or `relative` x |last|, or when
`max_silence` seconds passed without publishing (so consumers know it is alive).

Example, delta 0.1, relative 0, max_silence 30 s: 1.00 (published), 1.05 (held),
1.12 (published: 0.12 from 1.00), 1.15 (held), then 1.15 again 30 s later (published).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.params import param, parse_params


@dataclass(frozen=True)
class ThresholdParams:
    delta: float = param(0.1, "absolute change that is always published", min=0)
    relative: float = param(0.0, "relative change that is always published", min=0)
    max_silence: float = param(
        30.0, "publish anyway after this many seconds", unit="s", min=0
    )


class Threshold:
    """Publishes a value only when it changed enough, or after a silence."""

    name: ClassVar[str] = "threshold"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self) -> None:
        self.p = ThresholdParams()
        self._last: float | None = None
        self._at = 0.0

    def configure(self, **params: object) -> None:
        self.p = parse_params(ThresholdParams, params, base=self.p)

    def feed(self, value: float, now: float) -> float | None:
        last = self._last
        if (
            last is None
            or abs(value - last) > self.p.delta
            or (self.p.relative > 0 and abs(value - last) > self.p.relative * abs(last))
            or now - self._at >= self.p.max_silence
        ):
            self._last, self._at = value, now
            return value
        return None
