"""Policy versions: every accepted document is a new immutable row; the newest is current."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class PolicyVersionRow(Base):
    __tablename__ = "policy_versions"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    policies: Mapped[str] = mapped_column(Text)
    schema: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    policy_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(80))
    note: Mapped[str | None] = mapped_column(Text)


class DecisionInputRow(Base):
    """The caller's context of a recorded decision, beside the ledger (which keeps only its
    digest) so simulations can replay it and retention can drop it without breaking the chain."""

    __tablename__ = "decision_inputs"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    request: Mapped[str] = mapped_column(Text)  # canonical JSON: resource properties + context
