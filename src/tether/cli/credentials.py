"""``tether credentials …``, ``tether keys …`` and ``tether token``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import bare, emit_json, out, show, table

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
    result = client(ctx).post(f"/v1/agents/{seg(agent_id)}/credentials", body)
    if as_json:
        emit_json(result)
        return
    show(result, as_json=False, columns=[*COLUMNS, "client_secret"])
    if "client_secret" in result:
        out.print("Store the client_secret now: it is not shown again.")


@app.command("list")
def list_(ctx: typer.Context, agent_id: str, as_json: JsonOpt = False) -> None:
    """An agent's credentials (never their secrets)."""
    items = list(client(ctx).paginate(f"/v1/agents/{seg(agent_id)}/credentials"))
    if as_json:
        emit_json(items)
    else:
        table(items, COLUMNS)


@app.command("delete")
def delete(ctx: typer.Context, agent_id: str, credential_id: str, as_json: JsonOpt = False) -> None:
    """Delete a credential; it stops working at once."""
    result = client(ctx).delete(f"/v1/agents/{seg(agent_id)}/credentials/{seg(credential_id)}")
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


# RFC 8693 §3 token type URNs, by the short names the CLI takes.
_TOKEN_TYPES = {
    "jwt": "urn:ietf:params:oauth:token-type:jwt",  # a human's subject token
    "access_token": "urn:ietf:params:oauth:token-type:access_token",  # another agent's token
}
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN


def token(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Option(help="The agent id.")],
    client_secret: Annotated[
        str | None, typer.Option(envvar="TETHER_CLIENT_SECRET", help="API key secret.")
    ] = None,
    scope: Annotated[str | None, typer.Option(help="Space-separated scopes.")] = None,
    resource: Annotated[str | None, typer.Option(help="RFC 8707 resource (audience).")] = None,
    exchange: Annotated[
        bool,
        typer.Option(
            "--exchange",
            help="RFC 8693 token exchange: a token for the agent acting for --subject-token.",
        ),
    ] = False,
    subject_token: Annotated[
        str | None,
        typer.Option(
            envvar="TETHER_SUBJECT_TOKEN",
            help="With --exchange: whom the agent acts for (`tether users subject-token`).",
        ),
    ] = None,
    subject_token_type: Annotated[
        str,
        typer.Option(help="With --exchange: jwt (a human's subject token) or access_token."),
    ] = "jwt",  # noqa: S107 - a token type's name, not a secret
    as_json: JsonOpt = False,
) -> None:
    """Get an access token for an agent (client_credentials), for scripts and debugging.

    With --exchange the agent gets a delegated token instead (RFC 8693): its own access token
    is the actor_token, --subject-token the subject; the new token's sub is the subject and
    its act claim names the agent. The token is printed bare, for T=$(tether token …).
    """
    if not client_secret:
        raise CliError("give --client-secret or set TETHER_CLIENT_SECRET")
    if subject_token and not exchange:
        raise CliError("--subject-token is for a token exchange — add --exchange")
    url = client(ctx).url
    form = {"scope": scope, "resource": resource}
    if exchange:
        if not subject_token:
            raise CliError(
                "--exchange needs --subject-token — mint one with `tether users subject-token`"
            )
        kind = _TOKEN_TYPES.get(subject_token_type)
        if kind is None:
            raise CliError(f"--subject-token-type {subject_token_type!r} — use jwt or access_token")
        # The actor token: the agent's own access token, which the exchange must present.
        actor = _token_request(url, client_id, client_secret, {})["access_token"]
        form |= {
            "grant_type": _TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": kind,
            "actor_token": actor,
            "actor_token_type": _TOKEN_TYPES["access_token"],
        }
    else:
        form["grant_type"] = "client_credentials"
    body = _token_request(url, client_id, client_secret, form)
    if as_json:
        emit_json(body)
    else:
        bare(body["access_token"])


def _token_request(
    url: str, client_id: str, client_secret: str, form: dict[str, str | None]
) -> dict[str, Any]:
    """``POST /oauth/token`` with client_secret_basic; the OAuth error as a :class:`CliError`."""
    import httpx2 as httpx

    data = {k: v for k, v in form.items() if v}
    data.setdefault("grant_type", "client_credentials")
    try:
        resp = httpx.post(
            f"{url}/oauth/token", data=data, auth=(client_id, client_secret), timeout=30
        )
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach Tether at {url} ({exc.__class__.__name__})") from exc
    try:
        body: dict[str, Any] = resp.json() if resp.content else {}
    except ValueError:
        body = {}
    if resp.status_code != 200 or "access_token" not in body:
        what = body.get("error_description") or resp.text[:200] or resp.reason_phrase
        raise CliError(f"{body.get('error', 'error')}: {what} [HTTP {resp.status_code}]")
    return body
