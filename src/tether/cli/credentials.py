"""``tether credentials …``, ``tether keys …`` and ``tether token``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx2 as httpx
import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client
from tether.cli.render import emit_json, out, show, table

app = typer.Typer(help="Agent credentials: API keys and public keys.", no_args_is_help=True)
keys_app = typer.Typer(help="Token signing keys (JWKS) and their rotation.", no_args_is_help=True)
COLUMNS = ["id", "type", "client_id", "scopes", "jkt", "created_at", "expires_at", "last_used_at"]


@app.command("create")
def create(
    ctx: typer.Context,
    agent_id: str,
    type_: Annotated[str, typer.Option("--type", help="api_key or public_key")] = "api_key",
    jwk: Annotated[
        Path | None, typer.Option(help="File with the public JWK (for public_key).")
    ] = None,
    expires_in: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Scope ceiling; repeat.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a credential; an API key's secret is printed once and never again."""
    body: dict[str, Any] = {"type": type_}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if scope:
        body["scopes"] = scope
    if jwk is not None:
        try:
            body["jwk"] = json.loads(jwk.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"--jwk {jwk}: cannot read a JSON JWK ({exc})") from exc
    result = client(ctx).post(f"/v1/agents/{agent_id}/credentials", body)
    if as_json:
        emit_json(result)
        return
    show(result, as_json=False, columns=[*COLUMNS, "client_secret"])
    if "client_secret" in result:
        out.print("Store the client_secret now: it is not shown again.")


@app.command("list")
def list_(ctx: typer.Context, agent_id: str, as_json: JsonOpt = False) -> None:
    """An agent's credentials (never their secrets)."""
    items = list(client(ctx).paginate(f"/v1/agents/{agent_id}/credentials"))
    if as_json:
        emit_json(items)
    else:
        table(items, COLUMNS)


@app.command("delete")
def delete(ctx: typer.Context, agent_id: str, credential_id: str, as_json: JsonOpt = False) -> None:
    """Delete a credential; it stops working at once."""
    result = client(ctx).delete(f"/v1/agents/{agent_id}/credentials/{credential_id}")
    show(result, as_json=as_json, columns=["id", "type", "client_id"])


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Signing keys: next (published, not yet signing), active, retired."""
    items = list(client(ctx).paginate("/v1/keys"))
    if as_json:
        emit_json(items)
    else:
        table(items, ["kid", "alg", "status", "created_at", "activated_at", "unpublish_at"])


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Rotate now: the published next key signs from here on; old tokens keep verifying."""
    show(client(ctx).post("/v1/keys/rotate"), as_json=as_json)


def token(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Option(help="The agent id.")],
    client_secret: Annotated[
        str | None, typer.Option(envvar="TETHER_CLIENT_SECRET", help="API key secret.")
    ] = None,
    scope: Annotated[str | None, typer.Option(help="Space-separated scopes.")] = None,
    resource: Annotated[str | None, typer.Option(help="RFC 8707 resource (audience).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Get an access token for an agent (client_credentials), for scripts and debugging."""
    if not client_secret:
        raise CliError("give --client-secret or set TETHER_CLIENT_SECRET")
    api = client(ctx)
    form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
    try:
        resp = httpx.post(
            f"{api.url}/oauth/token",
            data={k: v for k, v in form.items() if v},
            auth=(client_id, client_secret),
            timeout=30,
        )
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach Tether at {api.url} ({exc.__class__.__name__})") from exc
    body = resp.json() if resp.content else {}
    if resp.status_code != 200:
        raise CliError(f"{body.get('error', 'error')}: {body.get('error_description', resp.text)}")
    if as_json:
        emit_json(body)
    else:
        out.print(body["access_token"])
