"""The PostgreSQL connection pool (``tether.db.engine``): a connection is pinged before use only
after sitting idle, and one that died meanwhile is replaced, not handed out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import PG_URL, _Templates, at_head, backend_for
from tether.db import Database
from tether.db import engine as engine_module


@pytest.fixture
def pg_db(tmp_path: Path, schema_templates: _Templates) -> Iterator[Database]:
    with backend_for("postgresql", tmp_path) as chosen:
        at_head(chosen, schema_templates)
        db = Database(chosen.url, schema=chosen.schema)
        try:
            yield db
        finally:
            db.dispose()


def _backend_pid(db: Database) -> int:
    with db.read() as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "_PING_AFTER_IDLE_SECONDS", 0.0)  # idle long enough
    old = _backend_pid(pg_db)
    _terminate(old)  # a server restart, or an idle timeout, while the pool held it
    new = _backend_pid(pg_db)  # the ping found it dead: a new connection, no error
    assert new != old


def test_a_connection_used_a_moment_ago_is_not_pinged(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip before every statement: a connection that died within the idle bound
    fails its next statement once (the pool is then renewed), as SQLAlchemy's optimistic
    handling does; the next use gets a live connection."""
    monkeypatch.setattr(engine_module, "_PING_AFTER_IDLE_SECONDS", 3600.0)
    old = _backend_pid(pg_db)
    _terminate(old)
    with pytest.raises(OperationalError):
        _backend_pid(pg_db)
    assert _backend_pid(pg_db) != old
