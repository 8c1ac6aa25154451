"""Access reviews as values: a campaign, its lines, their answers and the campaign's progress;
the errors a review raises; and the pure rules (what an answer does to a line's state).

A line moves ``open`` → (``keep``) ``settled``, or → (``reduce``/``retire``) ``answered`` →
(confirmed) ``settled``. An answer may be changed until the line is settled by a
confirmation; a ``keep`` settles the line at once (nothing is to be done). A campaign closes
by itself when every line is settled, or by an admin's hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tether.clock import from_micros, to_rfc3339
from tether.errors import Conflict, NotFound


class Answer(StrEnum):
    KEEP = "keep"
    REDUCE = "reduce"
    RETIRE = "retire"


class LineKind(StrEnum):
    PERMISSION = "permission"  # a permit policy that can apply to the agent
    ROLE = "role"
    CREDENTIAL = "credential"
    DELEGATION = "delegation"  # someone the agent has been given a token to act for


class LineState(StrEnum):
    OPEN = "open"
    ANSWERED = "answered"  # reduce or retire, awaiting confirmation
    SETTLED = "settled"


class Outcome(StrEnum):
    """What a confirmed answer did (``line.outcome``)."""

    RETIRED = "agent_retired"  # the agent was retired (this line's or another's answer)
    CREDENTIAL_REVOKED = "credential_revoked"
    ROLE_DROPPED = "role_dropped"
    DELEGATION_REVOKED = "delegation_revoked"
    RIGHTSIZING_REQUESTED = "rightsizing_requested"  # a permission: handed to right-sizing
    ALREADY_GONE = "already_gone"  # what the line names was removed meanwhile


class ReviewStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


def state_after(answer: Answer) -> LineState:
    """The state an answer puts an unsettled line in: a keep needs nothing done."""
    return LineState.SETTLED if answer is Answer.KEEP else LineState.ANSWERED


class ReviewNotFound(NotFound):
    code = "review_not_found"


class ReviewLineNotFound(NotFound):
    code = "review_line_not_found"


class ReviewClosed(Conflict):
    code = "review_closed"


class LineSettled(Conflict):
    """The line's answer was confirmed and carried out: it can no longer change."""

    code = "review_line_settled"


class NothingToConfirm(Conflict):
    """Confirmation is for a line answered reduce or retire, not yet carried out."""

    code = "review_line_not_confirmable"


def _t(us: int | None) -> str | None:
    return to_rfc3339(from_micros(us)) if us is not None else None


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    review_id: str
    agent_id: str
    agent_name: str | None
    owner: str
    kind: str
    subject: str
    detail: dict[str, Any]
    last_used_at: int | None
    last_used_seq: int | None
    state: str
    answer: str | None
    note: str | None
    answered_by: str | None
    answered_at: int | None
    answer_seq: int | None
    outcome: str | None
    applied_by: str | None
    applied_at: int | None
    applied_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "review_id": self.review_id,
            "agent_id": self.agent_id,
            "agent_name": self.agent_name,
            "owner": self.owner,
            "kind": self.kind,
            "subject": self.subject,
            "detail": self.detail,
            "last_used_at": _t(self.last_used_at),
            "last_used_seq": self.last_used_seq,
            "state": self.state,
            "answer": self.answer,
            "note": self.note,
            "answered_by": self.answered_by,
            "answered_at": _t(self.answered_at),
            "answer_seq": self.answer_seq,
            "outcome": self.outcome,
            "applied_by": self.applied_by,
            "applied_at": _t(self.applied_at),
            "applied_seq": self.applied_seq,
        }


@dataclass(frozen=True, slots=True)
class Progress:
    lines: int = 0
    open: int = 0
    answered: int = 0  # awaiting confirmation
    settled: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "open": self.open,
            "awaiting_confirmation": self.answered,
            "settled": self.settled,
        }


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    status: str
    scope: dict[str, Any]
    note: str | None
    policy_version: str
    created_by: str
    created_at: int
    due_at: int
    started_seq: int
    closed_by: str | None
    closed_at: int | None
    closed_seq: int | None
    progress: Progress
    overdue: bool
    lines: list[Line] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "scope": self.scope,
            "note": self.note,
            "policy_version": self.policy_version,
            "created_by": self.created_by,
            "created_at": _t(self.created_at),
            "due": _t(self.due_at),
            "overdue": self.overdue,
            "started_seq": self.started_seq,
            "closed_by": self.closed_by,
            "closed_at": _t(self.closed_at),
            "closed_seq": self.closed_seq,
            "progress": self.progress.to_json(),
        }
        if self.lines is not None:
            out["lines"] = [line.to_json() for line in self.lines]
        return out


def is_overdue(status: str, due_at: int, closed_at: int | None, now_us: int) -> bool:
    """Open past its due date, or closed after it."""
    if status == ReviewStatus.CLOSED:
        return closed_at is not None and closed_at > due_at
    return due_at <= now_us


@dataclass(frozen=True, slots=True)
class PeriodReview:
    """One review as a compliance report counts it (:meth:`ReviewService.period`)."""

    id: str
    created_at: datetime
    due: datetime
    closed_at: datetime | None
    started_seq: int
    closed_seq: int | None
    lines: int

    @property
    def on_time(self) -> bool:
        return self.closed_at is not None and self.closed_at <= self.due


@dataclass(frozen=True, slots=True)
class ReviewPeriod:
    """Reviews over ``[since, until)``: ``done`` closed in it (on time or late), ``overdue``
    due in or before it and not closed by its end (or by ``now``, if sooner), ``started``
    those started in it."""

    since: datetime
    until: datetime
    started: list[PeriodReview]
    done: list[PeriodReview]
    overdue: list[PeriodReview]
