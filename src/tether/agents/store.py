"""Database access for the agent registry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from tether.agents.authority import Stewards
from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.agents.values import EXPIRABLE, Status
from tether.db.lists import PerDialect, one_of
from tether.db.text import unstorable
from tether.users.models import UserRow


@dataclass(frozen=True, slots=True)
class _Filters:
    after: str | None
    limit: int
    status: str | None
    risk_tier: str | None
    role: str | None
    now_us: int
    due_by: int | None = None  # recertify_by at or before this (microseconds), still live


class Descendant(NamedTuple):
    """What a kill needs of an agent below the one killed: its stored status and expiry."""

    id: str
    status: str
    expires_at: int | None


class DatabaseAgentStore:
    def get(self, session: Session, agent_id: str, *, for_update: bool = False) -> AgentRow | None:
        if unstorable(agent_id):
            return None
        return session.get(AgentRow, agent_id, with_for_update=for_update)

    def add(self, session: Session, row: AgentRow) -> None:
        session.add(row)
        session.flush()

    def set_roles(self, session: Session, agent_id: str, roles: Iterable[str]) -> None:
        session.execute(delete(AgentRoleRow).where(AgentRoleRow.agent_id == agent_id))
        session.add_all(AgentRoleRow(agent_id=agent_id, role=r) for r in roles)
        session.flush()

    def set_supervisors(self, session: Session, agent_id: str, user_ids: Iterable[str]) -> None:
        session.execute(delete(AgentSupervisorRow).where(AgentSupervisorRow.agent_id == agent_id))
        session.add_all(AgentSupervisorRow(agent_id=agent_id, user_id=u) for u in user_ids)
        session.flush()

    def roles_of(self, session: Session, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        if ids:
            q = (
                select(AgentRoleRow.agent_id, AgentRoleRow.role)
                .where(AgentRoleRow.agent_id.in_(ids))
                .order_by(AgentRoleRow.agent_id, AgentRoleRow.role)
            )
            for agent_id, role in session.execute(q):
                out[agent_id].append(role)
        return out

    def supervisors_of(self, session: Session, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        if ids:
            q = (
                select(AgentSupervisorRow.agent_id, AgentSupervisorRow.user_id)
                .where(AgentSupervisorRow.agent_id.in_(ids))
                .order_by(AgentSupervisorRow.agent_id, AgentSupervisorRow.user_id)
            )
            for agent_id, user_id in session.execute(q):
                out[agent_id].append(user_id)
        return out

    def usernames(self, session: Session, user_ids: Iterable[str]) -> dict[str, str]:
        ids = list(set(user_ids))
        if not ids:
            return {}
        rows = session.execute(select(UserRow.id, UserRow.username).where(UserRow.id.in_(ids)))
        return {row[0]: row[1] for row in rows}

    def page(
        self,
        session: Session,
        *,
        after: str | None,
        limit: int,
        status: str | None = None,
        owner_id: str | None = None,
        role: str | None = None,
        risk_tier: str | None = None,
        visible_to: str | None = None,
        now_us: int = 0,
        due_by: int | None = None,
    ) -> list[AgentRow]:
        """Agents in id order after ``after``; ``visible_to`` keeps those a user owns/supervises.
        ``status`` is the status readers see at ``now_us`` (an agent past ``expires_at`` is
        ``expired`` whether or not the sweep has stored it yet); ``due_by`` keeps the active
        and suspended agents whose recertification is due by then (microseconds).

        Each query is driven by the index that matches its most selective part (role,
        supervision), read in id order with a LIMIT: measured in bench/registry.py, an
        ``id IN (subquery)`` or an ``OR`` across owner and supervision scans the whole table.
        """
        if unstorable(status, role, risk_tier):
            return []
        filters = _Filters(after, limit, status, risk_tier, role, now_us, due_by)
        if visible_to is None:
            return self._page_branch(session, filters, owner_id=owner_id)
        # A supervisor's view: what they own, merged with what they supervise.
        rows: dict[str, AgentRow] = {}
        if owner_id in (None, visible_to):
            for row in self._page_branch(session, filters, owner_id=visible_to):
                rows[row.id] = row
        for row in self._page_branch(session, filters, owner_id=owner_id, supervisor=visible_to):
            rows[row.id] = row
        return [rows[k] for k in sorted(rows)][:limit]

    def _page_branch(
        self,
        session: Session,
        f: _Filters,
        *,
        owner_id: str | None,
        supervisor: str | None = None,
    ) -> list[AgentRow]:
        q = select(AgentRow)
        key: InstrumentedAttribute[str] = AgentRow.id
        if supervisor is not None:
            q = q.join(
                AgentSupervisorRow,
                and_(
                    AgentSupervisorRow.agent_id == AgentRow.id,
                    AgentSupervisorRow.user_id == supervisor,
                ),
            )
            key = AgentSupervisorRow.agent_id
        if f.role is not None:
            q = q.join(
                AgentRoleRow,
                and_(AgentRoleRow.agent_id == AgentRow.id, AgentRoleRow.role == f.role),
            )
            key = AgentRoleRow.agent_id
        if f.after is not None:
            q = q.where(key > f.after)
        if f.status is not None:
            q = q.where(_status_is(f.status, f.now_us))
        if owner_id is not None:
            q = q.where(AgentRow.owner_id == owner_id)
        if f.risk_tier is not None:
            q = q.where(AgentRow.risk_tier == f.risk_tier)
        if f.due_by is not None:
            live = [Status.ACTIVE.value, Status.SUSPENDED.value]
            q = q.where(AgentRow.recertify_by.is_not(None), AgentRow.recertify_by <= f.due_by,
                        AgentRow.status.in_(live))  # fmt: skip
        return list(session.scalars(q.order_by(key).limit(f.limit)))

    def counts(
        self, session: Session, *, now_us: int, visible_to: str | None = None
    ) -> dict[tuple[str, str], int]:
        """How many agents per (status as readers see it, risk tier): one aggregate query
        (two for a supervisor: what they own, and what they supervise but do not own)."""
        passed = and_(AgentRow.expires_at.is_not(None), AgentRow.expires_at <= now_us,
                      AgentRow.status.in_([str(s) for s in EXPIRABLE]))  # fmt: skip
        shown = case((passed, Status.EXPIRED.value), else_=AgentRow.status)
        base = select(shown, AgentRow.risk_tier, func.count()).group_by(shown, AgentRow.risk_tier)
        queries = [base]
        if visible_to is not None:
            owned = base.where(AgentRow.owner_id == visible_to)
            supervised = base.join(AgentSupervisorRow, and_(
                AgentSupervisorRow.agent_id == AgentRow.id,
                AgentSupervisorRow.user_id == visible_to,
            )).where(AgentRow.owner_id != visible_to)  # fmt: skip
            queries = [owned, supervised]
        out: dict[tuple[str, str], int] = defaultdict(int)
        for query in queries:
            for status, tier, n in session.execute(query):
                out[(str(status), str(tier))] += int(n)
        return dict(out)

    def descendants(self, session: Session, root_id: str, *, limit: int) -> list[Descendant]:
        """Every agent below ``root_id`` (its children, theirs, …): nearest generation first,
        in id order within one; at most ``limit`` (so a caller that gets ``limit`` back may be
        missing some). One recursive query on ``ix_agents_parent_id``, whatever the depth."""
        if unstorable(root_id):
            return []
        found = session.execute(_DESCENDANTS, {"root": root_id, "limit": limit})
        return [Descendant(*row) for row in found]

    def revoke(self, session: Session, agent_ids: list[str], *, reason: str, now_us: int) -> None:
        """Store these agents as revoked at ``now_us``, in one statement. The session's pending
        changes are flushed first, and the rows it holds of these agents expired (a later read
        sees what is stored)."""
        if not agent_ids:
            return
        session.flush()
        _REVOKE.execute(session, {"ids": agent_ids, "reason": reason, "now_us": now_us})
        wanted = set(agent_ids)
        for row in list(session.identity_map.values()):
            if isinstance(row, AgentRow) and row.id in wanted:
                session.expire(row)

    def stewards(self, session: Session, row: AgentRow) -> Stewards:
        """The humans who answer for the agent of ``row``: its owner and its supervisors."""
        return Stewards(row.owner_id, frozenset(self.supervisors_of(session, [row.id])[row.id]))


# The kill's statements, built once: it runs them under the deployment-wide write lock, and
# building a recursive query or an ORM bulk UPDATE cost several times running it (on SQLite
# ~0.45 ms to build the query against ~0.05 to run it; bench/README.md, "Kill").
#
# A parent is set once, at creation, to an agent that exists already: the agents form a
# forest and the walk ends. The depth bound is there only so that it must.
_AGENTS = cast(Table, AgentRow.__table__)
_LIMIT = bindparam("limit", type_=Integer)
_WALK = (
    select(_AGENTS.c.id, _AGENTS.c.status, _AGENTS.c.expires_at, literal(1).label("depth"))
    .where(_AGENTS.c.parent_id == bindparam("root"))
    .cte("descendants", recursive=True)
)
_WALK = _WALK.union_all(
    select(_AGENTS.c.id, _AGENTS.c.status, _AGENTS.c.expires_at, _WALK.c.depth + 1)
    .join(_WALK, _AGENTS.c.parent_id == _WALK.c.id)
    .where(_WALK.c.depth < _LIMIT)
)
_DESCENDANTS = (
    select(_WALK.c.id, _WALK.c.status, _WALK.c.expires_at)
    .order_by(_WALK.c.depth, _WALK.c.id)
    .limit(_LIMIT)
)
_REVOKE = PerDialect(lambda d: (
    update(_AGENTS)
    .where(one_of(_AGENTS.c.id, "ids", d))
    .values(status=Status.REVOKED.value, status_reason=bindparam("reason"),
            updated_at=bindparam("now_us"))
))  # fmt: skip


def _status_is(status: str, now_us: int) -> ColumnElement[bool]:
    passed = and_(AgentRow.expires_at.is_not(None), AgentRow.expires_at <= now_us)
    if status == Status.EXPIRED:
        unswept = and_(AgentRow.status.in_([str(s) for s in EXPIRABLE]), passed)
        return or_(AgentRow.status == status, unswept)
    if status in EXPIRABLE:
        return and_(
            AgentRow.status == status,
            or_(AgentRow.expires_at.is_(None), AgentRow.expires_at > now_us),
        )
    return AgentRow.status == status
