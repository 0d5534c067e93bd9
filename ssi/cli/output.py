"""How the CLI speaks: rich tables for people, versioned JSON for scripts, and errors
on stderr with the exit code their kind calls for."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

JSON_VERSION = 1
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def emit_json(kind: str, data: Any) -> None:
    """{"version": 1, "<kind>": data}: scripts check the version, then read the kind."""
    json.dump({"version": JSON_VERSION, kind: data}, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if v is None or v == "" else str(v) for v in r))
    out.print(t)


def fail(message: str, hint: str = "") -> None:
    err.print(f"[bold red]error:[/] {message}")
    if hint:
        err.print(f"[dim]hint:[/] {hint}")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


STATE_STYLE = {
    "online": "green",
    "draining": "yellow",
    "lost": "red",
    "evicting": "magenta",
}


def state(s: str) -> str:
    style = STATE_STYLE.get(s)
    return f"[{style}]{s}[/]" if style else s
