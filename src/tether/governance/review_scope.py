"""Which agents a campaign reviews: those of the ``owners`` named (their active agents), the
``agents`` named (any status but revoked or retired), or by default every active agent.

Every name must name something: a user or agent that does not exist is refused naming its
field (``owners``, ``agents``), before anything is written."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tether.agents.models import AgentRow
from tether.agents.values import TERMINAL, Status
from tether.clock import to_micros
from tether.errors import InvalidTransition, ValidationFailed
from tether.governance.review_schemas import ReviewCreate
from tether.users.store import DatabaseUserStore


def owner_ids(s: Session, refs: list[str]) -> list[str]:
    """The users ``refs`` name (ids or usernames), as ids; raises :class:`ValidationFailed`
    (``owners``) for one that names nobody."""
    users, out = DatabaseUserStore(), set()
    for ref in refs:
        user = users.resolve(s, ref)
        if user is None:
            raise ValidationFailed(f"no user {ref!r}", field="owners")
        out.add(user.id)
    return sorted(out)


def agents_in_scope(
    s: Session, spec: ReviewCreate, owners: list[str], now: datetime
) -> list[AgentRow]:
    """The agents in scope, in id order; raises :class:`ValidationFailed` (``agents``) for an
    agent that does not exist, :class:`InvalidTransition` for one revoked or retired."""
    now_us = to_micros(now)
    active = (AgentRow.status == Status.ACTIVE.value) & or_(
        AgentRow.expires_at.is_(None), AgentRow.expires_at > now_us
    )
    chosen: dict[str, AgentRow] = {}
    if spec.owners is None and spec.agents is None:
        chosen = {r.id: r for r in s.scalars(select(AgentRow).where(active))}
    if owners:
        q = select(AgentRow).where(AgentRow.owner_id.in_(owners), active)
        chosen.update((r.id, r) for r in s.scalars(q))
    named = sorted(set(spec.agents or []))
    found: dict[str, AgentRow] = {}
    if named:
        found = {r.id: r for r in s.scalars(select(AgentRow).where(AgentRow.id.in_(named)))}
    for agent_id in named:
        row = found.get(agent_id)
        if row is None:
            raise ValidationFailed(f"no agent {agent_id!r}", field="agents")
        if Status(row.status) in TERMINAL:
            raise InvalidTransition(
                f"agent {agent_id} is {row.status}: nothing to review",
                field="agents",
                agent=agent_id,
            )
        chosen[agent_id] = row
    return [chosen[k] for k in sorted(chosen)]
