"""Agents as readers see them: rows, their roles, supervisors and owner's name, and the
status of the moment — an agent past ``expires_at`` is ``expired`` before the sweep stores it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from tether.agents.models import AgentRow
from tether.agents.store import DatabaseAgentStore
from tether.agents.values import Agent, RiskTier, Status, effective_status, expiry_reason
from tether.clock import from_micros, to_micros
from tether.jsonutil import loads


def status_at(row: AgentRow, now: datetime) -> Status:
    """The status readers see at ``now``."""
    return effective_status(Status(row.status), row.expires_at, to_micros(now))


def to_agents(
    store: DatabaseAgentStore, s: Session, rows: Sequence[AgentRow], *, now: datetime
) -> list[Agent]:
    """The agents as readers see them: one past ``expires_at`` is ``expired``."""
    ids = [r.id for r in rows]
    roles = store.roles_of(s, ids)
    sups = store.supervisors_of(s, ids)
    names = store.usernames(s, [r.owner_id for r in rows])
    return [
        Agent(
            id=r.id,
            spiffe_id=r.spiffe_id,
            name=r.name,
            owner=r.owner_id,
            owner_username=names.get(r.owner_id, r.owner_id),
            supervisors=sups.get(r.id, []),
            purpose=r.purpose,
            risk_tier=RiskTier(r.risk_tier),
            status=status_at(r, now),
            status_reason=reason(r, status_at(r, now)),
            roles=roles.get(r.id, []),
            attributes=loads(r.attributes),
            scopes=loads(r.scopes),
            parent=r.parent_id,
            lineage=loads(r.lineage),
            lineage_kind=r.lineage_kind,
            fingerprint=loads(r.fingerprint) if r.fingerprint else None,
            created_at=from_micros(r.created_at),
            updated_at=from_micros(r.updated_at),
            expires_at=from_micros(r.expires_at) if r.expires_at else None,
            recertify_by=from_micros(r.recertify_by) if r.recertify_by else None,
        )
        for r in rows
    ]


def reason(row: AgentRow, shown: Status) -> str | None:
    """An agent shown ``expired`` before the sweep stored it says why, as the sweep will."""
    if shown is Status.EXPIRED and row.status != Status.EXPIRED and row.expires_at is not None:
        return expiry_reason(row.expires_at)
    return row.status_reason
