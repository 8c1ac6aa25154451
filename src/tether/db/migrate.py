"""Alembic, driven from code: the server migrates on start and ``tether db upgrade`` exists too.

Alembic (~0.15 s of a start: Mako, and Pygments' lexers through Mako's plugin, come with it)
is imported only by what migrates or asks Alembic: a start on a database already at the
newest revision, the common case, reads the newest revision from the migration files'
headers (:func:`head_revision`) and the database's from ``alembic_version``, and imports none
of it; nor does importing this module (the API's ``/readyz`` route does).
"""

from __future__ import annotations

import ast
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
    if revision == "head" and _at(db, head_revision()):
        return
    from alembic import command

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


def _recorded(db: Database) -> list[str]:
    """The revisions ``alembic_version`` holds (none before the first migration)."""
    try:
        with db.engine.connect() as conn:
            return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DBAPIError:
        return []  # not migrated at all yet


def _at(db: Database, revision: str | None) -> bool:
    """Whether the database's recorded revision is exactly ``revision`` (no table yet: no)."""
    return revision is not None and _recorded(db) == [revision]


def current_revision(db: Database) -> str | None:
    """The database's revision, None before the first migration: one query (``/readyz``
    asks on every probe); Alembic only for what it alone can say (more than one head)."""
    recorded = _recorded(db)
    if len(recorded) <= 1:
        return recorded[0] if recorded else None
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def alembic_head() -> str | None:
    """The newest revision as Alembic's script directory sees it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return ScriptDirectory.from_config(cfg).get_current_head()


@functools.cache
def _head() -> str | None:
    """The one revision no migration file names as its ``down_revision``, read from the
    files' module-level assignments (literals, as Alembic writes them); Alembic itself if
    they are anything else or the history has more than one head or none.
    test_schema_template.py holds this to :func:`alembic_head`."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((_SCRIPTS / "versions").glob("*.py")):
        found: dict[str, object] = {}
        for node in ast.parse(path.read_text()).body:
            # ``revision = "0007"``, or annotated as newer Alembic templates write it
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError:
                    return alembic_head()
        revision, down = found.get("revision"), found.get("down_revision")
        if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
            return alembic_head()  # a merge (a tuple of parents) or something unexpected
        revisions.add(revision)
        if down is not None:
            parents.add(down)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else alembic_head()


def head_revision(_db: Database | None = None) -> str | None:
    """The newest migration shipped with this build (read once per process)."""
    return _head()


def is_current(db: Database) -> bool:
    return current_revision(db) == head_revision(db)
