"""``tether serve`` and ``tether db upgrade`` — the server side, which may touch the database."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from tether.cli.client import CliError
from tether.cli.render import err, out

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Default from TETHER_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default from TETHER_PORT (8700).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Migrate, bootstrap an empty deployment, and serve the API."""
    import uvicorn

    from tether.bootstrap import admin_token_file, prepare
    from tether.config import load_settings
    from tether.container import build_services

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
        os.environ["TETHER_HOST"] = host
    if port:
        overrides["port"] = port
        os.environ["TETHER_PORT"] = str(port)
    settings = load_settings(**overrides)
    # Held through the migration so nothing claims the port meanwhile; uvicorn binds its own.
    with _reserve(settings.host, settings.port):
        services = build_services(settings)
        try:
            report = prepare(services)
        finally:
            services.close()
    for line in report.lines():
        _say(line)
    if workers > 1:
        # Metrics from every worker are merged by prometheus_client's multiprocess mode.
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    token_path = admin_token_file(settings, report.deployment_id)  # this database's
    _say(f"data dir     {settings.data_dir.resolve()}")
    _say(f"database     {_without_password(settings.resolved_database_url)}")
    _say(f"admin token  {token_path.resolve()}")
    _say(f"API docs     {settings.base_url}/docs")
    _say(f"Tether serving on {settings.base_url} with {workers} worker(s)")
    from importlib import import_module

    from tether.cli import settled

    import_module("tether.api.app")  # what uvicorn imports next (one worker: in this process)
    settled()
    uvicorn.run(
        "tether.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
    )


def _say(line: str) -> None:
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _reserve(host: str, port: int) -> Iterator[None]:
    """Bind ``host:port`` as uvicorn will (``SO_REUSEADDR``), or raise :class:`CliError`
    saying why the server could not listen there — before anything claims it serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {port} on {host} is in use — stop the other process or set TETHER_PORT"
            ) from None
        if exc.errno == errno.EACCES:
            raise CliError(
                f"port {port} on {host} needs privileges — use a port above 1023 (TETHER_PORT)"
            ) from None
        reason = exc.strerror or str(exc)
        raise CliError(f"cannot listen on {host}:{port}: {reason} — check TETHER_HOST") from None
    try:
        yield
    finally:
        sock.close()


@db_app.command("upgrade")
def upgrade() -> None:
    """Bring the database schema to the latest migration."""
    from tether.config import load_settings
    from tether.db import Database, migrate

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url, schema=settings.database_schema)
    try:
        before = migrate.current_revision(db)
        migrate.upgrade(db)
        after = migrate.current_revision(db)
    finally:
        db.dispose()
    out.print(
        f"database at revision {after}"
        + (" (unchanged)" if before == after else f" (was {before or 'empty'})")
    )
