"""Monitoring's tables: exchange buffers between workers and nodes (each sync's counts and
newly seen pairs, session touches) and each agent's risk state (what was raised, step-up)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base

_ID = BigInteger().with_variant(Integer(), "sqlite")


class MonitorSyncRow(Base):
    """One worker's sync: the counts of every (agent, bucket) it changed since its last,
    absolute, and the (action, resource) pairs it saw an agent use first, as JSON
    ``{"counts": [[agent, bucket, requests, denies, first_seen, secret_reads, approvals], …],
    "pairs": [[agent, action, type, id], …]}`` — one row a sync, however many agents (a row
    per agent and bucket, and per pair, cost ~60 to 130 ms a second at 2,000 to 10,000 busy agents).
    Kept for a window and a little more (``Monitor.purge``)."""

    __tablename__ = "monitor_syncs"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    worker: Mapped[str] = mapped_column(String(40))
    at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_monitor_syncs_at", "at"),)


class MonitorTouchRow(Base):
    """One worker's sync's session touches — the data labels and tools sessions touched — as
    JSON ``[[session, kind, value, agent, at], …]``, one row a sync (a row per touch made a
    sync's write, under the write lock, grow with every new tool); kept for the session
    window: a restarted worker reads them back (:meth:`MonitorSection.load`)."""

    __tablename__ = "monitor_touches"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    worker: Mapped[str] = mapped_column(String(40))
    at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_monitor_touches_at", "at"),)


class AgentRiskRow(Base):
    """What monitoring last raised for an agent, and whether it is stepped up (every allow an
    approval checkpoint) until a human clears it."""

    __tablename__ = "agent_risk"

    agent_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    level: Mapped[str] = mapped_column(String(32))
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[int] = mapped_column(Integer)
    action: Mapped[str | None] = mapped_column(String(32))
    step_up: Mapped[bool] = mapped_column(Boolean)
    raised_at: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str | None] = mapped_column(String(40))
    evidence: Mapped[str] = mapped_column(Text)  # JSON: the rules that held and their signals
    cleared_at: Mapped[int | None] = mapped_column(BigInteger)
    cleared_by: Mapped[str | None] = mapped_column(String(80))
