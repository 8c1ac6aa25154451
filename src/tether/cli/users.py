"""``tether users …`` — humans and their tokens."""

from __future__ import annotations

import getpass
import secrets
import sys
from typing import Annotated

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import bare, emit_json, err, show, table

app = typer.Typer(
    help="Manage humans (admin, supervisor, auditor) and their tokens.", no_args_is_help=True
)
USER_COLUMNS = ["id", "username", "role", "email", "created_at"]
TOKEN_COLUMNS = ["id", "name", "created_at", "expires_at", "revoked_at"]


@app.command("create")
def create(
    ctx: typer.Context,
    username: str,
    role: Annotated[str, typer.Option(help="admin, supervisor or auditor")],
    email: Annotated[str | None, typer.Option()] = None,
    token: Annotated[
        bool, typer.Option("--token", help="Also create a token (shown once).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user."""
    api = client(ctx)
    user = api.post("/v1/users", {"username": username, "role": role, "email": email})
    if token:
        user["token"] = api.post(f"/v1/users/{seg(user['id'])}/tokens", {"name": "cli"})["token"]
    show(user, as_json=as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List users."""
    show(list(client(ctx).paginate("/v1/users")), as_json=as_json, columns=USER_COLUMNS)


@app.command("show")
def show_(ctx: typer.Context, user: str, as_json: JsonOpt = False) -> None:
    """Show one user (id or username)."""
    show(client(ctx).get(f"/v1/users/{seg(user)}"), as_json=as_json)


@app.command("token")
def token(
    ctx: typer.Context,
    user: str,
    name: Annotated[str | None, typer.Option()] = None,
    expires_in: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a bearer token for a user; it is printed once and never again."""
    result = client(ctx).post(
        f"/v1/users/{seg(user)}/tokens", {"name": name, "expires_in": expires_in}
    )
    if as_json:
        emit_json(result)
    else:
        bare(result["token"])


@app.command("tokens")
def tokens(ctx: typer.Context, user: str, as_json: JsonOpt = False) -> None:
    """List a user's tokens (never the secrets)."""
    items = list(client(ctx).paginate(f"/v1/users/{seg(user)}/tokens"))
    if as_json:
        emit_json(items)
    else:
        table(items, TOKEN_COLUMNS)


@app.command("revoke-token")
def revoke_token(ctx: typer.Context, user: str, token_id: str, as_json: JsonOpt = False) -> None:
    """Revoke one of a user's tokens; it stops working at once."""
    show(client(ctx).delete(f"/v1/users/{seg(user)}/tokens/{seg(token_id)}"), as_json=as_json)


@app.command("subject-token")
def subject_token(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option(help="The agent that may act for you (agt_…).")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="A scope it may use for you; repeat.")
    ] = None,
    expires_in: Annotated[int, typer.Option(help="Lifetime in seconds (30-3600).")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Let one agent act for you: a short-lived subject token it exchanges (RFC 8693) with
    `tether token --exchange --subject-token …`. Printed bare, for S=$(tether users …)."""
    result = client(ctx).post(
        "/v1/users/me/subject-tokens",
        {"agent": agent, "scopes": scope or [], "expires_in": expires_in},
    )
    if as_json:
        emit_json(result)
    else:
        bare(result["subject_token"])


@app.command("set-password")
def set_password(
    ctx: typer.Context,
    user: str,
    generate: Annotated[
        bool, typer.Option("--generate", help="Make up a strong one and print it once.")
    ] = False,
) -> None:
    """Set USER's web console password (12+ characters): from stdin when it is not a terminal
    (`... | tether users set-password alice`), else a hidden prompt, or --generate. Never an
    argument: those end up in shell history. Ends the user's console sessions."""
    if generate:
        password = secrets.token_urlsafe(18)
    elif not sys.stdin.isatty():
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = getpass.getpass("new password (hidden): ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ: nothing was changed")
    client(ctx).request("PUT", f"/v1/users/{seg(user)}/password", json={"password": password})
    if generate:
        bare(password)
    else:
        err.print(f"password set for {user}; their console sessions ended")
