"""``tether secrets …`` — keep secrets for agents (API.md "Secrets"). A value is read from
stdin, a file or a hidden prompt, never from the command line: arguments end up in shell
history and in every user's ``ps``."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, out, show, table

app = typer.Typer(help="Secrets for agents: kept encrypted, read under leases.",
                  no_args_is_help=True)  # fmt: skip
COLUMNS = ["name", "version", "labels", "broker_only", "lease_seconds", "updated_at"]
LEASE_COLUMNS = ["id", "name", "version", "agent", "state", "issued_at", "expires_at"]


def _value(file: Path | None) -> str:
    """The value: ``--file``, else stdin when it is not a terminal (one trailing newline
    dropped, as ``echo`` adds it), else a hidden prompt."""
    if file is not None:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise CliError(f"--file {file}: cannot read it ({exc.strerror})") from exc
    elif not sys.stdin.isatty():
        raw = sys.stdin.buffer.read()
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    else:
        raw = getpass.getpass("value (hidden): ").encode()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CliError("the value must be UTF-8 text") from None


@app.command("put")
def put(
    ctx: typer.Context,
    name: str,
    value_argument: Annotated[
        list[str] | None, typer.Argument(hidden=True, metavar="", show_default=False)
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Read the value from this file.")] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A label policies see; repeat.")
    ] = None,
    broker_only: Annotated[
        bool | None,
        typer.Option(
            "--broker-only/--readable",
            help="Only the gateway injects it; never returned to an agent.",
        ),
    ] = None,
    lease_seconds: Annotated[int | None, typer.Option(help="A read's lease.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a new version of NAME, its value from stdin (`... | tether secrets put NAME`),
    --file, or a hidden prompt — never from the command line."""
    if value_argument:
        raise CliError(
            "never pass a secret's value as an argument (it stays in shell history and shows "
            f"in ps): pipe it in — `tether secrets put {name} < value.txt` — or use --file"
        )
    body: dict[str, Any] = {"value": _value(file)}
    if description is not None:
        body["description"] = description
    if label:
        body["labels"] = label
    if broker_only is not None:
        body["broker_only"] = broker_only
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    result = client(ctx).request("PUT", f"/v1/secrets/{seg(name)}", json=body)
    if as_json:
        emit_json(result)
        return
    out.print(f"{result['name']}: version {result['version']} stored")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every secret's metadata (never a value)."""
    items = list(client(ctx).paginate("/v1/secrets"))
    show(items, as_json=as_json, columns=COLUMNS)


@app.command("show")
def show_(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """One secret's metadata (never its value)."""
    result = client(ctx).get(f"/v1/secrets/{seg(name)}")
    show(result, as_json=as_json, columns=[*COLUMNS, "description", "versions", "created_at"])


@app.command("versions")
def versions(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """The versions kept of NAME."""
    items = client(ctx).get(f"/v1/secrets/{seg(name)}/versions")["items"]
    if as_json:
        emit_json(items)
    else:
        table(items, ["version", "current", "size", "key_id", "created_by", "created_at"])


@app.command("delete")
def delete(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """Drop every version of NAME for good and revoke its leases."""
    result = client(ctx).delete(f"/v1/secrets/{seg(name)}")
    if as_json:
        emit_json(result)
        return
    out.print(f"{name}: deleted (versions {', '.join(map(str, result['versions']))})")


@app.command("leases")
def leases(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    secret: Annotated[str | None, typer.Option(help="Only this secret's.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only live leases.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Leases handed out by reads."""
    items = list(client(ctx).paginate("/v1/secrets/leases", agent=agent, secret=secret,
                                      active="true" if active else None))  # fmt: skip
    show(items, as_json=as_json, columns=LEASE_COLUMNS)


@app.command("revoke-lease")
def revoke_lease(
    ctx: typer.Context,
    lease_id: str,
    reason: Annotated[str | None, typer.Option(help="Why; kept in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """End a lease now; the revocation feed names it."""
    body = {"reason": reason} if reason else {}
    result = client(ctx).post(f"/v1/secrets/leases/{seg(lease_id)}/revoke", body)
    show(result, as_json=as_json, columns=[*LEASE_COLUMNS, "revoked_at", "revoked_why"])


@app.command("rotate-master-key")
def rotate_master_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Re-wrap every secret's data key under a new secrets master key (every node at once;
    reads go on meanwhile)."""
    result = client(ctx).post("/v1/secrets/rotate-master-key")
    if as_json:
        emit_json(result)
        return
    out.print(f"secrets master key {result['key_id']}: {result['rewrapped']} data keys "
              f"re-wrapped, {len(result['retired'])} old key(s) retired")  # fmt: skip


def _template(path: Path, option: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{option} {path}: cannot read it as text ({exc})") from exc


@app.command("db-connection")
def db_connection(
    ctx: typer.Context,
    name: str,
    dsn_secret: Annotated[
        str, typer.Option(help="The secret holding the admin DSN (put it --broker-only).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Register a PostgreSQL database the broker mints logins on."""
    result = client(ctx).request("PUT", f"/v1/secrets/db/connections/{seg(name)}",
                                 json={"dsn_secret": dsn_secret})  # fmt: skip
    show(result, as_json=as_json, columns=["name", "dsn_secret"])


@app.command("db-role")
def db_role(
    ctx: typer.Context,
    name: str,
    connection: Annotated[str, typer.Option(help="A registered connection.")],
    creation: Annotated[
        Path, typer.Option(help="File: SQL creating a login ({{name}}, {{password}}, {{expiry}}).")
    ],
    revocation: Annotated[
        Path | None, typer.Option(help="File: SQL dropping it ({{name}}); default: drop all.")
    ] = None,
    ttl_seconds: Annotated[int, typer.Option(help="Each login's lease.")] = 3600,
    as_json: JsonOpt = False,
) -> None:
    """Define a kind of login agents may lease (`POST /v1/secrets/db/ROLE/lease`)."""
    body: dict[str, Any] = {"connection": connection, "ttl_seconds": ttl_seconds,
                            "creation": _template(creation, "--creation")}  # fmt: skip
    if revocation is not None:
        body["revocation"] = _template(revocation, "--revocation")
    result = client(ctx).request("PUT", f"/v1/secrets/db/roles/{seg(name)}", json=body)
    show(result, as_json=as_json, columns=["name", "connection", "ttl_seconds", "created_at"])


@app.command("db-roles")
def db_roles(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The kinds of database login agents may lease."""
    items = client(ctx).get("/v1/secrets/db/roles")["items"]
    show(items, as_json=as_json, columns=["name", "connection", "ttl_seconds", "created_at"])
