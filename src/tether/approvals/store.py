"""Database access for approvals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from tether.agents import directory
from tether.approvals.models import ApprovalRow
from tether.db.lists import PerDialect, one_of
from tether.db.text import unstorable

OPEN = ("pending", "approved")  # the statuses an approval can still leave
DUE_BATCH = 1000  # approvals one maintenance pass expires at most


@dataclass(frozen=True, slots=True)
class Live:
    """An open approval of an agent not yet past its expiry, as the checkpoint reads it."""

    id: str
    status: str
    request_digest: str


class DatabaseApprovalStore:
    def get(self, session: Session, approval_id: str) -> ApprovalRow | None:
        if unstorable(approval_id):
            return None
        return session.get(ApprovalRow, approval_id)

    def add(self, session: Session, row: ApprovalRow) -> None:
        session.add(row)
        session.flush()

    def live(self, session: Session, agent_id: str, *, now_us: int) -> list[Live]:
        """The agent's approvals that are pending or approved and not past ``expires_at`` at
        ``now_us``, oldest first: one read gives the checkpoint the one for its request's
        digest, if any, and how many are pending."""
        if unstorable(agent_id):
            return []
        q = (
            select(ApprovalRow.id, ApprovalRow.status, ApprovalRow.request_digest)
            .where(
                ApprovalRow.agent_id == agent_id,
                ApprovalRow.status.in_(OPEN),
                ApprovalRow.expires_at > now_us,
            )
            .order_by(ApprovalRow.created_at)
        )
        return [Live(i, status, digest) for i, status, digest in session.execute(q)]

    def use(self, session: Session, approval_id: str, *, now_us: int) -> bool:
        """Approved → used at ``now_us``; False (and nothing changes) unless it was approved.
        Inside the write lock, so of two consumers of one approval exactly one gets True."""
        if unstorable(approval_id):
            return False
        result = session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.id == approval_id, ApprovalRow.status == "approved")
            .values(status="used", used_at=now_us)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def set_used_event(self, session: Session, approval_id: str, event_id: str) -> None:
        """The ledger event of the decision that used the approval."""
        session.execute(
            update(ApprovalRow).where(ApprovalRow.id == approval_id).values(used_event_id=event_id)
        )

    def page(
        self,
        session: Session,
        *,
        before: str | None,
        limit: int,
        now_us: int,
        status: str | None = None,
        agent_id: str | None = None,
        own_agent: str | None = None,
        steward: str | None = None,
    ) -> list[ApprovalRow]:
        """Approvals in descending id order (newest first) before ``before``.

        ``status`` is the status readers see at ``now_us`` (an open approval past
        ``expires_at`` is ``expired`` whether or not the sweep has stored it yet).
        ``agent_id`` is the caller's filter; ``own_agent`` keeps an agent reader to its own
        approvals and ``steward`` a supervisor to those of the agents they own or supervise.
        """
        if unstorable(before, status, agent_id, own_agent, steward):
            return []
        q = select(ApprovalRow).order_by(ApprovalRow.id.desc())
        if before is not None:
            q = q.where(ApprovalRow.id < before)
        if agent_id is not None:
            q = q.where(ApprovalRow.agent_id == agent_id)
        if status is not None:
            q = q.where(_status_is(status, now_us))
        if own_agent is not None:
            q = q.where(ApprovalRow.agent_id == own_agent)
        if steward is not None:
            q = q.where(ApprovalRow.agent_id.in_(directory.stewarded_by(steward)))
        return list(session.scalars(q.limit(limit)))

    def due(self, session: Session, *, now_us: int, limit: int = DUE_BATCH) -> list[ApprovalRow]:
        """Open approvals whose ``expires_at`` is at or before ``now_us`` (at most ``limit``,
        in no particular order): what the expiry sweep marks expired."""
        q = select(ApprovalRow).where(
            ApprovalRow.status.in_(OPEN), ApprovalRow.expires_at <= now_us
        )
        return list(session.scalars(q.limit(limit)))

    def open_of(self, session: Session, agent_ids: Sequence[str]) -> list[ApprovalRow]:
        """Every open approval of these agents, expired or not: what a cut-off cancels."""
        ids = [a for a in agent_ids if not unstorable(a)]
        if not ids:
            return []
        return list(_OPEN_OF.execute(session, {"ids": ids, "open": list(OPEN)}).scalars())


# A kill's look for its family's open approvals, under the write lock: the agents' ids as one
# array on PostgreSQL (tether.db.lists), not a thousand parameters rendered and parsed anew.
_OPEN_OF = PerDialect(lambda d: (
    select(ApprovalRow)
    .where(one_of(ApprovalRow.agent_id, "ids", d), one_of(ApprovalRow.status, "open", d))
))  # fmt: skip


def _status_is(status: str, now_us: int) -> ColumnElement[bool]:
    if status == "expired":
        unswept = and_(ApprovalRow.status.in_(OPEN), ApprovalRow.expires_at <= now_us)
        return or_(ApprovalRow.status == "expired", unswept)
    if status in OPEN:
        return and_(ApprovalRow.status == status, ApprovalRow.expires_at > now_us)
    return ApprovalRow.status == status
