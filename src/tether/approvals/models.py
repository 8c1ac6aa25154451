"""Approval checkpoints. A row is bound to one request digest and moves pending → approved →
used, or pending → denied / expired; it is never deleted."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class ApprovalRow(Base):
    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    on_behalf_of: Mapped[str | None] = mapped_column(String(80))
    request_digest: Mapped[str] = mapped_column(String(64))
    request: Mapped[str] = mapped_column(Text)  # canonical JSON of what was asked
    action: Mapped[str] = mapped_column(String(200))
    resource: Mapped[str] = mapped_column(Text)  # canonical JSON {type, id}
    reasons: Mapped[str] = mapped_column(Text)  # canonical JSON list of policy ids
    policy_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    decided_by: Mapped[str | None] = mapped_column(String(80))
    decided_at: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(Text)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
    used_event_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        Index("ix_approvals_agent_id_status", "agent_id", "status"),
        Index("ix_approvals_status_id", "status", "id"),
        Index("ix_approvals_request_digest", "request_digest"),
    )
