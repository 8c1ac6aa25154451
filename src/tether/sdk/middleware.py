"""ASGI middleware that guards a resource server with Tether access tokens.

The token is read from the ``Authorization`` header only (RFC 6750 §2.1 ``Bearer``, RFC 9449
§7.1 ``DPoP``); the query string and the body are never consulted (RFC 9700 §2.4.2 forbids
tokens in URLs). Failures are answered as RFC 6750 §3 asks: 401 with a ``WWW-Authenticate``
challenge (no ``error`` when the request carried no token at all), 403 with
``error="insufficient_scope"`` and the required ``scope``, 400 ``invalid_request`` for a
malformed ``Authorization`` header. Verified claims are put in ``scope["state"]`` (so
Starlette's ``request.state.tether_claims``) and in ``scope["tether_claims"]``.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from tether.sdk.claims import AccessTokenClaims
from tether.sdk.errors import InsufficientScope, InvalidToken
from tether.sdk.jwks import JWKSCache
from tether.sdk.verify import RevocationCheck, verify_access_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# RFC 7235 §2.1: the scheme is case-insensitive; challenges use the registered spelling.
_SCHEMES = {"bearer": "Bearer", "dpop": "DPoP"}
# RFC 6750 §2.1 b64token (the token68 of RFC 7235 §2.1).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §3: error_description and scope values are limited to these characters.
_NOT_QUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


@dataclass(frozen=True, slots=True)
class DPoPRequest:
    """What a DPoP verifier needs from the request (RFC 9449 §4.3).

    ``url`` is the target URI without query and fragment, rebuilt from the ASGI scope and
    the ``Host`` header; behind a proxy that rewrites either, the verifier should compare
    ``htu`` with the public URL instead. ``proofs`` holds every ``DPoP`` header value: a
    verifier must refuse anything but exactly one.
    """

    method: str
    url: str
    proofs: tuple[str, ...]


#: Checks the DPoP proof of one request for a DPoP-bound token: called with the request, the
#: access token and its verified claims; raises :class:`InvalidToken` to refuse.
DPoPVerifier = Callable[[DPoPRequest, str, AccessTokenClaims], None]


@dataclass(frozen=True, slots=True)
class _Denial:
    status: int
    scheme: str
    error: str | None
    description: str
    scope: str | None = None


class TetherAuthMiddleware:
    """Require a valid Tether access token on every HTTP and WebSocket request.

    ``exempt_paths`` are exact paths, or prefixes when they end in ``*`` (``"/public/*"``).
    ``required_scopes`` apply to every non-exempt request. ``revocation_check`` and
    ``dpop_verifier`` are the hooks described at :data:`tether.sdk.RevocationCheck` and
    :data:`DPoPVerifier`; without a verifier, DPoP-bound tokens are refused. Verification
    runs in a worker thread: a key-set refetch or a revocation look-up must not block the
    event loop. ``resource_metadata`` (an RFC 9728 metadata URL) is advertised in challenges,
    as MCP authorization requires. ``clock`` gives epoch seconds for ``exp``/``nbf``/``iat``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        issuer: str,
        audience: str,
        jwks: JWKSCache,
        required_scopes: Iterable[str] = (),
        exempt_paths: Collection[str] = (),
        revocation_check: RevocationCheck | None = None,
        dpop_verifier: DPoPVerifier | None = None,
        leeway: int = 30,
        resource_metadata: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(required_scopes, str) or isinstance(exempt_paths, str):
            raise TypeError("required_scopes and exempt_paths are collections, not strings")
        self.app = app
        self._issuer = issuer
        self._audience = audience
        self._jwks = jwks
        self._required = tuple(sorted(set(required_scopes)))
        if any(not s or " " in s for s in self._required):
            raise ValueError("a required scope must be one non-empty scope token")
        self._exact = frozenset(p for p in exempt_paths if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in exempt_paths if p.endswith("*"))
        self._revocation_check = revocation_check
        self._dpop_verifier = dpop_verifier
        self._leeway = leeway
        self._resource_metadata = resource_metadata
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        outcome = await self._authenticate(scope)
        if isinstance(outcome, _Denial):
            await self._deny(scope, send, outcome)
            return
        scope.setdefault("state", {})["tether_claims"] = outcome
        scope["tether_claims"] = outcome
        await self.app(scope, receive, send)

    def _is_exempt(self, path: str) -> bool:
        return path in self._exact or path.startswith(self._prefixes)

    async def _authenticate(self, scope: Scope) -> AccessTokenClaims | _Denial:
        credentials = _read_authorization(scope)
        if isinstance(credentials, _Denial):
            return credentials
        scheme, token = credentials
        check = functools.partial(
            verify_access_token,
            token,
            issuer=self._issuer,
            audience=self._audience,
            jwks=self._jwks,
            now=int(self._clock()),
            leeway=self._leeway,
            required_scopes=self._required,
            revocation_check=self._revocation_check,
            dpop=self._dpop_check(scope),
            scheme=scheme,
        )
        try:
            return await anyio.to_thread.run_sync(check)
        except InsufficientScope as exc:
            return _Denial(403, scheme, exc.error, exc.description, " ".join(self._required))
        except InvalidToken as exc:
            return _Denial(exc.http_status, scheme, exc.error, exc.description)

    def _dpop_check(self, scope: Scope) -> Callable[[str, AccessTokenClaims], None] | None:
        verifier = self._dpop_verifier
        if verifier is None:
            return None
        request = DPoPRequest(
            method=scope.get("method", "GET"),
            url=_target_uri(scope),
            proofs=tuple(v.decode("latin-1") for k, v in scope["headers"] if k == b"dpop"),
        )

        def check(token: str, claims: AccessTokenClaims) -> None:
            verifier(request, token, claims)

        return check

    async def _deny(self, scope: Scope, send: Send, denial: _Denial) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        body: dict[str, str] = {"error": denial.error or "invalid_token"}
        body["error_description"] = denial.description
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if denial.status == 503:
            headers.append((b"retry-after", b"30"))
        else:
            headers.append((b"www-authenticate", self._challenge(denial).encode("latin-1")))
        await send({"type": "http.response.start", "status": denial.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    def _challenge(self, denial: _Denial) -> str:
        """The RFC 6750 §3 (or RFC 9449 §7.1) challenge for a denial."""
        params: list[tuple[str, str]] = []
        if self._resource_metadata is not None:
            params.append(("resource_metadata", self._resource_metadata))
        if denial.error is not None:
            params.append(("error", denial.error))
            params.append(("error_description", denial.description))
        required = denial.scope if denial.scope is not None else " ".join(self._required)
        if required and (denial.error is None or denial.scope is not None):
            params.append(("scope", required))
        if not params:
            return denial.scheme
        rendered = ", ".join(f'{name}="{_NOT_QUOTABLE.sub("?", v)}"' for name, v in params)
        return f"{denial.scheme} {rendered}"


def _read_authorization(scope: Scope) -> tuple[str, str] | _Denial:
    """The scheme and token of the one ``Authorization`` header (RFC 6750 §2.1, §3.1)."""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
    if not values:
        return _Denial(401, "Bearer", None, "no access token in the Authorization header")
    if len(values) > 1:
        return _Denial(400, "Bearer", "invalid_request", "more than one Authorization header")
    raw_scheme, _, credentials = values[0].strip().partition(" ")
    scheme = _SCHEMES.get(raw_scheme.lower())
    if scheme is None:
        return _Denial(401, "Bearer", None, "the Authorization scheme is not Bearer or DPoP")
    token = credentials.strip()
    if not _TOKEN68.fullmatch(token):
        return _Denial(400, scheme, "invalid_request", "the Authorization header is malformed")
    return scheme, token


def _target_uri(scope: Scope) -> str:
    """The request URI without query and fragment, as DPoP's ``htu`` (RFC 9449 §4.3)."""
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
    path, root = scope["path"], scope.get("root_path", "")
    # ASGI servers differ on whether "path" already includes "root_path".
    if root and not path.startswith(root):
        path = root + path
    return f"{scheme}://{host}{path}"
