"""``tether backup`` and ``tether restore`` — run on the server host with the server's
settings (:mod:`tether.backup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.render import err, line


def backup(
    archive: Annotated[Path, typer.Argument(help="The archive to write (a new .tar.gz file).")],
) -> None:
    """Back up the database and the data dir's keys, tokens and checkpoints into one archive
    (mode 0600). SQLite: its online backup API; PostgreSQL: pg_dump. It holds every secret of
    the deployment: keep it like the master key."""
    from tether.backup import backup as run
    from tether.clock import SystemClock
    from tether.config import load_settings

    report = run(load_settings(), archive, now=SystemClock().now())
    line(
        f"wrote {report.path} (mode 0600): the {report.database} database of deployment "
        f"{report.deployment_id} and {', '.join(report.files)}"
    )
    err.print(
        "warning: the archive holds the deployment's secrets (master key, ledger key, admin "
        "tokens): store it encrypted, like the master key",
        markup=False,
    )
    for name in report.from_environment:
        err.print(
            f"warning: {name} comes from the environment and is not in the archive: a restore "
            "needs it, keep it in your secret store",
            markup=False,
        )


def restore(
    archive: Annotated[Path, typer.Argument(help="An archive written by `tether backup`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a database that holds a deployment; move differing files aside.",
        ),
    ] = False,
) -> None:
    """Restore a backup into the configured database and data dir; stop the server first.
    Refuses a database that holds a deployment, or a key file that differs, unless --force."""
    from tether.backup import restore as run
    from tether.clock import SystemClock
    from tether.config import load_settings

    settings = load_settings()
    report = run(settings, archive, force=force, now=SystemClock().now())
    written = ", ".join(report.files) or "no file (the data dir had them)"
    line(
        f"restored deployment {report.deployment_id} into the {report.database} database and "
        f"{settings.data_dir}: {written}"
    )
    for path in report.moved_aside:
        line(f"kept the previous {path.name.split('.before-restore-')[0]} as {path}")
    for name in report.skipped:
        err.print(
            f"warning: {name} was not written: the environment sets that key, and it must be "
            "the backup's",
            markup=False,
        )
    line("start the server, then check the ledger: tether audit verify")
