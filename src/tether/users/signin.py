"""Humans signing in to the web console: passwords (argon2id) and sessions.

* A password is set by its user or an admin (:meth:`SignIn.set_password`); setting one ends
  the user's sessions. Only its argon2id hash is stored.
* A sign-in checks the password (an unknown user costs the same hash verification, so its
  timing says nothing) and starts a **new** session — a fresh random secret, whatever cookie
  came with the request (no session fixation). The cookie holds the secret; the database its
  SHA-256 digest.
* Too many failures lock the account for a while (``failed_sign_ins``/``locked_until`` on the
  user, so every worker sees it); a client address failing across usernames is slowed the
  same way in each worker. Each sign-in, refusal and sign-out is a ledger event.
* A session ends when signed out, at its absolute expiry, or after ``idle`` without a request
  (the last request is kept to the minute); a session whose user is gone ends with it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.errors import Forbidden, RateLimited, Unauthenticated, UserNotFound, ValidationFailed
from tether.ids import IdPrefix, new_id
from tether.principals import Principal, Role
from tether.runtime import changes
from tether.users.models import UserRow, UserSessionRow
from tether.users.service import USERNAME
from tether.users.store import DatabaseUserStore

SESSION_PREFIX = "tcs_"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
LOCK_AFTER = 5  # failures in a row
LOCK_SECONDS = 15 * 60
SEEN_EVERY_US = 60_000_000  # a session's last request is stored at most once a minute
_HASHER = PasswordHasher()  # argon2id, the library's recommended parameters
# What an unknown user's sign-in verifies against, so that it costs what a known user's does:
# the hash of "tether: a password nobody has" under _HASHER's parameters, written out rather
# than hashed at import (~0.15 s of CPU in every process that imports the API: each server
# start, each worker). Hashed afresh if the library's parameters ever move (the same cost as
# the hashes it makes).
_DUMMY = "$argon2id$v=19$m=65536,t=3,p=4$B45VL4CH2dk4Xzqj8W5aAQ$36S0UMHaI9TBY92y3J3BBvWEygkx6DHM4B7QV8aV5gs"  # noqa: E501
if _HASHER.check_needs_rehash(_DUMMY):  # pragma: no cover - another argon2-cffi's defaults
    _DUMMY = _HASHER.hash("tether: a password nobody has")


class SignInFailed(Unauthenticated):
    code = "sign_in_failed"


@dataclass(frozen=True, slots=True)
class Signed:
    """A console session: who, and its id (the cookie holds the secret, not this)."""

    principal: Principal
    session_id: str
    expires_at: int


class _Throttle:
    """Failed sign-ins per client address, in this worker: ``limit`` in ``window`` seconds."""

    def __init__(self, limit: int = 20, window: float = 900.0) -> None:
        self.limit, self.window = limit, window
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if not seen or len(seen) < self.limit:
                return 0.0
            return seen[0] + self.window - now

    def failed(self, key: str) -> None:
        with self._lock:
            if len(self._seen) > 10_000:  # bounded: forget the quietest
                self._seen.pop(next(iter(self._seen)))
            self._seen.setdefault(key, deque()).append(time.monotonic())


class SignIn:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, *, idle_seconds: int = 1800,
        lifetime_seconds: int = 12 * 3600,
    ) -> None:  # fmt: skip
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.idle_us = idle_seconds * 1_000_000
        self.lifetime_us = lifetime_seconds * 1_000_000
        self.store = DatabaseUserStore()
        self.addresses = _Throttle()

    # -- passwords ----------------------------------------------------------------------------
    def set_password(self, actor: Principal, user_ref: str, password: str) -> None:
        """Set ``user_ref``'s console password (its user, or an admin); ends its sessions."""
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise ValidationFailed(
                f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters", field="password"
            )
        if "\x00" in password:
            raise ValidationFailed("a password must not contain NUL", field="password")
        if not actor.is_admin and user_ref not in (actor.id, actor.name):
            raise Forbidden("only an admin may set another user's password")
        hashed = _HASHER.hash(password)
        now = self.clock.now()
        with self.db.write() as s:
            user = self.store.resolve(s, user_ref)
            if user is None:
                raise UserNotFound(f"no user {user_ref!r}", user=user_ref)
            user.password_hash, user.failed_sign_ins, user.locked_until = hashed, 0, None
            ended = self._end_all(s, user.id, to_micros(now))
            self.ledger.append(s, [NewEvent(
                EventType.USER_PASSWORD_SET, actor.ref, resource={"type": "User", "id": user.id},
                details={"sessions_ended": ended},
            )], now=now)  # fmt: skip

    # -- signing in and out -------------------------------------------------------------------
    def sign_in(self, username: str, password: str, *, address: str) -> tuple[str, Signed]:
        """A new session for ``username`` (its secret, for the cookie, and what it is), or
        :class:`SignInFailed` (the same for an unknown user and a wrong password) or
        :class:`RateLimited` (locked for a while: too many failures)."""
        wait = self.addresses.blocked(address)
        if wait:
            raise RateLimited(f"too many failed sign-ins from {address}: try again in "
                              f"{int(wait / 60) + 1} min", retry_after=int(wait) + 1)  # fmt: skip
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.read() as s:
            user = self.store.by_username(s, username[:64])
            hashed = user.password_hash if user is not None else None
            until = user.locked_until if user is not None else None
            locked = until is not None and until > now_us
        ok = _verify(hashed or _DUMMY, password) and hashed is not None
        if user is None or locked or not ok:
            why = "locked" if locked else "unknown_user" if user is None else (
                "no_password" if hashed is None else "wrong_password")  # fmt: skip
            self._failed(user, username, address, why, now)
            if locked:
                left = ((until or now_us) - now_us) // 1_000_000 + 1
                raise RateLimited("this account is locked after too many failed sign-ins: try "
                                  "again later, or ask an admin to set a new password",
                                  retry_after=int(left))  # fmt: skip
            raise SignInFailed("wrong username or password")
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        row = UserSessionRow(id=new_id(IdPrefix.SESSION), user_id=user.id,
                             digest=_digest(secret), created_at=now_us, last_seen_at=now_us,
                             expires_at=now_us + self.lifetime_us, ended_at=None)  # fmt: skip
        with self.db.write() as s:
            s.execute(update(UserRow).where(UserRow.id == user.id)
                      .values(failed_sign_ins=0, locked_until=None))  # fmt: skip
            s.add(row)
            self.ledger.append(s, [NewEvent(
                EventType.USER_SIGNED_IN, f"user:{user.id}",
                resource={"type": "User", "id": user.id},
                details={"session_id": row.id, "address": address[:64], "via": "password"},
            )], now=now)  # fmt: skip
        principal = Principal("user", user.id, user.username, Role(user.role))
        return secret, Signed(principal, row.id, row.expires_at)

    def sign_in_external(
        self, *, subject: str, username: str, role: Role, address: str, via: str
    ) -> tuple[str, Signed]:
        """A new session for the human an identity provider vouched for: ``subject``
        (``"<iss> <sub>"``) names them there. Their first sign-in creates the user
        ``username`` with ``role``; later ones find them by ``subject`` and set the role the
        provider now gives. A local user of that name is never taken over: refused."""
        now = self.clock.now()
        now_us = to_micros(now)
        if not USERNAME.match(username) or username == "me":
            raise SignInFailed(f"the provider's username {username[:64]!r} is not one Tether "
                               "can use (a-z, 0-9, '.', '_', '-')")  # fmt: skip
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as s:
            user = s.scalars(select(UserRow).where(UserRow.external_subject == subject)).first()
            events: list[NewEvent] = []
            if user is None:
                if self.store.by_username(s, username) is not None:
                    raise SignInFailed(f"user {username!r} exists in Tether and is not this "
                                       "provider's: ask an admin")  # fmt: skip
                user = UserRow(id=new_id(IdPrefix.USER), username=username, role=role.value,
                               email=None, created_at=now_us, failed_sign_ins=0,
                               external_subject=subject)  # fmt: skip
                s.add(user)
                s.flush()
                changes.record(s, changes.Kind.USER, user.id, now_us=now_us)
                events.append(NewEvent(EventType.USER_CREATED, f"oidc:{subject[:200]}",
                                       resource={"type": "User", "id": user.id},
                                       details={"username": username, "role": role.value,
                                                "via": via}))  # fmt: skip
            elif user.role != role.value:
                previous, user.role = user.role, role.value
                changes.record(s, changes.Kind.USER, user.id, now_us=now_us)
                changed = {"from": previous, "to": role.value, "via": via}
                events.append(NewEvent(EventType.USER_ROLE_CHANGED, f"oidc:{subject[:200]}",
                                       resource={"type": "User", "id": user.id},
                                       details=changed))  # fmt: skip
            row = UserSessionRow(id=new_id(IdPrefix.SESSION), user_id=user.id,
                                 digest=_digest(secret), created_at=now_us, last_seen_at=now_us,
                                 expires_at=now_us + self.lifetime_us, ended_at=None)  # fmt: skip
            s.add(row)
            events.append(NewEvent(
                EventType.USER_SIGNED_IN, f"user:{user.id}",
                resource={"type": "User", "id": user.id},
                details={"session_id": row.id, "address": address[:64], "via": via},
            ))  # fmt: skip
            self.ledger.append(s, events, now=now)
            principal = Principal("user", user.id, user.username, Role(user.role))
            return secret, Signed(principal, row.id, row.expires_at)

    def _failed(
        self, user: UserRow | None, username: str, address: str, why: str, now: datetime
    ) -> None:
        self.addresses.failed(address)
        now_us = to_micros(now)
        with self.db.write() as s:
            details: dict[str, object] = {"username": username[:64], "address": address[:64],
                                          "reason": why}  # fmt: skip
            if user is not None and why != "locked":
                row = s.get(UserRow, user.id)
                if row is not None:
                    row.failed_sign_ins = (row.failed_sign_ins or 0) + 1
                    if row.failed_sign_ins >= LOCK_AFTER:
                        row.locked_until = now_us + LOCK_SECONDS * 1_000_000
                        row.failed_sign_ins = 0
                        details["locked_until"] = row.locked_until
            self.ledger.append(s, [NewEvent(
                EventType.USER_SIGN_IN_FAILED, "anonymous",
                resource={"type": "User", "id": user.id} if user is not None else None,
                details=details,
            )], now=now)  # fmt: skip

    def session(self, secret: str) -> Signed:
        """The live session a cookie's secret names, its last request noted; otherwise
        :class:`Unauthenticated` (unknown, signed out, expired, idle too long, user gone)."""
        if not secret.startswith(SESSION_PREFIX) or len(secret) > 100:
            raise Unauthenticated("not a console session")
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            found = s.execute(
                select(UserSessionRow, UserRow.username, UserRow.role)
                .join(UserRow, UserRow.id == UserSessionRow.user_id)
                .where(UserSessionRow.digest == _digest(secret))
            ).one_or_none()  # fmt: skip
        if found is None:
            raise Unauthenticated("no such session: sign in")
        row, username, role = found
        if row.ended_at is not None or row.expires_at <= now_us:
            raise Unauthenticated("the session has ended: sign in again")
        if row.last_seen_at + self.idle_us <= now_us:
            self._end(row.id, "idle")
            raise Unauthenticated("the session was idle too long: sign in again")
        if now_us - row.last_seen_at >= SEEN_EVERY_US:
            with self.db.write() as s:
                s.execute(update(UserSessionRow).where(UserSessionRow.id == row.id)
                          .values(last_seen_at=now_us))  # fmt: skip
        return Signed(Principal("user", row.user_id, username, Role(role)), row.id,
                      row.expires_at)  # fmt: skip

    def sign_out(self, secret: str) -> None:
        """End the session (if it is one); nothing happens for anything else."""
        try:
            signed = self.session(secret)
        except Unauthenticated:
            return
        self._end(signed.session_id, "signed_out", actor=signed.principal)

    def _end(self, session_id: str, why: str, actor: Principal | None = None) -> None:
        now = self.clock.now()
        with self.db.write() as s:
            row = s.get(UserSessionRow, session_id)
            if row is None or row.ended_at is not None:
                return
            row.ended_at = to_micros(now)
            self.ledger.append(s, [NewEvent(
                EventType.USER_SIGNED_OUT, actor.ref if actor else f"user:{row.user_id}",
                resource={"type": "User", "id": row.user_id},
                details={"session_id": session_id, "reason": why},
            )], now=now)  # fmt: skip

    @staticmethod
    def _end_all(s: Session, user_id: str, now_us: int) -> int:
        result = s.execute(update(UserSessionRow).where(UserSessionRow.user_id == user_id,
                                                        UserSessionRow.ended_at.is_(None))
                           .values(ended_at=now_us))  # fmt: skip
        return int(result.rowcount)  # type: ignore[attr-defined]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password[:MAX_PASSWORD])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
