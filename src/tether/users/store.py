"""Database access for users and user tokens."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.db.text import unstorable
from tether.users.models import UserRow, UserTokenRow


class DatabaseUserStore:
    def get(self, session: Session, user_id: str) -> UserRow | None:
        if unstorable(user_id):
            return None
        return session.get(UserRow, user_id)

    def by_username(self, session: Session, username: str) -> UserRow | None:
        if unstorable(username):
            return None
        return session.scalars(select(UserRow).where(UserRow.username == username)).first()

    def resolve(self, session: Session, ref: str) -> UserRow | None:
        """A user by id or, failing that, by username."""
        return self.get(session, ref) or self.by_username(session, ref)

    def count(self, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(UserRow)) or 0

    def add(self, session: Session, row: UserRow | UserTokenRow) -> None:
        session.add(row)
        session.flush()

    def page(self, session: Session, *, after: str | None, limit: int) -> list[UserRow]:
        q = select(UserRow).order_by(UserRow.id).limit(limit)
        if after is not None:
            q = q.where(UserRow.id > after)
        return list(session.scalars(q))

    def token_by_digest(self, session: Session, digest: str) -> UserTokenRow | None:
        return session.scalars(select(UserTokenRow).where(UserTokenRow.digest == digest)).first()

    def token(self, session: Session, token_id: str) -> UserTokenRow | None:
        if unstorable(token_id):
            return None
        return session.get(UserTokenRow, token_id)

    def tokens(
        self, session: Session, user_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[UserTokenRow]:
        q = select(UserTokenRow).where(UserTokenRow.user_id == user_id)
        if after is not None:
            q = q.where(UserTokenRow.id > after)
        return list(session.scalars(q.order_by(UserTokenRow.id).limit(limit)))
