"""The OAuth 2 authorization server's rules: the token endpoint (client_credentials),
introspection (RFC 7662) and revocation (RFC 7009). Every issuance, failed client
authentication and revocation is a ledger event carrying the ``jti`` — never a token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.agents.model import Status
from tether.agents.models import AgentRow
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.config import Settings
from tether.credentials import clients, tokens
from tether.credentials.clients import AuthenticatedClient, ClientAuthError
from tether.credentials.dpop import DEFAULT_ALGS, InvalidDPoPProof, verify_proof
from tether.credentials.errors import (
    InvalidDPoPProofError,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from tether.credentials.keys import SigningKeys
from tether.credentials.models import AccessTokenRow
from tether.credentials.replay import DatabaseDPoPReplayCache, DatabaseReplayCache
from tether.db import Database
from tether.ids import IdPrefix, new_id
from tether.principals import SYSTEM

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")
_INACTIVE: dict[str, Any] = {"active": False}


@dataclass(frozen=True)
class Endpoints:
    issuer: str

    @property
    def token(self) -> str:
        return f"{self.issuer}/oauth/token"

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
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, keys: SigningKeys, settings: Settings
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.keys = keys
        self.settings = settings
        self.endpoints = Endpoints(settings.base_url)
        self.replay = DatabaseReplayCache(db)
        self.dpop_replay = DatabaseDPoPReplayCache(db, self.replay)

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata; ``issuer`` is the base URL."""
        e = self.endpoints
        return {
            "issuer": e.issuer,
            "token_endpoint": e.token,
            "jwks_uri": e.jwks,
            "introspection_endpoint": e.introspection,
            "revocation_endpoint": e.revocation,
            "grant_types_supported": [CLIENT_CREDENTIALS],
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
        """The authenticated client (its own transaction: ``last_used_at`` and a spent
        assertion ``jti`` persist even if the grant then fails). Failures are audited."""
        now = self.clock.now()
        try:
            with self.db.write() as s:
                return clients.authenticate(
                    s, form, authorization, issuer=self.endpoints.issuer,
                    token_endpoint=self.endpoints.token, now=now, replay=self.replay,
                )  # fmt: skip
        except ClientAuthError as exc:
            f = exc.failure
            with self.db.write() as s:
                self.ledger.append(s, [NewEvent(
                    EventType.CLIENT_AUTH_FAILED, f"client:{f.client_id or 'unknown'}"[:80],
                    agent_id=f.client_id if f.client_id and s.get(AgentRow, f.client_id)
                    else None,
                    action="oauth.client_auth", outcome="failure",
                    details={"client_id": f.client_id, "method": f.method, "reason": f.reason},
                )], now=now)  # fmt: skip
            raise

    # -- token endpoint --------------------------------------------------------------------
    def token(
        self, form: dict[str, str], authorization: str | None, *, dpop: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Handle a token request. ``dpop`` holds the request's DPoP header values: a valid
        proof binds the token to its key (``cnf.jkt``, ``token_type: DPoP``; RFC 9449 §5)."""
        cnf_jkt = self._dpop_key(dpop) if dpop else None
        grant = form.get("grant_type")
        if grant not in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE):
            raise UnsupportedGrantType(f"grant_type {grant!r} is not supported")
        if grant == TOKEN_EXCHANGE:
            raise UnsupportedGrantType("token exchange is not enabled on this server yet")
        client = self.authenticate_client(form, authorization)
        scopes = self._scopes(form.get("scope"), client.scope_ceiling)
        audience = self._audience(form)
        ttl = self.settings.token_ttl_seconds
        now = self.clock.now()
        with self.db.write() as s:
            agent = self._still_active(s, client.agent.id)
            token, claims = self._issue(
                s, agent, client_id=agent.id, audience=audience, scopes=scopes, ttl=ttl,
                now=now, cnf_jkt=cnf_jkt,
            )  # fmt: skip
            self.ledger.append(s, [NewEvent(
                EventType.TOKEN_ISSUED, f"agent:{agent.id}", agent_id=agent.id,
                action="oauth.token", resource={"type": "AccessToken", "id": claims["jti"]},
                outcome="success",
                details={"jti": claims["jti"], "grant_type": CLIENT_CREDENTIALS,
                         "client_id": agent.id, "auth_method": client.method,
                         "credential": client.credential_id, "scope": claims["scope"],
                         "aud": claims["aud"], "exp": claims["exp"],
                         "dpop_bound": cnf_jkt is not None},
            )], now=now)  # fmt: skip
        return {
            "access_token": token,
            "token_type": "DPoP" if cnf_jkt else "Bearer",
            "expires_in": ttl,
            "scope": claims["scope"],
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }

    def _dpop_key(self, header_values: Sequence[str]) -> str:
        try:
            proof = verify_proof(
                header_values, method="POST", url=self.endpoints.token,
                now=int(self.clock.now().timestamp()), replay_cache=self.dpop_replay,
                max_age=self.settings.dpop_max_age_seconds,
            )  # fmt: skip
        except InvalidDPoPProof as exc:
            raise InvalidDPoPProofError(exc.message) from exc
        return proof.jkt

    def _issue(
        self, s: Session, agent: AgentRow, *, client_id: str, audience: list[str],
        scopes: frozenset[str], ttl: int, now: datetime, act: dict[str, Any] | None = None,
        cnf_jkt: str | None = None,
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        jti = new_id(IdPrefix.TOKEN)
        now_s = int(now.timestamp())
        claims = tokens.build_claims(
            issuer=self.endpoints.issuer, subject=agent.id, client_id=client_id,
            audience=audience, scopes=scopes, now=now_s, ttl=ttl, jti=jti, act=act,
            cnf_jkt=cnf_jkt,
        )  # fmt: skip
        s.add(AccessTokenRow(
            jti=jti, agent_id=agent.id, client_id=client_id, issued_at=to_micros(now),
            expires_at=(now_s + ttl) * 1_000_000, revoked_at=None,
        ))  # fmt: skip
        return tokens.sign(claims, self.keys.signer()), claims

    @staticmethod
    def _still_active(s: Session, agent_id: str) -> AgentRow:
        # Re-checked inside the issuing transaction: a kill between authentication and
        # issuance must not yield a token.
        agent = s.get(AgentRow, agent_id)
        if agent is None or agent.status != Status.ACTIVE:
            raise UnauthorizedClient("the agent is not active")
        return agent

    @staticmethod
    def _scopes(requested: str | None, ceiling: frozenset[str]) -> frozenset[str]:
        if requested is None or requested == "":
            return ceiling  # RFC 6749 §3.3: the default is everything the client may hold
        if not _SCOPE.match(requested):
            raise InvalidScope("scope must be space-separated scope-tokens (RFC 6749 §3.3)")
        wanted = frozenset(requested.split(" "))
        if not wanted <= ceiling:
            raise InvalidScope(f"scope {sorted(wanted - ceiling)} exceeds what the agent may hold")
        return wanted

    def _audience(self, form: dict[str, str]) -> list[str]:
        """RFC 8707 ``resource`` (absolute URI, no fragment) and RFC 8693 ``audience``."""
        values = [v for v in (form.get("resource"), form.get("audience")) if v]
        for value in values:
            if len(value) > 500:
                raise InvalidTarget("resource/audience too long")
            if value == form.get("resource"):
                parts = urlsplit(value)
                if not parts.scheme or not parts.netloc or parts.fragment:
                    raise InvalidTarget("resource must be an absolute URI without a fragment")
        return sorted(set(values)) or [self.endpoints.issuer]

    # -- introspection and revocation ------------------------------------------------------
    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: anything unknown, expired, revoked, or whose agent (or any actor in its
        chain) is no longer active is exactly ``{"active": false}``."""
        now = self.clock.now()
        claims = tokens.verify_own(token, self.keys, issuer=self.endpoints.issuer,
                                   now=int(now.timestamp()))  # fmt: skip
        if claims is None:
            return dict(_INACTIVE)
        with self.db.read() as s:
            row = s.get(AccessTokenRow, str(claims.get("jti", ""))[:64])
            if row is None or row.revoked_at is not None:
                return dict(_INACTIVE)
            ids = [claims["sub"], *_actors(claims.get("act"))]
            agents = {a.id: a for a in s.scalars(select(AgentRow).where(AgentRow.id.in_(ids)))}
            if any(agents.get(i) is None or agents[i].status != Status.ACTIVE for i in ids):
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
        with self.db.write() as s:
            row = s.get(AccessTokenRow, str(claims.get("jti", ""))[:64])
            if row is None or row.revoked_at is not None:
                return
            row.revoked_at = to_micros(now)
            self.ledger.append(s, [NewEvent(
                EventType.TOKEN_REVOKED, actor_ref, agent_id=row.agent_id,
                action="oauth.revoke", resource={"type": "AccessToken", "id": row.jti},
                outcome="success", details={"jti": row.jti, "client_id": row.client_id},
            )], now=now)  # fmt: skip

    def revoke_agent_tokens(
        self, s: Session, agent_ids: list[str], now: datetime
    ) -> dict[str, int]:
        """Kill hook: every unexpired token of these agents is revoked, inside the kill."""
        if not agent_ids:
            return {"tokens": 0}
        now_us = to_micros(now)
        result = s.execute(
            update(AccessTokenRow)
            .where(AccessTokenRow.agent_id.in_(agent_ids), AccessTokenRow.revoked_at.is_(None),
                   AccessTokenRow.expires_at > now_us)
            .values(revoked_at=now_us)
        )  # fmt: skip
        return {"tokens": int(getattr(result, "rowcount", 0) or 0)}


_INTROSPECTED = frozenset(
    {"sub", "client_id", "scope", "aud", "iss", "exp", "iat", "nbf", "jti", "act", "cnf"}
)


def _actors(act: Any) -> list[str]:
    out: list[str] = []
    while isinstance(act, dict) and isinstance(act.get("sub"), str):
        out.append(act["sub"])
        act = act.get("act")
    return out


__all__ = ["SYSTEM", "Endpoints", "OAuthService"]
