"""Hot-path statements on the driver's cursor, inside the caller's SQLAlchemy transaction.

The ledger's group commit writes a few dozen rows per transaction many times a second, and
SQLAlchemy's per-statement work (cache keys, parameter processing, result set-up) cost more
CPU than the database did (bench/README.md, "Reading the results"). These helpers send
fixed SQL with plain tuples through the same connection and transaction — the write lock,
``BEGIN IMMEDIATE`` / the advisory lock and the commit stay SQLAlchemy's. Values must
already be what the driver stores (``str``, ``int``, ``None``): nothing is converted.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _driver(session: Session) -> tuple[Any, str]:
    conn = session.connection()  # begins the session's transaction if it has not yet
    return conn.connection.driver_connection, conn.dialect.name


@cache
def _insert_sql(table: Table, dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    names = ", ".join(c.name for c in table.columns)
    marks = ", ".join(mark for _ in table.columns)
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608 - names from the model


def insert_rows(session: Session, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """``INSERT`` every row (values in the table's column order) in one ``executemany``."""
    if not rows:
        return
    raw, dialect = _driver(session)
    cur = raw.cursor()
    try:
        cur.executemany(_insert_sql(table, dialect), rows)
    finally:
        cur.close()


def fetch_one(session: Session, sql: str) -> tuple[Any, ...] | None:
    """The first row of a parameterless query (fixed SQL from the caller's module)."""
    raw, _ = _driver(session)
    cur = raw.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return tuple(row) if row is not None else None
