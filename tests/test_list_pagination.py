"""Every list is ``{"items", "next_cursor"}`` with ``limit`` and ``cursor`` (API.md): an
agent's credentials, the signing keys and a user's tokens page like the agent registry does —
in a stable order, each item exactly once, a bad cursor refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, assert_error


def _pages(api: Api, path: str, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = api.client.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ends"


def _check(api: Api, path: str, key: str, expected: int) -> list[dict[str, Any]]:
    everything = api.client.get(path, params={"limit": 500}).json()
    assert everything["next_cursor"] is None
    whole = everything["items"]
    assert len(whole) == expected
    pages = _pages(api, path, limit=2)
    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    assert 1 <= len(pages[-1]) <= 2
    walked = [item for page in pages for item in page]
    assert [i[key] for i in walked] == [i[key] for i in whole]  # same order, each once
    # the default page and the bounds
    assert_error(api.client.get(path, params={"cursor": "!!not-ours!!"}), 400, "invalid_cursor")
    assert_error(api.client.get(path, params={"limit": 0}), 422)
    assert_error(api.client.get(path, params={"limit": 501}), 422)
    return whole


def test_an_agents_credentials_page(api: Api) -> None:
    agent = api.agent()
    path = f"/v1/agents/{agent['id']}/credentials"
    made = []
    for _ in range(5):
        created = api.client.post(path, json={"type": "api_key"})
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    deleted = api.client.delete(f"{path}/{made[2]}")
    assert deleted.status_code == 200, deleted.text
    whole = _check(api, path, "id", expected=4)
    assert [c["id"] for c in whole] == [m for m in made if m != made[2]]  # oldest first
    assert all("client_secret" not in c for c in whole)


def test_signing_keys_page(api: Api) -> None:
    for _ in range(2):
        rotated = api.client.post("/v1/keys/rotate")
        assert rotated.status_code == 200, rotated.text
    whole = _check(api, "/v1/keys", "kid", expected=len(api.client.get("/v1/keys").json()["items"]))
    assert len(whole) >= 4  # the first active key, two retired by rotation... and the next
    created = [k["created_at"] for k in whole]
    assert created == sorted(created)


@pytest.mark.parametrize("count", [1, 5])
def test_a_users_tokens_page(api: Api, count: int) -> None:
    user = api.user(f"pager{count}")  # one token already
    for n in range(count - 1):
        made = api.client.post(f"/v1/users/{user['id']}/tokens", json={"name": f"t{n}"})
        assert made.status_code == 201, made.text
    whole = _check(api, f"/v1/users/{user['id']}/tokens", "id", expected=count)
    assert all("token" not in t for t in whole)
