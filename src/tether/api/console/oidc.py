"""Signing in to the console with an OpenID Connect provider (``TETHER_CONSOLE_OIDC_*``).

The authorization code flow with PKCE (S256), ``state`` and ``nonce``, through Authlib's
OAuth client; the ID token is verified with joserfc against the provider's JWKS: its
signature (an asymmetric algorithm the provider announces), ``iss``, ``aud`` (and ``azp``
when there are several audiences), ``exp``/``iat`` and the ``nonce`` this flow sent. What the
flow must remember between the redirect and the callback travels in a short-lived cookie,
authenticated with a key derived from the master key. The provider's role claim maps to a
Tether role (``TETHER_CONSOLE_OIDC_ROLES``); the users domain creates the human on their first
sign-in and never lets a provider's account take over a local one
(:meth:`tether.users.signin.SignIn.sign_in_external`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tether.config import Settings
from tether.container import Services
from tether.errors import Unauthenticated
from tether.principals import Role

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client  # type: ignore[import-untyped]

COOKIE = "tether_oidc"
PATH = "/console/sign-in/oidc"
FLOW_SECONDS = 600
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
_STRENGTH = {Role.ADMIN: 3, Role.SUPERVISOR: 2, Role.AUDITOR: 1}
_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}


class OidcFailed(Unauthenticated):
    code = "oidc_sign_in_failed"


def enabled(settings: Settings) -> bool:
    return bool(settings.console_oidc_issuer and settings.console_oidc_client_id)


def provider_name(settings: Settings) -> str:
    return urlsplit(settings.console_oidc_issuer or "").netloc or "your identity provider"


def _callback(settings: Settings) -> str:
    return f"{settings.base_url}{PATH}/callback"


def _key(svc: Services) -> bytes:
    return hmac.new(svc.keys.master_key, b"tether console oidc flow v1", hashlib.sha256).digest()


def _seal(svc: Services, flow: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(orjson.dumps(flow)).decode()
    mac = hmac.new(_key(svc), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _unseal(svc: Services, value: str) -> dict[str, Any]:
    body, _, mac = value.rpartition(".")
    good = hmac.new(_key(svc), body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(mac.encode(), good.encode()):
        raise OidcFailed("the sign-in's state is missing or was tampered with: start again")
    flow: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body))
    if flow.get("exp", 0) < time.time():
        raise OidcFailed("the sign-in took too long: start again")
    return flow


async def _json(url: str) -> dict[str, Any]:
    """A provider document (discovery, JWKS), cached five minutes."""
    found = _CACHE.get(url)
    if found is not None and found[0] > time.monotonic():
        return found[1]
    import httpx2  # only a deployment with a provider loads an HTTP client for it

    try:
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.get(url)
            answer.raise_for_status()
            value: dict[str, Any] = answer.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise OidcFailed(f"the identity provider did not answer {url}: {exc}") from None
    _CACHE[url] = (time.monotonic() + 300, value)
    return value


async def _metadata(settings: Settings) -> dict[str, Any]:
    issuer = (settings.console_oidc_issuer or "").rstrip("/")
    meta = await _json(f"{issuer}/.well-known/openid-configuration")
    if meta.get("issuer") != settings.console_oidc_issuer:
        raise OidcFailed("the provider's discovery document names another issuer")
    return meta


def _client(settings: Settings) -> AsyncOAuth2Client:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    return AsyncOAuth2Client(
        client_id=settings.console_oidc_client_id,
        client_secret=settings.console_oidc_client_secret,
        scope="openid profile email", redirect_uri=_callback(settings),
        code_challenge_method="S256", timeout=10,
    )  # fmt: skip


async def start(request: Request, svc: Services, target: str) -> Response:
    """Off to the provider, this flow's state, nonce and PKCE verifier in a sealed cookie."""
    settings = svc.settings
    meta = await _metadata(settings)
    flow = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24),
            "verifier": secrets.token_urlsafe(48), "next": target,
            "exp": int(time.time()) + FLOW_SECONDS}  # fmt: skip
    async with _client(settings) as client:
        url, _ = client.create_authorization_url(
            meta["authorization_endpoint"], state=flow["state"], nonce=flow["nonce"],
            code_verifier=flow["verifier"],
        )  # fmt: skip
    response = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation.
    response.set_cookie(COOKIE, _seal(svc, flow), max_age=FLOW_SECONDS, path=PATH,
                        httponly=True, samesite="lax",
                        secure=settings.base_url.startswith("https://"))  # fmt: skip
    return response


async def finish(request: Request, svc: Services) -> tuple[str, str]:
    """The callback: the code exchanged, the ID token verified, the human signed in. Returns
    the session's secret and where to go."""
    settings, q = svc.settings, request.query_params
    flow = _unseal(svc, request.cookies.get(COOKIE, ""))
    if q.get("error"):
        raise OidcFailed(f"the provider refused: {q.get('error')} {q.get('error_description', '')}")
    if not q.get("state") or not hmac.compare_digest(q["state"], flow["state"]):
        raise OidcFailed("the answer is not for this sign-in (state): start again")
    meta = await _metadata(settings)
    try:
        async with _client(settings) as client:
            token = await client.fetch_token(
                meta["token_endpoint"], code=q.get("code", ""), code_verifier=flow["verifier"],
                grant_type="authorization_code",
            )  # fmt: skip
    except Exception as exc:  # Authlib's OAuthError, httpx's errors: all say "no token"
        raise OidcFailed(f"the provider gave no token for the code: {exc}") from None
    claims = await _verified(settings, meta, str(token.get("id_token", "")), flow["nonce"])
    role = _role(settings, claims.get(settings.console_oidc_role_claim))
    username = str(claims.get(settings.console_oidc_username_claim) or "").lower()
    address = request.client.host if request.client else "unknown"
    secret, _ = await anyio.to_thread.run_sync(partial(
        svc.signin.sign_in_external, subject=f"{claims['iss']} {claims['sub']}",
        username=username, role=role, address=address, via="oidc",
    ))  # fmt: skip
    return secret, str(flow.get("next") or "/console")


async def _verified(
    settings: Settings, meta: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    offered = set(meta.get("id_token_signing_alg_values_supported") or ["RS256"])
    algorithms = [a for a in ALGORITHMS if a in offered]
    keys = KeySet.import_key_set(await _json(meta["jwks_uri"]))  # type: ignore[arg-type]
    try:
        token = jwt.decode(id_token, keys, algorithms=algorithms)
        registry = jwt.JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": settings.console_oidc_issuer or ""},
            sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )  # fmt: skip
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise OidcFailed(f"the provider's ID token does not hold: {exc}") from None
    claims = dict(token.claims)
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if settings.console_oidc_client_id not in audiences:
        raise OidcFailed("the ID token is not for Tether (aud)")
    if len(audiences) > 1 and claims.get("azp") != settings.console_oidc_client_id:
        raise OidcFailed("the ID token is for several parties, not authorized for Tether (azp)")
    return claims


def _role(settings: Settings, value: Any) -> Role:
    values = value if isinstance(value, list) else [value]
    mapped = [Role(settings.console_oidc_roles[v]) for v in values
              if isinstance(v, str) and v in settings.console_oidc_roles]  # fmt: skip
    if not mapped:
        raise OidcFailed("your account at the identity provider has no Tether role: ask an "
                         "admin to map one of your groups (TETHER_CONSOLE_OIDC_ROLES)")  # fmt: skip
    return max(mapped, key=lambda r: _STRENGTH[r])


def landing(target: str) -> HTMLResponse:
    """After the cross-site redirect back, one same-site step before the console: the session
    cookie is ``SameSite=Strict``, which a navigation that began at the provider never sends."""
    url = html.escape(target, quote=True)
    body = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0; url={url}"><title>Signed in</title>'
            f'</head><body><main><p>Signed in. <a href="{url}">Continue to the '
            "console</a>.</p></main></body></html>")  # fmt: skip
    return HTMLResponse(body)
