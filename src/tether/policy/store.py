"""Database access for policy versions: immutable rows numbered 1, 2, 3…; the highest is
current."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.policy.models import PolicyVersionRow

MAX_NUMBER = 2**31 - 1  # policy_versions.number is an INTEGER column


class DatabasePolicyVersionStore:
    def current(self, session: Session) -> PolicyVersionRow | None:
        """The version with the highest number; None before the first push."""
        q = select(PolicyVersionRow).order_by(PolicyVersionRow.number.desc()).limit(1)
        return session.scalars(q).first()

    def get(self, session: Session, number: int) -> PolicyVersionRow | None:
        if not 0 <= number <= MAX_NUMBER:  # no row has it (SQLite cannot even bind 2**63)
            return None
        return session.get(PolicyVersionRow, number)

    def page(self, session: Session, *, before: int | None, limit: int) -> list[PolicyVersionRow]:
        """Versions in descending number order (newest first) below ``before``; a ``before``
        past the column's range is as none (every version is older)."""
        q = select(PolicyVersionRow).order_by(PolicyVersionRow.number.desc())
        if before is not None and before <= MAX_NUMBER:
            q = q.where(PolicyVersionRow.number < before)
        return list(session.scalars(q.limit(limit)))

    def next_number(self, session: Session) -> int:
        """The number the next version takes: one past the highest (1 for the first). Unique
        only inside the write lock, which every push holds until its row is committed."""
        return (session.scalar(select(func.max(PolicyVersionRow.number))) or 0) + 1

    def add(self, session: Session, row: PolicyVersionRow) -> None:
        session.add(row)
        session.flush()
