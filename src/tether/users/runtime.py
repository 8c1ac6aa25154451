"""The users' section of the runtime snapshot: who exists, and which user tokens this worker
has already checked (so a human's request needs no database read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.runtime.changes import Kind
from tether.users.models import UserRow


@dataclass(frozen=True, slots=True)
class UserView:
    id: str
    username: str
    role: str


class UserSection:
    kinds = frozenset({Kind.USER.value})

    def __init__(self) -> None:
        self.views: dict[str, UserView] = {}
        # token digest -> (user id, expiry): emptied whenever any user changes (a revoked
        # token, a changed role), so a cached answer never outlives the change.
        self.tokens: dict[str, tuple[str, int | None]] = {}
        self.ready = True

    def load(self, s: Session, now_us: int) -> None:
        self.views = _views(s)
        self.tokens = {}

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.load(s, now_us)

    def purge(self, now_us: int) -> None:
        del now_us


def _views(s: Session) -> dict[str, UserView]:
    return {u.id: UserView(u.id, u.username, u.role) for u in s.scalars(select(UserRow))}
