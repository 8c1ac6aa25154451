"""The ``tether`` command. Every error ends as one clean line and a non-zero exit: a
:class:`~tether.errors.TetherError` is caught in :func:`main` and nowhere else."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from tether import __version__
from tether.cli import (
    admin,
    agents,
    alerts,
    approvals,
    audit,
    backup,
    credentials,
    demo,
    freeze,
    gateway,
    inventory,
    policy,
    report,
    reviews,
    rollback,
    secrets,
    serve,
    users,
    webhooks,
)
from tether.cli.common import JsonOpt, client
from tether.cli.environment import command_of, warn_unknown_variables
from tether.cli.render import err, show
from tether.errors import TetherError


class _Tether(typer.Typer):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The command tree the environment check built (Typer's own __call__ builds it again
        # and installs its pretty-traceback hook, which is off here).
        return command_of(self)(*args, **kwargs)


app = _Tether(
    name="tether",
    help="Tether: identity, access and governance for autonomous AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: it shows a flag as a flag (Rich's panels print `--json <bool>`) and
    # draws no boxes that break when piped.
    rich_markup_mode=None,
)
app.add_typer(users.app, name="users")
app.add_typer(agents.app, name="agents")
app.add_typer(inventory.app, name="inventory")
app.add_typer(report.app, name="report")
app.add_typer(reviews.app, name="reviews")
app.add_typer(credentials.app, name="credentials")
app.add_typer(credentials.keys_app, name="keys")
app.command("token")(credentials.token)
app.add_typer(audit.app, name="audit")
app.add_typer(policy.app, name="policy")
app.add_typer(approvals.app, name="approvals")
app.add_typer(secrets.app, name="secrets")
app.add_typer(gateway.app, name="gateway")
app.add_typer(alerts.app, name="alerts")
app.command("rollback")(rollback.rollback)
app.command("freeze")(freeze.freeze)
app.command("unfreeze")(freeze.unfreeze)
app.add_typer(serve.db_app, name="db")
app.command("serve")(serve.serve)
app.add_typer(admin.app, name="admin")
app.add_typer(webhooks.app, name="webhooks")
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.command("demo")(demo.demo)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"tether {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="TETHER_URL", help="Server base URL.")] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="TETHER_TOKEN", help="Bearer token; default: the admin token file."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.ensure_object(dict).update(url=url, token=token, verbose=verbose)


@app.command("whoami")
def whoami(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The user your token belongs to, and the server that answered (``server``)."""
    api = client(ctx)
    show({**api.get("/v1/whoami"), "server": api.url}, as_json=as_json)


def _fail(message: str, code: int = 1) -> NoReturn:
    """The one way a failure is shown: ``error: …`` on one line of stderr, never wrapped."""
    err.print(f"error: {' '.join(message.split())}", markup=False)
    sys.exit(code)


def _usage(exc: UsageError) -> NoReturn:
    """A command line Click refused, as one line that says where the help is; a group given no
    subcommand is not an error: its help, exit 0."""
    if isinstance(exc, NoArgsIsHelpError):
        typer.echo(exc.ctx.get_help())
        sys.exit(0)
    what = exc.format_message().rstrip(".")
    command = exc.ctx.command_path if exc.ctx is not None else "tether"
    _fail(f"{what} — see '{command} --help'", exc.exit_code)


def main() -> None:
    verbose = "--verbose" in sys.argv or "-v" in sys.argv or bool(os.environ.get("TETHER_DEBUG"))
    warn_unknown_variables(app)  # a misspelt TETHER_ name is otherwise silently ignored
    try:
        # click returns a typer.Exit's code here; "tether" in messages even for python -m
        code = app(standalone_mode=False, prog_name="tether")
        if isinstance(code, int) and code:
            sys.exit(code)
    except TetherError as exc:  # every known failure: the CLI's own and the server code's
        _fail(exc.diagnostic())
    except UsageError as exc:
        _usage(exc)
    except typer.TyperException as exc:  # Click's other refusals (a file it cannot open)
        _fail(exc.format_message())
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted — nothing was changed")
    except Exception as exc:  # the one place a traceback may be turned into a line
        if verbose:
            raise
        # A failure nobody named is a bug (or an OSError): its first line, never a class name.
        first = (str(exc).strip().splitlines() or ["no message"])[0][:200]
        _fail(f"unexpected failure: {first} (run with --verbose for details)")
