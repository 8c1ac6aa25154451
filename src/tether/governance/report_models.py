"""Built compliance reports: what each one's figures were counted from, so that retention
keeps that range (the hold in :meth:`tether.governance.report.ComplianceReports.held_from`)
and a report can be listed and found by its ledger event."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class ReportRow(Base):
    __tablename__ = "governance_reports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # its report.built event's id
    built_at: Mapped[int] = mapped_column(BigInteger)
    built_by: Mapped[str] = mapped_column(String(80))  # actor ref
    period_from: Mapped[int] = mapped_column(BigInteger)
    period_to: Mapped[int] = mapped_column(BigInteger)
    seq_from: Mapped[int] = mapped_column(BigInteger)  # the figures' range (empty: from > to)
    seq_to: Mapped[int] = mapped_column(BigInteger)
    built_seq: Mapped[int] = mapped_column(BigInteger)  # its report.built event
    sha256: Mapped[str] = mapped_column(String(64))  # of the report's canonical JSON

    __table_args__ = (Index("ix_governance_reports_seq_from", "seq_from"),)
