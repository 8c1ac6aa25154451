"""The ledger's tables. JSON columns hold canonical JSON text so hashes recompute exactly."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class EventRow(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    time: Mapped[int] = mapped_column(BigInteger)  # microseconds since the epoch
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(80))
    agent_id: Mapped[str | None] = mapped_column(String(40))
    on_behalf_of: Mapped[str | None] = mapped_column(String(80))
    chain: Mapped[str] = mapped_column(Text)
    action: Mapped[str | None] = mapped_column(String(200))
    resource: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str | None] = mapped_column(String(32))
    reasons: Mapped[str] = mapped_column(Text)
    policy_version: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_agent_id_seq", "agent_id", "seq"),
        Index("ix_audit_events_type_seq", "type", "seq"),
        Index("ix_audit_events_time", "time"),
        # No index on hash: only verification looks events up by it, after a break is found.
    )


class CheckpointRow(Base):
    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)  # base64url Ed25519 signature


class CutRow(Base):
    """A retention cut (tether.audit.retention): the checkpoint signed at the last event a
    prune deleted — the head the first kept event follows — and what that prune did."""

    __tablename__ = "audit_cuts"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)  # base64url Ed25519, as a checkpoint's
    pruned: Mapped[int] = mapped_column(BigInteger)  # events this prune deleted
    cutoff: Mapped[int] = mapped_column(BigInteger)  # µs: events before it were due
    event_id: Mapped[str] = mapped_column(String(40))  # its ledger.pruned event
