"""OAuth 2 endpoints (API.md "OAuth 2 (agents)"): form-encoded in, RFC-shaped errors out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tether.api.deps import ServicesDep
from tether.credentials.clients import AuthenticatedClient, ClientAuthError
from tether.credentials.errors import InvalidClient, InvalidRequest, OAuthError
from tether.errors import TetherError

router = APIRouter(tags=["oauth"])
T = TypeVar("T")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_FORM_FIELDS = {
    "grant_type": "client_credentials or urn:ietf:params:oauth:grant-type:token-exchange",
    "scope": "space-separated scopes (a subset of what the agent may hold)",
    "resource": "RFC 8707 resource indicator (absolute URI)",
    "audience": "RFC 8693 logical audience",
    "client_id": "the agent id",
    "client_secret": "client_secret_post",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": "private_key_jwt (RFC 7523)",
    "token": "the token (introspection / revocation)",
    "token_type_hint": "access_token",
}


def _form_body(*names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {n: {"type": "string", "description": _FORM_FIELDS[n]} for n in names}
    schema = {"type": "object", "properties": props, "required": list(required)}
    form = {"application/x-www-form-urlencoded": {"schema": schema}}
    return {"requestBody": {"required": True, "content": form}}


def _oauth_error(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    schema = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    }
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


async def _form(request: Request) -> dict[str, str]:
    """RFC 6749 §3.2: form-encoded; no parameter may repeat."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest("send application/x-www-form-urlencoded (RFC 6749 §3.2)")
    try:
        pairs = parse_qsl((await request.body()).decode(), keep_blank_values=True,
                          strict_parsing=False, max_num_fields=50)  # fmt: skip
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the body is not a valid form") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if isinstance(exc, ClientAuthError) and exc.basic:
        headers["WWW-Authenticate"] = 'Basic realm="tether"'
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


@router.get("/.well-known/oauth-authorization-server")
def metadata(svc: ServicesDep) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    return svc.oauth.metadata()


@router.get("/.well-known/jwks.json")
def jwks(svc: ServicesDep) -> JSONResponse:
    """The token signing keys: next, active, and retired ones whose tokens may still live."""
    return JSONResponse(svc.signing_keys.jwks(), headers={"Cache-Control": "max-age=60"})


@router.post(
    "/oauth/token",
    openapi_extra=_form_body(
        *[n for n in _FORM_FIELDS if n not in ("token", "token_type_hint")],
        required=("grant_type",),
    ),
    responses={
        **_oauth_error(
            400,
            "invalid_request, invalid_grant, invalid_scope, invalid_target, unsupported_grant_type",
        ),
        **_oauth_error(401, "invalid_client"),
    },
)
async def token(request: Request, svc: ServicesDep) -> JSONResponse:
    try:
        form = await _form(request)
        body = await _run(svc.oauth.token, form, request.headers.get("authorization"))
    except OAuthError as exc:
        return _error(exc)
    return JSONResponse(body, headers=_NO_STORE)


async def _caller(request: Request, svc: Any, form: dict[str, str]) -> tuple[Any, str]:
    """Introspection and revocation callers: an agent client (its credentials) or a human
    (a user bearer token)."""
    auth = request.headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        try:
            user = await _run(svc.users.authenticate, auth[7:].strip())
        except TetherError as exc:
            raise InvalidClient("unknown or revoked user token") from exc
        return user, user.ref
    client: AuthenticatedClient = await _run(svc.oauth.authenticate_client, form, auth or None)
    return client, f"agent:{client.agent.id}"


@router.post(
    "/oauth/introspect",
    openapi_extra=_form_body(
        "token",
        "token_type_hint",
        "client_id",
        "client_secret",
        "client_assertion_type",
        "client_assertion",
        required=("token",),
    ),
    responses={**_oauth_error(400, "invalid_request"), **_oauth_error(401, "invalid_client")},
)
async def introspect(request: Request, svc: ServicesDep) -> JSONResponse:
    """RFC 7662. Unknown, expired or revoked tokens are exactly ``{"active": false}``."""
    try:
        form = await _form(request)
        await _caller(request, svc, form)
        if "token" not in form:
            raise InvalidRequest("token is required")
        body = await _run(svc.oauth.introspect, form["token"])
    except OAuthError as exc:
        return _error(exc)
    return JSONResponse(body, headers=_NO_STORE)


@router.post(
    "/oauth/revoke",
    openapi_extra=_form_body(
        "token",
        "token_type_hint",
        "client_id",
        "client_secret",
        "client_assertion_type",
        "client_assertion",
        required=("token",),
    ),
    responses={**_oauth_error(400, "invalid_request"), **_oauth_error(401, "invalid_client")},
)
async def revoke(request: Request, svc: ServicesDep) -> JSONResponse:
    """RFC 7009: 200 whether or not the token was known."""
    try:
        form = await _form(request)
        caller, ref = await _caller(request, svc, form)
        if "token" not in form:
            raise InvalidRequest("token is required")
        if isinstance(caller, AuthenticatedClient):  # an agent revokes its own tokens
            await _run(svc.oauth.revoke, form["token"], caller, ref)
        elif caller.is_admin:  # an admin revokes any token
            await _run(svc.oauth.revoke, form["token"], None, ref)
        # Anyone else gets the same 200 and changes nothing (RFC 7009 §2.2).
    except OAuthError as exc:
        return _error(exc)
    return JSONResponse({}, headers=_NO_STORE)
