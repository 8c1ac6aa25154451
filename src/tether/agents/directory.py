"""What other domains may read of agents, inside their own transaction.

Approvals, the token grants and client authentication need to know who answers for an agent
and whether it (and every agent of a delegation chain) is live. They ask here and get values
(:class:`~tether.agents.authority.Stewards`, :class:`~tether.agents.authority.Liveness`,
:class:`AgentFacts`), so the agents' tables stay inside ``agents/`` and the rules about them
in :mod:`tether.agents.authority`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from tether.agents.authority import Liveness, Stewards
from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.agents.store import DatabaseAgentStore
from tether.agents.values import Status
from tether.db.bulk import fetch_all_of
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


def records(s: Session, agent_ids: Collection[str]) -> list[AgentRecord]:
    """Those of ``agent_ids`` that exist, with their roles and supervisors, in two queries
    whatever their number (the agents' columns; their roles and supervisors in one ``UNION
    ALL``) — on PostgreSQL in one (the roles and supervisors beside each agent's columns):
    the runtime applies each change to an agent with this, on every worker, so its round
    trips are the apply's cost."""
    ids = {"ids": [a for a in agent_ids if not unstorable(a)]}
    if s.get_bind().dialect.name == "postgresql":
        return [_record(row[:-2], _parsed(row.role_list), _parsed(row.supervisor_list))
                for row in _RECORDS_OF.execute(s, ids)]  # fmt: skip
    return list(_joined(_AGENTS_OF.execute(s, ids), _EXTRAS_OF.execute(s, ids)))


# Agents a batch (~1 MB of rows). At 100,000 agents batches of 500 to 2,000 loaded in the
# same time; 5,000 held 4 MiB more of the worker afterwards.
_BATCH = 1000


def every_record(s: Session, *, batch: int = _BATCH) -> Iterator[AgentRecord]:
    """Every agent, as :func:`records` reads them, ``batch`` at a time in id order (two
    queries a batch: the agents after the last id, then the roles and supervisors of that id
    range). The runtime's full load builds each view as its batch comes, so 100,000 agents'
    rows are never all in memory at once.

    Batches rather than one cursor over every row: PostgreSQL's driver holds a cursor's
    whole result (libpq), and the C allocator kept its 40 MiB after it was freed; a
    server-side cursor needs a transaction, which a sync's reload does not have. On
    PostgreSQL each statement sees the rows as of its own start, so each agent is at least
    as new as any change read before the load began, which is what the runtime needs (a
    change during the load is applied again by the next sync)."""
    # On the session's connection's driver: the ORM's execution builds each row again in
    # Python, and SQLAlchemy's rows cost more than the driver's.
    conn = s.connection()
    extras = _EXTRAS_BETWEEN[conn.dialect.name]
    after = ""  # below every id
    while True:
        agents = fetch_all_of(conn, _AGENTS_AFTER, {"after": after, "batch": batch})
        if not agents:
            return
        last = agents[-1][0]
        yield from _joined(agents, fetch_all_of(conn, extras, {"after": after, "last": last}))
        if len(agents) < batch:
            return
        after = last


def _joined(agents: Iterable[Any], extras: Iterable[Any]) -> Iterator[AgentRecord]:
    """The records of these agents' rows, given their roles' and supervisors' rows."""
    lists: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for agent_id, kind, listed in extras:
        lists[kind == "s"][agent_id] = listed
    roles, sups = lists
    for row in agents:
        yield _record(row, _parsed(roles.get(row[0])), _parsed(sups.get(row[0])))


@lru_cache(maxsize=4096)
def _parsed(listed: str | None) -> tuple[str, ...]:
    """A list of roles or supervisors as the queries give it (a JSON array), sorted (the
    order the tables' keys give, on every backend). Parsed once per distinct text: the same
    few role sets, and no supervisors, recur across most agents."""
    return () if listed is None else tuple(sorted(loads(listed)))


def _record(row: Any, roles: tuple[str, ...], supervisors: tuple[str, ...]) -> AgentRecord:
    # By position: a row's values by name cost more than the rest of the record.
    id, name, owner, purpose, tier, status, attributes, expires, recertify = row
    return AgentRecord(id, name, owner, purpose, tier, status, loads(attributes or "{}"),
                       expires, roles, supervisors, recertify)  # fmt: skip


# What a record holds, no more: the other columns (SPIFFE id, lineage, fingerprint...) were
# most of the bytes each agent's row brought.
_RECORD_COLUMNS: tuple[Any, ...] = (
    AgentRow.id, AgentRow.name, AgentRow.owner_id, AgentRow.purpose, AgentRow.risk_tier,
    AgentRow.status, AgentRow.attributes, AgentRow.expires_at, AgentRow.recertify_by,
)  # fmt: skip
_AFTER: BindParameter[str] = bindparam("after")
_LAST: BindParameter[str] = bindparam("last")
_AGENTS_AFTER = (
    select(*_RECORD_COLUMNS)
    .where(AgentRow.id > _AFTER)
    .order_by(AgentRow.id)
    .limit(bindparam("batch", type_=Integer))
)
_Column = InstrumentedAttribute[str]


def _listed(value: _Column, d: str) -> ColumnElement[str]:
    """An agent's values of ``value``, aggregated as one JSON array text."""
    if d == "postgresql":
        return cast(func.json_agg(value), Text)  # NULL for none
    return func.json_group_array(value)


def _extras(d: str, which: Callable[[_Column], ColumnElement[bool]]) -> CompoundSelect[Any]:
    """``(agent id, "r" or "s", JSON array)``: the roles and the supervisors of each agent
    ``which`` selects (given the ``agent_id`` column), in one ``UNION ALL``."""

    def per_agent(kind: str, agent_id: _Column, value: _Column) -> Select[str, str, str]:
        q = select(agent_id, literal(kind), _listed(value, d)).where(which(agent_id))
        return q.group_by(agent_id)

    return union_all(
        per_agent("r", AgentRoleRow.agent_id, AgentRoleRow.role),
        per_agent("s", AgentSupervisorRow.agent_id, AgentSupervisorRow.user_id),
    )


def _agents(d: str) -> Select[Any]:
    """The agents whose ids are bound as ``ids`` (one array on PostgreSQL, see
    :mod:`tether.db.lists`)."""
    return select(*_RECORD_COLUMNS).where(one_of(AgentRow.id, "ids", d))


def _records(d: str) -> Select[Any]:
    """PostgreSQL: the agents bound as ``ids``, each with its roles and supervisors beside
    its columns."""
    roles = select(_listed(AgentRoleRow.role, d)).where(AgentRoleRow.agent_id == AgentRow.id)
    sups = select(_listed(AgentSupervisorRow.user_id, d)).where(
        AgentSupervisorRow.agent_id == AgentRow.id
    )
    return _agents(d).add_columns(
        roles.scalar_subquery().label("role_list"), sups.scalar_subquery().label("supervisor_list")
    )


_AGENTS_OF, _RECORDS_OF = PerDialect(_agents), PerDialect(_records)
_EXTRAS_OF = PerDialect(lambda d: _extras(d, lambda agent_id: one_of(agent_id, "ids", d)))
_EXTRAS_BETWEEN = PerDialect(
    lambda d: _extras(d, lambda agent_id: and_(agent_id > _AFTER, agent_id <= _LAST))
)


def record_of(row: Any, roles: Iterable[str], supervisors: Iterable[str]) -> AgentRecord:
    """The record of a registry row (anything with its columns)."""
    return AgentRecord(
        row.id, row.name, row.owner_id, row.purpose, row.risk_tier, row.status,
        loads(row.attributes or "{}"), row.expires_at, tuple(roles), tuple(supervisors),
        row.recertify_by,
    )  # fmt: skip
