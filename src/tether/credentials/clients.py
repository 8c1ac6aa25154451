"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2, RFC 7521).

Methods: ``client_secret_basic``, ``client_secret_post`` and ``private_key_jwt``. The client
is the agent (``client_id`` = agent id); exactly one method per request. Every failure is
``invalid_client`` and is audited with the reason, never with the secret or assertion.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy.orm import Session

from tether.agents import directory
from tether.agents.authority import NotLive, not_live
from tether.agents.directory import AgentFacts
from tether.clock import to_micros
from tether.credentials.errors import InvalidClient, InvalidRequest
from tether.credentials.jose import AllowListRegistry
from tether.credentials.jwks import import_public_jwk
from tether.credentials.models import CredentialRow
from tether.credentials.replay import ReplayCache
from tether.credentials.service import secret_digest
from tether.credentials.store import DatabaseCredentialStore
from tether.db.text import unstorable
from tether.freeze.gate import frozen_among
from tether.jsonutil import loads

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASYMMETRIC = ["ES256", "ES384", "ES512", "EdDSA", "Ed25519", "PS256", "PS384", "RS256", "RS384"]
# RFC 7523 wants a short exp; one hour is what common clients (Authlib) send by default, and
# the replay cache keeps each jti until its exp, so a replay is refused for its whole life.
MAX_ASSERTION_LIFETIME = 3600
_REGISTRY = AllowListRegistry(algorithms=ASYMMETRIC)
LEEWAY = 30
_store = DatabaseCredentialStore()


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    agent: AgentFacts
    credential_id: str
    method: str
    scope_ceiling: frozenset[str]  # the credential's ceiling ∩ the agent's scopes
    # private_key_jwt: the assertion's replay-cache key and until when (NumericDate) it must
    # be kept, spent by :func:`spend` in the write transaction that acts on it.
    assertion: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ClientAuthFailure:
    client_id: str | None
    method: str
    reason: str


class ClientAuthError(InvalidClient):
    def __init__(self, failure: ClientAuthFailure, *, basic: bool = False) -> None:
        super().__init__("client authentication failed")
        self.failure = failure
        self.basic = basic  # answer with WWW-Authenticate: Basic (RFC 6749 §5.2)


def _basic(authorization: str | None) -> tuple[str, str] | None:
    """The Basic credentials of ``authorization``; None if it is not Basic. A malformed one
    (not base64 — non-ASCII bytes included —, not UTF-8, no ``:``) is a failed client
    authentication: ``invalid_client``, 401 with the Basic challenge (RFC 6749 §5.2)."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        # A str with non-ASCII characters raises ValueError, bad base64 binascii.Error (also
        # a ValueError), bytes that are not UTF-8 UnicodeDecodeError (a ValueError too).
        raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except ValueError:
        raise _fail(None, "client_secret_basic", "malformed Basic authorization header") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise _fail(None, "client_secret_basic", "malformed Basic authorization header")
    # RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded.
    return unquote_plus(client_id), unquote_plus(secret)


def authenticate(
    s: Session,
    form: dict[str, str],
    authorization: str | None,
    *,
    issuer: str,
    token_endpoint: str,
    now: datetime,
) -> AuthenticatedClient:
    """The agent the request authenticates as; raises :class:`ClientAuthError` otherwise.
    Only reads: what a success writes (the assertion's ``jti`` spent, the credential's
    ``last_used_at``) is :func:`spend`'s and :func:`touch`'s, in the write transaction that
    acts on it."""
    basic = _basic(authorization)
    post = "client_secret" in form
    assertion = "client_assertion" in form or "client_assertion_type" in form
    if sum((basic is not None, post, assertion)) != 1:
        raise InvalidRequest(
            "authenticate the client with exactly one method: client_secret_basic, "
            "client_secret_post or private_key_jwt"
        )
    if basic is not None:
        client_id, secret = basic
        if form.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id in the body differs from the Basic credentials")
        return _by_secret(s, client_id, secret, "client_secret_basic", now)
    if post:
        return _by_secret(s, form.get("client_id", ""), form["client_secret"],
                          "client_secret_post", now)  # fmt: skip
    return _by_assertion(s, form, issuer=issuer, token_endpoint=token_endpoint, now=now)


def spend(s: Session, client: AuthenticatedClient, replay: ReplayCache) -> None:
    """Spend the client's assertion (private_key_jwt) in write transaction ``s``: a second
    use of its ``jti`` — on any worker or node, ever before its exp — raises
    :class:`ClientAuthError`. Nothing to do for a client secret."""
    if client.assertion is None:
        return
    key, expires_at = client.assertion
    if replay.seen(s, "client_assertion", key, expires_at):
        raise _fail(client.agent.id, client.method, "assertion jti already used (replay)")


def touch(s: Session, credential_id: str, now_us: int) -> None:
    """Record that the credential was used at ``now_us``."""
    _store.touch(s, credential_id, now_us)


def claimed_client_id(form: dict[str, str], authorization: str | None) -> str | None:
    """The client a token request names, unverified: only to attribute a refusal that comes
    before client authentication. None when it names none; escaped when it cannot name an
    agent, as failed authentications record it."""
    try:
        basic = _basic(authorization)
    except ClientAuthError:
        basic = None
    if basic is not None:
        client_id: str | None = basic[0]
    else:
        assertion = form.get("client_assertion")
        client_id = form.get("client_id") or (_unverified_iss(assertion) if assertion else None)
    if not client_id:
        return None
    if _CLIENT_ID.match(client_id):
        return client_id
    return client_id.encode("unicode_escape").decode()[:80]


def _fail(client_id: str | None, method: str, reason: str) -> ClientAuthError:
    return ClientAuthError(ClientAuthFailure(client_id, method, reason),
                           basic=method == "client_secret_basic")  # fmt: skip


_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,40}$")


def _check_client_id(client_id: str, method: str) -> None:
    """A client_id that cannot name an agent is unknown; it never reaches the database
    (PostgreSQL text cannot even hold a NUL)."""
    if not _CLIENT_ID.match(client_id):
        raise _fail(client_id.encode("unicode_escape").decode()[:80], method, "malformed client_id")


def _usable(
    s: Session, row: CredentialRow | None, client_id: str, method: str, now: datetime
) -> AuthenticatedClient:
    if row is None or row.agent_id != client_id:
        raise _fail(client_id, method, "unknown client or credential")
    if row.deleted_at is not None:
        raise _fail(client_id, method, "credential deleted")
    now_us = to_micros(now)
    if row.expires_at is not None and row.expires_at <= now_us:
        raise _fail(client_id, method, "credential expired")
    agent = directory.facts(s, row.agent_id)
    assert agent is not None  # foreign key
    why = not_live(agent.liveness, now_us)
    if why is NotLive.INACTIVE:
        raise _fail(client_id, method, f"agent is {agent.status}")
    if why is NotLive.EXPIRED:
        raise _fail(client_id, method, "agent expired")
    if (frozen := frozen_among(s, [agent.id])) is not None:
        raise _fail(client_id, method, f"agent is frozen ({frozen.freeze.reason})")
    allowed = agent.scopes
    if row.scopes is not None:
        allowed &= frozenset(loads(row.scopes))
    return AuthenticatedClient(agent, row.id, method, allowed)


def _by_secret(
    s: Session, client_id: str, secret: str, method: str, now: datetime
) -> AuthenticatedClient:
    _check_client_id(client_id, method)
    digest = secret_digest(secret)
    row = _store.by_secret_digest(s, digest)
    if row is not None and not hmac.compare_digest(row.secret_digest or "", digest):
        row = None  # unreachable in practice; keeps the comparison constant-time
    return _usable(s, row, client_id, method, now)


def _by_assertion(
    s: Session,
    form: dict[str, str],
    *,
    issuer: str,
    token_endpoint: str,
    now: datetime,
) -> AuthenticatedClient:
    method = "private_key_jwt"
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
    token = form.get("client_assertion", "")
    client_id = form.get("client_id") or _unverified_iss(token)
    if not isinstance(client_id, str) or not client_id:
        raise _fail(None, method, "assertion names no client")
    _check_client_id(client_id, method)
    keys = _store.public_keys(s, client_id)
    claims: dict[str, Any] | None = None
    used: CredentialRow | None = None
    for row in keys:
        try:
            key = import_public_jwk(loads(row.jwk or "{}"))
            decoded = jwt.decode(token, key, registry=_REGISTRY)
        except (JoseError, ValueError):
            continue
        claims, used = decoded.claims, row
        break
    if claims is None or used is None:
        raise _fail(client_id, method, "assertion signature does not verify with a registered key")
    reason = _assertion_problem(claims, client_id, issuer, token_endpoint, int(now.timestamp()))
    if reason:
        raise _fail(client_id, method, reason)
    client = _usable(s, used, client_id, method, now)
    spent = (f"{client_id}:{claims['jti']}", int(claims["exp"]) + LEEWAY)
    return replace(client, assertion=spent)


def _assertion_problem(
    claims: dict[str, Any], client_id: str, issuer: str, token_endpoint: str, now: int
) -> str | None:
    """RFC 7523 §3 checks; the first that fails, or ``None`` when the assertion is acceptable."""
    aud = claims.get("aud")
    auds = {a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)}
    exp: Any = claims.get("exp")
    nbf: Any = claims.get("nbf")
    iat: Any = claims.get("iat")
    jti: Any = claims.get("jti")
    number = (int, float)
    has_exp = isinstance(exp, number) and not isinstance(exp, bool)
    checks = [
        (claims.get("iss") == client_id == claims.get("sub"),
         "assertion iss and sub must both be the client_id"),
        (bool({issuer, token_endpoint} & auds),
         "assertion aud must be the issuer or the token endpoint"),
        (has_exp, "assertion has no exp"),
        (not has_exp or exp > now - LEEWAY, "assertion expired"),
        (not has_exp or exp <= now + MAX_ASSERTION_LIFETIME + LEEWAY,
         f"assertion exp is more than {MAX_ASSERTION_LIFETIME}s away"),
        (not isinstance(nbf, number) or nbf <= now + LEEWAY, "assertion not yet valid (nbf)"),
        (not isinstance(iat, number) or iat <= now + LEEWAY,
         "assertion issued in the future (iat)"),
        (isinstance(jti, str) and 8 <= len(jti) <= 200 and not unstorable(jti),
         "assertion needs a jti of 8-200 characters, no NUL"),
    ]  # fmt: skip
    return next((message for ok, message in checks if not ok), None)


def _unverified_iss(token: str) -> str | None:
    """Only to find which client's keys to try; nothing unverified is trusted."""
    try:
        payload = loads(jws.extract_compact(token.encode()).payload)
    except (JoseError, ValueError, UnicodeError):
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None
