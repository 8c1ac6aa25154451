"""``tether serve`` and ``tether db upgrade`` — the server side, which may touch the database."""

from __future__ import annotations

import os
import shutil
from typing import Annotated

import typer

from tether.cli.render import err, out

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Default from TETHER_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default from TETHER_PORT (8700).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Migrate, bootstrap an empty deployment, and serve the API."""
    import uvicorn

    from tether.bootstrap import prepare
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
    services = build_services(settings)
    try:
        for line in prepare(services).lines():
            err.print(line)
    finally:
        services.close()
    if workers > 1:
        # Metrics from every worker are merged by prometheus_client's multiprocess mode.
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    err.print(
        f"Tether serving on {settings.base_url} with {workers} worker(s); "
        f"database {services.db.dialect}"
    )
    uvicorn.run(
        "tether.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
    )


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
