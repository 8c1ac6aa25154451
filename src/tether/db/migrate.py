"""Alembic, driven from code: the server migrates on start and ``tether db upgrade`` exists too.

Alembic (~0.05 s, Mako and Pygments with it) is imported by the function that uses it, so
importing this module (the API's ``/readyz`` route does) costs nothing until it is called.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tether.db.engine import PG_WRITE_LOCK, Database

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(db: Database) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["database"] = db
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate under the write lock, so concurrent starters never race a migration. A
    database already at the newest revision is told so by one query, without Alembic's
    machinery (every start, every worker: ~8 ms here)."""
    from alembic import command

    if revision == "head" and _at(db, head_revision()):
        return
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_WRITE_LOCK})
        cfg = _config(db)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def upgrade_script(db: Database, revision: str = "head") -> str:
    """The SQL :func:`upgrade` runs on an empty database, as Alembic's offline mode writes it
    (one ``BEGIN; ... COMMIT;``). Nothing is executed; ``db`` gives the dialect."""
    from alembic import command

    out = io.StringIO()
    cfg = _config(db)
    cfg.output_buffer = out
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision, sql=True)
    return out.getvalue()


def _at(db: Database, revision: str | None) -> bool:
    """Whether the database's recorded revision is exactly ``revision`` (no table yet: no)."""
    if revision is None:
        return False
    try:
        with db.engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return False  # not migrated at all yet
    return found == [revision]


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _head() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def head_revision(_db: Database | None = None) -> str | None:
    """The newest migration shipped with this build (read once per process)."""
    return _head()


def is_current(db: Database) -> bool:
    return current_revision(db) == head_revision(db)
