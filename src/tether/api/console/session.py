"""The console's session and request hygiene: the session cookie, CSRF tokens, form bodies,
and the headers every console response carries.

* The session cookie (``tether_session``) holds the session's secret: ``HttpOnly``,
  ``SameSite=Strict``, ``Path=/console``, ``Secure`` when the console is reached over TLS
  (``TETHER_BASE_URL`` https, or the request itself). A sign-in always starts a new session.
* Every form carries a CSRF token: an HMAC of the session's id under a key derived from the
  master key — bound to the session, so another session's token is refused; the sign-in form,
  before any session, uses a random cookie and the same value in the form (double submit).
* Every console response has a strict Content-Security-Policy (scripts and styles from the
  package's own files only: no inline script, nothing from elsewhere), no framing, no referrer,
  no caching of pages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.container import Services
from tether.errors import Forbidden, PayloadTooLarge, Unauthenticated
from tether.principals import Principal
from tether.users.signin import Signed

COOKIE = "tether_session"
PRE_COOKIE = "tether_signin"  # the sign-in form's CSRF value, before there is a session
PATH = "/console"
MAX_FORM = 64 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


@dataclass(frozen=True, slots=True)
class Visit:
    """A signed-in request: who, their session, and the CSRF token its forms carry."""

    signed: Signed
    csrf: str

    @property
    def principal(self) -> Principal:
        return self.signed.principal


def csrf_key(svc: Services) -> bytes:
    return hmac.new(svc.keys.master_key, b"tether console csrf v1", hashlib.sha256).digest()


def csrf_token(svc: Services, session_id: str) -> str:
    return hmac.new(csrf_key(svc), session_id.encode(), hashlib.sha256).hexdigest()


def visit(request: Request) -> Visit:
    """The request's session, or :class:`Unauthenticated`."""
    svc: Services = request.app.state.services
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise Unauthenticated("sign in")
    signed = svc.signin.session(secret)
    return Visit(signed, csrf_token(svc, signed.session_id))


async def form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, each field's first value."""
    if request.headers.get("content-type", "").split(";")[0].strip() not in (
        "application/x-www-form-urlencoded", ""
    ):  # fmt: skip
        raise Forbidden("a console form posts application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise PayloadTooLarge(f"a console form is at most {MAX_FORM} bytes")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v and "\x00" not in k}


def check_csrf(fields: Mapping[str, str], expected: str) -> None:
    """:class:`Forbidden` unless the form's ``csrf`` is ``expected``."""
    given = fields.get("csrf", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("the form's CSRF token is missing or not this session's: reload the page")


def secure(request: Request, svc: Services) -> bool:
    return svc.settings.base_url.startswith("https://") or request.url.scheme == "https"


def set_session(response: Response, request: Request, svc: Services, secret: str) -> None:
    response.set_cookie(COOKIE, secret, httponly=True, samesite="strict", path=PATH,
                        secure=secure(request, svc),
                        max_age=svc.settings.console_session_hours * 3600)  # fmt: skip
    response.delete_cookie(PRE_COOKIE, path=PATH)


def clear_session(response: Response, request: Request, svc: Services) -> None:
    response.delete_cookie(COOKIE, path=PATH, secure=secure(request, svc), httponly=True,
                           samesite="strict")  # fmt: skip


def pre_token(request: Request) -> tuple[str, bool]:
    """The sign-in form's CSRF value: the cookie's, or a new one (True: set the cookie)."""
    found = request.cookies.get(PRE_COOKIE)
    if found and len(found) == 43:
        return found, False
    return secrets.token_urlsafe(32), True


class ConsoleHeaders:
    """The security headers on every response under ``/console``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PATH or path.startswith(PATH + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PATH + "/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", [])
                           if h[0].lower() not in {k for k, _ in HEADERS}]  # fmt: skip
                headers.extend(HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
