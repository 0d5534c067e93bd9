"""Sizes, durations and probabilities as people write them, for requests and params.

Example: parse_size("4G") == 4 * 2**30, parse_duration("1h30m") == 5400.0,
parse_probability("90%") == 0.9. Errors are ValueError with a message that names the
expected form; the request parser adds the column.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "p": 2**50,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '4G', '512M', '1.5GiB', '4096' (binary units: K = 2**10 ...)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"expected a size such as 512M or 4G, got {text!r}")
    number, unit = m.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_duration(text: str) -> float:
    """Seconds from '2h', '90s', '1h30m', '1.5d', '250ms' or a bare number."""
    s = text.strip().lower()
    if not s:
        raise ValueError("expected a duration such as 30s, 2h or 1h30m, got ''")
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.end() == pos:
            raise ValueError(
                f"expected a duration such as 30s, 2h or 1h30m, got {text!r}"
            )
        number, unit = m.groups()
        if unit is None and pos > 0:
            raise ValueError(f"a unit is missing after {number!r} in {text!r}")
        if unit is None and m.end() != len(s):
            raise ValueError(
                f"unknown unit {s[m.end() :]!r} in {text!r} (use ms, s, m, h or d)"
            )
        total += float(number) * _DURATION_UNITS[unit or "s"]
        pos = m.end()
    return total


def parse_probability(text: str) -> float:
    """A probability from '0.9' or '90%', checked to lie in [0, 1]."""
    s = text.strip()
    try:
        p = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(
            f"expected a probability such as 0.9 or 90%, got {text!r}"
        ) from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability lies between 0 and 1 (0% and 100%), got {s}")
    return p


def format_size(n: float) -> str:
    """'4.0G' for 4 * 2**30: the inverse of parse_size, to one decimal."""
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}B"


def format_duration(seconds: float) -> str:
    """'2h', '1h30m', '45s', '1.5s': short and exact enough for explanations."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    parts = []
    rest = int(round(seconds))
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= scale:
            parts.append(f"{rest // scale}{unit}")
            rest %= scale
    return "".join(parts[:2])
