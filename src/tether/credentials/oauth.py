"""The OAuth 2 authorization server's rules: the token endpoint (client_credentials),
introspection (RFC 7662) and revocation (RFC 7009). Every issuance, failed client
authentication and revocation is a ledger event carrying the ``jti`` — never a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, NoReturn

from anyio import to_thread
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Session

from tether.agents import authority, directory
from tether.agents.authority import Act
from tether.agents.cutoff import FOR_GOOD, Why, defer
from tether.agents.directory import AgentFacts
from tether.audit.events import EventType, NewEvent
from tether.audit.group import Chain, GroupCommitter
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.config import Settings
from tether.credentials import clients, exchange, grants, introspection, tokens
from tether.credentials.clients import AuthenticatedClient, ClientAuthError
from tether.credentials.dpop import DEFAULT_ALGS, UseDPoPNonce, verify_proof
from tether.credentials.dpop_nonce import DPoPNonces
from tether.credentials.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from tether.credentials.keys import SigningKey, SigningKeys
from tether.credentials.models import AccessTokenRow
from tether.credentials.replay import DatabaseDPoPReplayCache, DatabaseReplayCache, ReplayCache
from tether.credentials.retention import purge_expired_tokens
from tether.credentials.store import DatabaseCredentialStore
from tether.db import Database
from tether.db.bulk import insert_rows
from tether.errors import Forbidden, ValidationFailed
from tether.freeze.gate import frozen_among
from tether.ids import IdPrefix, new_id
from tether.maintenance import Task
from tether.principals import Principal, Role
from tether.runtime import changes

# The token path writes a credential's last_used_at at most this often per process.
TOUCH_EVERY_SECONDS = 60.0
_TOUCHED_KEEP = 100_000  # credentials remembered for that (forgotten all at once past it)
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
_INACTIVE: dict[str, Any] = {"active": False}
# A kill of at most this many live tokens revokes them in its own transaction; a larger one
# revokes them in the background after it returned, in batches of REVOKE_BATCH.
CUT_OFF_BATCH = 1_000
# Token rows revoked per write transaction in the background: every write, decisions' ledger
# events too, waits at most this many for it (~10 ms on PostgreSQL here), and after each batch
# the background pauses as long as the batch took, so the kill's rows never hold the write
# lock more than half the time (bench/README.md, "Kill").
REVOKE_BATCH = 250
# How often a process looks for tokens a kill left behind (finish_cut_offs): the look is a
# scan of the unexpired tokens (~30 ms at 40,000 on PostgreSQL), and what it finds is refused
# on every path already, its agents being revoked.
FINISH_EVERY_SECONDS = 60.0
# ... and only for agents cut off that long ago: a kill's own background batches are still
# revoking the newer ones (a race would have both take the write lock for the same rows).
FINISH_AFTER_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class _Stale:
    """A group-commit job found the client's credential or agent changed since the
    authentication it was remembered from (:class:`~tether.credentials.clients.ClientReads`):
    nothing written; the request is authenticated again from the database."""


_STALE = _Stale()


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A group-commit job's refusal, returned (a raised one would roll its batch back and
    write the rest again; a returned exception would be raised by the committer)."""

    error: OAuthError


class _Offline(Exception):
    """A grant tried on an event loop (:meth:`OAuthService.token_async`) needs the database,
    or refuses: it is done in a worker thread instead, from the start."""


@dataclass(frozen=True, slots=True)
class _IssueJob:
    """An issuance's group-commit job: ``run``, after the batch's remembered clients were
    read again in one statement (:func:`clients.read_current`) and its assertions spent in
    another (:func:`clients.spend_all`), instead of one each."""

    client: AuthenticatedClient
    replay: ReplayCache
    run: Callable[[Session], Chain | _Refusal | _Stale]

    def __call__(self, s: Session) -> Chain | _Refusal | _Stale:
        return self.run(s)

    @staticmethod
    def prepare(s: Session, jobs: Sequence[_IssueJob]) -> None:
        clients.read_current(s, [job.client for job in jobs if job.client.remembered])
        clients.spend_all(s, [job.client for job in jobs], jobs[0].replay)


@dataclass(frozen=True, slots=True)
class _Issuance:
    """A ``client_credentials`` grant authenticated and signed: the group-commit job that
    records it, and the answer the client gets once that committed."""

    now: datetime
    job: _IssueJob
    answer: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A token exchange checked and signed, before its group-commit job records it."""

    token: str
    claims: dict[str, Any]
    subject: str
    subject_jti: Any
    chain: list[str]
    ttl: int


@dataclass(frozen=True)
class Endpoints:
    issuer: str

    @property
    def token(self) -> str:
        return f"{self.issuer}/oauth/token"

    @property
    def authorization(self) -> str:
        return f"{self.issuer}/oauth/authorize"

    @property
    def introspection(self) -> str:
        return f"{self.issuer}/oauth/introspect"

    @property
    def revocation(self) -> str:
        return f"{self.issuer}/oauth/revoke"

    @property
    def jwks(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"


class OAuthService:
    """``dpop_nonces``: the token endpoint's nonces when proofs must carry one (RFC 9449 §8);
    None when the deployment does not use them."""

    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, keys: SigningKeys, settings: Settings,
        *, dpop_nonces: DPoPNonces | None = None, committer: GroupCommitter | None = None,
    ) -> None:  # fmt: skip
        self.db = db
        # Issuance's writes go through the decisions' group commit (many per transaction and
        # fsync); without one (a bare service in a script), each in its own transaction.
        self.committer = committer
        # credential id -> when (monotonic) its last_used_at was last written by this process
        self._touched: dict[str, float] = {}
        # what client_credentials' authentications read, re-checked under the write lock
        self.client_reads = clients.ClientReads()
        self.ledger = ledger
        self.clock = clock
        self.keys = keys
        self.settings = settings
        self.endpoints = Endpoints(settings.base_url)
        self.replay = DatabaseReplayCache(db)
        self.dpop_replay = DatabaseDPoPReplayCache(db, self.replay)
        self.dpop_nonces = dpop_nonces
        self.store = DatabaseCredentialStore()
        self._finished_at: float | None = None  # finish_cut_offs last looked (monotonic)

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata; ``issuer`` is the base URL."""
        e = self.endpoints
        return {
            "issuer": e.issuer,
            # Required by RFC 8414 for servers with an authorization endpoint, and by MCP
            # clients' discovery even for client credentials: it answers that no
            # authorization-endpoint flow is offered (unsupported_response_type).
            "authorization_endpoint": e.authorization,
            "token_endpoint": e.token,
            "jwks_uri": e.jwks,
            "introspection_endpoint": e.introspection,
            "revocation_endpoint": e.revocation,
            "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": clients.ASYMMETRIC,
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt",
            ],
            "response_types_supported": [],
            "dpop_signing_alg_values_supported": sorted(DEFAULT_ALGS),
            "scopes_supported": [],
        }  # fmt: skip

    # -- client authentication -------------------------------------------------------------
    def authenticate_client(
        self, form: dict[str, str], authorization: str | None
    ) -> AuthenticatedClient:
        """The authenticated client, for introspection, revocation and token exchange:
        authenticated by reading only; what that writes — a spent assertion ``jti``, the
        credential's ``last_used_at`` at most once a minute — is written (group commit)
        before this returns, so it persists even if what the client asks for then fails.
        A client secret's request within the minute writes nothing. Failures are audited."""
        now = self.clock.now()
        client = self._authenticated(form, authorization, now)
        self._spend(client, now)
        return client

    def _authenticated(
        self, form: dict[str, str], authorization: str | None, now: datetime,
        reads: clients.ClientReads | None = None,
    ) -> AuthenticatedClient:  # fmt: skip
        """The client the request authenticates as, by reading only (statement by statement:
        whatever acts on it re-checks the agent under the write lock; with ``reads``, what
        it remembered may answer and must be re-checked: :func:`clients.unchanged`); a
        failure is audited and raised."""
        try:
            with self.db.read(transaction=False) as s:
                return clients.authenticate(
                    s, form, authorization, issuer=self.endpoints.issuer,
                    token_endpoint=self.endpoints.token, now=now, reads=reads,
                )  # fmt: skip
        except ClientAuthError as exc:
            self._audit_auth_failure(exc, now)
            raise

    def _authenticated_offline(
        self, form: dict[str, str], authorization: str | None, now: datetime,
        reads: clients.ClientReads | None,
    ) -> AuthenticatedClient:  # fmt: skip
        """:meth:`_authenticated` from memory only: :class:`_Offline` if it would read the
        database, or refuse (a refusal is audited: a write)."""
        try:
            with self.db.offline() as s:
                return clients.authenticate(
                    s, form, authorization, issuer=self.endpoints.issuer,
                    token_endpoint=self.endpoints.token, now=now, reads=reads,
                )  # fmt: skip
        except (OAuthError, UnboundExecutionError):
            raise _Offline from None

    def _audit_auth_failure(self, exc: ClientAuthError, now: datetime) -> None:
        f = exc.failure
        with self.db.write() as s:
            self.ledger.append(s, [NewEvent(
                EventType.CLIENT_AUTH_FAILED, f"client:{f.client_id or 'unknown'}"[:80],
                agent_id=f.client_id if f.client_id and directory.exists(s, f.client_id)
                else None,
                action="oauth.client_auth", outcome="failure",
                details={"client_id": f.client_id, "method": f.method, "reason": f.reason},
            )], now=now)  # fmt: skip

    def _touch_due(self, client: AuthenticatedClient) -> bool:
        last = self._touched.get(client.credential_id)
        return last is None or time.monotonic() - last >= TOUCH_EVERY_SECONDS

    def _touch(self, s: Session, client: AuthenticatedClient, now: datetime) -> None:
        """The credential's ``last_used_at``, at most once a minute per credential and
        process (:data:`TOUCH_EVERY_SECONDS`): a client's requests write nothing per request
        beyond what they are for (a token and its event)."""
        if not self._touch_due(client):
            return
        at = time.monotonic()
        clients.touch(s, client.credential_id, to_micros(now))
        if len(self._touched) >= _TOUCHED_KEEP:
            self._touched.clear()
        self._touched[client.credential_id] = at

    def _write(self, job: Callable[[Session], Any]) -> Any:
        """``job`` in a write transaction: the group commit's next one (it returns once
        that committed), or a transaction of its own without a committer."""
        if self.committer is not None:
            return self.committer.run(job)
        with self.db.write() as s:
            result = job(s)
            if isinstance(result, Chain):
                now = self.clock.now()
                for table, row in result.rows:
                    insert_rows(s, table, [row])
                return result.finish(self.ledger.append(s, list(result.events), now=now))
            return result

    # -- token endpoint --------------------------------------------------------------------
    def token(
        self, form: dict[str, str], authorization: str | None, *, dpop: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Handle a token request. ``dpop`` holds the request's DPoP header values: a valid
        proof binds the token to its key (``cnf.jkt``, ``token_type: DPoP``; RFC 9449 §5).
        Raises :class:`UseDPoPNonce` (audited) if nonces are required and the proof has
        no valid one: the client retries with :meth:`dpop_nonce_header`'s nonce.

        ``client_credentials``: the client is authenticated by reading only; the token is
        signed; then one job of the group commit spends the assertion's ``jti``, re-checks
        the agent under the write lock, writes the token's row, its ledger event and (at most
        once a minute) the credential's ``last_used_at`` — the token is returned once that
        transaction is durable, many issuances sharing each commit.

        A client's credential and agent as an earlier request read them may authenticate it
        (:class:`~tether.credentials.clients.ClientReads`): the job then first reads both
        again, and if anything changed it writes nothing and the request starts over from
        the database (once)."""
        cnf_jkt = self._dpop_key(dpop, form, authorization) if dpop else None
        grant = form.get("grant_type")
        if grant not in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE):
            raise UnsupportedGrantType(f"grant_type {grant!r} is not supported")
        if grant == TOKEN_EXCHANGE:
            return self._exchange(form, authorization, cnf_jkt)
        answer = self._client_credentials(form, authorization, cnf_jkt, self.client_reads)
        if isinstance(answer, _Stale):
            answer = self._client_credentials(form, authorization, cnf_jkt, None)
        assert not isinstance(answer, _Stale)  # read in this request: never stale
        return answer

    async def token_async(
        self, form: dict[str, str], authorization: str | None, *, dpop: Sequence[str] = ()
    ) -> dict[str, Any]:
        """:meth:`token` for an event loop. A ``client_credentials`` request without a DPoP
        proof, from a client this process remembers (:class:`~tether.credentials.clients.
        ClientReads`), is authenticated and signed right here — from memory, no I/O (a
        session with no database behind it: :meth:`~tether.db.Database.offline`) — and
        awaits its group commit without a thread; the same rules, the same job. Whatever
        needs the database first or writes besides its job — a first request, a stale
        memory, a refusal (audited), a DPoP proof (its ``jti`` is spent), token exchange —
        is :meth:`token` in a worker thread, from the start: nothing was written before."""
        if not dpop and self.committer is not None and form.get("grant_type") == CLIENT_CREDENTIALS:
            try:
                issuance = self._issuance(form, authorization, None, self.client_reads,
                                          offline=True)  # fmt: skip
            except _Offline:
                pass
            else:
                result = await self.committer.run_async(issuance.job)
                if isinstance(result, _Refusal):  # audited (a write), then raised
                    await to_thread.run_sync(partial(self._issued, issuance, result))
                answer = self._issued(issuance, result)
                if not isinstance(answer, _Stale):
                    return answer
        return await to_thread.run_sync(partial(self.token, form, authorization, dpop=dpop))

    def _client_credentials(
        self, form: dict[str, str], authorization: str | None, cnf_jkt: str | None,
        reads: clients.ClientReads | None,
    ) -> dict[str, Any] | _Stale:  # fmt: skip
        issuance = self._issuance(form, authorization, cnf_jkt, reads)
        return self._issued(issuance, self._write(issuance.job))

    def _issuance(
        self, form: dict[str, str], authorization: str | None, cnf_jkt: str | None,
        reads: clients.ClientReads | None, *, offline: bool = False,
    ) -> _Issuance:  # fmt: skip
        """The client authenticated, the token signed, and the job that records it.
        ``offline``: from memory only, or :class:`_Offline` (with nothing done: a refusal
        too, since refusing writes)."""
        now = self.clock.now()
        signer: SigningKey | None = None  # read by _signed unless it must come from memory
        if offline:
            if (signer := self.keys.signer_in_memory()) is None:
                raise _Offline
            client = self._authenticated_offline(form, authorization, now, reads)
        else:
            client = self._authenticated(form, authorization, now, reads)
        try:
            scopes = grants.scopes(form.get("scope"), client.scope_ceiling)
            audience = grants.audience(form, default=self.endpoints.issuer)
            ttl = grants.capped_ttl(self.settings.token_ttl_seconds, client.agent, now)
            token, claims = self._signed(
                client.agent, client_id=client.agent.id, audience=audience, scopes=scopes,
                ttl=ttl, now=now, cnf_jkt=cnf_jkt, signer=signer,
            )  # fmt: skip
        except OAuthError:
            if offline:
                raise _Offline from None
            self._spend(client, now)  # the assertion is spent even when the grant fails
            raise
        event = NewEvent(
            EventType.TOKEN_ISSUED, f"agent:{client.agent.id}", agent_id=client.agent.id,
            action="oauth.token", resource={"type": "AccessToken", "id": claims["jti"]},
            outcome="success",
            details={"jti": claims["jti"], "grant_type": CLIENT_CREDENTIALS,
                     "client_id": client.agent.id, "auth_method": client.method,
                     "credential": client.credential_id, "scope": claims["scope"],
                     "aud": claims["aud"], "exp": claims["exp"],
                     "dpop_bound": cnf_jkt is not None},
        )  # fmt: skip

        def issue(s: Session) -> Chain | _Refusal | _Stale:
            # A refusal is returned, not raised: raising would roll the whole batch back and
            # write it again without this job (a flood of replays would cost every other
            # caller a retry), and the assertion must stay spent when the grant fails.
            if client.remembered and not clients.unchanged(s, client):
                return _STALE  # before anything is written: the assertion is not spent
            agent = self._spent_and_active(s, client, now, ttl)
            if isinstance(agent, _Refusal):
                return agent
            row = self.store.token_row(
                jti=claims["jti"], agent_id=agent.id, client_id=agent.id,
                issued_at=to_micros(now), expires_at=int(claims["exp"]) * 1_000_000,
            )  # fmt: skip
            return Chain([event], finish=lambda _events: None, rows=[row])

        answer = {
            "access_token": token,
            "token_type": "DPoP" if cnf_jkt else "Bearer",
            "expires_in": ttl,
            "scope": claims["scope"],
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }
        return _Issuance(now, _IssueJob(client, self.replay, issue), answer)

    def _issued(self, issuance: _Issuance, result: object) -> dict[str, Any] | _Stale:
        """What the client gets once ``issuance``'s job ran: the token, or the job's refusal
        (a replayed assertion audited) raised, or :data:`_STALE` with the client forgotten."""
        if isinstance(result, _Stale):
            self.client_reads.forget(issuance.job.client.agent.id)
            return result
        if isinstance(result, _Refusal):
            self._refused(result, issuance.now)
        return issuance.answer

    def _spent_and_active(
        self, s: Session, client: AuthenticatedClient, now: datetime, ttl: int
    ) -> AgentFacts | _Refusal:
        """Inside an issuing job, under the write lock: the client's assertion spent and its
        credential touched, then its agent re-checked (still active, its expiry not moved
        below the token's). A refusal is returned, not raised: raising would roll the whole
        batch back and write it again without this job, and the assertion must stay spent
        when the grant fails."""
        try:
            clients.spend(s, client, self.replay)
        except ClientAuthError as exc:
            return _Refusal(exc)  # nothing written: it was spent before
        self._touch(s, client, now)
        try:
            agent = grants.still_active(
                s, client.agent.id, now, read=client.agent if client.remembered else None
            )
            if grants.capped_ttl(ttl, agent, now) < ttl:  # its expires_at moved meanwhile
                raise UnauthorizedClient("the agent changed while the token was issued")
        except OAuthError as exc:
            return _Refusal(exc)
        return agent

    def _refused(self, refusal: _Refusal, now: datetime) -> NoReturn:
        """A job's refusal, raised; a replayed assertion audited first."""
        if isinstance(refusal.error, ClientAuthError):
            self._audit_auth_failure(refusal.error, now)
        raise refusal.error

    def _spend(self, client: AuthenticatedClient, now: datetime) -> None:
        """What an authentication writes when the grant then failed: the assertion spent (a
        replay of it is refused and audited all the same), the credential touched; nothing
        when there is neither (a client secret's request within the minute)."""
        if client.assertion is None and not self._touch_due(client):
            return

        def spend(s: Session) -> _Refusal | None:
            try:
                clients.spend(s, client, self.replay)
            except ClientAuthError as exc:
                return _Refusal(exc)
            self._touch(s, client, now)
            return None

        refused = self._write(spend)
        if refused is not None:
            assert isinstance(refused.error, ClientAuthError)
            self._audit_auth_failure(refused.error, now)
            raise refused.error

    # -- delegation (RFC 8693) ---------------------------------------------------------------
    def _exchange(
        self, form: dict[str, str], authorization: str | None, cnf_jkt: str | None
    ) -> dict[str, Any]:
        """The authenticated agent acts for the subject; see :mod:`tether.credentials.exchange`.
        Like ``client_credentials``: the client authenticated by reading only, the grant's
        checks and the signature outside any lock, then one group-commit job spends the
        assertion, re-checks the actor and every principal of the chain under the write lock
        and writes the token's row and its ``token.exchanged`` event; a refusal found there
        is returned by the job (the assertion stays spent), not raised."""
        now = self.clock.now()
        client = self._authenticated(form, authorization, now)
        try:
            prepared = self._exchange_prepared(form, client, cnf_jkt, now)
        except OAuthError:
            self._spend(client, now)  # the assertion is spent even when the grant fails
            raise
        claims, subject, chain, ttl = (
            prepared.claims,
            prepared.subject,
            prepared.chain,
            prepared.ttl,
        )
        actor_id = client.agent.id
        event = NewEvent(
            EventType.TOKEN_EXCHANGED, f"agent:{actor_id}", agent_id=actor_id,
            on_behalf_of=grants.ref(subject), chain=tuple(chain), action="oauth.token_exchange",
            resource={"type": "AccessToken", "id": claims["jti"]}, outcome="success",
            details={"jti": claims["jti"], "subject_jti": prepared.subject_jti,
                     "auth_method": client.method, "scope": claims["scope"],
                     "aud": claims["aud"], "exp": claims["exp"], "chain": chain,
                     "dpop_bound": cnf_jkt is not None},
        )  # fmt: skip

        def exchange_job(s: Session) -> Chain | _Refusal:
            agent = self._spent_and_active(s, client, now, ttl)
            if isinstance(agent, _Refusal):
                return agent
            if problem := grants.chain_problem(s, [subject, *chain], to_micros(now)):
                return _Refusal(InvalidGrant(problem))
            row = self.store.token_row(
                jti=claims["jti"], agent_id=actor_id, client_id=actor_id,
                issued_at=to_micros(now), expires_at=int(claims["exp"]) * 1_000_000,
            )  # fmt: skip
            return Chain([event], finish=lambda _events: None, rows=[row])

        result = self._write(exchange_job)
        if isinstance(result, _Refusal):
            self._refused(result, now)
        return {
            "access_token": prepared.token,
            "issued_token_type": exchange.ACCESS_TOKEN,
            "token_type": "DPoP" if cnf_jkt else "Bearer",
            "expires_in": ttl,
            "scope": claims["scope"],
        }

    def _exchange_prepared(
        self, form: dict[str, str], client: AuthenticatedClient, cnf_jkt: str | None,
        now: datetime,
    ) -> _Exchange:  # fmt: skip
        """The exchange's checks on what the request carries, and the token signed."""
        now_s = int(now.timestamp())
        actor_id = client.agent.id
        subject_claims = self._subject(form, now_s)
        self._actor_token(form, actor_id, now_s)
        if not exchange.may_act_allows(subject_claims, actor_id):
            raise InvalidGrant("the subject token's may_act does not name this agent")
        act = exchange.nest(actor_id, subject_claims.get("act"))
        chain = exchange.actors(act)
        if len(chain) > self.settings.delegation_max_depth:
            raise InvalidGrant(
                f"delegation chain of {len(chain)} exceeds the maximum depth "
                f"{self.settings.delegation_max_depth}"
            )
        ceiling = exchange.scopes_of(subject_claims) & client.scope_ceiling
        scopes = grants.scopes(form.get("scope"), ceiling)
        audience = grants.audience(form, default=self.endpoints.issuer)
        subject_aud = exchange.audiences_of(subject_claims)
        if subject_aud != [self.endpoints.issuer] and not set(audience) <= set(subject_aud):
            raise InvalidTarget("the subject token does not reach that audience")
        subject = str(subject_claims["sub"])
        ttl = min(self.settings.token_ttl_seconds, int(subject_claims["exp"]) - now_s)
        if ttl <= 0:
            raise InvalidGrant("the subject token has expired")
        ttl = grants.capped_ttl(ttl, client.agent, now)
        token, claims = self._signed(
            client.agent, subject=subject, client_id=actor_id, audience=audience,
            scopes=scopes, ttl=ttl, now=now, act=act, cnf_jkt=cnf_jkt,
        )  # fmt: skip
        return _Exchange(token, claims, subject, subject_claims.get("jti"), chain, ttl)

    def _subject(self, form: dict[str, str], now: int) -> dict[str, Any]:
        token, kind = form.get("subject_token"), form.get("subject_token_type")
        if not token or not kind:
            raise InvalidRequest("subject_token and subject_token_type are required")
        if kind == exchange.ACCESS_TOKEN:
            claims = tokens.verify_own(token, self.keys, issuer=self.endpoints.issuer, now=now)
            if claims is None or not self._live(claims):
                raise InvalidGrant("the subject token is not an active access token")
            return claims
        if kind == exchange.JWT:
            claims = tokens.verify_subject_token(token, self.keys, issuer=self.endpoints.issuer,
                                                 now=now)  # fmt: skip
            if claims is None or not self._live(claims):
                raise InvalidGrant("the subject token is not a valid subject token")
            return claims
        raise InvalidRequest(f"subject_token_type {kind!r} is not supported")

    def _actor_token(self, form: dict[str, str], actor_id: str, now: int) -> None:
        token, kind = form.get("actor_token"), form.get("actor_token_type")
        if not token or kind != exchange.ACCESS_TOKEN:
            raise InvalidRequest(
                "actor_token (the acting agent's access token) and actor_token_type "
                f"{exchange.ACCESS_TOKEN} are required"
            )
        claims = tokens.verify_own(token, self.keys, issuer=self.endpoints.issuer, now=now)
        if claims is None or not self._live(claims) or claims.get("sub") != actor_id:
            raise InvalidGrant("the actor token is not an active access token of this client")
        if "act" in claims:
            raise InvalidGrant("the actor token must be the agent's own, not a delegated token")

    def _live(self, claims: dict[str, Any]) -> bool:
        with self.db.read() as s:
            row = self.store.token(s, str(claims.get("jti", ""))[:64])
            return row is not None and row.revoked_at is None

    def subject_token(
        self, user: Principal, *, actor: str, scopes: list[str], expires_in: int = 300
    ) -> dict[str, Any]:
        """A short-lived subject token a human hands to one agent, which exchanges it to act
        for them (``may_act`` names that agent; it is not an access token: ``typ`` JWT).

        Admins may delegate to any active agent; a supervisor only to an agent they own or
        supervise (:class:`Forbidden` otherwise, also for an agent that does not exist, so a
        supervisor cannot probe for others' agents): delegating is directing an agent's work,
        which is the owner's and its supervisors' responsibility."""
        if user.kind != "user" or user.role not in (Role.ADMIN, Role.SUPERVISOR):
            raise Forbidden("only admins and supervisors may delegate to an agent")
        now = self.clock.now()
        now_s = int(now.timestamp())
        jti = new_id(IdPrefix.TOKEN)
        claims = {
            "iss": self.endpoints.issuer, "sub": user.id, "aud": self.endpoints.issuer,
            "iat": now_s, "nbf": now_s, "exp": now_s + expires_in, "jti": jti,
            "scope": " ".join(sorted(set(scopes))), "may_act": {"sub": actor},
            "tether_use": exchange.SUBJECT_TOKEN_USE,
        }  # fmt: skip
        with self.db.write() as s:
            stewards = directory.stewards(s, actor)
            if not user.is_admin and (
                stewards is None or not authority.allows(user, Act.OPERATE, stewards)
            ):
                raise Forbidden(f"you neither own nor supervise agent {actor!r}", field="agent")
            agent = directory.facts(s, actor)
            if not authority.is_live(agent.liveness if agent else None, to_micros(now)):
                raise ValidationFailed(f"agent {actor!r} is not an active agent", field="agent")
            if (frozen := frozen_among(s, [actor])) is not None:
                raise ValidationFailed(frozen.describe(), field="agent")
            self.store.add_token(s, AccessTokenRow(
                jti=jti, agent_id=actor, client_id=user.id, issued_at=to_micros(now),
                expires_at=(now_s + expires_in) * 1_000_000, revoked_at=None,
            ))  # fmt: skip
            self.ledger.append(s, [NewEvent(
                EventType.TOKEN_ISSUED, user.ref, agent_id=actor, on_behalf_of=user.ref,
                action="oauth.subject_token", resource={"type": "SubjectToken", "id": jti},
                outcome="success",
                details={"jti": jti, "actor": actor, "scope": claims["scope"],
                         "exp": claims["exp"]},
            )], now=now)  # fmt: skip
        return {
            "subject_token": tokens.sign_subject(claims, self.keys.signer()),
            "subject_token_type": exchange.JWT,
            "expires_in": expires_in,
            "may_act": actor,
            "scope": claims["scope"],
        }

    def dpop_nonce_header(self) -> dict[str, str]:
        """``DPoP-Nonce`` with the current nonce for every token endpoint answer (RFC 9449
        §8.2: a client keeps the latest one), or nothing when nonces are not in use."""
        if self.dpop_nonces is None:
            return {}
        return {"DPoP-Nonce": self.dpop_nonces.issue(int(self.clock.now().timestamp()))}

    def _dpop_key(
        self, header_values: Sequence[str], form: dict[str, str], authorization: str | None
    ) -> str:
        # Before client authentication, as always: a refused proof spends neither its own jti
        # (verify_proof checks the nonce before the replay cache) nor a client assertion's.
        now = self.clock.now()
        try:
            proof = verify_proof(
                header_values, method="POST", url=self.endpoints.token,
                now=int(now.timestamp()), replay_cache=self.dpop_replay,
                max_age=self.settings.dpop_max_age_seconds, nonces=self.dpop_nonces,
            )  # fmt: skip
        except UseDPoPNonce as exc:
            self._audit_nonce_refusal(exc, clients.claimed_client_id(form, authorization), now)
            raise
        return proof.jkt

    def _audit_nonce_refusal(self, exc: UseDPoPNonce, client_id: str | None, now: datetime) -> None:
        """Recorded like a failed client authentication: the client is the one the request
        names (not yet authenticated), with the proof key and why the nonce was refused."""
        with self.db.write() as s:
            self.ledger.append(s, [NewEvent(
                EventType.DPOP_NONCE_REQUIRED, f"client:{client_id or 'unknown'}"[:80],
                agent_id=client_id if client_id and directory.exists(s, client_id) else None,
                action="oauth.token", outcome="failure",
                details={"client_id": client_id, "reason": exc.details["reason"],
                         "jkt": exc.details["jkt"]},
            )], now=now)  # fmt: skip

    def _issue(
        self, s: Session, agent: AgentFacts, *, client_id: str, audience: list[str],
        scopes: frozenset[str], ttl: int, now: datetime, act: dict[str, Any] | None = None,
        cnf_jkt: str | None = None, subject: str | None = None,
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        token, claims = self._signed(
            agent, client_id=client_id, audience=audience, scopes=scopes, ttl=ttl, now=now,
            act=act, cnf_jkt=cnf_jkt, subject=subject,
        )  # fmt: skip
        self._row(s, agent.id, client_id=client_id, claims=claims, now=now)
        return token, claims

    def _signed(
        self, agent: AgentFacts, *, client_id: str, audience: list[str], scopes: frozenset[str],
        ttl: int, now: datetime, act: dict[str, Any] | None = None, cnf_jkt: str | None = None,
        subject: str | None = None, signer: SigningKey | None = None,
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """A new access token for ``agent``, signed: what :meth:`_row` then records."""
        claims = tokens.build_claims(
            issuer=self.endpoints.issuer, subject=subject or agent.id, client_id=client_id,
            audience=audience, scopes=scopes, now=int(now.timestamp()), ttl=ttl,
            jti=new_id(IdPrefix.TOKEN), act=act, cnf_jkt=cnf_jkt,
        )  # fmt: skip
        return tokens.sign(claims, signer or self.keys.signer()), claims

    def _row(
        self, s: Session, agent_id: str, *, client_id: str, claims: dict[str, Any], now: datetime
    ) -> None:
        self.store.insert_token(
            s, jti=claims["jti"], agent_id=agent_id, client_id=client_id,
            issued_at=to_micros(now), expires_at=int(claims["exp"]) * 1_000_000,
        )  # fmt: skip

    # -- introspection and revocation ------------------------------------------------------
    def introspect(self, token: str, caller: AuthenticatedClient | Principal) -> dict[str, Any]:
        """RFC 7662: anything unknown, expired, revoked, or whose agent (or any actor in its
        chain) is no longer active is exactly ``{"active": false}`` — and so is any token
        ``caller`` may not introspect (:func:`introspection.may_introspect`, §2.1)."""
        now = self.clock.now()
        claims = tokens.verify_own(token, self.keys, issuer=self.endpoints.issuer,
                                   now=int(now.timestamp()))  # fmt: skip
        if claims is None or not introspection.may_introspect(
            claims, caller, trust_domain=self.settings.trust_domain
        ):
            return dict(_INACTIVE)
        with self.db.read() as s:
            row = self.store.token(s, str(claims.get("jti", ""))[:64])
            if row is None or row.revoked_at is not None:
                return dict(_INACTIVE)
            ids = [str(claims["sub"]), *exchange.actors(claims.get("act"))]
            if grants.chain_problem(s, ids, to_micros(now)):
                return dict(_INACTIVE)
        out = {"active": True, "token_type": "DPoP" if "cnf" in claims else "Bearer"}
        out.update({k: v for k, v in claims.items() if k in _INTROSPECTED})
        return out

    def revoke(self, token: str, client: AuthenticatedClient | None, actor_ref: str) -> None:
        """RFC 7009: revoke if this caller may (its own token, or an admin); unknown tokens
        and tokens of others succeed silently (§2.2), changing nothing."""
        now = self.clock.now()
        claims = tokens.verify_own(token, self.keys, issuer=self.endpoints.issuer,
                                   now=int(now.timestamp()))  # fmt: skip
        if claims is None:
            return
        if client is not None and claims.get("client_id") != client.agent.id:
            return
        jti = str(claims.get("jti", ""))[:64]

        def revoke_job(s: Session) -> Chain | None:  # one job of the group commit
            row = self.store.token(s, jti)
            if row is None or row.revoked_at is not None:
                return None
            row.revoked_at = to_micros(now)
            changes.record(s, changes.Kind.TOKEN, row.jti, now_us=row.revoked_at)
            return Chain([NewEvent(
                EventType.TOKEN_REVOKED, actor_ref, agent_id=row.agent_id,
                action="oauth.revoke", resource={"type": "AccessToken", "id": row.jti},
                outcome="success", details={"jti": row.jti, "client_id": row.client_id},
            )], finish=lambda _events: None)  # fmt: skip

        self._write(revoke_job)

    def maintenance(self) -> list[Task]:
        """Spent assertion and DPoP proof ids past their expiry; token rows long expired."""

        def purge_replays() -> int:
            return self.replay.purge(int(self.clock.now().timestamp()))

        def purge_tokens() -> int:
            keep = self.settings.token_retention_seconds
            return purge_expired_tokens(self.db, now=self.clock.now(), retention_seconds=keep)

        return [
            Task("oauth.purge_replays", purge_replays),
            Task("oauth.purge_tokens", purge_tokens),
            Task("oauth.finish_cut_offs", self.finish_cut_offs),
        ]

    def revoke_agent_tokens(
        self, s: Session, agent_ids: list[str], now: datetime, *, why: Why
    ) -> dict[str, int]:
        """Cut-off hook (a kill or an expiry): every unexpired token of these agents is
        revoked, and the change feed names each one, so every worker refuses it at once —
        also after an expired agent is extended and resumed.

        An expiry revokes them all inside its transaction, and so does a kill of at most
        :data:`CUT_OFF_BATCH` tokens. A larger kill counts them there and revokes them after its
        commit, a batch per write transaction, in the background once it has returned
        (:func:`tether.agents.cutoff.defer`): once the agents are revoked their tokens are
        refused on every path, and a kill of a family holding 10,000 tokens must neither hold
        the write lock, which every decision's ledger event waits for, while it rewrites them
        all, nor make its caller wait for that (bench/README.md, "Kill"). Should the process
        die first, :meth:`finish_cut_offs` does the rest."""
        if not agent_ids or why not in FOR_GOOD:  # a suspended agent's tokens are refused
            return {"tokens": 0}
        now_us = to_micros(now)
        if why is Why.KILLED:
            n, jtis = self.store.revoke_tokens_of_at_most(s, agent_ids, now_us, CUT_OFF_BATCH)
            if n > CUT_OFF_BATCH:
                defer(s, partial(self._revoke_tokens_after, list(agent_ids), now_us))
                return {"tokens": n}
        else:
            jtis = self.store.revoke_tokens_of(s, agent_ids, now_us)
        if jtis:
            changes.record(s, changes.Kind.TOKEN, jtis, now_us=now_us)
        return {"tokens": len(jtis)}

    def _revoke_tokens_after(self, agent_ids: list[str], now_us: int) -> None:
        """After a kill's commit, in the background: its agents' tokens, revoked as of the
        kill and named in the change feed, :data:`REVOKE_BATCH` per write transaction. Only
        the last batch's commit waits for the workers to apply the feed (the agents' own
        commit did already, and those tokens are refused meanwhile): the others' commits ring
        them all the same."""
        with self.db.read() as s:
            jtis = self.store.live_tokens_of(s, agent_ids, now_us)
        for i in range(0, len(jtis), REVOKE_BATCH):
            started = time.monotonic()
            last = i + REVOKE_BATCH >= len(jtis)
            with self.db.write() as s:
                done = self.store.revoke_unrevoked(s, jtis[i : i + REVOKE_BATCH], now_us)
                if done:
                    changes.record(s, changes.Kind.TOKEN, done, now_us=now_us)
                if not last:
                    s.info.pop(changes.CHANGED, None)
            if not last:
                time.sleep(min(time.monotonic() - started, 0.1))

    def finish_cut_offs(self) -> int:
        """Maintenance: revoke the tokens a kill left to after its commit and never revoked
        (its process died first; a kill at least :data:`FINISH_AFTER_SECONDS` old), as of
        the kill, :data:`CUT_OFF_BATCH` per write
        transaction; returns how many. One read when there are none, at most once every
        :data:`FINISH_EVERY_SECONDS` in a process (0 the other times)."""
        started = time.monotonic()
        if self._finished_at is not None and started - self._finished_at < FINISH_EVERY_SECONDS:
            return 0
        self._finished_at = started
        total = 0
        while True:
            now_us = to_micros(self.clock.now())
            before_us = now_us - int(FINISH_AFTER_SECONDS * 1_000_000)
            with self.db.read() as s:
                if not self.store.stranded_tokens(s, now_us, cut_before_us=before_us, limit=1):
                    return total
            with self.db.write() as s:
                found = self.store.stranded_tokens(s, now_us, cut_before_us=before_us,
                                                   limit=CUT_OFF_BATCH)  # fmt: skip
                by_time: dict[int, list[str]] = {}
                for jti, at in found:
                    by_time.setdefault(at, []).append(jti)
                done = [j for at, group in by_time.items()
                        for j in self.store.revoke_unrevoked(s, group, at)]  # fmt: skip
                if done:
                    changes.record(s, changes.Kind.TOKEN, done, now_us=now_us)
            total += len(done)
            if len(found) < CUT_OFF_BATCH:
                return total


_INTROSPECTED = frozenset(
    {"sub", "client_id", "scope", "aud", "iss", "exp", "iat", "nbf", "jti", "act", "cnf"}
)
