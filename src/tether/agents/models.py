"""The agent registry's tables. Rows are never deleted, so ids are never reused."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class AgentRow(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(300), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    purpose: Mapped[str] = mapped_column(Text)
    risk_tier: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[str] = mapped_column(Text)  # canonical JSON object
    # OAuth scopes the agent may hold (RFC 6749 §3.3): the ceiling for every token it gets.
    scopes: Mapped[str] = mapped_column(Text, server_default="[]")  # canonical JSON list
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"))
    lineage: Mapped[str] = mapped_column(Text)  # JSON list of ancestor ids, nearest first
    lineage_kind: Mapped[str | None] = mapped_column(String(16))
    fingerprint: Mapped[str | None] = mapped_column(Text)  # canonical JSON object
    fingerprint_digest: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    recertify_by: Mapped[int | None] = mapped_column(BigInteger)
    # How far the recertification sweep got for the current ``recertify_by``: None (nothing
    # yet), "noticed" (agent.recertification_due), "overdue" (its response taken) or "closed"
    # (revoked or retired: nothing to do). Reset whenever ``recertify_by`` changes.
    recertify_stage: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_agents_owner_id_id", "owner_id", "id"),
        Index("ix_agents_status_id", "status", "id"),
        Index("ix_agents_risk_tier_id", "risk_tier", "id"),
        Index("ix_agents_parent_id", "parent_id"),
        # The expiry sweep: agents of a status whose expires_at has passed.
        Index("ix_agents_status_expires_at", "status", "expires_at"),
        # The recertification sweep: agents at a stage whose recertify_by is near or past.
        Index("ix_agents_recertify_stage_by", "recertify_stage", "recertify_by"),
    )


class AgentRoleRow(Base):
    __tablename__ = "agent_roles"

    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(100), primary_key=True)

    __table_args__ = (Index("ix_agent_roles_role_agent_id", "role", "agent_id"),)


class AgentSupervisorRow(Base):
    __tablename__ = "agent_supervisors"

    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)

    __table_args__ = (Index("ix_agent_supervisors_user_id_agent_id", "user_id", "agent_id"),)
