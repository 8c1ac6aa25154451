"""Database access for freezes."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.db.text import unstorable
from tether.freeze.models import FreezeRow
from tether.freeze.values import Freeze, Scope


def _freeze(row: FreezeRow) -> Freeze:
    return Freeze(
        row.id, Scope(row.owner_id, row.role, row.risk_tier), row.reason, row.created_by,
        row.created_at, row.lifted_by, row.lifted_at, row.lift_reason,
    )  # fmt: skip


class DatabaseFreezeStore:
    def in_force(self, session: Session) -> list[Freeze]:
        """The freezes not lifted, oldest first (a handful at most: an index lookup)."""
        q = (
            select(FreezeRow)
            .where(FreezeRow.lifted_at.is_(None))
            .order_by(FreezeRow.created_at, FreezeRow.id)
        )
        return [_freeze(r) for r in session.scalars(q)]

    def get(self, session: Session, freeze_id: str) -> Freeze | None:
        if unstorable(freeze_id):
            return None
        row = session.get(FreezeRow, freeze_id)
        return _freeze(row) if row is not None else None

    def add(self, session: Session, freeze: Freeze) -> None:
        session.add(
            FreezeRow(
                id=freeze.id, reason=freeze.reason, owner_id=freeze.scope.owner_id,
                role=freeze.scope.role, risk_tier=freeze.scope.risk_tier,
                created_by=freeze.created_by, created_at=freeze.created_at,
            )
        )  # fmt: skip
        session.flush()

    def lift(
        self, session: Session, freeze_ids: list[str], *, by: str, at_us: int, reason: str | None
    ) -> None:
        """Mark these freezes lifted (those already lifted keep their first lifting)."""
        if freeze_ids:
            session.execute(
                update(FreezeRow)
                .where(FreezeRow.id.in_(freeze_ids), FreezeRow.lifted_at.is_(None))
                .values(lifted_by=by, lifted_at=at_us, lift_reason=reason)
            )

    def recent(self, session: Session, *, limit: int) -> list[Freeze]:
        """The newest freezes, lifted or not, newest first."""
        q = select(FreezeRow).order_by(FreezeRow.created_at.desc(), FreezeRow.id.desc())
        return [_freeze(r) for r in session.scalars(q.limit(limit))]
