"""Database access for the agent registry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.users.models import UserRow


def _has_nul(*values: str | None) -> bool:
    """PostgreSQL text cannot hold NUL, so a key containing one matches no row; it must not
    reach the driver, which rejects it with an error instead."""
    return any(v is not None and "\x00" in v for v in values)


class DatabaseAgentStore:
    def get(self, session: Session, agent_id: str, *, for_update: bool = False) -> AgentRow | None:
        if _has_nul(agent_id):
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
        return {user_id: username for user_id, username in rows}

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
    ) -> list[AgentRow]:
        """Agents in id order after ``after``; ``visible_to`` keeps those a user owns/supervises."""
        if _has_nul(status, role, risk_tier):
            return []
        q = select(AgentRow)
        if after is not None:
            q = q.where(AgentRow.id > after)
        if status is not None:
            q = q.where(AgentRow.status == status)
        if owner_id is not None:
            q = q.where(AgentRow.owner_id == owner_id)
        if risk_tier is not None:
            q = q.where(AgentRow.risk_tier == risk_tier)
        if role is not None:
            q = q.where(
                AgentRow.id.in_(select(AgentRoleRow.agent_id).where(AgentRoleRow.role == role))
            )
        if visible_to is not None:
            supervised = select(AgentSupervisorRow.agent_id).where(
                AgentSupervisorRow.user_id == visible_to
            )
            q = q.where(or_(AgentRow.owner_id == visible_to, AgentRow.id.in_(supervised)))
        return list(session.scalars(q.order_by(AgentRow.id).limit(limit)))

    def children(self, session: Session, parent_ids: list[str]) -> list[AgentRow]:
        q = select(AgentRow).where(AgentRow.parent_id.in_(parent_ids)).order_by(AgentRow.id)
        return list(session.scalars(q))

    def is_supervisor(self, session: Session, agent_id: str, user_id: str) -> bool:
        q = select(AgentSupervisorRow.user_id).where(
            AgentSupervisorRow.agent_id == agent_id, AgentSupervisorRow.user_id == user_id
        )
        return session.execute(q).first() is not None
