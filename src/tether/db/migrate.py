"""Alembic, driven from code: the server migrates on start and ``tether db upgrade`` exists too."""

from __future__ import annotations

import functools
import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from tether.db.engine import PG_WRITE_LOCK, Database

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["database"] = db
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate under the write lock, so concurrent starters never race a migration."""
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_WRITE_LOCK})
        cfg = _config(db)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def upgrade_script(db: Database, revision: str = "head") -> str:
    """The SQL :func:`upgrade` runs on an empty database, as Alembic's offline mode writes it
    (one ``BEGIN; ... COMMIT;``). Nothing is executed; ``db`` gives the dialect."""
    out = io.StringIO()
    cfg = _config(db)
    cfg.output_buffer = out
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision, sql=True)
    return out.getvalue()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _head() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def head_revision(_db: Database | None = None) -> str | None:
    """The newest migration shipped with this build (read once per process)."""
    return _head()


def is_current(db: Database) -> bool:
    return current_revision(db) == head_revision(db)
