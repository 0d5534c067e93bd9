"""Exponentially weighted moving average over time (not over samples).

Each value is folded in with weight 1 - exp(-dt / tau), so irregular sampling is
handled. Example, tau = 10 s: 0 for a long while, then 4 held for 10 s reads as
4 x (1 - e^-1) = 2.53; held for 30 s, 3.80. Always publishes the smoothed value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from schedulers.api import API_VERSION
from schedulers.params import param, parse_params


@dataclass(frozen=True)
class EwmaParams:
    tau: float = param(10.0, "time constant", unit="s", min=1e-6)


class Ewma:
    """Decayed average of a value, with a time constant."""

    name: ClassVar[str] = "ewma"
    api_version: ClassVar[int] = API_VERSION

    def __init__(self) -> None:
        self.p = EwmaParams()
        self._value: float | None = None
        self._at: float = 0.0

    def configure(self, **params: object) -> None:
        self.p = parse_params(EwmaParams, params, base=self.p)

    def feed(self, value: float, now: float) -> float | None:
        if self._value is None:
            self._value = value
        else:
            k = math.exp(-max(0.0, now - self._at) / self.p.tau)
            self._value = self._value * k + value * (1.0 - k)
        self._at = now
        return self._value
