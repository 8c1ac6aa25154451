"""Membership in a long list of keys as one bound parameter on PostgreSQL.

``column IN (:k1, :k2, …)`` with a thousand keys is a thousand parameters: SQLAlchemy renders
each one into the statement on every execute, and psycopg parses a statement with more than
50 parameters afresh every time (its query cache skips them): ~13 ms for 10,000 keys before
the database sees anything. A kill of a family, and every worker applying it, sends such
lists (bench/README.md, "Kill"). On PostgreSQL :func:`one_of` is ``column = ANY(:keys)``,
one array parameter and one statement text whatever the count; on SQLite, which has no
arrays and no such parse cost, it stays an expanding ``IN``.

Such a statement must be planned for the keys it is given, so :meth:`PerDialect.execute`
never lets psycopg turn it into a server-side prepared statement (it does on a statement's
fifth execution). The server's generic plan cannot know the array: planned while the table
was small, it scanned 60,000 tokens testing each against all 10,000 keys, 2-23 s under the
write lock (measured, bench.propagation, with a schema its autovacuum had not analysed yet).
Planned per call, a long array is hashed or looked up through an index.

Statements that use it are built once per dialect, as the hot path's statements are built
once at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Executable, Result, any_, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T", bound=Executable)


def one_of(
    column: ColumnElement[Any] | InstrumentedAttribute[Any], name: str, dialect: str
) -> ColumnElement[bool]:
    """``column`` is one of the keys bound as ``name`` (a list) at execution."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


class PerDialect(Generic[T]):
    """A statement built on first use for each dialect, then reused; run with
    :meth:`execute`."""

    def __init__(self, build: Callable[[str], T]) -> None:
        self._build = build
        self._built: dict[str, T] = {}

    def __getitem__(self, dialect: str) -> T:
        built = self._built.get(dialect)
        if built is None:
            built = self._built[dialect] = self._build(dialect)
        return built

    def execute(self, session: Session, params: Mapping[str, Any]) -> Result[*tuple[Any, ...]]:
        """Run it in ``session``'s transaction, planned for these keys."""
        dialect = session.get_bind().dialect.name
        with _unprepared(session, dialect == "postgresql"):
            return session.execute(self[dialect], dict(params))


@contextmanager
def _unprepared(session: Session, postgres: bool) -> Iterator[None]:
    if not postgres:
        yield
        return
    driver = session.connection().connection.driver_connection
    previous = driver.prepare_threshold  # type: ignore[union-attr]
    driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        yield
    finally:
        driver.prepare_threshold = previous  # type: ignore[union-attr]
