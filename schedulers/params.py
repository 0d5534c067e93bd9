"""Typed, validated plugin parameters: one frozen dataclass per plugin.

`ssi policy set mosix interval=2s stab_factor=1.3` arrives as strings; parse_params
turns them into the plugin's Params, checking names, types, units and ranges, and
raising ParamError with every problem at once.

Example:

    @dataclass(frozen=True)
    class Params:
        interval: float = param(2.0, "seconds between rounds", unit="s", min=0.1)

    parse_params(Params, {"interval": "500ms"}) == Params(interval=0.5)
    parse_params(Params, {"intervall": "1"})  # ParamError: unknown ... interval
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar, get_type_hints

from schedulers.units import parse_duration, parse_size

P = TypeVar("P")


class ParamError(ValueError):
    """One or more bad parameters; .problems lists them."""

    def __init__(self, owner: str, problems: list[str]) -> None:
        self.owner = owner
        self.problems = problems
        super().__init__(f"{owner}: " + "; ".join(problems))


def param(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A Params field with its documentation and limits. unit "s" accepts durations
    ("500ms", "2m"), unit "B" accepts sizes ("4G")."""
    return dataclasses.field(
        default=default,
        metadata={"doc": doc, "unit": unit, "min": min, "max": max, "choices": choices},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ParamInfo:
    name: str
    type: str
    default: object
    value: object
    doc: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


def _convert(raw: object, typ: Any, unit: str) -> object:
    if isinstance(raw, str):
        text = raw.strip()
        if typ is bool:
            low = text.lower()
            if low in ("1", "yes", "true", "on"):
                return True
            if low in ("0", "no", "false", "off"):
                return False
            raise ValueError(f"expected yes or no, got {raw!r}")
        if typ in (float, int):
            if unit == "s":
                v: float = parse_duration(text)
            elif unit == "B":
                v = float(parse_size(text))
            else:
                v = float(text)
            if typ is int:
                if v != int(v):
                    raise ValueError(f"expected a whole number, got {raw!r}")
                return int(v)
            return v
        return text
    if typ is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if typ is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if typ is bool and isinstance(raw, bool):
        return raw
    if typ is str and isinstance(raw, str):
        return raw
    raise ValueError(f"expected {typ.__name__}, got {type(raw).__name__} {raw!r}")


def parse_params(
    cls: type[P], raw: Mapping[str, object], *, base: P | None = None
) -> P:
    """Params from `raw` (strings or values) over `base` (default: the defaults)."""
    owner = getattr(cls, "__qualname__", str(cls))
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    problems: list[str] = []
    values: dict[str, object] = {}
    for key, rawv in raw.items():
        f = fields.get(key)
        if f is None:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            did = f" (did you mean {hint[0]}?)" if hint else ""
            problems.append(
                f"unknown parameter {key!r}{did}; known: {', '.join(fields)}"
            )
            continue
        md = f.metadata
        try:
            v = _convert(rawv, hints[key], md.get("unit", ""))
        except ValueError as e:
            problems.append(f"{key}: {e}")
            continue
        lo, hi, choices = md.get("min"), md.get("max"), md.get("choices", ())
        if isinstance(v, int | float) and not isinstance(v, bool):
            if lo is not None and v < lo:
                problems.append(f"{key}: {v} is below the minimum {lo}")
                continue
            if hi is not None and v > hi:
                problems.append(f"{key}: {v} is above the maximum {hi}")
                continue
        if choices and v not in choices:
            problems.append(f"{key}: {v!r} is not one of {', '.join(choices)}")
            continue
        values[key] = v
    if problems:
        raise ParamError(owner, problems)
    start = base if base is not None else cls()
    return dataclasses.replace(start, **values)  # type: ignore[type-var]


def describe_params(params: object) -> list[ParamInfo]:
    """Every parameter with its current value, default and documentation."""
    cls = type(params)
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(params):  # type: ignore[arg-type]
        md = f.metadata
        out.append(
            ParamInfo(
                name=f.name,
                type=getattr(hints[f.name], "__name__", str(hints[f.name])),
                default=f.default,
                value=getattr(params, f.name),
                doc=md.get("doc", ""),
                unit=md.get("unit", ""),
                min=md.get("min"),
                max=md.get("max"),
                choices=md.get("choices", ()),
            )
        )
    return out


def params_dict(params: object) -> dict[str, object]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}  # type: ignore[arg-type]
