"""The per-process schema template (conftest ``at_head``) is what a real migration builds.

Most tests start from the template instead of migrating; this holds the two to the same
tables, columns, defaults, constraints, indexes and Alembic revision on every backend, so a
new migration the template rendered differently would fail here, not hide elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import Connection, text

from tests.conftest import _RECYCLER, Backend, _Templates, at_head, backend_for
from tether.db import Database, migrate


def _catalog(conn: Connection, schema: str | None) -> list[tuple[Any, ...]]:
    if schema is None:
        rows = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        return sorted(tuple(r) for r in rows)
    queries = [
        """SELECT 'column', table_name, column_name, ordinal_position, data_type,
                  character_maximum_length, numeric_precision, is_nullable, column_default
           FROM information_schema.columns WHERE table_schema = :s""",
        """SELECT 'constraint', t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid)
           FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
           JOIN pg_class t ON t.oid = c.conrelid WHERE n.nspname = :s""",
        """SELECT 'index', tablename, indexname, indexdef
           FROM pg_indexes WHERE schemaname = :s""",
        """SELECT 'sequence', sequence_name, data_type, start_value, increment
           FROM information_schema.sequences WHERE sequence_schema = :s""",
        """SELECT 'object', c.relname, c.relkind::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s""",
    ]
    rows = [r for q in queries for r in conn.execute(text(q), {"s": schema})]
    # Definitions name their schema ("REFERENCES t_1a2b.agents"); the two schemas differ.
    return sorted(tuple(str(v).replace(f"{schema}.", "") for v in r) for r in rows)


def _built(backend: Backend, build: Any) -> tuple[list[tuple[Any, ...]], str | None]:
    build()
    db = Database(backend.url, schema=backend.schema)
    try:
        with db.engine.connect() as conn:
            catalog = _catalog(conn, backend.schema)
        return catalog, migrate.current_revision(db)
    finally:
        db.dispose()


def test_the_template_is_what_a_migration_builds(
    backend: Backend, tmp_path: Path, schema_templates: _Templates
) -> None:
    def migrated() -> None:
        db = Database(backend.url, schema=backend.schema)
        try:
            migrate.upgrade(db)
        finally:
            db.dispose()

    real = _built(backend, migrated)
    with backend_for(backend.name, tmp_path / "copy") as copy:
        if copy.name == "sqlite":
            (tmp_path / "copy").mkdir()
        from_template = _built(copy, lambda: at_head(copy, schema_templates))
    assert real[1] == migrate.head_revision()
    assert len(real[0]) > 50, real[0]  # a whole schema, not two empty ones
    assert from_template == real


def test_a_migrated_database_is_left_alone(backend: Backend, schema_templates: _Templates) -> None:
    db = Database(backend.url, schema=backend.schema)
    try:
        migrate.upgrade(db, "0001")
        at_head(backend, schema_templates)
        assert migrate.current_revision(db) == "0001"
    finally:
        db.dispose()


def test_an_older_database_is_migrated_to_head_and_one_at_head_is_left_as_it_is(
    backend: Backend,
) -> None:
    """``migrate.upgrade`` at start: a database at an earlier revision goes through Alembic to
    the newest; one already there is recognised by one query and not touched."""
    db = Database(backend.url, schema=backend.schema)
    try:
        migrate.upgrade(db, "0001")
        migrate.upgrade(db)
        assert migrate.current_revision(db) == migrate.head_revision()
        with mock.patch("alembic.command.upgrade") as alembic_upgrade:
            migrate.upgrade(db)
        alembic_upgrade.assert_not_called()
    finally:
        db.dispose()


def _migrate(backend: Backend) -> None:
    db = Database(backend.url, schema=backend.schema)
    try:
        migrate.upgrade(db)
    finally:
        db.dispose()


@pytest.fixture
def pg_backend(tmp_path: Path) -> Iterator[Backend]:
    """Schemas are recycled on PostgreSQL only (a SQLite test has a file of its own)."""
    with backend_for("postgresql", tmp_path / "pg") as chosen:
        yield chosen


def test_a_recycled_schema_is_an_empty_one_at_head_again(
    pg_backend: Backend, tmp_path: Path, schema_templates: _Templates
) -> None:
    """What a test leaves behind (rows, a sequence moved on) is gone when its schema is taken
    back into the pool and given to the next test: the same catalog as a real migration's,
    no row in any table, the change feed numbered from 1 again."""
    backend = pg_backend
    assert backend.schema is not None
    at_head(backend, schema_templates, deployed=tmp_path / "data")
    db = Database(backend.url, schema=backend.schema)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO runtime_changes (kind, key, time) VALUES ('x', 'y', 1)"))
    finally:
        db.dispose()
    admin = schema_templates.admin()
    with admin.connect() as conn:
        pooled = _RECYCLER.take_back(conn, backend.schema)
    assert pooled is not None
    with backend_for("postgresql", tmp_path / "next") as again:
        assert again.schema is not None
        with admin.connect() as conn:
            assert _RECYCLER.give(conn, again.schema, pooled)
        db = Database(again.url, schema=again.schema)
        try:
            with db.engine.connect() as conn:
                catalog = _catalog(conn, again.schema)
                counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                          for t in _RECYCLER.tables}  # fmt: skip
                seq = conn.execute(text("SELECT nextval('runtime_changes_seq_seq')")).scalar_one()
            assert migrate.current_revision(db) == migrate.head_revision()
        finally:
            db.dispose()
    with backend_for("postgresql", tmp_path / "real") as real:
        migrated, _ = _built(real, lambda: _migrate(real))
    assert catalog == migrated
    assert set(counts.values()) == {0}, counts
    assert seq == 1


def test_a_schema_changed_by_its_test_is_dropped_not_recycled(
    pg_backend: Backend, schema_templates: _Templates
) -> None:
    backend = pg_backend
    assert backend.schema is not None
    at_head(backend, schema_templates)
    admin = schema_templates.admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER left_behind BEFORE INSERT ON {backend.schema}.audit_events "
            "FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
        )
        assert _RECYCLER.take_back(conn, backend.schema) is None
        conn.exec_driver_sql(f"DROP TRIGGER left_behind ON {backend.schema}.audit_events")
        conn.exec_driver_sql(f"UPDATE {backend.schema}.alembic_version SET version_num = '0001'")
        assert _RECYCLER.take_back(conn, backend.schema) is None  # same tables, other revision


def test_the_newest_revision_read_from_the_files_is_alembics() -> None:
    """A start reads the head from the migration files without Alembic; it must be the one
    Alembic would migrate to."""
    assert migrate.head_revision() == migrate.alembic_head()
    assert migrate.head_revision() is not None


def test_a_start_at_head_imports_no_alembic(tmp_path: Path) -> None:
    """The check at every start, and ``/readyz``'s on every probe, is one query: Alembic (and
    Mako, Pygments) stay unloaded."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    _migrate(Backend("sqlite", url, None))
    code = (
        "import sys\n"
        "from tether.db import Database, migrate\n"
        f"db = Database({url!r})\n"
        "migrate.upgrade(db)\n"
        "assert migrate.current_revision(db) == migrate.head_revision()\n"
        "assert migrate.is_current(db)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'pygments'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_newest_revision_is_read_from_plain_and_annotated_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later migration written by a newer Alembic template (``revision: str = ...``) is
    read as well; a merge (a tuple of parents) is left to Alembic."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate._SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    current = migrate.alembic_head()
    (scripts / "versions" / "9001_annotated.py").write_text(
        "from typing import Union\n"
        'revision: str = "9001"\n'
        f"down_revision: Union[str, None] = {current!r}\n"
        "def upgrade() -> None: ...\n"
        "def downgrade() -> None: ...\n"
    )
    monkeypatch.setattr(migrate, "_SCRIPTS", scripts)
    migrate._head.cache_clear()
    try:
        with mock.patch.object(migrate, "alembic_head", side_effect=AssertionError("asked")):
            assert migrate.head_revision() == "9001"  # from the files alone
        assert migrate.alembic_head() == "9001"
        (scripts / "versions" / "9002_merge.py").write_text(
            'revision = "9002"\ndown_revision = ("9001", "0001")\n'
            "def upgrade() -> None: ...\ndef downgrade() -> None: ...\n"
        )
        migrate._head.cache_clear()
        with mock.patch.object(migrate, "alembic_head", return_value="asked") as alembic:
            assert migrate.head_revision() == "asked"
        alembic.assert_called_once()
    finally:
        migrate._head.cache_clear()
