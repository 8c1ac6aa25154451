"""Access reviews' tables: a campaign, and its lines as they were at its start.

A line is a snapshot: what the agent held (a permission, a role, a credential, a delegation)
and when it was last used, read when the campaign started. The answer and what a confirmed
answer did are kept on the line; every one of them is also a ledger event, whose ``seq`` the
line keeps so that a report can point at the proof.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class ReviewRow(Base):
    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # "open" | "closed"
    scope: Mapped[str] = mapped_column(Text)  # canonical JSON {"owners": [...], "agents": [...]}
    note: Mapped[str | None] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(64))  # the permissions' version
    created_by: Mapped[str] = mapped_column(String(80))  # actor ref
    created_at: Mapped[int] = mapped_column(BigInteger)
    due_at: Mapped[int] = mapped_column(BigInteger)
    started_seq: Mapped[int] = mapped_column(BigInteger)  # its review.started event
    closed_by: Mapped[str | None] = mapped_column(String(80))
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    closed_seq: Mapped[int | None] = mapped_column(BigInteger)  # its review.closed event

    __table_args__ = (
        Index("ix_reviews_status_due_at", "status", "due_at"),
        Index("ix_reviews_closed_at", "closed_at"),
        Index("ix_reviews_created_at", "created_at"),
    )


class ReviewLineRow(Base):
    __tablename__ = "review_lines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    review_id: Mapped[str] = mapped_column(ForeignKey("reviews.id"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    owner_id: Mapped[str] = mapped_column(String(40))  # the agent's owner at the start
    kind: Mapped[str] = mapped_column(String(16))  # permission | role | credential | delegation
    subject: Mapped[str] = mapped_column(String(300))  # policy id, role, credential id, ref
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON: what the line shows
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    last_used_seq: Mapped[int | None] = mapped_column(BigInteger)  # the decision, if one
    # "open" (no answer), "answered" (reduce or retire, awaiting confirmation), "settled"
    state: Mapped[str] = mapped_column(String(16))
    answer: Mapped[str | None] = mapped_column(String(16))  # keep | reduce | retire
    answer_note: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(80))
    answered_at: Mapped[int | None] = mapped_column(BigInteger)
    answer_seq: Mapped[int | None] = mapped_column(BigInteger)  # its review.answered event
    outcome: Mapped[str | None] = mapped_column(String(32))  # what a confirmation did
    applied_by: Mapped[str | None] = mapped_column(String(80))
    applied_at: Mapped[int | None] = mapped_column(BigInteger)
    applied_seq: Mapped[int | None] = mapped_column(BigInteger)  # its review.applied event

    __table_args__ = (
        Index("ix_review_lines_review_id_id", "review_id", "id"),
        Index("ix_review_lines_agent_id_state", "agent_id", "state"),
        Index("ix_review_lines_state_review_id", "state", "review_id"),
    )
