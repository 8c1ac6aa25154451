"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2, RFC 7521).

Methods: ``client_secret_basic``, ``client_secret_post`` and ``private_key_jwt``. The client
is the agent (``client_id`` = agent id); exactly one method per request. Every failure is
``invalid_client`` and is audited with the reason, never with the secret or assertion.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
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
from tether.db.bulk import fetch_all_with, fetch_one_with
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
class CredentialState:
    """A credential as authentication reads it: what it relies on besides the secret or key."""

    id: str
    agent_id: str
    deleted_at: int | None
    expires_at: int | None
    scopes: str | None  # JSON list, or null

    @classmethod
    def of(cls, row: CredentialRow) -> CredentialState:
        return cls(row.id, row.agent_id, row.deleted_at, row.expires_at, row.scopes)


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    agent: AgentFacts
    credential_id: str
    method: str
    scope_ceiling: frozenset[str]  # the credential's ceiling ∩ the agent's scopes
    # private_key_jwt: the assertion's replay-cache key and until when (NumericDate) it must
    # be kept, spent by :func:`spend` in the write transaction that acts on it.
    assertion: tuple[str, int] | None = None
    # what the authentication relied on, for :func:`unchanged` (None: read in this request)
    state: CredentialState | None = None
    remembered: bool = False  # answered from :class:`ClientReads`, not from the database


class ClientReads:
    """What client authentication read from the database, kept per process: an API key's
    credential by its secret's digest and an agent's public keys (parsed), each with its
    agent's facts — so that a client's next token request reads nothing before the write
    transaction that issues it.

    Never trusted on its own. Only the token endpoint's ``client_credentials`` grant uses it,
    and its write transaction reads the credential and its agent again under the write lock
    (:func:`unchanged`): a credential deleted, an agent suspended, killed or given other
    scopes since — any difference — and the request starts over from the database
    (:meth:`forget`). A refusal is never answered from here either: a remembered entry that
    fails a check is forgotten and the request authenticated again from the database. Bounded
    (forgotten all at once past ``capacity``); nothing secret is kept (digests and public
    keys)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.secrets: dict[str, tuple[CredentialState, AgentFacts]] = {}
        self.keys: dict[str, tuple[tuple[tuple[CredentialState, Any], ...], AgentFacts]] = {}

    def remember_secret(self, digest: str, state: CredentialState, agent: AgentFacts) -> None:
        if len(self.secrets) >= self.capacity:
            self.secrets.clear()
        self.secrets[digest] = (state, agent)

    def remember_keys(
        self, agent_id: str, keys: tuple[tuple[CredentialState, Any], ...], agent: AgentFacts
    ) -> None:
        if len(self.keys) >= self.capacity:
            self.keys.clear()
        self.keys[agent_id] = (keys, agent)

    def forget(self, agent_id: str) -> None:
        """Everything remembered of this agent's credentials."""
        self.keys.pop(agent_id, None)
        # copied in one call first: request threads add entries meanwhile
        for digest, (state, _) in list(self.secrets.items()):
            if state.agent_id == agent_id:
                self.secrets.pop(digest, None)


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
        # the agent whose remembered credentials this refusal was decided on (ClientReads)
        self.remembered: str | None = None


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
    reads: ClientReads | None = None,
) -> AuthenticatedClient:
    """The agent the request authenticates as; raises :class:`ClientAuthError` otherwise.
    Only reads: what a success writes (the assertion's ``jti`` spent, the credential's
    ``last_used_at``) is :func:`spend`'s and :func:`touch`'s, in the write transaction that
    acts on it. With ``reads``, what was read before may answer (see :class:`ClientReads`:
    the caller must then check :func:`unchanged` under the write lock)."""
    attempt = partial(_authenticate, s, form, authorization, issuer=issuer,
                      token_endpoint=token_endpoint, now=now)  # fmt: skip
    if reads is not None:
        try:
            return attempt(reads=reads)
        except ClientAuthError as exc:
            if not exc.remembered:
                raise
            reads.forget(exc.remembered)  # refused on what was remembered: read it again
    return attempt(reads=None)


def _authenticate(
    s: Session,
    form: dict[str, str],
    authorization: str | None,
    *,
    issuer: str,
    token_endpoint: str,
    now: datetime,
    reads: ClientReads | None,
) -> AuthenticatedClient:
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
        return _by_secret(s, client_id, secret, method="client_secret_basic", now=now, reads=reads)
    if post:
        return _by_secret(s, form.get("client_id", ""), form["client_secret"],
                          method="client_secret_post", now=now, reads=reads)  # fmt: skip
    return _by_assertion(s, form, issuer=issuer, token_endpoint=token_endpoint, now=now,
                         reads=reads)  # fmt: skip


# The credential and its agent as authentication relied on them, read again under the write
# lock by the transaction that acts on the authentication (:func:`unchanged`).
_STATE = (
    "c.agent_id, c.deleted_at, c.expires_at, c.scopes, a.status, a.expires_at, a.scopes"
    " FROM agent_credentials c JOIN agents a ON a.id = c.agent_id"
)
_CURRENT = f"SELECT {_STATE} WHERE c.id = ?"
# The same for several credentials (``{}``: their placeholders), and where what it read waits
# in the write transaction's ``info`` for each job's :func:`unchanged`: credential id -> row.
_CURRENT_MANY = "SELECT c.id, " + _STATE + " WHERE c.id IN ({})"
_READ = "tether.clients.current"
# What spend_all found, per client of the batch (``id()``: two requests with the same assertion
# are equal values): True if its assertion was used before.
_SPENT = "tether.clients.spent"


def read_current(s: Session, remembered: Sequence[AuthenticatedClient]) -> None:
    """Read, in one statement, what :func:`unchanged` reads for each of these clients (a
    group commit's batch of issuances, under the write lock): each check then runs none."""
    ids = sorted({c.state.id for c in remembered if c.state is not None})
    if not ids:
        return
    rows = fetch_all_with(s, _CURRENT_MANY.format(", ".join("?" * len(ids))), tuple(ids))
    found = {row[0]: row[1:] for row in rows}
    s.info[_READ] = {i: found.get(i) for i in ids}


def unchanged(s: Session, client: AuthenticatedClient) -> bool:
    """Whether the credential and the agent ``client`` was authenticated with are, in write
    transaction ``s``, as authentication read them (one indexed read, or what
    :func:`read_current` read in ``s``): if not, what the request was granted on may no
    longer hold, and it must be authenticated again."""
    state = client.state
    if state is None:
        return True
    read: dict[str, tuple[Any, ...] | None] = s.info.get(_READ, {})
    row = read[state.id] if state.id in read else fetch_one_with(s, _CURRENT, (state.id,))
    if row is None:
        return False
    agent = client.agent
    return row[:4] == (state.agent_id, state.deleted_at, state.expires_at, state.scopes) and (
        row[4],
        row[5],
        frozenset(loads(row[6])),
    ) == (agent.status, agent.expires_at, agent.scopes)


def spend(s: Session, client: AuthenticatedClient, replay: ReplayCache) -> None:
    """Spend the client's assertion (private_key_jwt) in write transaction ``s``: a second
    use of its ``jti`` — on any worker or node, ever before its exp — raises
    :class:`ClientAuthError`. Nothing to do for a client secret. What :func:`spend_all`
    spent for this client in ``s`` is its answer."""
    if client.assertion is None:
        return
    replayed = s.info.get(_SPENT, {}).get(id(client))
    if replayed is None:
        key, expires_at = client.assertion
        replayed = replay.seen(s, "client_assertion", key, expires_at)
    if replayed:
        raise _fail(client.agent.id, client.method, "assertion jti already used (replay)")


def spend_all(s: Session, batch: Sequence[AuthenticatedClient], replay: ReplayCache) -> None:
    """:func:`spend` for each client of a group commit's batch of issuances, in one
    statement: those with an assertion whose authentication still holds (:func:`unchanged`;
    one that does not is answered afresh and must not have spent it). Each client's own
    :func:`spend` then raises or not from what this found — the first of two clients with
    the same assertion spent it, the second replayed it."""
    due = [c for c in batch if c.assertion is not None and (not c.remembered or unchanged(s, c))]
    if len(due) < 2:
        return
    keys = [c.assertion for c in due if c.assertion is not None]
    verdicts = replay.seen_many(s, "client_assertion", keys)
    s.info[_SPENT] = {id(c): replayed for c, replayed in zip(due, verdicts, strict=True)}


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
    s: Session,
    row: CredentialState | None,
    agent: AgentFacts | None,
    *,
    client_id: str,
    method: str,
    now: datetime,
) -> AuthenticatedClient:
    if row is None or row.agent_id != client_id:
        raise _fail(client_id, method, "unknown client or credential")
    if row.deleted_at is not None:
        raise _fail(client_id, method, "credential deleted")
    now_us = to_micros(now)
    if row.expires_at is not None and row.expires_at <= now_us:
        raise _fail(client_id, method, "credential expired")
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
    return AuthenticatedClient(agent, row.id, method, allowed, state=row)


def _remembered(error: ClientAuthError, agent_id: str) -> ClientAuthError:
    error.remembered = agent_id
    return error


def _by_secret(
    s: Session, client_id: str, secret: str, *, method: str, now: datetime,
    reads: ClientReads | None = None,
) -> AuthenticatedClient:  # fmt: skip
    _check_client_id(client_id, method)
    digest = secret_digest(secret)
    known = reads.secrets.get(digest) if reads is not None else None
    if known is not None:
        try:
            client = _usable(s, *known, client_id=client_id, method=method, now=now)
            return replace(client, remembered=True)
        except ClientAuthError as exc:
            raise _remembered(exc, known[0].agent_id) from None
    row = _store.by_secret_digest(s, digest)
    if row is not None and not hmac.compare_digest(row.secret_digest or "", digest):
        row = None  # unreachable in practice; keeps the comparison constant-time
    state = CredentialState.of(row) if row is not None else None
    agent = directory.facts(s, row.agent_id) if row is not None else None
    client = _usable(s, state, agent, client_id=client_id, method=method, now=now)
    if reads is not None and state is not None and agent is not None:
        reads.remember_secret(digest, state, agent)
    return client


def _public_keys(
    s: Session, client_id: str, reads: ClientReads | None
) -> tuple[tuple[tuple[CredentialState, Any], ...], AgentFacts | None, bool]:
    """The agent's public keys (parsed; a key that does not parse is left out) and facts,
    and whether they were remembered."""
    if reads is not None and (known := reads.keys.get(client_id)) is not None:
        return known[0], known[1], True
    parsed = []
    for row in _store.public_keys(s, client_id):
        try:
            parsed.append((CredentialState.of(row), import_public_jwk(loads(row.jwk or "{}"))))
        except (JoseError, ValueError):
            continue
    keys = tuple(parsed)
    agent = directory.facts(s, client_id) if keys else None
    if reads is not None and agent is not None:
        reads.remember_keys(client_id, keys, agent)
    return keys, agent, False


def _by_assertion(
    s: Session,
    form: dict[str, str],
    *,
    issuer: str,
    token_endpoint: str,
    now: datetime,
    reads: ClientReads | None = None,
) -> AuthenticatedClient:
    method = "private_key_jwt"
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
    token = form.get("client_assertion", "")
    client_id = form.get("client_id") or _unverified_iss(token)
    if not isinstance(client_id, str) or not client_id:
        raise _fail(None, method, "assertion names no client")
    _check_client_id(client_id, method)
    keys, agent, remembered = _public_keys(s, client_id, reads)
    claims: dict[str, Any] | None = None
    used: CredentialState | None = None
    for state, key in keys:
        try:
            decoded = jwt.decode(token, key, registry=_REGISTRY)
        except (JoseError, ValueError):
            continue
        claims, used = decoded.claims, state
        break
    try:
        if claims is None or used is None:
            raise _fail(client_id, method,
                        "assertion signature does not verify with a registered key")  # fmt: skip
        reason = _assertion_problem(claims, client_id, issuer, token_endpoint,
                                    int(now.timestamp()))  # fmt: skip
        if reason:
            raise _fail(client_id, method, reason)
        client = _usable(s, used, agent, client_id=client_id, method=method, now=now)
    except ClientAuthError as exc:
        raise (_remembered(exc, client_id) if remembered else exc) from None
    spent = (f"{client_id}:{claims['jti']}", int(claims["exp"]) + LEEWAY)
    return replace(client, assertion=spent, remembered=remembered)


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
