"""Output: Rich tables for people, JSON and bare values for scripts.

Nothing a script reads is ever wrapped: a token folded at the terminal's width is a broken
token (``T=$(tether token …)``). Bare values go out with :func:`value`, plain text is printed
soft-wrapped (the terminal wraps it, Rich inserts no newline), and when stdout is not a terminal
tables are as wide as their content.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

# Rich's width when the output is not a terminal: it would otherwise wrap at 80 columns. A table
# is only as wide as its content, so this is a "no limit", never padding.
_UNLIMITED = 1_000_000


class _LazyConsole:
    """A Rich console made on first use: Rich costs ~0.05 s to import, which a command that
    prints JSON, a bare value or nothing (``--version``, ``--help``) need not pay."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            width = None if stream.isatty() else _UNLIMITED
            self._console = Console(
                stderr=self._stderr, highlight=False, soft_wrap=True, width=width
            )
        return self._console

    def print(
        self,
        *objects: Any,
        markup: bool | None = None,
        highlight: bool | None = None,
        soft_wrap: bool | None = None,
    ) -> None:
        self.console.print(*objects, markup=markup, highlight=highlight, soft_wrap=soft_wrap)

    def status(self, status: str) -> Status:
        return self.console.status(status)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)


def bare(text: str) -> None:
    """One machine-readable value (a token, an id, a secret shown once) on a line of its own,
    exactly as given: no markup, no wrapping, whatever the terminal's width."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def line(text: str) -> None:
    """A line of plain text for people, printed as given (no Rich markup), never wrapped."""
    out.print(text, markup=False)


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def emit_json_line(value: Any) -> None:
    """One JSON value on one line (JSON Lines), flushed: for streams a script reads as they come."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    """A value as a table shows it: ``-`` for nothing, lists joined, long JSON shortened."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


# Columns whose values are identifiers: kept on one line (a wrapped id cannot be copied).
_ID_COLUMNS = frozenset({"id", "seq", "agent_id", "client_id", "kid"})


def table(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], *, title: str | None = None
) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_lines=False)
    for col in columns:
        # "fold" rather than Rich's default ellipsis: on a narrow terminal a value is broken
        # over lines, never cut short.
        t.add_column(col, no_wrap=col in _ID_COLUMNS, overflow="fold")
    n = 0
    for row in rows:
        t.add_row(*(Text(cell(row.get(c))) for c in columns))
        n += 1
    out.print(t, soft_wrap=False)
    if n == 0:
        out.print("(none)")


def record(item: dict[str, Any], fields: Sequence[str] | None = None) -> None:
    """One record as ``key  value`` lines. Values are never wrapped or cut, so a secret shown
    once can be copied whole even from a narrow terminal."""
    from rich.text import Text

    keys = list(fields or item)
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        out.print(Text.assemble((key.ljust(width), "bold"), "  ", cell(item.get(key))))


def show(value: Any, *, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """One record or a list of records, as a table or JSON."""
    if as_json:
        emit_json(value)
    elif isinstance(value, list):
        table(value, columns or (list(value[0]) if value else []))
    else:
        record(value, columns)
