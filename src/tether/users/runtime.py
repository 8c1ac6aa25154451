"""The users' section of the runtime snapshot: who exists, and which user tokens this worker
has already checked (so a human's request needs no database read).

``views`` is a live map, changed in place by a sync for the users that changed (one dict
assignment or removal each, atomic under the GIL); the token cache is dropped whole."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.db.text import unstorable
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
        ids = changed[Kind.USER.value]
        found = _views(s, ids)
        for user_id in ids - found.keys():
            self.views.pop(user_id, None)
        self.views.update(found)
        self.tokens = {}

    def purge(self, now_us: int) -> None:
        del now_us


def _views(s: Session, ids: Collection[str] | None = None) -> dict[str, UserView]:
    """Every user's view, or those of ``ids`` that exist."""
    q = select(UserRow.id, UserRow.username, UserRow.role)
    if ids is not None:
        q = q.where(UserRow.id.in_([i for i in ids if not unstorable(i)]))
    return {i: UserView(i, name, role) for i, name, role in s.execute(q)}
