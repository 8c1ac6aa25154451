"""The contract of :class:`tether.credentials.store.DatabaseCredentialStore`, on every backend.

Client credentials, issued access tokens and token signing keys: what is stored comes back
exactly; a lookup of a key no row can hold finds nothing instead of raising; lists come in
one order on every backend; revocation touches exactly the tokens it names; a second row
with a unique key fails the same way everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.stores.conftest import T0_US, add_agent, add_user
from tether.credentials.models import AccessTokenRow, CredentialRow, SigningKeyRow
from tether.credentials.store import DatabaseCredentialStore
from tether.db import Database

store = DatabaseCredentialStore()

A, B = "agt_a", "agt_b"
HOUR_US = 3_600_000_000
# Keys no row can hold, or that merely name nothing: each lookup answers "none".
ODD_KEYS = ["", "nope", "x" * 41, "x" * 65, "x" * 10_000, "\x00", "crd_\x00", "ünï©ødé 🙂"]


def credential_row(credential_id: str, agent_id: str = A, **fields: Any) -> CredentialRow:
    values: dict[str, Any] = {
        "id": credential_id,
        "agent_id": agent_id,
        "type": "public_key",
        "secret_digest": None,
        "jwk": '{"kty":"OKP"}',
        "jkt": None,
        "scopes": None,
        "created_at": T0_US,
        "expires_at": None,
        "last_used_at": None,
        "deleted_at": None,
    }
    return CredentialRow(**{**values, **fields})


def token_row(jti: str, agent_id: str = A, **fields: Any) -> AccessTokenRow:
    values: dict[str, Any] = {
        "jti": jti,
        "agent_id": agent_id,
        "client_id": agent_id,
        "issued_at": T0_US,
        "expires_at": T0_US + HOUR_US,
        "revoked_at": None,
    }
    return AccessTokenRow(**{**values, **fields})


def signing_key_row(kid: str, **fields: Any) -> SigningKeyRow:
    values: dict[str, Any] = {
        "kid": kid,
        "alg": "ES256",
        "status": "next",
        "private_sealed": "sealed",
        "public_jwk": '{"kty":"EC"}',
        "created_at": T0_US,
        "activated_at": None,
        "retired_at": None,
        "unpublish_at": None,
    }
    return SigningKeyRow(**{**values, **fields})


def revoked_at(s: Session, jti: str) -> int | None:
    row = store.token(s, jti)
    assert row is not None, jti
    return row.revoked_at


def columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def add(db: Database, *rows: CredentialRow | AccessTokenRow | SigningKeyRow) -> None:
    with db.write() as s:
        for row in rows:
            if isinstance(row, CredentialRow):
                store.add(s, row)
            elif isinstance(row, AccessTokenRow):
                store.add_token(s, row)
            else:
                store.add_signing_key(s, row)


@pytest.fixture
def agents(db: Database) -> Database:
    """The database with an owner and two agents, ``A`` and ``B``."""
    add_user(db, "usr_owner")
    add_agent(db, A)
    add_agent(db, B)
    return db


# -- client credentials ----------------------------------------------------------------------


def test_a_credential_comes_back_exactly(agents: Database) -> None:
    db = agents
    max_id = "crd_" + "€" * 36  # 40 characters: the column's length, not its bytes
    full = credential_row(
        max_id,
        type="api_key",
        secret_digest="f" * 64,
        jwk='{"kty":"OKP","x":"ünï©ødé 🙂 \\u0000"}',
        jkt="J" * 64,
        scopes='["agents:read","données:écrire"]',
        created_at=T0_US + 1,
        expires_at=2**62 + 7,
        last_used_at=T0_US + 999_999,
        deleted_at=T0_US + 123_456,
    )
    sparse = credential_row("crd_sparse")  # every nullable column null
    expected = [columns(full), columns(sparse)]
    add(db, full, sparse)
    with db.read() as s:
        found = [store.get(s, max_id), store.get(s, "crd_sparse")]
        assert [columns(r) for r in found if r is not None] == expected
        by_digest = store.by_secret_digest(s, "f" * 64)
        assert by_digest is not None
        assert by_digest.id == max_id


def test_lookups_of_odd_or_unknown_keys_find_nothing(agents: Database) -> None:
    add(agents, credential_row("crd_1", type="api_key", secret_digest="d" * 64))
    with agents.read() as s:
        for key in ODD_KEYS:
            assert store.get(s, key) is None, key
            assert store.by_secret_digest(s, key) is None, key
            assert store.public_keys(s, key) == [], key
            assert store.live(s, key) == [], key
        # A key one character off, or the right one and more, is not the key.
        assert store.get(s, "crd_1x") is None
        assert store.by_secret_digest(s, "d" * 63) is None
        assert store.by_secret_digest(s, "d" * 65) is None


def test_deleted_and_expired_credentials_are_still_found_by_id_and_digest(
    agents: Database,
) -> None:
    """The store answers what is stored; whether it may be used is the caller's rule."""
    add(
        agents,
        credential_row("crd_del", type="api_key", secret_digest="1" * 64, deleted_at=T0_US),
        credential_row("crd_exp", type="api_key", secret_digest="2" * 64, expires_at=T0_US),
    )
    with agents.read() as s:
        deleted, expired = store.get(s, "crd_del"), store.by_secret_digest(s, "2" * 64)
        assert deleted is not None
        assert deleted.deleted_at == T0_US
        assert expired is not None
        assert expired.id == "crd_exp"
        assert store.by_secret_digest(s, "1" * 64) is deleted


def test_public_keys_are_an_agents_undeleted_public_keys_in_id_order(agents: Database) -> None:
    add(
        agents,
        credential_row("crd_c"),
        credential_row("crd_a", expires_at=T0_US - 1),  # expired: still tried (and refused)
        credential_row("crd_b", deleted_at=T0_US),
        credential_row("crd_d", type="api_key", jwk=None, secret_digest="3" * 64),
        credential_row("crd_B"),  # "B" < "a": code point order on every backend
        credential_row("crd_0", agent_id=B),
    )
    with agents.read() as s:
        assert [r.id for r in store.public_keys(s, A)] == ["crd_B", "crd_a", "crd_c"]
        assert [r.id for r in store.public_keys(s, B)] == ["crd_0"]


# Ids whose order differs between a byte order (SQLite, PostgreSQL under C collation) and a
# linguistic collation (en_US: case folded first, punctuation ignored).
MIXED_IDS = ["crd_b", "crd_B", "crd__", "crd_a-z", "crd_az", "crd_é", "crd_Z", "crd_0", "crd_~"]


def test_live_credentials_come_in_code_point_order(agents: Database) -> None:
    add(agents, *(credential_row(i) for i in MIXED_IDS))
    add(agents, credential_row("crd_gone", deleted_at=T0_US), credential_row("crd_1", B))
    with agents.read() as s:
        assert [r.id for r in store.live(s, A)] == sorted(MIXED_IDS)
        assert [r.id for r in store.live(s, B)] == ["crd_1"]


def test_pages_of_live_credentials_walk_each_once(agents: Database) -> None:
    add(agents, *(credential_row(i) for i in MIXED_IDS))
    add(agents, credential_row("crd_c", deleted_at=T0_US))
    seen: list[str] = []
    after: str | None = None
    with agents.read() as s:
        while page := store.live(s, A, after=after, limit=2):
            assert len(page) <= 2
            seen += [r.id for r in page]
            after = page[-1].id
        assert seen == sorted(MIXED_IDS)
        # A bound between ids, or one no id could be, starts after what it sorts after.
        assert [r.id for r in store.live(s, A, after="crd_a", limit=2)] == ["crd_a-z", "crd_az"]
        assert [r.id for r in store.live(s, A, after="crd_a\x00zzz", limit=2)] == [
            "crd_a-z",
            "crd_az",
        ]
        assert store.live(s, A, after=max(MIXED_IDS)) == []


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (credential_row("crd_1", type="api_key", secret_digest="9" * 64), "same id"),
        (credential_row("crd_2", type="api_key", secret_digest="a" * 64), "same digest"),
        (credential_row("crd_3", agent_id="agt_nobody"), "no such agent"),
    ],
)
def test_a_conflicting_credential_is_an_integrity_error(
    agents: Database, second: CredentialRow, why: str
) -> None:
    first = credential_row("crd_1", type="api_key", secret_digest="a" * 64)
    expected = columns(first)
    add(agents, first)
    with pytest.raises(IntegrityError), agents.write() as s:
        store.add(s, second)
    with agents.read() as s:
        assert [columns(r) for r in store.live(s, A)] == [expected], why
        assert store.get(s, second.id) is None or second.id == "crd_1"


# -- issued access tokens --------------------------------------------------------------------


def test_a_token_comes_back_exactly(agents: Database) -> None:
    long_jti = "atk_" + "🙂" * 60  # 64 characters of four UTF-8 bytes each
    full = token_row(
        long_jti,
        client_id="usr_" + "ü" * 36,
        issued_at=T0_US + 1,
        expires_at=2**62 + 1,
        revoked_at=T0_US + 2,
    )
    plain = token_row("atk_plain", agent_id=B)
    expected = [columns(full), columns(plain)]
    add(agents, full, plain)
    with agents.read() as s:
        found = [store.token(s, long_jti), store.token(s, "atk_plain")]
        assert [columns(r) for r in found if r is not None] == expected
        for key in ODD_KEYS:
            assert store.token(s, key) is None, key
        assert store.token(s, long_jti[:-1]) is None


def test_an_inserted_token_comes_back_unrevoked_and_its_jti_stays_single(
    agents: Database,
) -> None:
    """``insert_token`` (issuance's one INSERT, no ORM object) stores what ``add_token``
    would, and a second row with the same ``jti`` is refused."""
    values = {"agent_id": A, "client_id": A, "issued_at": T0_US + 3, "expires_at": T0_US + 9}
    with agents.write() as s:
        store.insert_token(s, jti="atk_inserted", **values)
    with agents.read() as s:
        row = store.token(s, "atk_inserted")
        assert row is not None
        assert columns(row) == columns(token_row("atk_inserted", **values))
    with pytest.raises(IntegrityError), agents.write() as s:
        store.insert_token(s, jti="atk_inserted", **{**values, "agent_id": B})


def test_the_same_jti_twice_is_an_integrity_error(agents: Database) -> None:
    add(agents, token_row("atk_1", issued_at=T0_US))
    with pytest.raises(IntegrityError), agents.write() as s:
        store.add_token(s, token_row("atk_1", agent_id=B, issued_at=T0_US + 5))
    with agents.read() as s:
        row = store.token(s, "atk_1")
        assert row is not None
        assert (row.agent_id, row.issued_at) == (A, T0_US)


def test_revoking_an_agents_tokens_takes_only_its_unrevoked_unexpired_ones(
    agents: Database,
) -> None:
    now = T0_US + HOUR_US // 2
    add(
        agents,
        token_row("atk_live1", expires_at=now + 1),
        token_row("atk_live2"),
        token_row("atk_expiring", expires_at=now),  # expired at now: left alone
        token_row("atk_old", expires_at=now - 1),
        token_row("atk_revoked", revoked_at=T0_US + 7),
        token_row("atk_other", agent_id=B),
        token_row("atk_client_a", agent_id=B, client_id=A),  # A's client, B's token
    )
    with agents.write() as s:
        revoked = store.revoke_tokens_of(s, [A], now)
    assert sorted(revoked) == ["atk_live1", "atk_live2"]
    with agents.read() as s:
        assert {j: revoked_at(s, j) for j in revoked} == {"atk_live1": now, "atk_live2": now}
        untouched = ["atk_expiring", "atk_old", "atk_other", "atk_client_a"]
        assert [revoked_at(s, j) for j in untouched] == [None] * 4
        assert revoked_at(s, "atk_revoked") == T0_US + 7
    with agents.write() as s:
        assert store.revoke_tokens_of(s, [A], now) == []  # nothing left to revoke
        assert store.revoke_tokens_of(s, [], now) == []
        assert sorted(store.revoke_tokens_of(s, [A, B, "agt_nobody", "\x00"], now)) == [
            "atk_client_a",
            "atk_other",
        ]


def test_revoking_at_most_n_counts_them_and_revokes_all_or_none(agents: Database) -> None:
    """A kill's tokens: counted and revoked together if few enough; if more, counted only
    (the kill leaves them to after its commit), none of them touched."""
    now = T0_US + HOUR_US // 2
    add(
        agents,
        token_row("atk_a1"),
        token_row("atk_a2"),
        token_row("atk_a_old", expires_at=now - 1),
        token_row("atk_a_revoked", revoked_at=T0_US + 7),
        token_row("atk_b1", agent_id=B),
        token_row("atk_b2", agent_id=B),
        token_row("atk_b3", agent_id=B),
    )
    with agents.write() as s:
        assert store.revoke_tokens_of_at_most(s, [B], now, 2) == (3, [])
        n, jtis = store.revoke_tokens_of_at_most(s, [A, "agt_nobody", "\x00"], now, 2)
        assert (n, sorted(jtis)) == (2, ["atk_a1", "atk_a2"])
        assert store.revoke_tokens_of_at_most(s, [A], now, 2) == (0, [])
        assert store.revoke_tokens_of_at_most(s, [], now, 2) == (0, [])
    with agents.read() as s:
        assert [revoked_at(s, f"atk_b{i}") for i in (1, 2, 3)] == [None] * 3
        assert [revoked_at(s, j) for j in ("atk_a1", "atk_a2")] == [now, now]
        assert revoked_at(s, "atk_a_old") is None
        assert revoked_at(s, "atk_a_revoked") == T0_US + 7
    with agents.write() as s:
        n, jtis = store.revoke_tokens_of_at_most(s, [B], now, 3)
        assert (n, sorted(jtis)) == (3, ["atk_b1", "atk_b2", "atk_b3"])


def test_revoking_by_jti_touches_only_the_tokens_named(agents: Database) -> None:
    add(agents, *(token_row(f"atk_{i}") for i in range(4)))
    with agents.write() as s:
        store.revoke_tokens(s, ["atk_1", "atk_3", "atk_unknown", "atk_\x00"], T0_US + 10)
        store.revoke_tokens(s, [], T0_US + 20)
    with agents.read() as s:
        times = [revoked_at(s, f"atk_{i}") for i in range(4)]
        assert times == [None, T0_US + 10, None, T0_US + 10]
        assert store.token(s, "atk_unknown") is None  # revoking names creates nothing


def test_revoked_unexpired_is_every_revoked_token_still_in_its_lifetime(
    agents: Database,
) -> None:
    now = T0_US + HOUR_US
    add(
        agents,
        token_row("atk_r1", revoked_at=T0_US, expires_at=now + 1),
        token_row("atk_r2", agent_id=B, revoked_at=now + 5, expires_at=2**62),
        token_row("atk_r_at_now", revoked_at=T0_US, expires_at=now),
        token_row("atk_r_past", revoked_at=T0_US, expires_at=now - 1),
        token_row("atk_live", expires_at=now + 1),
    )
    with agents.read() as s:
        assert store.revoked_unexpired(s, now) == {"atk_r1": now + 1, "atk_r2": 2**62}
        assert store.revoked_unexpired(s, 2**62) == {}
        assert store.revoked_unexpired(s, 0) == {
            "atk_r1": now + 1,
            "atk_r2": 2**62,
            "atk_r_at_now": now,
            "atk_r_past": now - 1,
        }


def test_revoked_among_answers_for_the_named_tokens_only(agents: Database) -> None:
    add(
        agents,
        token_row("atk_r1", revoked_at=T0_US),
        token_row("atk_r_expired", revoked_at=T0_US, expires_at=T0_US + 1),
        token_row("atk_r_unnamed", revoked_at=T0_US),
        token_row("atk_live"),
    )
    named = {"atk_r1", "atk_r_expired", "atk_live", "atk_unknown", "atk_\x00", "x" * 100}
    with agents.read() as s:
        assert store.revoked_among(s, named) == {
            "atk_r1": T0_US + HOUR_US,
            "atk_r_expired": T0_US + 1,
        }
        assert store.revoked_among(s, set()) == {}
        assert store.revoked_among(s, ["\x00"]) == {}


def test_a_revocation_is_seen_by_the_next_read(agents: Database) -> None:
    """Revoked in one transaction, found by each query a worker makes in the next."""
    add(agents, token_row("atk_1"), token_row("atk_2"))
    with agents.write() as s:
        assert sorted(store.revoke_tokens_of(s, [A], T0_US)) == ["atk_1", "atk_2"]
    with agents.read() as s:
        assert set(store.revoked_unexpired(s, T0_US)) == {"atk_1", "atk_2"}
        assert set(store.revoked_among(s, ["atk_2"])) == {"atk_2"}


# -- token signing keys ----------------------------------------------------------------------


def test_a_signing_key_comes_back_exactly(db: Database) -> None:
    kid = "k" * 64
    full = signing_key_row(
        kid,
        alg="EdDSA",
        status="retired",
        private_sealed="s€aled " * 500,
        public_jwk='{"kty":"OKP","crv":"Ed25519","x":"ü"}',
        created_at=T0_US + 1,
        activated_at=T0_US + 2,
        retired_at=T0_US + 3,
        unpublish_at=2**62,
    )
    expected = columns(full)
    add(db, full)
    with db.read() as s:
        row = store.signing_key(s, kid)
        assert row is not None
        assert columns(row) == expected
        for key in ODD_KEYS:
            assert store.signing_key(s, key) is None, key
        assert store.signing_keys(s, status="\x00") == []


def test_signing_keys_come_oldest_first_by_status(db: Database) -> None:
    add(
        db,
        signing_key_row("kid_c", status="active", created_at=T0_US + 2),
        signing_key_row("kid_a", status="next", created_at=T0_US + 3),
        signing_key_row("kid_b", status="retired", created_at=T0_US + 1),
        signing_key_row("kid_d", status="retired", created_at=T0_US),
    )
    with db.read() as s:
        assert [r.kid for r in store.signing_keys(s)] == ["kid_d", "kid_b", "kid_c", "kid_a"]
        assert [r.kid for r in store.signing_keys(s, status="retired")] == ["kid_d", "kid_b"]
        assert [r.kid for r in store.signing_keys(s, status="active")] == ["kid_c"]
        assert store.signing_keys(s, status="nope") == []


def test_the_same_kid_twice_is_an_integrity_error(db: Database) -> None:
    add(db, signing_key_row("kid_1", status="active"))
    with pytest.raises(IntegrityError), db.write() as s:
        store.add_signing_key(s, signing_key_row("kid_1", status="next"))
    with db.read() as s:
        assert [(r.kid, r.status) for r in store.signing_keys(s)] == [("kid_1", "active")]
