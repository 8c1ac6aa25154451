"""The users store contract (``DatabaseUserStore``), on SQLite and PostgreSQL.

Users and their API tokens round-trip; usernames and token digests are unique; lookups by
id, username or digest find exactly one row or none (never a driver error for a key no row
could hold); a reference resolves by id first, then by username; pages are in id order.
"""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from tests.stores.conftest import T0_US
from tether.db import Database
from tether.users.models import UserRow, UserTokenRow
from tether.users.store import DatabaseUserStore

STORE = DatabaseUserStore()


def _user(user_id: str, username: str, role: str = "supervisor", **fields: object) -> UserRow:
    return UserRow(id=user_id, username=username, role=role, created_at=T0_US, **fields)


def _token(token_id: str, user_id: str, digest: str, **fields: object) -> UserTokenRow:
    return UserTokenRow(id=token_id, user_id=user_id, digest=digest, created_at=T0_US, **fields)


def _add(db: Database, *rows: UserRow | UserTokenRow) -> None:
    with db.write() as s:
        for row in rows:
            STORE.add(s, row)


def test_users_round_trip_and_resolve_by_id_then_username(db: Database) -> None:
    _add(
        db,
        _user("usr_1", "ålice", "admin", email="a@example.test"),
        _user("usr_2", "usr_1"),  # a username that is another user's id
    )
    with db.read() as s:
        alice = STORE.get(s, "usr_1")
        assert alice is not None
        assert (alice.username, alice.role, alice.email, alice.created_at) == (
            "ålice", "admin", "a@example.test", T0_US,
        )  # fmt: skip
        assert STORE.by_username(s, "ålice") is not None
        assert STORE.by_username(s, "ÅLICE") is None  # usernames match exactly
        assert STORE.resolve(s, "usr_1").id == "usr_1"  # type: ignore[union-attr]  # id wins
        assert STORE.resolve(s, "ålice").id == "usr_1"  # type: ignore[union-attr]
        assert STORE.resolve(s, "nobody") is None
        assert STORE.count(s) == 2


def test_keys_no_row_could_hold_are_not_found(db: Database) -> None:
    _add(db, _user("usr_1", "alice"), _token("tok_1", "usr_1", "d" * 64))
    with db.read() as s:
        assert STORE.get(s, "usr_1\x00") is None
        assert STORE.by_username(s, "alice\x00") is None
        assert STORE.resolve(s, "\x00") is None
        assert STORE.token(s, "tok_1\x00") is None
        assert STORE.token(s, "tok_2") is None
        assert STORE.token_by_digest(s, "e" * 64) is None


def test_usernames_are_unique(db: Database) -> None:
    _add(db, _user("usr_1", "alice"))
    with pytest.raises(IntegrityError):
        _add(db, _user("usr_2", "alice"))
    with db.read() as s:
        assert STORE.count(s) == 1


def test_token_digests_are_unique_and_tokens_need_a_user(db: Database) -> None:
    _add(db, _user("usr_1", "alice"), _token("tok_1", "usr_1", "d" * 64))
    with pytest.raises(IntegrityError):
        _add(db, _token("tok_2", "usr_1", "d" * 64))
    with pytest.raises(IntegrityError):
        _add(db, _token("tok_3", "usr_ghost", "e" * 64))
    with db.read() as s:
        assert [t.id for t in STORE.tokens(s, "usr_1")] == ["tok_1"]


def test_tokens_round_trip_and_page_per_user_in_id_order(db: Database) -> None:
    _add(db, _user("usr_1", "alice"), _user("usr_2", "bob"))
    _add(
        db,
        *[_token(f"tok_{i}", "usr_1", f"{i:064x}") for i in (3, 1, 2, 5, 4)],
        _token("tok_9", "usr_2", "f" * 64, name="bob's", expires_at=2**62, revoked_at=T0_US + 1),
    )
    with db.read() as s:
        assert [t.id for t in STORE.tokens(s, "usr_1")] == [f"tok_{i}" for i in range(1, 6)]
        assert [t.id for t in STORE.tokens(s, "usr_1", after="tok_2", limit=2)] == [
            "tok_3",
            "tok_4",
        ]
        assert STORE.tokens(s, "usr_3") == []
        bobs = STORE.token_by_digest(s, "f" * 64)
        assert bobs is not None
        assert (bobs.id, bobs.user_id, bobs.name, bobs.expires_at, bobs.revoked_at) == (
            "tok_9", "usr_2", "bob's", 2**62, T0_US + 1,
        )  # fmt: skip
        assert STORE.token(s, "tok_9") is not None


def test_users_page_in_id_order_without_loss_or_repeat(db: Database) -> None:
    ids = [f"usr_{i:02}" for i in range(10)]
    _add(db, *[_user(i, f"name-{i}") for i in reversed(ids)])
    seen: list[str] = []
    after: str | None = None
    while True:
        with db.read() as s:
            page = STORE.page(s, after=after, limit=4)
        seen += [u.id for u in page]
        if len(page) < 4:
            break
        after = page[-1].id
    assert seen == ids
