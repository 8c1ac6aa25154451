"""Access reviews (issue 20, item 1): a campaign asks each owner about each of their agents —
its effective permissions, roles, credentials and delegations, with the last use of each —
and the owner answers every line ``keep``, ``reduce`` or ``retire``, with a note.

* **Start** (an admin): the agents in scope (those of ``owners``, and ``agents`` named; by
  default every active agent) are snapshotted into lines (:mod:`.review_holdings`), read in a
  read transaction and written in one write transaction with ``review.started``.
* **Answer** (the agent's owner or a supervisor of it, or an admin): ``review.answered``. An
  answer may change until it is carried out. ``keep`` settles the line.
* **Confirm**: ``reduce`` and ``retire`` act only once confirmed, in the confirmation's
  transaction with ``review.applied`` (:mod:`.review_actions`: exactly what the line names).
* **Close**: by itself when every line is settled, or by an admin (``review.closed``).
  A review is overdue while open past its ``due`` (or when it was closed after it).

For a compliance report: :meth:`ReviewService.period` (reviews started, done and overdue in
a period); for ledger retention: :meth:`ReviewService.lowest_referenced_seq`.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.agents.service import AgentService
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros, to_rfc3339
from tether.credentials.service import CredentialService
from tether.db import Database
from tether.errors import Forbidden, ValidationFailed
from tether.governance import review_evidence as evidence
from tether.governance import review_reads as reads
from tether.governance import review_scope as scope
from tether.governance.review_actions import LineActions
from tether.governance.review_holdings import holdings
from tether.governance.review_models import ReviewLineRow, ReviewRow
from tether.governance.review_schemas import ReviewCreate
from tether.governance.review_values import (
    Answer,
    Line,
    LineSettled,
    LineState,
    NothingToConfirm,
    Review,
    ReviewClosed,
    ReviewLineNotFound,
    ReviewNotFound,
    ReviewPeriod,
    ReviewStatus,
    state_after,
)
from tether.ids import IdPrefix, new_id, new_ids
from tether.jsonutil import canonical_text
from tether.pagination import Page, decode_cursor, page_of
from tether.policy.service import PolicyService
from tether.principals import Principal
from tether.users.store import DatabaseUserStore

DEFAULT_DUE = timedelta(days=30)


class ReviewService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        agents: AgentService,
        credentials: CredentialService,
        policies: PolicyService,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.policies = policies
        self.users = DatabaseUserStore()
        self.actions = LineActions(ledger, agents, credentials)

    # -- starting ----------------------------------------------------------------------------
    def start(self, actor: Principal, spec: ReviewCreate) -> Review:
        """A new campaign over the agents in scope; raises :class:`Forbidden` (not an admin),
        :class:`ValidationFailed` naming ``owners``, ``agents`` or ``due`` (a user or agent
        that does not exist, a date not in the future), :class:`InvalidTransition` (an agent
        named that is revoked or retired). Nothing is written on any of them."""
        if not actor.is_admin:
            raise Forbidden("only an admin may start an access review")
        now = self.clock.now()
        due = spec.due or now + DEFAULT_DUE
        if due <= now:
            raise ValidationFailed("due must be in the future", field="due")
        with self.db.read() as s:
            owners = scope.owner_ids(s, spec.owners or [])
            agents = scope.agents_in_scope(s, spec, owners, now)
            compiled = self.policies.compiled(s)
            held = holdings(s, compiled, [a.id for a in agents])
        scoped = {"owners": owners, "agents": sorted(set(spec.agents or []))}
        review_id, now_us = new_id(IdPrefix.REVIEW), to_micros(now)
        total = sum(len(v) for v in held.values())
        with self.db.write() as s:
            (started,) = self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.REVIEW_STARTED,
                        actor.ref,
                        action=str(EventType.REVIEW_STARTED),
                        resource={"type": "Review", "id": review_id},
                        outcome="success",
                        details={
                            "scope": scoped,
                            "due": to_rfc3339(due),
                            "note": spec.note,
                            "agents": len(agents),
                            "lines": total,
                            "policy_version": compiled.version,
                        },
                    )
                ],
                now=now,
            )
            row = ReviewRow(
                id=review_id,
                status=ReviewStatus.OPEN.value,
                scope=canonical_text(scoped),
                note=spec.note,
                policy_version=compiled.version,
                created_by=actor.ref,
                created_at=now_us,
                due_at=to_micros(due),
                started_seq=started.seq,
            )
            s.add(row)
            s.flush()
            ids = iter(new_ids(IdPrefix.REVIEW_LINE, total, now_ms=now_us // 1000))
            s.add_all(
                ReviewLineRow(
                    id=next(ids),
                    review_id=review_id,
                    agent_id=a.id,
                    owner_id=a.owner_id,
                    kind=h.kind.value,
                    subject=h.subject,
                    detail=canonical_text(h.detail),
                    last_used_at=h.last_used_at,
                    last_used_seq=h.last_used_seq,
                    state=LineState.OPEN.value,
                )
                for a in agents
                for h in held[a.id]
            )
            s.flush()
            if total == 0:  # nothing to answer: done as soon as begun
                self._close(s, actor, row, now, how="all_settled", note=None)
            return self._review(s, row, None, now_us, with_lines=True)

    # -- reading -----------------------------------------------------------------------------
    def get(self, actor: Principal, review_id: str) -> Review:
        """The review with its lines (a supervisor's: theirs only); raises
        :class:`ReviewNotFound` — also to a supervisor with no line in it."""
        user = reads.visible_to(actor)
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            row = self._row(s, review_id)
            review = self._review(s, row, user, now_us, with_lines=True)
            if user is not None and not review.lines:
                raise ReviewNotFound(f"no review {review_id!r}", review=review_id)
            return review

    def list(
        self,
        actor: Principal,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Review]:
        """Newest first; ``status``: open, closed or overdue (open past its due date)."""
        user = reads.visible_to(actor)
        now_us = to_micros(self.clock.now())
        q = reads.reviews_query(status, decode_cursor(cursor), user, now_us)
        with self.db.read() as s:
            rows = list(s.scalars(q.order_by(ReviewRow.id.desc()).limit(limit + 1)))
            prog = reads.progress(s, [r.id for r in rows], user)
            reviews = [reads.to_review(r, prog[r.id], now_us) for r in rows]
        return page_of(reviews, limit, key=lambda r: r.id)

    def inbox(self, actor: Principal, *, cursor: str | None = None, limit: int = 50) -> Page[Line]:
        """The caller's open lines: unsettled lines of open reviews, of the agents they own
        or supervise, in id order."""
        if actor.kind != "user":
            raise Forbidden("an inbox is a human's")
        q = reads.inbox_query(actor.id, decode_cursor(cursor))
        with self.db.read() as s:
            rows = list(s.scalars(q.order_by(ReviewLineRow.id).limit(limit + 1)))
            return page_of(reads.to_lines(s, rows), limit, key=lambda line: line.id)

    # -- answering ---------------------------------------------------------------------------
    def answer(
        self, actor: Principal, review_id: str, line_id: str, answer: str, *, note: str
    ) -> Line:
        """Record an answer (``review.answered``); raises :class:`ReviewNotFound` /
        :class:`ReviewLineNotFound`, :class:`Forbidden` (no ``operate`` authority over the
        agent: auditors, supervisors of other agents), :class:`ReviewClosed`,
        :class:`LineSettled` (already carried out), :class:`ValidationFailed` (``answer``)."""
        try:
            chosen = Answer(answer)
        except ValueError:
            raise ValidationFailed(
                "answer must be keep, reduce or retire", field="answer"
            ) from None
        now = self.clock.now()
        with self.db.write() as s:
            review, line = self._line(s, review_id, line_id)
            self.agents.authorized_row(s, actor, line.agent_id, "operate")
            if review.status != ReviewStatus.OPEN:
                raise ReviewClosed(f"review {review_id} is closed", review=review_id)
            if line.applied_at is not None:
                raise LineSettled(f"line {line_id} was carried out ({line.outcome})", line=line_id)
            previous = line.answer
            event = self._line_event(s, actor, line, EventType.REVIEW_ANSWERED, now=now, details={
                "answer": chosen.value, "note": note, "previous": previous,
            })  # fmt: skip
            line.answer, line.answer_note, line.answered_by = chosen.value, note, actor.ref
            line.answered_at, line.answer_seq = to_micros(now), event.seq
            line.state = state_after(chosen).value
            s.flush()
            self._close_if_done(s, actor, review, now)
            return reads.to_lines(s, [line])[0]

    def _line_event(
        self, s: Session, actor: Principal, line: ReviewLineRow, type_: EventType,
        *, now: datetime, details: dict[str, Any],
    ) -> Event:  # fmt: skip
        """One ledger event about a review line (its review, id, kind and subject first)."""
        (event,) = self.ledger.append(s, [NewEvent(
            type_, actor.ref, agent_id=line.agent_id, action=str(type_),
            resource={"type": "ReviewLine", "id": line.id}, outcome="success",
            details={"review": line.review_id, "line": line.id, "kind": line.kind,
                     "subject": line.subject, **details},
        )], now=now)  # fmt: skip
        return event

    def confirm(
        self, actor: Principal, review_id: str, line_id: str, *, note: str | None = None
    ) -> Line:
        """Carry out a line answered ``reduce`` or ``retire`` (:mod:`.review_actions`) with
        ``review.applied``, in one transaction; raises :class:`NothingToConfirm` for any other
        line, :class:`ReviewClosed`, and what the acting domain raises (:class:`Forbidden`
        without its authority: retiring, deleting a credential or dropping a role is the
        owner's or an admin's)."""
        now = self.clock.now()
        with self.db.write() as s:
            review, line = self._line(s, review_id, line_id)
            self.agents.authorized_row(s, actor, line.agent_id, "operate")
            if review.status != ReviewStatus.OPEN:
                raise ReviewClosed(f"review {review_id} is closed", review=review_id)
            if line.state != LineState.ANSWERED:
                raise NothingToConfirm(
                    f"line {line_id} has no reduce or retire answer awaiting confirmation",
                    line=line_id,
                    state=line.state,
                )
            reason = f"access review {review.id}: {line.answer_note}"
            done = self.actions.apply(s, actor, line, now=now, reason=reason)
            event = self._line_event(s, actor, line, EventType.REVIEW_APPLIED, now=now, details={
                "answer": line.answer, "outcome": done.outcome.value, "note": note,
                **done.details,
            })  # fmt: skip
            settle = [line]
            if line.answer == Answer.RETIRE:  # the agent's other lines go with it
                settle += self._unsettled_of(s, review.id, line.agent_id, but=line.id)
            for each in settle:
                each.state, each.outcome = LineState.SETTLED.value, done.outcome.value
                each.applied_by, each.applied_at = actor.ref, to_micros(now)
                each.applied_seq = event.seq
            s.flush()
            self._close_if_done(s, actor, review, now)
            return reads.to_lines(s, [line])[0]

    def close(self, actor: Principal, review_id: str, *, note: str | None = None) -> Review:
        """Close a review by hand (an admin): unanswered lines stay unanswered, answers
        awaiting confirmation are not carried out. Raises :class:`ReviewClosed` if closed."""
        if not actor.is_admin:
            raise Forbidden("only an admin may close an access review")
        now = self.clock.now()
        with self.db.write() as s:
            row = self._row(s, review_id)
            if row.status != ReviewStatus.OPEN:
                raise ReviewClosed(f"review {review_id} is closed", review=review_id)
            self._close(s, actor, row, now, how="by_hand", note=note)
            return self._review(s, row, None, to_micros(now), with_lines=False)

    # -- for a compliance report and ledger retention ----------------------------------------
    def period(
        self, since: datetime, until: datetime, *, now: datetime | None = None
    ) -> ReviewPeriod:
        """Reviews over ``[since, until)``: started in it, done (closed) in it, and overdue at
        its end (or at ``now``, if sooner) — due by then and not closed by then. No authority
        check: for the report service, which checks its own caller."""
        with self.db.read() as s:
            return evidence.period(s, since, until, end=min(until, now or self.clock.now()))

    def lowest_referenced_seq(self, session: Session, cutoff_us: int | None = None) -> int | None:
        """The lowest ledger sequence an open review references — its ``review.started``
        event, the decisions its lines cite as last use, their answers — or None when no
        review is open: ledger retention must not prune from there on (a retention hold).
        An open review holds whatever its age (``cutoff_us`` is not read): it is still
        being answered."""
        return evidence.lowest_referenced_seq(session)

    # -- internals ---------------------------------------------------------------------------
    def _row(self, s: Session, review_id: str) -> ReviewRow:
        row = s.get(ReviewRow, review_id) if len(review_id) <= 40 else None
        if row is None:
            raise ReviewNotFound(f"no review {review_id!r}", review=review_id)
        return row

    def _line(self, s: Session, review_id: str, line_id: str) -> tuple[ReviewRow, ReviewLineRow]:
        review = self._row(s, review_id)
        line = s.get(ReviewLineRow, line_id) if len(line_id) <= 40 else None
        if line is None or line.review_id != review.id:
            raise ReviewLineNotFound(f"no line {line_id!r} in review {review_id}", line=line_id)
        return review, line

    @staticmethod
    def _unsettled_of(
        s: Session, review_id: str, agent_id: str, *, but: str
    ) -> builtins.list[ReviewLineRow]:
        return list(
            s.scalars(
                select(ReviewLineRow).where(
                    ReviewLineRow.review_id == review_id,
                    ReviewLineRow.agent_id == agent_id,
                    ReviewLineRow.state != LineState.SETTLED,
                    ReviewLineRow.id != but,
                )
            )
        )

    def _close_if_done(self, s: Session, actor: Principal, row: ReviewRow, now: datetime) -> None:
        if reads.unsettled(s, row.id) == 0:
            self._close(s, actor, row, now, how="all_settled", note=None)

    def _close(
        self,
        s: Session,
        actor: Principal,
        row: ReviewRow,
        now: datetime,
        *,
        how: str,
        note: str | None,
    ) -> None:
        prog = reads.progress(s, [row.id], None)[row.id]
        (event,) = self.ledger.append(
            s,
            [
                NewEvent(
                    EventType.REVIEW_CLOSED,
                    actor.ref,
                    action=str(EventType.REVIEW_CLOSED),
                    resource={"type": "Review", "id": row.id},
                    outcome="success",
                    details={
                        "how": how,
                        "note": note,
                        "progress": prog.to_json(),
                        "overdue": to_micros(now) > row.due_at,
                    },
                )
            ],
            now=now,
        )
        row.status, row.closed_by, row.closed_at = (
            ReviewStatus.CLOSED.value,
            actor.ref,
            to_micros(now),
        )
        row.closed_seq = event.seq
        s.flush()

    @staticmethod
    def _review(
        s: Session, row: ReviewRow, user: str | None, now_us: int, *, with_lines: bool
    ) -> Review:
        prog = reads.progress(s, [row.id], user)[row.id]
        lines = reads.to_lines(s, reads.line_rows(s, row.id, user)) if with_lines else None
        return reads.to_review(row, prog, now_us, lines)
