"""OAuth 2 endpoints (API.md "OAuth 2 (agents)"): form-encoded in, RFC-shaped errors out.

Each form is described exactly in the OpenAPI document, and this module holds requests to
that description before the service sees them:

* known parameters, each a single string: a repeated parameter is ``invalid_request`` (RFC
  6749 §3.2); unrecognized parameters are ignored (RFC 6749 §3.1, §3.2), so the document lets
  any other name through as long as it too is sent once;
* one client authentication method at a time (RFC 6749 §2.3): ``client_secret_post``
  (``client_id`` + ``client_secret``), ``private_key_jwt`` (``client_assertion_type`` +
  ``client_assertion``, RFC 7523 §2.2) or neither in the body (``client_secret_basic`` in the
  ``Authorization`` header; at introspection and revocation also a user bearer token);
* no NUL in a known parameter; ``resource`` an absolute URI without a fragment (RFC 8707 §2)
  in printable ASCII, which urllib splits without complaint.

A request with no client authentication at all is ``invalid_client`` (RFC 6749 §5.2), 401,
like every failed authentication, and every 401 carries ``WWW-Authenticate`` (RFC 9110
§11.6.1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, NotRequired, Required, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from typing_extensions import TypedDict

from tether.api.deps import ServicesDep
from tether.api.errors import responses
from tether.container import Services
from tether.credentials import exchange
from tether.credentials.clients import ASSERTION_TYPE, AuthenticatedClient
from tether.credentials.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    UnsupportedResponseType,
)
from tether.credentials.oauth import CLIENT_CREDENTIALS, TOKEN_EXCHANGE
from tether.errors import TetherError
from tether.fields import SCOPE

router = APIRouter(tags=["oauth"])
T = TypeVar("T")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"
_MAX_FIELDS = 50

# The grant types the service serves, as its metadata advertises them.
GRANT_TYPES = [CLIENT_CREDENTIALS, TOKEN_EXCHANGE]
_SUBJECT_TOKEN_TYPES = [exchange.ACCESS_TOKEN, exchange.JWT]

_PRINTABLE = r"[\x21-\x7e]"  # resource and audience: printable ASCII, no spaces
# RFC 8707 §2: an absolute URI (a scheme and an authority) without a fragment. The authority
# has no brackets (urllib refuses "http://[" with a ValueError).
_RESOURCE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://[\x21\x22\x24-\x2e\x30-\x3e\x40-\x5a\x5c\x5e-\x7e]+"
    r"(?:[/?][\x21\x22\x24-\x7e]*)?"
)
_NO_NUL = r"^[^\x00]*$"


def _string(description: str, pattern: str = _NO_NUL, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, "pattern": pattern, **more}


_PARAMETERS: dict[str, dict[str, Any]] = {
    "grant_type": {"type": "string", "enum": GRANT_TYPES, "description": "the grant"},
    "scope": _string(
        "space-separated scopes (RFC 6749 §3.3), a subset of what the agent may hold; empty "
        "or absent: all of them",
        pattern=rf"^(?:{SCOPE})?$",
    ),
    "resource": _string(
        "RFC 8707 resource indicator: an absolute URI without a fragment (the token's audience)",
        pattern=rf"^(?:{_RESOURCE.pattern})?$",
        maxLength=500,
    ),
    "audience": _string("RFC 8693 logical audience", pattern=f"^{_PRINTABLE}*$", maxLength=500),
    "client_id": _string("the agent id"),
    "client_secret": _string("client_secret_post: the API key's secret"),
    "client_assertion_type": {"type": "string", "enum": [ASSERTION_TYPE]},
    "client_assertion": _string("private_key_jwt: a JWT signed with the agent's key (RFC 7523)"),
    "subject_token": _string(
        "token exchange: whom the agent acts for (an access token, or a human's subject token)",
        minLength=1,
    ),
    "subject_token_type": {"type": "string", "enum": _SUBJECT_TOKEN_TYPES},
    "actor_token": _string("token exchange: the acting agent's own access token", minLength=1),
    "actor_token_type": {"type": "string", "enum": [exchange.ACCESS_TOKEN]},
    "token": _string("the token to introspect or revoke", minLength=1),
    "token_type_hint": _string("access_token (other hints are ignored)"),
}
_CLIENT_AUTH_PARAMETERS = (
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
)
_SECRET = {"required": ["client_secret"]}
_ASSERTION = {
    "anyOf": [{"required": ["client_assertion_type"]}, {"required": ["client_assertion"]}]
}
_CLIENT_AUTH = [
    {
        "title": "client_secret_post",
        "required": ["client_id", "client_secret"],
        "not": _ASSERTION,
    },
    {
        "title": "private_key_jwt",
        "required": ["client_assertion_type", "client_assertion"],
        "not": _SECRET,
    },
    {
        "title": "client_secret_basic (Authorization header), or a user bearer token where "
        "the endpoint takes one",
        "not": {"anyOf": [_SECRET, _ASSERTION]},
    },
]
# RFC 8693 §2.1; Tether also requires the actor's own token, so every delegation names it.
_GRANTS = [
    {"title": "client_credentials", "properties": {"grant_type": {"const": CLIENT_CREDENTIALS}}},
    {
        "title": "token exchange",
        "properties": {"grant_type": {"const": TOKEN_EXCHANGE}},
        "required": ["subject_token", "subject_token_type", "actor_token", "actor_token_type"],
    },
]


def _form_body(*names: str, required: tuple[str, ...], grants: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {n: _PARAMETERS[n] for n in (*names, *_CLIENT_AUTH_PARAMETERS)},
        "required": list(required),
        # Unrecognized parameters are ignored (RFC 6749 §3.2), but like any other they are
        # sent once: a single string each.
        "additionalProperties": {"type": "string"},
        "maxProperties": _MAX_FIELDS,
    }
    if grants:
        schema["allOf"] = [{"oneOf": _CLIENT_AUTH}, {"oneOf": _GRANTS}]
    else:
        schema["oneOf"] = _CLIENT_AUTH
    return {"requestBody": {"required": True, "content": {_FORM: {"schema": schema}}}}


# -- response documentation ------------------------------------------------------------------
class OAuthErrorOut(BaseModel):
    """RFC 6749 §5.2."""

    error: str
    error_description: str


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer", "DPoP"]
    expires_in: int
    scope: str
    issued_token_type: str


class IntrospectionOut(TypedDict, total=False):
    """RFC 7662 §2.2: inactive tokens are exactly ``{"active": false}``."""

    active: Required[bool]
    token_type: Literal["Bearer", "DPoP"]
    scope: str
    client_id: str
    sub: str
    aud: str | list[str]
    iss: str
    exp: int
    iat: int
    nbf: int
    jti: str
    act: dict[str, Any]
    cnf: dict[str, Any]


class RevocationOut(BaseModel):
    """RFC 7009 §2.2: an empty object, whether or not the token was known."""

    model_config = ConfigDict(extra="forbid")


class MetadataOut(BaseModel):
    """RFC 8414 §2 (members may be added)."""

    model_config = ConfigDict(extra="allow")

    issuer: str
    token_endpoint: str
    jwks_uri: str
    introspection_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str]
    response_types_supported: list[str]
    scopes_supported: list[str]


class PublicJwkOut(TypedDict):
    kty: Required[str]
    kid: Required[str]
    alg: NotRequired[str]
    use: NotRequired[str]
    crv: NotRequired[str]
    x: NotRequired[str]
    y: NotRequired[str]


class JwksOut(BaseModel):
    keys: list[PublicJwkOut]


_HEADERS_200 = {
    "Cache-Control": {
        "description": "no-store (RFC 6749 §5.1)",
        "required": True,
        "schema": {"type": "string", "pattern": "no-store"},
    }
}
_HEADERS_401 = {
    "WWW-Authenticate": {
        "description": "Basic for client authentication, Bearer for a user token",
        "required": True,
        "schema": {"type": "string", "pattern": "^(Basic|Bearer) "},
    }
}


def _oauth_responses(errors400: str, ok: type[Any], ok_text: str) -> dict[int | str, Any]:
    def error(text: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"model": OAuthErrorOut, "description": text}
        return {**entry, "headers": headers} if headers else entry

    return {
        200: {"model": ok, "description": ok_text, "headers": _HEADERS_200},
        400: error(errors400),
        401: error("invalid_client: no, unknown or failed client authentication", _HEADERS_401),
        **responses(413),
    }


# -- request handling -------------------------------------------------------------------------
async def _form(request: Request, known: tuple[str, ...]) -> dict[str, str]:
    """The known parameters of an ``application/x-www-form-urlencoded`` body (RFC 6749 §3.2)."""
    return parse_form(request.headers.get("content-type", ""), await request.body(), known)


def parse_form(content_type: str, body: bytes, known: tuple[str, ...]) -> dict[str, str]:
    """:func:`_form` of a request's ``Content-Type`` and body."""
    ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
    if ctype != _FORM:
        raise InvalidRequest(f"send {_FORM} (RFC 6749 §3.2)")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True,
                          max_num_fields=_MAX_FIELDS)  # fmt: skip
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the body is not a valid form") from exc
    seen: set[str] = set()
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in seen:
            raise InvalidRequest(f"parameter {name!r} is repeated")
        seen.add(name)
        if name not in known:
            continue
        if "\x00" in value:
            raise InvalidRequest(f"parameter {name!r} contains NUL")
        form[name] = value
    _check_client_auth_parameters(form)
    resource = form.get("resource")
    if resource and not _RESOURCE.fullmatch(resource):
        raise InvalidTarget("resource must be an absolute URI without a fragment (RFC 8707 §2)")
    return form


def _check_client_auth_parameters(form: dict[str, str]) -> None:
    """The body's client authentication, as the document's ``oneOf`` states it."""
    post = "client_secret" in form
    jwt = [n for n in ("client_assertion_type", "client_assertion") if n in form]
    if post and jwt:
        raise InvalidRequest("use one client authentication method (RFC 6749 §2.3)")
    if post and "client_id" not in form:
        raise InvalidRequest("client_secret_post needs client_id (RFC 6749 §2.3.1)")
    if jwt and len(jwt) < 2:
        raise InvalidRequest("private_key_jwt needs client_assertion_type and client_assertion")
    if jwt and form["client_assertion_type"] != ASSERTION_TYPE:
        raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}")


def _require_client_auth(form: dict[str, str], authorization: str | None) -> None:
    basic = (authorization or "")[:6].lower() == "basic "
    if not basic and not ({"client_secret", "client_assertion"} & form.keys()):
        raise InvalidClient(
            "no client authentication: use client_secret_basic, client_secret_post or "
            "private_key_jwt"
        )


def _error(
    exc: OAuthError, challenge: str = 'Basic realm="tether"', extra: dict[str, str] | None = None
) -> JSONResponse:
    headers = {**_NO_STORE, **(extra or {})}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = challenge
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


# -- routes -----------------------------------------------------------------------------------
@router.get("/.well-known/oauth-authorization-server", response_model=MetadataOut)
def metadata(svc: ServicesDep) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    return svc.oauth.metadata()


# Not in the API document: it answers only errors (the metadata names it, RFC 8414 §2).
@router.get("/oauth/authorize", include_in_schema=False, response_model=None)
def authorize() -> JSONResponse:
    """The authorization endpoint RFC 8414 metadata names (MCP clients require one): Tether
    offers no authorization-endpoint flow — agents get tokens by client credentials or token
    exchange at the token endpoint — so every request is ``unsupported_response_type``."""
    return _error(UnsupportedResponseType(
        "Tether has no authorization code or implicit flow: agents get tokens at the token "
        "endpoint (client_credentials, token exchange)"
    ))  # fmt: skip


@router.get("/.well-known/jwks.json", response_model=JwksOut)
def jwks(svc: ServicesDep) -> JSONResponse:
    """The token signing keys: next, active, and retired ones whose tokens may still live."""
    return JSONResponse(svc.signing_keys.jwks(), headers={"Cache-Control": "max-age=60"})


_TOKEN_PARAMETERS = (
    "grant_type",
    "scope",
    "resource",
    "audience",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
)


@router.post(
    "/oauth/token",
    openapi_extra=_form_body(*_TOKEN_PARAMETERS, required=("grant_type",), grants=True),
    response_model=TokenOut,
    responses=_oauth_responses(
        "invalid_request, invalid_grant, invalid_scope, invalid_target, unauthorized_client, "
        "unsupported_grant_type, invalid_dpop_proof, use_dpop_nonce",
        TokenOut,
        "The access token. Send a DPoP proof (RFC 9449) in the DPoP header to bind it to a key "
        "(token_type DPoP). When the deployment requires DPoP nonces, every answer has a "
        "DPoP-Nonce header and a proof without a valid nonce gets use_dpop_nonce (§8).",
    ),
)
async def token(request: Request, svc: ServicesDep) -> JSONResponse:
    return await answer_token(
        svc, request.headers.get("content-type", ""), await request.body(),
        request.headers.get("authorization"), request.headers.getlist("dpop"),
    )  # fmt: skip


async def answer_token(
    svc: Services, content_type: str, body: bytes, authorization: str | None,
    proofs: list[str],
) -> JSONResponse:  # fmt: skip
    """The token endpoint's answer to a request of these headers and body: this route's, and
    :class:`tether.api.fastpath.HotPaths` without FastAPI's per-request machinery."""
    try:
        form = parse_form(content_type, body, (*_TOKEN_PARAMETERS, *_CLIENT_AUTH_PARAMETERS))
        _require_client_auth(form, authorization)
        answer = await svc.oauth.token_async(form, authorization, dpop=proofs)
    except OAuthError as exc:
        return _error(exc, extra=svc.oauth.dpop_nonce_header())
    return JSONResponse(answer, headers={**_NO_STORE, **svc.oauth.dpop_nonce_header()})


_TOKEN_ARGUMENT = ("token", "token_type_hint", *_CLIENT_AUTH_PARAMETERS)


async def _caller(request: Request, svc: Any) -> tuple[Any, str, dict[str, str]]:
    """Introspection and revocation callers: a human (a user bearer token, which the body's
    client parameters then do not override) or an agent client (its credentials)."""
    form = await _form(request, _TOKEN_ARGUMENT)
    bearer = _bearer(request)
    if bearer is not None:
        try:
            user = await _run(svc.users.authenticate, bearer)
        except TetherError as exc:
            raise InvalidClient("unknown or revoked user token") from exc
        return user, user.ref, form
    authorization = request.headers.get("authorization")
    _require_client_auth(form, authorization)
    client: AuthenticatedClient = await _run(svc.oauth.authenticate_client, form, authorization)
    return client, f"agent:{client.agent.id}", form


def _challenge(request: Request) -> str:
    if _bearer(request) is not None:
        return 'Bearer realm="tether", error="invalid_token"'
    return 'Basic realm="tether"'


def _token_of(form: dict[str, str]) -> str:
    if not form.get("token"):
        raise InvalidRequest("token is required")
    return form["token"]


@router.post(
    "/oauth/introspect",
    openapi_extra=_form_body("token", "token_type_hint", required=("token",)),
    response_model=IntrospectionOut,
    responses=_oauth_responses(
        "invalid_request", IntrospectionOut, "The token's state; inactive is {active: false}"
    ),
)
async def introspect(request: Request, svc: ServicesDep) -> JSONResponse:
    """RFC 7662. Unknown, expired or revoked tokens are exactly ``{"active": false}``, and so
    is a token the caller may not introspect (§2.1): only a resource server (a client whose
    credential carries the ``tether:introspect`` scope, or the client the token's ``aud``
    names), the token's own client and admins see what a token is."""
    try:
        caller, _, form = await _caller(request, svc)
        body = await _run(svc.oauth.introspect, _token_of(form), caller)
    except OAuthError as exc:
        return _error(exc, _challenge(request))
    return JSONResponse(body, headers=_NO_STORE)


@router.post(
    "/oauth/revoke",
    openapi_extra=_form_body("token", "token_type_hint", required=("token",)),
    response_model=RevocationOut,
    responses=_oauth_responses("invalid_request", RevocationOut, "Revoked, or nothing to do"),
)
async def revoke(request: Request, svc: ServicesDep) -> JSONResponse:
    """RFC 7009: 200 whether or not the token was known."""
    try:
        caller, ref, form = await _caller(request, svc)
        token = _token_of(form)
        if isinstance(caller, AuthenticatedClient):  # an agent revokes its own tokens
            await _run(svc.oauth.revoke, token, caller, ref)
        elif caller.is_admin:  # an admin revokes any token
            await _run(svc.oauth.revoke, token, None, ref)
        # Anyone else gets the same 200 and changes nothing (RFC 7009 §2.2).
    except OAuthError as exc:
        return _error(exc, _challenge(request))
    return JSONResponse({}, headers=_NO_STORE)
