"""A rollback: who undid which agent's calls over which window, how far it got."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class RollbackRow(Base):
    __tablename__ = "rollbacks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(40))
    requested_by: Mapped[str] = mapped_column(String(80))  # the operator's ref, user:<id>
    since: Mapped[int | None] = mapped_column(BigInteger)  # microseconds since the epoch
    until: Mapped[int | None] = mapped_column(BigInteger)
    delegates: Mapped[bool] = mapped_column(Boolean)
    on_failure: Mapped[str] = mapped_column(String(16))  # "stop" | "continue"
    # "running" while its worker holds the lease; "done", "stopped" (a failed step, with
    # on_failure stop), "interrupted" (its worker went away: the next rollback says so).
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    report: Mapped[str | None] = mapped_column(Text)  # the final counts, JSON

    __table_args__ = (Index("ix_rollbacks_agent_id_status", "agent_id", "status"),)
