"""Filters between probes and their consumers (Kerrighed's filters), one per file.

    ewma          decayed average with time constant tau
    rate_limit    at most one value per period (Kerrighed's freq_limit_filter)
    threshold     only changes larger than delta, or after max_silence
    remote_cache  the last value heard from a remote node, until it goes stale

A filter is fed (value, now) and returns the value to publish now, or None to hold
back. Chains compose: probe -> ewma -> threshold -> report.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedulers.api import Filter


def run_chain(chain: Sequence[Filter[float]], value: float, now: float) -> float | None:
    """Feeds a value through filters in order; None as soon as one holds it back."""
    out: float | None = value
    for f in chain:
        if out is None:
            return None
        out = f.feed(out, now)
    return out
