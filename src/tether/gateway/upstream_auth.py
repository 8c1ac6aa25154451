"""How the gateway authenticates to an upstream MCP server: ``httpx2.Auth`` flows built from
an upstream's configured ``auth`` (:mod:`tether.gateway_config`).

Only what the configuration says goes upstream: a static header whose value the secrets
broker holds (read when the flow is built: at each connection to the upstream), or a Bearer token
the gateway gets itself with an OAuth 2 client credential (RFC 6749 §4.4, ``client_secret_basic``),
kept until shortly before it expires and fetched again on a 401. The agent's own token never
travels: the gateway's upstream clients are built with no inbound header at all.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from urllib.parse import quote

import httpx2

from tether.gateway_config import Auth, ClientCredentialsAuth, HeaderAuth, SecretReader

_EARLY = 30.0  # seconds before expiry a client-credential token is fetched again


class UpstreamAuthError(Exception):
    """The gateway could not authenticate to an upstream (its token endpoint refused)."""


class StaticHeader(httpx2.Auth):
    def __init__(self, header: str, value: str) -> None:
        self.header, self._value = header, value

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response]:
        request.headers[self.header] = self._value
        yield request

    def headers(self) -> dict[str, str]:
        """The header, for a client other than httpx2's."""
        return {self.header: self._value}

    def __repr__(self) -> str:  # never the value
        return f"StaticHeader({self.header!r})"


class ClientCredentials(httpx2.Auth):
    """A Bearer token from ``token_url`` for ``client_id``; refreshed before it expires and
    once on a 401 (the upstream may have revoked it)."""

    def __init__(self, cfg: ClientCredentialsAuth, secret: str,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.cfg, self._secret, self.clock = cfg, secret, clock
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def forget(self) -> None:
        """The upstream refused the token kept (revoked): the next call fetches another."""
        with self._lock:
            self._token = None

    def token_request(self) -> tuple[str, dict[str, str], bytes]:
        """The token request as URL, headers and form body (for a client other than httpx2's)."""
        request = self._token_request()
        return str(request.url), dict(request.headers), request.read()

    def fresh(self) -> str | None:
        """The token kept, unless it expires soon (None: fetch one with :meth:`token_request`)."""
        with self._lock:
            if self._token is not None and self._token[1] - _EARLY > self.clock():
                return self._token[0]
            return None

    def _token_request(self) -> httpx2.Request:
        basic = base64.b64encode(
            f"{quote(self.cfg.client_id, safe='')}:{quote(self._secret, safe='')}".encode()
        ).decode()  # RFC 6749 §2.3.1: form-urlencoded, then Basic
        form = {"grant_type": "client_credentials"}
        if self.cfg.scope:
            form["scope"] = self.cfg.scope
        return httpx2.Request("POST", self.cfg.token_url, data=form,
                              headers={"Authorization": f"Basic {basic}",
                                       "Accept": "application/json"})  # fmt: skip

    def keep(self, status: int, content: bytes) -> str:
        """The token in a token endpoint's answer, kept until shortly before it expires."""
        try:
            body = json.loads(content)
            token, expires_in = str(body["access_token"]), float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamAuthError(
                f"token endpoint {self.cfg.token_url} answered {status} without an access token"
            ) from exc
        with self._lock:
            self._token = (token, self.clock() + expires_in)
        return token

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = self.fresh()
        if token is None:
            got = yield self._token_request()
            token = self.keep(got.status_code, await got.aread())
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # revoked upstream: once more with a new token
            self.forget()
            got = yield self._token_request()
            token = self.keep(got.status_code, await got.aread())
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def __repr__(self) -> str:
        return f"ClientCredentials({self.cfg.client_id!r} at {self.cfg.token_url!r})"


def upstream_auth(auth: Auth, read_secret: SecretReader) -> httpx2.Auth | None:
    """The flow for an upstream's ``auth`` (None: nothing is added)."""
    if isinstance(auth, HeaderAuth):
        return StaticHeader(auth.header, auth.prefix + read_secret(auth.secret))
    if isinstance(auth, ClientCredentialsAuth):
        return ClientCredentials(auth, read_secret(auth.client_secret))
    return None
