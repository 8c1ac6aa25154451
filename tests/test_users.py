"""Humans and their tokens (API.md "Humans and the management API"): bootstrap, users, tokens
shown once and stored as digests, one ledger event per change and none for a failure."""

from __future__ import annotations

import hashlib
import re
import stat
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import BOOTSTRAP_EVENTS, Api, assert_error, bearer
from tether.bootstrap import prepare
from tether.container import Services
from tether.principals import Role

USER_ID = re.compile(r"^usr_[0-9A-HJKMNP-TV-Z]{26}$")


def _users(api: Api) -> list[dict[str, Any]]:
    response = api.client.get("/v1/users", params={"limit": 500})
    assert response.status_code == 200
    return list(response.json()["items"])


# -- bootstrap ---------------------------------------------------------------------------------


def test_first_start_creates_admin_and_a_private_token_file(
    services: Services, admin_token: str
) -> None:
    path = services.settings.admin_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_token.startswith("tth_")
    who = services.users.authenticate(admin_token)
    assert (who.name, who.role) == ("admin", Role.ADMIN)
    with services.db.read() as s:
        rows = s.execute(text("SELECT seq, type FROM audit_events ORDER BY seq")).all()
    assert [tuple(r) for r in rows] == [(1, "system.bootstrapped"), (2, "key.created")]


def test_second_start_changes_nothing(services: Services, admin_token: str) -> None:
    prepare(services)
    assert services.settings.admin_token_path.read_text().strip() == admin_token
    with services.db.read() as s:
        assert s.execute(text("SELECT count(*) FROM users")).scalar() == 1
        assert s.execute(text("SELECT count(*) FROM audit_events")).scalar() == BOOTSTRAP_EVENTS


# -- users -------------------------------------------------------------------------------------


def test_admin_creates_a_user(api: Api) -> None:
    before = api.events()
    response = api.client.post(
        "/v1/users", json={"username": "alice", "role": "supervisor", "email": "a@example.org"}
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert USER_ID.match(user["id"])
    assert (user["username"], user["role"], user["email"]) == (
        "alice",
        "supervisor",
        "a@example.org",
    )
    assert api.client.get(f"/v1/users/{user['id']}").json() == user
    assert api.client.get("/v1/users/alice").json() == user
    [event] = api.new_events(before)
    assert event["type"] == "user.created"
    assert event["resource"] == {"type": "User", "id": user["id"]}
    assert event["details"] == {"username": "alice", "role": "supervisor"}
    assert event["agent_id"] is None


def test_duplicate_username_is_409(api: Api) -> None:
    api.user("alice")
    before = api.snapshot(), _users(api)
    response = api.client.post("/v1/users", json={"username": "alice", "role": "auditor"})
    assert assert_error(response, 409, "username_taken")["details"]["field"] == "username"
    assert (api.snapshot(), _users(api)) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "Alice!", "role": "supervisor"}, "username"),
        ({"username": "", "role": "supervisor"}, "username"),
        ({"username": "a" * 65, "role": "supervisor"}, "username"),
        ({"username": "alice", "role": "root"}, "role"),
        ({"username": "alice"}, "role"),
        ({"username": "alice", "role": "auditor", "email": "not-an-email"}, "email"),
        ({"username": "alice", "role": "auditor", "email": "a\x00@b.c"}, "email"),
        ({"username": "alice", "role": "auditor", "password": "x"}, "password"),
    ],
)
def test_invalid_user_is_422(api: Api, body: dict[str, Any], field: str) -> None:
    before = api.snapshot(), _users(api)
    response = api.client.post("/v1/users", json=body)
    assert assert_error(response, 422, "validation_error")["details"]["field"] == field
    assert (api.snapshot(), _users(api)) == before


def test_users_list_pages(api: Api) -> None:
    for name in ("u1", "u2", "u3", "u4"):
        api.user(name, role="auditor")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/users", params=params).json()
        seen += [u["username"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["admin", "u1", "u2", "u3", "u4"]


def test_who_may_read_users(api: Api) -> None:
    alice, audrey = api.user("alice"), api.user("audrey", role="auditor")
    api.user("bob")
    assert_error(api.client.get("/v1/users", headers=bearer(alice["token"])), 403, "forbidden")
    assert_error(api.client.get("/v1/users/bob", headers=bearer(alice["token"])), 403, "forbidden")
    own = api.client.get("/v1/users/alice", headers=bearer(alice["token"]))
    assert own.json()["id"] == alice["id"]
    assert api.client.get("/v1/whoami", headers=bearer(alice["token"])).json()["id"] == alice["id"]
    listed = api.client.get("/v1/users", headers=bearer(audrey["token"]))
    assert {u["username"] for u in listed.json()["items"]} == {"admin", "alice", "audrey", "bob"}


def test_unknown_user_is_404(api: Api) -> None:
    assert_error(api.client.get("/v1/users/nobody"), 404, "user_not_found")


# -- tokens ------------------------------------------------------------------------------------


def test_token_is_shown_once_and_works(api: Api, services: Services) -> None:
    alice = api.user("alice")
    before = api.events()
    response = api.client.post("/v1/users/alice/tokens", json={"name": "laptop"})
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["token"]
    assert secret.startswith("tth_")
    assert created["user_id"] == alice["id"]
    assert created["name"] == "laptop"
    assert created["expires_at"] is None
    [event] = api.new_events(before)
    assert event["type"] == "user.token_created"
    assert event["resource"] == {"type": "User", "id": alice["id"]}
    assert event["details"]["token_id"] == created["id"]
    assert secret not in str(event)
    who = api.client.get("/v1/whoami", headers=bearer(secret)).json()
    assert (who["id"], who["username"]) == (alice["id"], "alice")
    # Listing never shows a secret again, and the database holds only its digest.
    listing = api.client.get("/v1/users/alice/tokens")
    assert listing.status_code == 200
    assert secret not in listing.text
    assert all("token" not in t for t in listing.json()["items"])
    with services.db.read() as s:
        rows = [tuple(r) for r in s.execute(text("SELECT * FROM user_tokens"))]
    assert secret not in str(rows)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert any(digest in row for row in rows)


def test_token_expiry_is_reported(api: Api) -> None:
    api.user("alice")
    created = api.client.post("/v1/users/alice/tokens", json={"expires_in": 3600}).json()
    assert created["expires_at"] is not None
    assert created["expires_at"] > created["created_at"]


def test_revoking_a_token(api: Api) -> None:
    alice = api.user("alice")
    [token] = api.client.get("/v1/users/alice/tokens").json()["items"]
    before = api.events()
    response = api.client.delete(f"/v1/users/alice/tokens/{token['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None
    [event] = api.new_events(before)
    assert event["type"] == "user.token_revoked"
    assert event["details"] == {"token_id": token["id"]}
    assert_error(api.client.get("/v1/whoami", headers=bearer(alice["token"])), 401)
    # Revoking again changes nothing and records nothing.
    again_before = api.events()
    again = api.client.delete(f"/v1/users/alice/tokens/{token['id']}")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == response.json()["revoked_at"]
    assert api.events() == again_before


def test_token_failures_change_nothing(api: Api) -> None:
    alice, bob = api.user("alice"), api.user("bob")
    [bobs] = api.client.get("/v1/users/bob/tokens").json()["items"]
    before = api.snapshot()
    assert_error(api.client.post("/v1/users/nobody/tokens", json={}), 404, "user_not_found")
    assert_error(api.client.delete("/v1/users/alice/tokens/tok_nope"), 404, "token_not_found")
    # Bob's token, addressed as if it were Alice's.
    assert_error(api.client.delete(f"/v1/users/alice/tokens/{bobs['id']}"), 404, "token_not_found")
    response = api.client.post("/v1/users/alice/tokens", json={"expires_in": 1})  # < minimum
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "expires_in"
    response = api.client.post("/v1/users/alice/tokens", json={"name": "a\x00b"})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "name"
    # A supervisor cannot mint or revoke tokens for someone else.
    as_alice = bearer(alice["token"])
    assert_error(api.client.post("/v1/users/bob/tokens", json={}, headers=as_alice), 403)
    response = api.client.delete(f"/v1/users/bob/tokens/{bobs['id']}", headers=as_alice)
    assert_error(response, 403, "forbidden")
    assert_error(api.client.get("/v1/users/bob/tokens", headers=as_alice), 403, "forbidden")
    assert api.snapshot() == before
    assert api.client.get("/v1/whoami", headers=bearer(bob["token"])).status_code == 200


def test_user_manages_own_tokens(api: Api) -> None:
    alice = api.user("alice")
    as_alice = bearer(alice["token"])
    before = api.events()
    created = api.client.post("/v1/users/alice/tokens", json={}, headers=as_alice)
    assert created.status_code == 201
    revoked = api.client.delete(f"/v1/users/alice/tokens/{created.json()['id']}", headers=as_alice)
    assert revoked.status_code == 200
    events = api.new_events(before)
    assert [e["type"] for e in events] == ["user.token_created", "user.token_revoked"]
    assert {e["actor"] for e in events} == {f"user:{alice['id']}"}
