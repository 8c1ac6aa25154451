"""What reviews give others as evidence: the reviews of a period as a compliance report counts
them (started, done, overdue, each with its ledger events), and the lowest ledger sequence
open reviews reference (a retention hold: nothing from there on may be pruned)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tether.clock import from_micros, to_micros
from tether.governance.review_models import ReviewLineRow, ReviewRow
from tether.governance.review_values import PeriodReview, ReviewPeriod, ReviewStatus


def period(s: Session, since: datetime, until: datetime, *, end: datetime) -> ReviewPeriod:
    """Reviews started in ``[since, until)``, closed in it, and overdue at ``end`` (due by
    then and not closed by then)."""
    lo, hi, end_us = to_micros(since), to_micros(until), to_micros(end)
    started = _rows(s, (ReviewRow.created_at >= lo) & (ReviewRow.created_at < hi))
    done = _rows(s, (ReviewRow.closed_at >= lo) & (ReviewRow.closed_at < hi))
    late = or_(ReviewRow.closed_at.is_(None), ReviewRow.closed_at > end_us)
    overdue = _rows(s, (ReviewRow.due_at <= end_us) & late)
    return ReviewPeriod(since, until, started, done, overdue)


def _rows(s: Session, where: Any) -> list[PeriodReview]:
    rows = list(s.scalars(select(ReviewRow).where(where).order_by(ReviewRow.id)))
    counts: dict[str, int] = {}
    if rows:
        q = (
            select(ReviewLineRow.review_id, func.count())
            .where(ReviewLineRow.review_id.in_([r.id for r in rows]))
            .group_by(ReviewLineRow.review_id)
        )
        counts = {review_id: int(n) for review_id, n in s.execute(q)}
    return [
        PeriodReview(
            r.id,
            from_micros(r.created_at),
            from_micros(r.due_at),
            from_micros(r.closed_at) if r.closed_at is not None else None,
            r.started_seq,
            r.closed_seq,
            counts.get(r.id, 0),
        )
        for r in rows
    ]


def lowest_referenced_seq(session: Session) -> int | None:
    """The lowest seq among open reviews' ``review.started`` events, the decisions their
    lines cite as last use, and their lines' answers; None when no review is open."""
    is_open = ReviewRow.status == ReviewStatus.OPEN
    started = session.scalar(select(func.min(ReviewRow.started_seq)).where(is_open))
    lines = session.execute(
        select(func.min(ReviewLineRow.last_used_seq), func.min(ReviewLineRow.answer_seq))
        .join(ReviewRow, ReviewRow.id == ReviewLineRow.review_id)
        .where(is_open)
    ).one()
    found = [int(v) for v in (started, *lines) if v is not None]
    return min(found) if found else None
