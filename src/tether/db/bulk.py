"""Hot-path statements on the driver's cursor, inside the caller's SQLAlchemy transaction.

The ledger's group commit writes a few dozen rows per transaction many times a second, and
SQLAlchemy's per-statement work (cache keys, parameter processing, result set-up) cost more
CPU than the database did (bench/README.md, "Reading the results"). These helpers send
fixed SQL with plain tuples through the same connection and transaction — the write lock,
``BEGIN IMMEDIATE`` / the advisory lock and the commit stay SQLAlchemy's. Values must
already be what the driver stores (``str``, ``int``, ``None``): nothing is converted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import ClauseElement, Connection, Dialect, Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

_DRIVER = "tether.driver"


def remember_driver(session: Session) -> None:
    """Begin ``session``'s transaction and keep its driver connection for these helpers (a
    write transaction's session: one transaction, one connection, from begin to end)."""
    conn = session.connection()
    session.info[_DRIVER] = (conn.connection.driver_connection, conn.dialect.name)


def _driver(session: Session) -> tuple[Any, str]:
    got: tuple[Any, str] | None = session.info.get(_DRIVER)
    if got is not None:
        return got
    conn = session.connection()  # begins the session's transaction if it has not yet
    return conn.connection.driver_connection, conn.dialect.name


def _integrity(dialect: str) -> type[Exception]:
    """The driver's constraint-violation class (``sqlite3.IntegrityError``,
    ``psycopg.IntegrityError``), which these helpers re-raise as SQLAlchemy's, as every other
    statement of the caller's would: a store fails the same way on every backend."""
    if dialect == "postgresql":
        import psycopg

        return psycopg.IntegrityError
    return sqlite3.IntegrityError


# Rows per INSERT statement. One multi-row statement is one step in the driver, and so one
# release of the GIL: the ledger writer holds the deployment-wide write lock while it runs,
# and every time it gives the GIL away it may wait a switch interval to get it back from a
# busy event loop (``executemany`` releases it once per row). At most 32 statement texts per
# table, within SQLite's statement cache and far within both backends' parameter limits.
_ROWS_PER_STATEMENT = 32


@cache
def _insert_sql(table: Table, dialect: str, rows: int) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    names = ", ".join(c.name for c in table.columns)
    one = "(" + ", ".join(mark for _ in table.columns) + ")"
    return f"INSERT INTO {table.name} ({names}) VALUES {', '.join([one] * rows)}"  # noqa: S608 - names from the model


@cache
def _copy_sql(table: Table) -> str:
    return f"COPY {table.name} ({', '.join(c.name for c in table.columns)}) FROM STDIN"


# PostgreSQL: rows whose values fit psycopg's statement cache (it re-parses a statement with
# more than 50 parameters on every execute) go in one INSERT — one round trip, prepared by the
# server after a few uses — and more in one COPY, which costs two (COPY, then its data).
_PG_INSERT_PARAMS = 50


def insert_rows(session: Session, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert every row (values in the table's column order): PostgreSQL one ``INSERT`` of
    a few rows or a ``COPY``, else ``INSERT``s of up to 32 rows each."""
    if rows:
        _insert_rows(*_driver(session), table, rows)


def _insert_rows(raw: Any, dialect: str, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    cur = raw.cursor()
    few = len(rows) * len(table.columns) <= _PG_INSERT_PARAMS
    sql = (
        _copy_sql(table) if dialect == "postgresql" and not few else _insert_sql(table, dialect, 1)
    )
    try:
        if dialect == "postgresql" and few:
            cur.execute(_insert_sql(table, dialect, len(rows)), [v for row in rows for v in row])
            return
        if dialect == "postgresql":
            # psycopg re-parses a statement with more than 50 parameters on every execute
            # (its query cache skips those): a 32-row INSERT cost ~35 µs of client CPU per
            # row, COPY ~7 (bench/README.md, "Reading the results").
            with cur.copy(_copy_sql(table)) as copy:
                for row in rows:
                    copy.write_row(row)
            return
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            params = [value for row in chunk for value in row]
            cur.execute(_insert_sql(table, dialect, len(chunk)), params)
    except _integrity(dialect) as exc:
        raise IntegrityError(sql, None, exc) from exc
    finally:
        cur.close()


Insert = tuple[Table, Sequence[tuple[Any, ...]]]

# PostgreSQL: up to this many rows in all go as one statement of JSON parameters; more, table
# by table (COPY). A batch of the group commit is at most a few hundred.
_JSON_MAX_ROWS = 2_000


@cache
def _json_insert_sql(tables: tuple[Table, ...]) -> str:
    """One statement inserting into every table, each table's rows one ``json`` parameter
    (a data-modifying ``WITH`` clause per table but the last)."""

    def insert(table: Table) -> str:
        names = ", ".join(c.name for c in table.columns)
        source = f"json_populate_recordset(NULL::{table.name}, %s::json)"
        return f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {source}"  # noqa: S608 - names from the model

    *first, last = tables
    head = ", ".join(f"i{n} AS ({insert(t)})" for n, t in enumerate(first))
    return (f"WITH {head} " if head else "") + insert(last)


def insert_tables(session: Session, inserts: Sequence[Insert], *, commit: bool = False) -> None:
    """Every table's rows (as :func:`insert_rows`). On PostgreSQL one statement, one round
    trip however many tables and rows: each table's rows travel as one JSON array of objects,
    which ``json_populate_recordset`` turns back into the exact values (text, integers,
    nulls) — cheaper on the client than an INSERT's parameters or a COPY's rows, and one
    round trip under the write lock instead of one per table (two for a COPY).

    ``commit``: these rows are the transaction's last write, and nothing is left for the
    session to flush — the ``COMMIT`` goes with them (on PostgreSQL in the same round trip,
    pipeline mode; the session's own commit then finds the transaction done and sends
    nothing). The caller's commit, or rollback, stays as it was elsewhere."""
    if any(rows for _, rows in inserts) or commit:
        write_tables(*_driver(session), inserts, commit=commit)


def write_tables(
    raw: Any, dialect: str, inserts: Sequence[Insert], *, commit: bool,
    lead: Sequence[tuple[str, Sequence[Any]]] = (),
) -> None:  # fmt: skip
    """:func:`insert_tables` on a driver connection in a transaction its caller began on it
    (``commit``: and committed). ``lead`` (PostgreSQL): statements to run first — with the
    rows, in the same round trip (the transaction's ``BEGIN``, lock and guard)."""
    present = [(table, rows) for table, rows in inserts if rows]
    if dialect != "postgresql" or sum(len(r) for _, r in present) > _JSON_MAX_ROWS:
        for first, args in lead:
            raw.execute(first, args)
        for table, rows in present:
            _insert_rows(raw, dialect, table, rows)
        if commit:
            raw.execute("COMMIT") if dialect == "sqlite" else raw.commit()
        return
    sql, params = _pg_statement(present)
    cur = raw.cursor()
    try:
        with raw.pipeline() if commit else nullcontext():  # one Sync: lead, rows, COMMIT
            for first, args in lead:
                cur.execute(first, args)
            if sql:
                cur.execute(sql, params)
            if commit:
                cur.execute("COMMIT")
    except _integrity(dialect) as exc:
        raise IntegrityError(sql, None, exc) from exc
    finally:
        cur.close()


def pipeline_statements(
    inserts: Sequence[Insert], *, lead: Sequence[tuple[str, Sequence[Any]]]
) -> list[tuple[bytes, Sequence[Any]]]:  # fmt: skip
    """PostgreSQL: ``lead`` and an ``INSERT`` of every row of each of ``inserts``' tables,
    each statement's SQL with ``$1``, ``$2``… placeholders (the extended protocol's) and its
    arguments: a guarded write's statements, for one pipeline (whose ``Sync`` commits them,
    or rolls them back if one failed: an implicit transaction)."""
    out = [(_numbered(sql), args) for sql, args in lead]
    out += [
        (_numbered(_insert_sql(table, "postgresql", len(rows))), [v for row in rows for v in row])
        for table, rows in inserts
        if rows
    ]
    return out


@lru_cache(maxsize=256)
def _numbered(sql: str) -> bytes:
    """``sql`` with its ``%s`` placeholders as PostgreSQL's ``$1``, ``$2``…, encoded."""
    pieces = sql.split("%s")
    return (pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], 1))).encode()


def _pg_statement(present: Sequence[Insert]) -> tuple[str, list[Any]]:
    """PostgreSQL: one statement (and its parameters) that inserts every row of ``present``
    (each table with rows): a plain ``INSERT`` for a few rows of one table, else one
    statement of every table's rows as JSON."""
    few = len(present) == 1 and len(present[0][1]) * len(present[0][0].columns) <= _PG_INSERT_PARAMS
    if few:
        [(table, rows)] = present
        return _insert_sql(table, "postgresql", len(rows)), [v for row in rows for v in row]
    if present:
        sql = _json_insert_sql(tuple(table for table, _ in present))
        return sql, [_as_json(table, rows) for table, rows in present]
    return "", []


@cache
def _names(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns)


def _as_json(table: Table, rows: Sequence[tuple[Any, ...]]) -> str:
    names = _names(table)
    objects = [dict(zip(names, row, strict=True)) for row in rows]
    return json.dumps(objects, ensure_ascii=False, separators=(",", ":"))


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


@cache
def _paramstyle(sql: str, dialect: str) -> str:
    return sql.replace("?", "%s") if dialect == "postgresql" else sql


def fetch_one_with(session: Session, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The first row of a query with ``?`` placeholders (fixed SQL from the caller's module;
    the values are bound by the driver, never spliced)."""
    raw, dialect = _driver(session)
    cur = raw.cursor()
    try:
        cur.execute(_paramstyle(sql, dialect), params)
        row = cur.fetchone()
    finally:
        cur.close()
    return tuple(row) if row is not None else None


def fetch_last(session: Session, statements: Sequence[str]) -> tuple[Any, ...] | None:
    """Fixed, parameterless statements in one round trip (one simple query): each for its
    effect, and the first row of the last. Each reads what committed before it started
    (PostgreSQL, READ COMMITTED), so a read after a lock sees what the lock waited for."""
    return fetch_last_on(_driver(session)[0], statements)


def fetch_last_on(raw: Any, statements: Sequence[str]) -> tuple[Any, ...] | None:
    """:func:`fetch_last` on a PostgreSQL driver connection."""
    cur = raw.cursor()
    try:
        cur.execute("; ".join(statements))
        while cur.nextset():
            pass
        row = cur.fetchone() if cur.pgresult is not None and cur.pgresult.ntuples else None
    finally:
        cur.close()
    return tuple(row) if row is not None else None


@lru_cache(maxsize=64)
def _compiled(statement: ClauseElement, dialect: Dialect) -> tuple[str, SQLCompiler]:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)  # a statement's, not DDL's
    return compiled.string, compiled


def fetch_all_of(
    conn: Connection, statement: ClauseElement, values: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Every row of the Core ``statement``, ``values`` bound to its parameters, fetched on
    ``conn``'s driver: compiled once per dialect, the driver's own rows — none of
    SQLAlchemy's row objects or result processing, so its columns must need none (text,
    integers). At 100,000 agents SQLAlchemy's rows cost the runtime's load more than the
    database's (bench/README.md)."""
    sql, compiled = _compiled(statement, conn.dialect)
    params = compiled.construct_params(dict(values))
    order = compiled.positiontup
    args = tuple(params[name] for name in order) if order is not None else params
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql, args)
        return list(cur.fetchall())  # tuples: neither driver is given a row factory
    finally:
        cur.close()


def fetch_all_with(session: Session, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Every row of a query with ``?`` placeholders (as :func:`fetch_one_with`)."""
    raw, dialect = _driver(session)
    cur = raw.cursor()
    try:
        cur.execute(_paramstyle(sql, dialect), params)
        return [tuple(row) for row in cur.fetchall()]
    finally:
        cur.close()


def execute_counted(session: Session, sql: str, params: tuple[Any, ...]) -> int:
    """Run one statement with ``?`` placeholders (fixed SQL from the caller's module); the
    number of rows it changed."""
    raw, dialect = _driver(session)
    cur = raw.cursor()
    try:
        cur.execute(_paramstyle(sql, dialect), params)
        return int(cur.rowcount)
    except _integrity(dialect) as exc:
        raise IntegrityError(sql, None, exc) from exc
    finally:
        cur.close()
