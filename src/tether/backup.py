"""Backups of a deployment: its database and the files of its data dir, in one archive.

An archive (``tar.gz``, mode 0600) holds ``manifest.json``, the database — ``tether.db``
taken with SQLite's online backup API, or ``database.dump`` from ``pg_dump --format=custom``
— and the data dir's secrets and records: the master key, the ledger key, the admin token
files and ``checkpoints.jsonl``. Whoever holds it holds the deployment: keep it like the
master key.

The checkpoint file is read before the database: every line in it was committed before it
was written, so the database taken after it has every head the file names (an archive the
other way round could hold a checkpoint for events its database lacks, which ``audit
verify`` would rightly call truncated).

A restore refuses a database that holds a deployment, and a data-dir file that differs from
the archive's, unless forced; forced, it replaces the database and moves each such file aside
(``<name>.before-restore-<time>``): a key is never deleted.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import URL, make_url

from tether.bootstrap import deployment_id
from tether.clock import to_rfc3339
from tether.config import Settings
from tether.db import Database, migrate
from tether.errors import ConfigurationError, ValidationFailed
from tether.keyfiles import LEDGER_KEY_FILE, MASTER_KEY_FILE, require_root_keys

FORMAT = "tether-backup"
VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "tether.db"
PG_MEMBER = "database.dump"
CHECKPOINTS = "checkpoints.jsonl"


@dataclass
class BackupReport:
    path: Path
    database: str  # "sqlite" | "postgresql"
    deployment_id: str | None
    files: list[str] = field(default_factory=list)
    from_environment: list[str] = field(default_factory=list)  # keys not in the archive


@dataclass
class RestoreReport:
    database: str
    deployment_id: str | None
    files: list[str] = field(default_factory=list)
    moved_aside: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # key files the environment overrides


def backup(settings: Settings, archive: Path, *, now: datetime) -> BackupReport:
    """Write ``archive`` (a new file); raises :class:`ConfigurationError` if there is no
    deployment to back up, ``pg_dump`` is missing, or ``archive`` exists."""
    db = _started(settings)
    try:
        dialect = db.dialect
        deployment = deployment_id(db)
    finally:
        db.dispose()
    require_root_keys(settings)
    report = BackupReport(archive, dialect, deployment)
    with tempfile.TemporaryDirectory(prefix="tether-backup-") as tmp:
        staged: list[tuple[str, Path]] = []
        checkpoints = settings.checkpoint_file_path
        if checkpoints.is_file():  # first: see the module's docstring
            copy = Path(tmp) / CHECKPOINTS
            shutil.copyfile(checkpoints, copy)
            staged.append((CHECKPOINTS, copy))
        member = SQLITE_MEMBER if dialect == "sqlite" else PG_MEMBER
        dump = Path(tmp) / member
        if dialect == "sqlite":
            _sqlite_copy(_sqlite_path(settings), dump)
        else:
            _pg_dump(settings, dump)
        staged.append((member, dump))
        for name, env in ((MASTER_KEY_FILE, "master_key"), (LEDGER_KEY_FILE, "ledger_signing_key")):
            if getattr(settings, env):
                report.from_environment.append(f"TETHER_{env.upper()}")
            else:
                staged.append((name, settings.data_dir / name))
        staged += [(p.name, p) for p in sorted(settings.data_dir.glob("*.token")) if p.is_file()]
        report.files = [name for name, _ in staged]
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "database": dialect,
            "schema": settings.database_schema,
            "deployment_id": deployment,
            "created_at": to_rfc3339(now),
            "files": report.files,
        }
        _write_archive(archive, manifest, staged)
    return report


def restore(settings: Settings, archive: Path, *, force: bool, now: datetime) -> RestoreReport:
    """Restore ``archive`` into the configured database and data dir. Raises
    :class:`ValidationFailed` if it is not a Tether backup or is of another kind of database,
    :class:`ConfigurationError` if the database holds a deployment or a file of the data dir
    differs from the archive's (unless ``force``)."""
    with _opened(archive) as (manifest, tar):
        kind = _kind(settings)
        if manifest["database"] != kind:
            raise ValidationFailed(
                f"{archive} is a backup of a {manifest['database']} deployment and the "
                f"configured database is {kind} — point TETHER_DATABASE_URL at a "
                f"{manifest['database']} database",
                field="archive",
            )
        if kind == "postgresql" and manifest.get("schema") != settings.database_schema:
            schema = manifest.get("schema") or "public"
            raise ValidationFailed(
                f"{archive} holds PostgreSQL schema {schema!r} and pg_restore recreates it by "
                f"that name — set TETHER_DATABASE_SCHEMA={schema} (the server's too)",
                field="archive",
            )
        if not force and _in_use(settings):
            raise ConfigurationError(
                "the configured database already holds a Tether deployment — restore into an "
                "empty one, or pass --force to replace it (stop the server first)"
            )
        report = RestoreReport(kind, manifest.get("deployment_id"))
        files = [n for n in manifest["files"] if n not in (SQLITE_MEMBER, PG_MEMBER)]
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        plan = _plan_files(settings, tar, files, force=force, stamp=stamp, report=report)
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tether-restore-", dir=settings.data_dir) as tmp:
            member = SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER
            dump = Path(tmp) / member
            dump.write_bytes(_member(tar, member))
            if kind == "sqlite":
                _sqlite_copy(dump, _sqlite_path(settings))
            else:
                _pg_restore(settings, dump)
        for name, data in plan:
            target = settings.data_dir / name
            if target.exists():
                aside = target.with_name(f"{name}.before-restore-{stamp}")
                target.rename(aside)
                report.moved_aside.append(aside)
            _write_private(target, data)
            report.files.append(name)
    return report


# -- files of the data dir -------------------------------------------------------------------


def _plan_files(
    settings: Settings,
    tar: tarfile.TarFile,
    names: list[str],
    *,
    force: bool,
    stamp: str,
    report: RestoreReport,
) -> list[tuple[str, bytes]]:
    """The files to write, checked before anything is written: a differing file refuses the
    restore unless ``force``."""
    from_env = {MASTER_KEY_FILE: settings.master_key, LEDGER_KEY_FILE: settings.ledger_signing_key}
    plan = []
    for name in names:
        if from_env.get(name):
            report.skipped.append(name)
            continue
        data = _member(tar, name)
        target = settings.data_dir / name
        if target.exists():
            if target.read_bytes() == data:
                continue
            if not force:
                raise ConfigurationError(
                    f"{target} differs from the backup's — pass --force to restore it (the "
                    f"current file is kept as {name}.before-restore-{stamp})",
                    path=str(target),
                )
        plan.append((name, data))
    return plan


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the archive -----------------------------------------------------------------------------


def _write_archive(archive: Path, manifest: dict[str, Any], staged: list[tuple[str, Path]]) -> None:
    try:
        fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(
            f"{archive} exists — choose another name (a backup never overwrites one)",
            path=str(archive),
        ) from exc
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
        for name, path in staged:
            tar.add(path, arcname=name, recursive=False, filter=_private)
        raw.flush()
        os.fsync(raw.fileno())


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Every member 0600 and owned by nobody in particular: a restore makes its own files."""
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
    return info


@contextmanager
def _opened(archive: Path) -> Iterator[tuple[dict[str, Any], tarfile.TarFile]]:
    try:
        tar = tarfile.open(archive, mode="r:gz")  # noqa: SIM115 - closed below, once checked
    except (OSError, tarfile.TarError) as exc:
        raise ValidationFailed(
            f"{archive} is not a Tether backup (not a readable tar.gz)", field="archive"
        ) from exc
    with tar:
        try:
            manifest = orjson.loads(_member(tar, MANIFEST))
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed(
                f"{archive} has an unreadable manifest", field="archive"
            ) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValidationFailed(f"{archive} is not a Tether backup", field="archive")
        if manifest.get("version") != VERSION:
            raise ValidationFailed(
                f"{archive} is a version {manifest.get('version')} backup; this build reads "
                f"version {VERSION}",
                field="archive",
            )
        yield manifest, tar


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    """A regular file of the archive by name; never a path outside it, a link or a device."""
    try:
        info = tar.getmember(name)
    except KeyError as exc:
        raise ValidationFailed(f"the backup has no {name}", field="archive") from exc
    f = tar.extractfile(info) if info.isfile() and "/" not in name else None
    if f is None:
        raise ValidationFailed(f"the backup's {name} is not a plain file", field="archive")
    return f.read()


# -- databases -------------------------------------------------------------------------------


def _kind(settings: Settings) -> str:
    return make_url(settings.resolved_database_url).get_backend_name()


def _sqlite_path(settings: Settings) -> Path:
    database = make_url(settings.resolved_database_url).database
    if not database or database == ":memory:":
        raise ConfigurationError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


def _started(settings: Settings) -> Database:
    """The configured database, which must hold a deployment (a backup of nothing is a
    mistake: the wrong TETHER_DATABASE_URL, most likely)."""
    if not _in_use(settings):
        raise ConfigurationError(
            "the configured database holds no Tether deployment — check TETHER_DATA_DIR, "
            "TETHER_DATABASE_URL and TETHER_DATABASE_SCHEMA (the server's)"
        )
    return Database(settings.resolved_database_url, schema=settings.database_schema)


def _in_use(settings: Settings) -> bool:
    """Whether the configured database holds a Tether schema (created no file to find out)."""
    if _kind(settings) == "sqlite" and not _sqlite_path(settings).is_file():
        return False
    db = Database(settings.resolved_database_url, schema=settings.database_schema)
    try:
        return migrate.current_revision(db) is not None
    finally:
        db.dispose()


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy with SQLite's online backup API: writers may go on meanwhile."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    target.chmod(0o600)


def _libpq(settings: Settings) -> tuple[str, dict[str, str]]:
    """The database URL as libpq takes it, without the password, which goes in the
    environment instead (a command line is visible to every user of the host)."""
    url: URL = make_url(settings.resolved_database_url)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def pg_dump_command(settings: Settings, output: Path) -> list[str]:
    """The ``pg_dump`` this backup runs (the password is taken from PGPASSWORD)."""
    url, _env = _libpq(settings)
    schema = settings.database_schema or "public"  # the server's default search_path
    return ["pg_dump", "--format=custom", "--no-owner", "--schema", schema, "--file",
            str(output), url]  # fmt: skip


def _pg_dump(settings: Settings, output: Path) -> None:
    command = pg_dump_command(settings, output)
    if shutil.which("pg_dump") is None:
        shown = " ".join([*command[:-3], "--file", "database.dump", "'<database URL>'"])
        raise ConfigurationError(
            f"pg_dump is not installed — install the PostgreSQL client tools, or run `{shown}` "
            f"and keep database.dump with {MASTER_KEY_FILE}, {LEDGER_KEY_FILE} and "
            f"{CHECKPOINTS} from {settings.data_dir}"
        )
    _run(command, _libpq(settings)[1], "pg_dump")


def _pg_restore(settings: Settings, dump: Path) -> None:
    if shutil.which("pg_restore") is None:
        raise ConfigurationError(
            "pg_restore is not installed — install the PostgreSQL client tools, or run "
            "`pg_restore --no-owner --dbname '<database URL>' database.dump` with the "
            "archive's database.dump (tar -xzf)"
        )
    url, env = _libpq(settings)
    # --clean: an empty schema of the same name may exist (created for the restore), and with
    # --force the deployment in it is replaced; without --force it was found empty.
    _run(["pg_restore", "--no-owner", "--exit-on-error", "--clean", "--if-exists", "--dbname",
          url, str(dump)], env, "pg_restore")  # fmt: skip


def _run(command: list[str], env: dict[str, str], name: str) -> None:
    done = subprocess.run(  # noqa: S603 - a fixed program; the arguments are ours
        command, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise ConfigurationError(f"{name} failed: {first}")
