"""``tether.db.bulk.insert_rows``, on every backend: a few rows (on PostgreSQL one INSERT,
one round trip) and many (on PostgreSQL one COPY) land alike, in the caller's transaction,
and a duplicate key fails as SQLAlchemy's ``IntegrityError`` on either path, writing
nothing."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError

from tether.credentials.models import UsedJtiRow
from tether.db import Database
from tether.db.bulk import insert_rows

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
