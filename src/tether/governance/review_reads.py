"""Reading reviews: rows to values, each review's progress, and who sees which lines.

Admins and auditors see every review and every line. A supervisor sees the lines of the
agents they own or supervise *now* (the registry's stewards, not the owner at the start: an
agent handed to someone else is theirs to answer for), and the reviews holding such lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tether.agents.models import AgentRow, AgentSupervisorRow
from tether.errors import Forbidden
from tether.governance.review_models import ReviewLineRow, ReviewRow
from tether.governance.review_values import (
    Line,
    LineState,
    Progress,
    Review,
    ReviewStatus,
    is_overdue,
)
from tether.jsonutil import loads
from tether.principals import Principal, Role


def visible_to(actor: Principal) -> str | None:
    """The user whose agents' lines ``actor`` sees (a supervisor), or None for every line
    (admins, auditors); raises :class:`Forbidden` for an agent or anyone who is no user."""
    if actor.is_admin or actor.role is Role.AUDITOR:
        return None
    if actor.kind == "user" and actor.role is Role.SUPERVISOR:
        return actor.id
    raise Forbidden("only users may read access reviews")


def theirs(user_id: str) -> Any:
    """The lines of the agents ``user_id`` owns or supervises (a WHERE clause)."""
    owned = select(AgentRow.id).where(AgentRow.owner_id == user_id)
    supervised = select(AgentSupervisorRow.agent_id).where(AgentSupervisorRow.user_id == user_id)
    return or_(ReviewLineRow.agent_id.in_(owned), ReviewLineRow.agent_id.in_(supervised))


def progress(s: Session, review_ids: Sequence[str], user: str | None) -> dict[str, Progress]:
    """Each review's lines counted by state (only ``user``'s lines, if one is given)."""
    if not review_ids:
        return {}
    q = (
        select(ReviewLineRow.review_id, ReviewLineRow.state, func.count())
        .where(ReviewLineRow.review_id.in_(review_ids))
        .group_by(ReviewLineRow.review_id, ReviewLineRow.state)
    )
    if user is not None:
        q = q.where(theirs(user))
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for review_id, state, n in s.execute(q):
        counts[review_id][state] = int(n)
    out: dict[str, Progress] = {}
    for review_id in review_ids:
        c = counts.get(review_id, {})
        opened, answered = c.get(LineState.OPEN, 0), c.get(LineState.ANSWERED, 0)
        settled = c.get(LineState.SETTLED, 0)
        out[review_id] = Progress(opened + answered + settled, opened, answered, settled)
    return out


def to_review(
    row: ReviewRow, prog: Progress, now_us: int, lines: list[Line] | None = None
) -> Review:
    return Review(
        row.id,
        row.status,
        loads(row.scope),
        row.note,
        row.policy_version,
        row.created_by,
        row.created_at,
        row.due_at,
        row.started_seq,
        row.closed_by,
        row.closed_at,
        row.closed_seq,
        prog,
        is_overdue(row.status, row.due_at, row.closed_at, now_us),
        lines,
    )


def to_lines(s: Session, rows: Sequence[ReviewLineRow]) -> list[Line]:
    """The lines, each with its agent's current name."""
    ids = sorted({r.agent_id for r in rows})
    names: dict[str, str] = {}
    if ids:
        q = select(AgentRow.id, AgentRow.name).where(AgentRow.id.in_(ids))
        names = {str(agent_id): str(name) for agent_id, name in s.execute(q)}
    return [
        Line(
            r.id,
            r.review_id,
            r.agent_id,
            names.get(r.agent_id),
            r.owner_id,
            r.kind,
            r.subject,
            loads(r.detail),
            r.last_used_at,
            r.last_used_seq,
            r.state,
            r.answer,
            r.answer_note,
            r.answered_by,
            r.answered_at,
            r.answer_seq,
            r.outcome,
            r.applied_by,
            r.applied_at,
            r.applied_seq,
        )
        for r in rows
    ]


def line_rows(s: Session, review_id: str, user: str | None) -> list[ReviewLineRow]:
    q = select(ReviewLineRow).where(ReviewLineRow.review_id == review_id)
    if user is not None:
        q = q.where(theirs(user))
    return list(s.scalars(q.order_by(ReviewLineRow.agent_id, ReviewLineRow.id)))


def unsettled(s: Session, review_id: str) -> int:
    q = (
        select(func.count())
        .select_from(ReviewLineRow)
        .where(ReviewLineRow.review_id == review_id, ReviewLineRow.state != LineState.SETTLED)
    )
    return int(s.scalar(q) or 0)


def reviews_query(status: str | None, after: str | None, user: str | None, now_us: int) -> Any:
    """Reviews newest first after the cursor's id; ``status`` open, closed or overdue (open
    past its due date); a supervisor's: those holding lines of their agents."""
    q = select(ReviewRow)
    if status == "overdue":
        q = q.where(ReviewRow.status == ReviewStatus.OPEN, ReviewRow.due_at <= now_us)
    elif status is not None:
        q = q.where(ReviewRow.status == status)
    if after is not None:
        q = q.where(ReviewRow.id < after)
    if user is not None:
        q = q.where(ReviewRow.id.in_(select(ReviewLineRow.review_id).where(theirs(user))))
    return q


def inbox_query(user: str, after: str | None) -> Any:
    """``user``'s unsettled lines of open reviews, after the cursor's id."""
    q = (
        select(ReviewLineRow)
        .join(ReviewRow, ReviewRow.id == ReviewLineRow.review_id)
        .where(
            ReviewRow.status == ReviewStatus.OPEN,
            ReviewLineRow.state != LineState.SETTLED,
            theirs(user),
        )
    )
    return q.where(ReviewLineRow.id > after) if after is not None else q
