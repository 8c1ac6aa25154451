"""``tether.db.bulk.insert_rows``, on every backend: a few rows (on PostgreSQL one INSERT,
one round trip) and many (on PostgreSQL one COPY) land alike, in the caller's transaction,
and a duplicate key fails as SQLAlchemy's ``IntegrityError`` on either path, writing
nothing. ``insert_tables``: rows of several tables (on PostgreSQL one statement of JSON
parameters) land exactly — text with quotes, escapes, control characters and non-ASCII,
integers at the edges of 64 bits, nulls — and a duplicate anywhere writes nothing."""

from __future__ import annotations

import threading
from typing import Any, cast

import psycopg
import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError

from tether.credentials.models import AccessTokenRow, UsedJtiRow
from tether.db import Database
from tether.db.bulk import insert_rows, insert_tables

TABLE = cast(Table, UsedJtiRow.__table__)  # two columns: 25 rows are 50 values, 26 are 52


def rows(n: int, prefix: str) -> list[tuple[Any, ...]]:
    return [(f"{prefix}:{i}", 1_000 + i) for i in range(n)]


def stored(db: Database) -> dict[str, int]:
    with db.read() as s:
        return dict(s.execute(select(UsedJtiRow.key, UsedJtiRow.expires_at)).all())


@pytest.mark.parametrize("n", [1, 25, 26, 400])
def test_rows_land_whatever_their_number(db: Database, n: int) -> None:
    with db.write() as s:
        insert_rows(s, TABLE, rows(n, "a"))
    assert stored(db) == dict(rows(n, "a"))


@pytest.mark.parametrize("n", [2, 26])
def test_a_duplicate_fails_as_integrity_error_and_writes_nothing(db: Database, n: int) -> None:
    with db.write() as s:
        insert_rows(s, TABLE, rows(1, "a"))

    def both() -> None:
        with db.write() as s:
            insert_rows(s, TABLE, rows(n, "b"))
            insert_rows(s, TABLE, rows(n, "a"))  # a:0 exists

    with pytest.raises(IntegrityError):
        both()
    assert stored(db) == dict(rows(1, "a"))


def test_nothing_to_insert_is_no_statement(db: Database) -> None:
    with db.write() as s:
        insert_rows(s, TABLE, [])
    assert stored(db) == {}


# -- insert_tables: several tables, one statement on PostgreSQL --------------------------------
TOKENS = cast(Table, AccessTokenRow.__table__)
AWKWARD = ['{"a": "é\\"q"}', "line\nbreak\ttab\\back", "\x01 control", "emoji 🦀", "' OR 1=1 --"]


def token_rows(n: int, prefix: str) -> list[tuple[Any, ...]]:
    return [
        (f"{prefix}-{i}", AWKWARD[i % len(AWKWARD)], "client", 2**63 - 1 - i, -i,
         None if i % 2 else i)
        for i in range(n)
    ]  # fmt: skip


def stored_tokens(db: Database) -> list[tuple[Any, ...]]:
    with db.read() as s:
        return [tuple(r) for r in s.execute(select(*TOKENS.columns).order_by(TOKENS.c.jti))]


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each statement the PostgreSQL driver's cursors send from this test's thread (the
    suite drops finished tests' schemas on a thread of its own meanwhile)."""
    sent: list[str] = []
    real = psycopg.Cursor.execute
    mine = threading.get_ident()

    def execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == mine:
            sent.append(str(query))
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


@pytest.mark.parametrize("n", [1, 3, 40])
def test_several_tables_land_exactly_in_one_statement(
    db: Database, statements: list[str], n: int
) -> None:
    with db.write() as s:
        statements.clear()
        insert_tables(s, [(TOKENS, token_rows(n, "t")), (TABLE, rows(n, "j")), (TABLE, [])])
        sent = list(statements)
    assert stored_tokens(db) == sorted(token_rows(n, "t"))
    assert stored(db) == dict(rows(n, "j"))
    if db.dialect == "postgresql":  # one round trip for both tables, whatever the row count
        assert len(sent) == 1
        assert "json_populate_recordset" in sent[0]


def test_a_duplicate_in_one_table_fails_the_statement_and_writes_nothing(db: Database) -> None:
    with db.write() as s:
        insert_rows(s, TABLE, rows(1, "a"))

    def both() -> None:
        with db.write() as s:
            insert_tables(s, [(TOKENS, token_rows(3, "t")), (TABLE, rows(2, "a"))])  # a:0 exists

    with pytest.raises(IntegrityError):
        both()
    assert stored(db) == dict(rows(1, "a"))
    assert stored_tokens(db) == []


def test_nothing_in_any_table_is_no_statement(db: Database, statements: list[str]) -> None:
    with db.write() as s:
        statements.clear()
        insert_tables(s, [(TOKENS, []), (TABLE, [])])
        assert statements == []
