"""Agent credentials: scoped, expiring API keys (digests only) and public keys for
``private_key_jwt`` (RFC 7523). Never shared between agents, never copied by a clone.

Managing an agent's credentials needs ``manage`` authority over it (admin or owner).
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.errors import JoseError
from sqlalchemy.orm import Session

from tether.agents.service import AgentService
from tether.agents.values import TERMINAL, Status
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.credentials.jwks import import_public_jwk
from tether.credentials.models import CredentialRow
from tether.credentials.store import DatabaseCredentialStore
from tether.db import Database
from tether.errors import AgentRevoked, NotFound, ValidationFailed
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text, loads
from tether.pagination import Page, decode_cursor, page_of
from tether.principals import Principal

SECRET_PREFIX = "tsk_"  # noqa: S105 - a prefix, not a secret


class CredentialNotFound(NotFound):
    code = "credential_not_found"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    agent_id: str
    type: str
    jwk: dict[str, Any] | None
    jkt: str | None
    scopes: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def t(v: datetime | None) -> str | None:
            return to_rfc3339(v) if v else None

        return {
            "id": self.id, "type": self.type, "client_id": self.agent_id,
            "agent_id": self.agent_id, "jwk": self.jwk, "jkt": self.jkt, "scopes": self.scopes,
            "created_at": to_rfc3339(self.created_at), "expires_at": t(self.expires_at),
            "last_used_at": t(self.last_used_at),
        }  # fmt: skip


def to_credential(row: CredentialRow) -> Credential:
    def t(v: int | None) -> datetime | None:
        return from_micros(v) if v is not None else None

    return Credential(
        row.id, row.agent_id, row.type, loads(row.jwk) if row.jwk else None, row.jkt,
        loads(row.scopes) if row.scopes else None, from_micros(row.created_at),
        t(row.expires_at), t(row.last_used_at),
    )  # fmt: skip


class CredentialService:
    def __init__(self, db: Database, ledger: Ledger, clock: Clock, agents: AgentService) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.store = DatabaseCredentialStore()

    def create_api_key(
        self,
        actor: Principal,
        agent_id: str,
        *,
        expires_in: int | None = None,
        scopes: builtins.list[str] | None = None,
    ) -> tuple[Credential, str]:
        """A new API key; the secret is returned here once and stored only as a digest."""
        now = self.clock.now()
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as s:
            agent = self._manageable(s, actor, agent_id)
            self._check_scopes(scopes, loads(agent.scopes))
            row = self._row(agent.id, "api_key", now, expires_in, scopes)
            row.secret_digest = secret_digest(secret)
            self._add(s, actor, row, now)
            return to_credential(row), secret

    def create_public_key(
        self,
        actor: Principal,
        agent_id: str,
        *,
        jwk: dict[str, Any],
        expires_in: int | None = None,
        scopes: builtins.list[str] | None = None,
    ) -> Credential:
        """Register a public JWK; the agent then authenticates with ``private_key_jwt``."""
        try:
            key = import_public_jwk(jwk)
        except (JoseError, ValueError, TypeError) as exc:
            raise ValidationFailed(f"jwk: {exc}", field="jwk") from exc
        now = self.clock.now()
        with self.db.write() as s:
            agent = self._manageable(s, actor, agent_id)
            self._check_scopes(scopes, loads(agent.scopes))
            row = self._row(agent.id, "public_key", now, expires_in, scopes)
            row.jwk = canonical_text(key.as_dict(private=False))
            row.jkt = key.thumbprint()
            self._add(s, actor, row, now)
            return to_credential(row)

    def list(
        self, actor: Principal, agent_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[Credential]:
        """An agent's live credentials, oldest first (ids are time-ordered)."""
        after = decode_cursor(cursor)
        with self.db.read() as s:
            self.agents.authorized_row(s, actor, agent_id, "read")
            rows = self.store.live(s, agent_id, after=after, limit=limit + 1)
            return page_of([to_credential(r) for r in rows], limit, lambda c: c.id)

    def delete(self, actor: Principal, agent_id: str, credential_id: str) -> Credential:
        """Delete a credential; it stops working at once (checked on every authentication)."""
        now = self.clock.now()
        with self.db.write() as s:
            return self.delete_within(s, actor, agent_id, credential_id, now=now)

    def delete_within(
        self, s: Session, actor: Principal, agent_id: str, credential_id: str, *,
        now: datetime, reason: str | None = None,
    ) -> Credential:  # fmt: skip
        """:meth:`delete` inside the caller's write transaction (an access review's confirmed
        ``reduce``): the same rules and ``credential.deleted`` event; raises
        :class:`CredentialNotFound` if the agent holds no such undeleted credential."""
        self.agents.authorized_row(s, actor, agent_id, "manage")
        row = self.store.get(s, credential_id)
        if row is None or row.agent_id != agent_id or row.deleted_at is not None:
            raise CredentialNotFound(f"no credential {credential_id!r} on agent {agent_id}")
        row.deleted_at = to_micros(now)
        details: dict[str, Any] = {"type": row.type}
        if reason is not None:
            details["reason"] = reason
        self.ledger.append(s, [NewEvent(
            EventType.CREDENTIAL_DELETED, actor.ref, agent_id=agent_id,
            resource={"type": "Credential", "id": row.id}, outcome="success", details=details,
        )], now=now)  # fmt: skip
        return to_credential(row)

    # -- internals -------------------------------------------------------------------------
    def _manageable(self, s: Session, actor: Principal, agent_id: str) -> Any:
        agent = self.agents.authorized_row(s, actor, agent_id, "manage")
        if Status(agent.status) in TERMINAL:
            raise AgentRevoked(f"agent {agent.id} is {agent.status}; it gets no credentials")
        return agent

    @staticmethod
    def _check_scopes(wanted: builtins.list[str] | None, allowed: builtins.list[str]) -> None:
        if wanted is not None and not set(wanted) <= set(allowed):
            extra = sorted(set(wanted) - set(allowed))
            raise ValidationFailed(
                f"scopes {extra} exceed what the agent may hold ({sorted(allowed)})",
                field="scopes",
            )

    @staticmethod
    def _row(
        agent_id: str,
        type_: str,
        now: datetime,
        expires_in: int | None,
        scopes: builtins.list[str] | None,
    ) -> CredentialRow:
        return CredentialRow(
            id=new_id(IdPrefix.CREDENTIAL), agent_id=agent_id, type=type_, secret_digest=None,
            jwk=None, jkt=None, scopes=canonical_text(sorted(set(scopes))) if scopes else None,
            created_at=to_micros(now),
            expires_at=to_micros(now + timedelta(seconds=expires_in)) if expires_in else None,
            last_used_at=None, deleted_at=None,
        )  # fmt: skip

    def _add(self, s: Session, actor: Principal, row: CredentialRow, now: datetime) -> None:
        self.store.add(s, row)
        self.ledger.append(s, [NewEvent(
            EventType.CREDENTIAL_CREATED, actor.ref, agent_id=row.agent_id,
            resource={"type": "Credential", "id": row.id}, outcome="success",
            details={"type": row.type, "jkt": row.jkt, "expires_at": row.expires_at,
                     "scopes": loads(row.scopes) if row.scopes else None},
        )], now=now)  # fmt: skip
