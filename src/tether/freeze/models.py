"""The freezes table: one row per freeze, kept after it is lifted (the history)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class FreezeRow(Base):
    __tablename__ = "freezes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    # The scope: every non-null field must match (all null: every agent).
    owner_id: Mapped[str | None] = mapped_column(String(40))
    role: Mapped[str | None] = mapped_column(String(100))
    risk_tier: Mapped[str | None] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)
    lifted_by: Mapped[str | None] = mapped_column(String(80))
    lifted_at: Mapped[int | None] = mapped_column(BigInteger)
    lift_reason: Mapped[str | None] = mapped_column(Text)

    # Every worker loads the freezes in force: those not lifted.
    __table_args__ = (Index("ix_freezes_lifted_at", "lifted_at"),)
