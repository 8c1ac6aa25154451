"""Output: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

# Scripts and pipes get wide, untruncated tables; terminals get their own width.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def table(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], *, title: str | None = None
) -> None:
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col, no_wrap=col in ("id", "seq", "agent_id", "time", "created_at"))
    n = 0
    for row in rows:
        t.add_row(*(_cell(row.get(c)) for c in columns))
        n += 1
    out.print(t)
    if n == 0:
        out.print("(none)")


def record(item: dict[str, Any], fields: Sequence[str] | None = None) -> None:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key in fields or list(item):
        t.add_row(key, _cell(item.get(key)))
    out.print(t)


def show(value: Any, *, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """One record or a list of records, as a table or JSON."""
    if as_json:
        emit_json(value)
    elif isinstance(value, list):
        table(value, columns or (list(value[0]) if value else []))
    else:
        record(value, columns)
