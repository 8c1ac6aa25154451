"""Alerts: notable events raised from the ledger (deduplicated), and their webhook deliveries
— an outbox, so a receiver that was down gets them after it comes back, in order."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class AlertRow(Base):
    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)  # the ledger event that raised it
    event_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(64))  # the rule: "agent.killed", "freeze.started"…
    severity: Mapped[str] = mapped_column(String(16))  # "info" | "warning" | "critical"
    agent_id: Mapped[str | None] = mapped_column(String(40))
    summary: Mapped[str] = mapped_column(String(500))
    details: Mapped[str] = mapped_column(Text)  # JSON
    dedup_key: Mapped[str] = mapped_column(String(200))
    suppressed: Mapped[int] = mapped_column(Integer, default=0)  # later ones folded into it
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[int] = mapped_column(BigInteger)  # its latest occurrence
    acked_by: Mapped[str | None] = mapped_column(String(80))  # the human's ref, user:<id>
    acked_by_name: Mapped[str | None] = mapped_column(String(64))  # their username then
    acked_at: Mapped[int | None] = mapped_column(BigInteger)
    ack_note: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (Index("ix_alerts_dedup_key_last_at", "dedup_key", "last_at"),)


class AlertDeliveryRow(Base):
    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    endpoint: Mapped[str] = mapped_column(String(64))  # a digest of the receiver's URL
    alert_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger)  # the alert's: the order of delivery
    status: Mapped[str] = mapped_column(String(16))  # "pending" | "delivered" | "dead"
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[int] = mapped_column(BigInteger)  # raised, or replayed: its age counts
    next_at: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_alert_deliveries_endpoint_status_seq", "endpoint", "status", "seq"),
    )


class AlertStateRow(Base):
    """Named positions: the projector's ledger cursor, the deliverer's lease."""

    __tablename__ = "alert_state"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str | None] = mapped_column(String(64))
