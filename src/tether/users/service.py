"""Humans: users with roles, their bearer tokens (digests only), and who may manage whom."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from tether import fields
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import (
    Forbidden,
    TokenNotFound,
    Unauthenticated,
    UsernameTaken,
    UserNotFound,
    ValidationFailed,
)
from tether.ids import IdPrefix, new_id
from tether.pagination import Page, decode_cursor, page_of
from tether.principals import SYSTEM, Principal, Role
from tether.runtime import changes
from tether.users.models import UserRow, UserTokenRow
from tether.users.store import DatabaseUserStore

USERNAME = re.compile(fields.USERNAME)
TOKEN_PREFIX = "tth_"  # noqa: S105 - a name, not a secret
ADMIN_USERNAME = "admin"
# What ``/v1/users/me…`` calls the caller; no user may be named so.
ME = "me"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    role: Role
    email: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role.value,
            "email": self.email,
            "created_at": to_rfc3339(self.created_at),
        }

    def principal(self) -> Principal:
        return Principal(kind="user", id=self.id, name=self.username, role=self.role)


@dataclass(frozen=True, slots=True)
class UserToken:
    id: str
    user_id: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "created_at": to_rfc3339(self.created_at),
            "expires_at": to_rfc3339(self.expires_at) if self.expires_at else None,
            "revoked_at": to_rfc3339(self.revoked_at) if self.revoked_at else None,
        }


def _user(row: UserRow) -> User:
    return User(row.id, row.username, Role(row.role), row.email, from_micros(row.created_at))


def _token(row: UserTokenRow) -> UserToken:
    return UserToken(
        row.id,
        row.user_id,
        row.name,
        from_micros(row.created_at),
        from_micros(row.expires_at) if row.expires_at is not None else None,
        from_micros(row.revoked_at) if row.revoked_at is not None else None,
    )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _require_admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin may manage users", required_role="admin")


class UserService:
    def __init__(self, db: Database, ledger: Ledger, clock: Clock) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.store = DatabaseUserStore()

    # -- bootstrap -------------------------------------------------------------------------
    def bootstrap(self) -> tuple[User, str] | None:
        """Create user ``admin`` and a token for it if the deployment has no users yet.

        Returns ``None`` when users already exist (a deployment is bootstrapped once).
        """
        now = self.clock.now()
        with self.db.write() as s:
            if self.store.count(s) > 0:
                return None
            row = UserRow(
                id=new_id(IdPrefix.USER),
                username=ADMIN_USERNAME,
                role=Role.ADMIN.value,
                email=None,
                created_at=to_micros(now),
            )
            self.store.add(s, row)
            token, secret = self._new_token(row.id, "bootstrap", None, now)
            self.store.add(s, token)
            self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.SYSTEM_BOOTSTRAPPED,
                        SYSTEM.ref,
                        resource={"type": "User", "id": row.id},
                        details={"admin_user": row.id, "token_id": token.id},
                    )
                ],
                now=now,
            )
            return _user(row), secret

    def recover_admin(
        self, username: str, *, os_user: str, host: str
    ) -> tuple[User, UserToken, str]:
        """Break-glass: a new token for the admin ``username``, minted by whoever has the
        database and the root keys on the server host (``tether admin recover``), recorded as
        ``admin.recovered``. The user's other tokens stay valid (revoke them with the new one).

        Raises :class:`UserNotFound` if there is no such user and :class:`ValidationFailed`
        if the user is not an admin."""
        now = self.clock.now()
        with self.db.write() as s:
            row = self.store.by_username(s, username)
            if row is None:
                raise UserNotFound(f"no user {username!r} in this database", user=username)
            if row.role != Role.ADMIN.value:
                raise ValidationFailed(
                    f"user {username!r} is a {row.role}, not an admin — only an admin is recovered",
                    field="user",
                )
            token, secret = self._new_token(row.id, "recovered", None, now)
            self.store.add(s, token)
            self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.ADMIN_RECOVERED,
                        SYSTEM.ref,
                        resource={"type": "User", "id": row.id},
                        details={"token_id": token.id, "os_user": os_user, "host": host},
                    )
                ],
                now=now,
            )
            return _user(row), _token(token), secret

    # -- users -----------------------------------------------------------------------------
    def create(
        self, actor: Principal, *, username: str, role: Role, email: str | None = None
    ) -> User:
        _require_admin(actor)
        if not USERNAME.match(username):
            raise ValidationFailed(
                "username must be 1-64 characters of a-z, 0-9, '.', '_' or '-'", field="username"
            )
        if username == ME:
            raise ValidationFailed(
                f"username {ME!r} is reserved: /v1/users/{ME} names the caller", field="username"
            )
        if email is not None and "\x00" in email:  # PostgreSQL text cannot hold NUL
            raise ValidationFailed("email must not contain NUL characters", field="email")
        now = self.clock.now()
        with self.db.write() as s:
            if self.store.by_username(s, username) is not None:
                raise UsernameTaken(f"username {username!r} is taken", field="username")
            row = UserRow(
                id=new_id(IdPrefix.USER),
                username=username,
                role=role.value,
                email=email,
                created_at=to_micros(now),
            )
            self.store.add(s, row)
            changes.record(s, changes.Kind.USER, row.id, now_us=row.created_at)
            self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.USER_CREATED,
                        actor.ref,
                        resource={"type": "User", "id": row.id},
                        details={"username": username, "role": role.value},
                    )
                ],
                now=now,
            )
            return _user(row)

    def get(self, actor: Principal, ref: str) -> User:
        """A user by id or username; raises :class:`UserNotFound`."""
        if actor.role not in (Role.ADMIN, Role.AUDITOR) and ref not in (actor.id, actor.name):
            raise Forbidden("you may only look up your own user")
        with self.db.read() as s:
            row = self.store.resolve(s, ref)
            if row is None:
                raise UserNotFound(f"no user {ref!r}", user=ref)
            return _user(row)

    def list(self, actor: Principal, *, cursor: str | None, limit: int) -> Page[User]:
        if actor.role not in (Role.ADMIN, Role.AUDITOR):
            raise Forbidden("only admins and auditors may list users")
        after = decode_cursor(cursor)
        with self.db.read() as s:
            rows = self.store.page(s, after=after, limit=limit + 1)
        users = [_user(r) for r in rows]
        return page_of(users, limit, lambda u: u.id)

    # -- tokens ----------------------------------------------------------------------------
    def _new_token(
        self, user_id: str, name: str | None, expires_in: int | None, now: datetime
    ) -> tuple[UserTokenRow, str]:
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = to_micros(now + timedelta(seconds=expires_in)) if expires_in else None
        row = UserTokenRow(
            id=new_id(IdPrefix.USER_TOKEN),
            user_id=user_id,
            digest=token_digest(secret),
            name=name,
            created_at=to_micros(now),
            expires_at=expires,
            revoked_at=None,
        )
        return row, secret

    def create_token(
        self,
        actor: Principal,
        user_ref: str,
        *,
        name: str | None = None,
        expires_in: int | None = None,
    ) -> tuple[UserToken, str]:
        """A new bearer token for a user; the secret is returned here and never again."""
        if name is not None and "\x00" in name:  # PostgreSQL text cannot hold NUL
            raise ValidationFailed("token name must not contain NUL characters", field="name")
        now = self.clock.now()
        with self.db.write() as s:
            user = self._own_or_admin(
                s, actor, user_ref, "only an admin may create tokens for another user"
            )
            row, secret = self._new_token(user.id, name, expires_in, now)
            self.store.add(s, row)
            self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.USER_TOKEN_CREATED,
                        actor.ref,
                        resource={"type": "User", "id": user.id},
                        details={"token_id": row.id, "expires_at": row.expires_at},
                    )
                ],
                now=now,
            )
            return _token(row), secret

    def list_tokens(
        self, actor: Principal, user_ref: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[UserToken]:
        after = decode_cursor(cursor)
        with self.db.read() as s:
            user = self._own_or_admin(
                s, actor, user_ref, "only an admin may list another user's tokens"
            )
            rows = self.store.tokens(s, user.id, after=after, limit=limit + 1)
            return page_of([_token(r) for r in rows], limit, lambda t: t.id)

    def revoke_token(self, actor: Principal, user_ref: str, token_id: str) -> UserToken:
        now = self.clock.now()
        with self.db.write() as s:
            user = self._own_or_admin(
                s, actor, user_ref, "only an admin may revoke another user's tokens"
            )
            row = self.store.token(s, token_id)
            if row is None or row.user_id != user.id:
                raise TokenNotFound(f"no token {token_id!r} for this user", token=token_id)
            if row.revoked_at is None:
                row.revoked_at = to_micros(now)
                changes.record(s, changes.Kind.USER, user.id, now_us=row.revoked_at)
                self.ledger.append(
                    s,
                    [
                        NewEvent(
                            EventType.USER_TOKEN_REVOKED,
                            actor.ref,
                            resource={"type": "User", "id": user.id},
                            details={"token_id": row.id},
                        )
                    ],
                    now=now,
                )
            return _token(row)

    def _own_or_admin(self, s: Session, actor: Principal, ref: str, doing: str) -> UserRow:
        """The user ``ref`` if ``actor`` is an admin or that user; refused before the lookup,
        so a non-admin cannot learn from 404 versus 403 which usernames exist."""
        if not actor.is_admin and ref not in (actor.id, actor.name):
            raise Forbidden(doing)
        user = self.store.resolve(s, ref)
        if user is None:
            raise UserNotFound(f"no user {ref!r}", user=ref)
        return user

    def authenticate(self, token: str) -> Principal:
        """The user a bearer token belongs to; raises :class:`Unauthenticated` otherwise."""
        return self.authenticate_with_expiry(token)[0]

    def authenticate_with_expiry(self, token: str) -> tuple[Principal, int | None]:
        """As :meth:`authenticate`, with the token's expiry (microseconds) for caches."""
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthenticated("not a Tether user token")
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            row = self.store.token_by_digest(s, token_digest(token))
            if row is None or row.revoked_at is not None:
                raise Unauthenticated("unknown or revoked token")
            if row.expires_at is not None and row.expires_at <= now_us:
                raise Unauthenticated("token expired")
            user = self.store.get(s, row.user_id)
            assert user is not None  # foreign key
            return _user(user).principal(), row.expires_at
