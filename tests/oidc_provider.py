"""A small OpenID Connect provider for the console's sign-in tests: discovery, an authorization
endpoint that signs in whoever the test says (no page), a token endpoint (client_secret_basic,
authorization code with PKCE S256 checked) and its JWKS. ``misbehave`` makes it issue the
ID tokens a hostile or broken provider would."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "tether-console"
CLIENT_SECRET = "provider-secret-4f1c"


def _key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


@dataclass
class Provider:
    issuer: str
    key: RSAKey = field(default_factory=_key)
    stranger: RSAKey = field(default_factory=_key)  # same kid, not in the JWKS
    user: dict[str, Any] = field(default_factory=dict)  # the claims of who signs in next
    misbehave: str | None = None  # "nonce", "aud", "iss", "expired", "key", "none"
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/jwks", self.jwks),
        ])  # fmt: skip

    async def discovery(self, _request: Request) -> Response:
        return JSONResponse({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        })  # fmt: skip

    async def jwks(self, _request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": q.get("nonce"), "challenge": q.get("code_challenge"),
            "redirect_uri": q.get("redirect_uri"), "user": dict(self.user),
        }  # fmt: skip
        back = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}"
        return RedirectResponse(back, status_code=302)

    async def token(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if auth != f"Basic {expected}":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await request.form()
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"},
                                status_code=400)  # fmt: skip
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                  "nonce": grant["nonce"], **grant["user"]}  # fmt: skip
        bad = self.misbehave
        if bad == "nonce":
            claims["nonce"] = "not-the-one-sent"
        elif bad == "aud":
            claims["aud"] = "someone-else"
        elif bad == "iss":
            claims["iss"] = "https://evil.example"
        elif bad == "expired":
            claims["exp"], claims["iat"] = now - 3600, now - 7200
        if bad == "none":
            header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
            body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            id_token = f"{header}.{body}."
        else:
            key = self.stranger if bad == "key" else self.key
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                             "expires_in": 300, "id_token": id_token})  # fmt: skip
