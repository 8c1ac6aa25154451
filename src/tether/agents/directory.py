"""What other domains may read of agents, inside their own transaction.

Approvals, the token grants and client authentication need to know who answers for an agent
and whether it (and every agent of a delegation chain) is live. They ask here and get values
(:class:`~tether.agents.authority.Stewards`, :class:`~tether.agents.authority.Liveness`,
:class:`AgentFacts`), so the agents' tables stay inside ``agents/`` and the rules about them
in :mod:`tether.agents.authority`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import CompoundSelect, Select, func, literal, select, union_all
from sqlalchemy.orm import Session

from tether.agents.authority import Liveness, Stewards
from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.agents.store import DatabaseAgentStore
from tether.agents.values import Status
from tether.db.lists import PerDialect, one_of
from tether.db.text import unstorable
from tether.jsonutil import loads


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """An agent as credentials and grants read it: who it is, whether it is live, what it may
    hold. ``scopes`` is the agent's own scope ceiling."""

    id: str
    status: str
    expires_at: int | None
    scopes: frozenset[str]

    @property
    def liveness(self) -> Liveness:
        return Liveness(self.status, self.expires_at)


_FACTS = select(AgentRow.id, AgentRow.status, AgentRow.expires_at, AgentRow.scopes)


def facts(s: Session, agent_id: str, *, for_update: bool = False) -> AgentFacts | None:
    """The agent with this id, or None if there is none (four columns, no ORM object: on
    every token request, twice)."""
    if unstorable(agent_id):
        return None
    q = _FACTS.where(AgentRow.id == agent_id)
    row = s.execute(q.with_for_update() if for_update else q).first()
    if row is None:
        return None
    return AgentFacts(row.id, row.status, row.expires_at, frozenset(loads(row.scopes)))


def exists(s: Session, agent_id: str) -> bool:
    return not unstorable(agent_id) and s.get(AgentRow, agent_id) is not None


def stewards(s: Session, agent_id: str) -> Stewards | None:
    """Who answers for the agent (owner and supervisors), or None if there is no such agent."""
    row = s.get(AgentRow, agent_id) if not unstorable(agent_id) else None
    return DatabaseAgentStore().stewards(s, row) if row is not None else None


def stewarded_by(user_id: str) -> Select[tuple[str]]:
    """The ids of the agents ``user_id`` owns or supervises, as a subquery for a filter."""
    supervised = select(AgentSupervisorRow.agent_id).where(AgentSupervisorRow.user_id == user_id)
    return select(AgentRow.id).where(AgentRow.owner_id == user_id).union(supervised)  # type: ignore[return-value]


def role_in_use(s: Session, role: str) -> bool:
    """Whether any agent holds ``role`` (an index lookup)."""
    if unstorable(role):
        return False
    q = select(AgentRoleRow.agent_id).where(AgentRoleRow.role == role).limit(1)
    return s.scalars(q).first() is not None


def cut_off() -> Select[str, int]:
    """``(id, updated_at)`` of the agents whose grants are taken back (revoked, or expired as
    the sweep stored it), as a subquery for another domain's join: ``updated_at`` is when."""
    dead = [str(Status.REVOKED), str(Status.EXPIRED)]
    return select(AgentRow.id, AgentRow.updated_at).where(AgentRow.status.in_(dead))


def liveness(s: Session, agent_ids: Collection[str]) -> dict[str, Liveness]:
    """What liveness reads of each of these agents that exists."""
    if not agent_ids:
        return {}
    q = select(AgentRow.id, AgentRow.status, AgentRow.expires_at).where(
        AgentRow.id.in_(list(agent_ids))
    )
    return {agent_id: Liveness(status, expires) for agent_id, status, expires in s.execute(q)}


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as the decision path needs it, in plain values: who it is, what it is, who
    answers for it, its roles and its registry attributes."""

    id: str
    name: str
    owner_id: str
    purpose: str
    risk_tier: str
    status: str
    attributes: dict[str, Any]
    expires_at: int | None
    roles: tuple[str, ...]
    supervisors: tuple[str, ...]
    recertify_by: int | None = None  # microseconds


def records(s: Session, agent_ids: Collection[str] | None = None) -> list[AgentRecord]:
    """Every agent (or those of ``agent_ids`` that exist), with its roles and supervisors, in
    two queries whatever the number (the agents' columns; their roles and supervisors in one
    ``UNION ALL``) — for a list of agents on PostgreSQL in one (the roles and supervisors as
    arrays beside each agent's columns): the runtime applies each change to an agent with
    this, on every worker, so its round trips are the apply's cost."""
    ids = None if agent_ids is None else {"ids": [a for a in agent_ids if not unstorable(a)]}
    if ids is not None and s.get_bind().dialect.name == "postgresql":
        return [record_of(row, sorted(row.role_list or ()), sorted(row.supervisor_list or ()))
                for row in _RECORDS_OF.execute(s, ids)]  # fmt: skip
    by_roles: dict[str, list[str]] = {}
    by_sups: dict[str, list[str]] = {}
    extras = s.execute(_ALL_EXTRAS) if ids is None else _EXTRAS_OF.execute(s, ids)
    for agent_id, kind, value in extras:
        (by_roles if kind == "r" else by_sups).setdefault(agent_id, []).append(value)
    for found in (by_roles, by_sups):  # the order the tables' keys give, on every backend
        for values in found.values():
            values.sort()
    agents = s.execute(_ALL_AGENTS) if ids is None else _AGENTS_OF.execute(s, ids)
    return [record_of(row, by_roles.get(row.id, ()), by_sups.get(row.id, ()))
            for row in agents]  # fmt: skip


_AGENT_COLUMNS = tuple(AgentRow.__table__.c)


def _agents(d: str | None) -> Select[Any]:
    """The agents' columns: all of them (``d`` None), or those whose ids are bound as
    ``ids`` (one array on PostgreSQL, see :mod:`tether.db.lists`)."""
    q = select(*_AGENT_COLUMNS)
    return q if d is None else q.where(one_of(AgentRow.id, "ids", d))


def _extras(d: str | None) -> CompoundSelect[Any]:
    """Their roles and supervisors, in one ``UNION ALL``."""
    roles = select(AgentRoleRow.agent_id, literal("r"), AgentRoleRow.role)
    sups = select(AgentSupervisorRow.agent_id, literal("s"), AgentSupervisorRow.user_id)
    if d is not None:
        roles = roles.where(one_of(AgentRoleRow.agent_id, "ids", d))
        sups = sups.where(one_of(AgentSupervisorRow.agent_id, "ids", d))
    return union_all(roles, sups)


def _records(d: str) -> Select[Any]:
    """PostgreSQL: the agents bound as ``ids``, each with its roles and supervisors as arrays
    (NULL for none)."""
    roles = select(func.array_agg(AgentRoleRow.role)).where(AgentRoleRow.agent_id == AgentRow.id)
    sups = select(func.array_agg(AgentSupervisorRow.user_id)).where(
        AgentSupervisorRow.agent_id == AgentRow.id
    )
    return _agents(d).add_columns(
        roles.scalar_subquery().label("role_list"), sups.scalar_subquery().label("supervisor_list")
    )


_ALL_AGENTS, _ALL_EXTRAS = _agents(None), _extras(None)
_AGENTS_OF, _EXTRAS_OF, _RECORDS_OF = PerDialect(_agents), PerDialect(_extras), PerDialect(_records)


def record_of(row: Any, roles: Iterable[str], supervisors: Iterable[str]) -> AgentRecord:
    """The record of a registry row (anything with its columns)."""
    return AgentRecord(
        row.id, row.name, row.owner_id, row.purpose, row.risk_tier, row.status,
        orjson.loads(row.attributes or "{}"), row.expires_at, tuple(roles), tuple(supervisors),
        row.recertify_by,
    )  # fmt: skip
