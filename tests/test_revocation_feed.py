"""The revocation feed (issue 12, item 4), on SQLite and PostgreSQL: ``GET /v1/revocations``.

A reader without a cursor gets the whole current state (``reset``); with the cursor it was
given it gets what changed since, each item the current state of what changed: revoked token
ids with their ``exp``, agents killed, suspended, expired or frozen (and active again once
resumed or unfrozen), and whether everything is frozen. Ids only, never a token. Readers: an
admin or a resource-server credential; a malformed cursor is 400.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, assert_error, bearer


def _read(client: TestClient, since: str | None = None, token: str | None = None) -> dict[str, Any]:
    params = {"since": since} if since is not None else {}
    response = client.get("/v1/revocations", params=params,
                          headers=bearer(token) if token else None)  # fmt: skip
    assert response.status_code == 200, response.text
    return dict(response.json())


def _states(page: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(i["type"], i["id"]): i["state"] for i in page["items"]}


def _token_for(api: Api, agent_id: str, scopes: str | None = None) -> str:
    key = api.client.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"}).json()
    form = {"grant_type": "client_credentials", "client_id": agent_id,
            "client_secret": key["client_secret"]}  # fmt: skip
    if scopes:
        form["scope"] = scopes
    response = api.client.post("/oauth/token", data=form, headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_the_whole_state_then_what_changed_since(api: Api) -> None:
    client = api.client
    parent = api.agent(name="parent", scopes=["tools"])
    child = api.ok(parent["id"], "clone", name="child")
    other = api.agent(name="other", roles=["ops"])
    token = _token_for(api, parent["id"])
    jti = token  # replaced below by the id the feed must carry
    first = _read(client)
    assert first["reset"] is True
    assert _states(first) == {("all", "*"): "active"}  # nothing to refuse yet
    cursor = first["next_cursor"]
    assert _read(client, cursor)["items"] == []

    killed = api.ok(parent["id"], "kill", reason="rogue")
    assert set(killed["revoked"]) == {parent["id"], child["id"]}
    page = _read(client, cursor)
    assert page["reset"] is False
    states = _states(page)
    assert states[("agent", parent["id"])] == "revoked"
    assert states[("agent", child["id"])] == "revoked"
    tokens = [i for i in page["items"] if i["type"] == "token"]
    assert len(tokens) == 1
    assert tokens[0]["state"] == "revoked"
    assert isinstance(tokens[0]["exp"], int)
    assert tokens[0]["id"] not in jti  # an id, never the token itself
    assert all(i["time"].endswith("Z") for i in page["items"])
    cursor = page["next_cursor"]

    api.ok(other["id"], "suspend", reason="checking")
    page = _read(client, cursor)
    assert _states(page) == {("agent", other["id"]): "suspended"}
    api.ok(other["id"], "resume")
    page = _read(client, page["next_cursor"])
    assert _states(page) == {("agent", other["id"]): "active"}  # readers lift their refusal

    # A new reader gets the whole state at once.
    whole = _read(client)
    assert whole["reset"] is True
    assert _states(whole) == {
        ("all", "*"): "active",
        ("agent", parent["id"]): "revoked",
        ("agent", child["id"]): "revoked",
        ("token", tokens[0]["id"]): "revoked",
    }


def test_freezes_reach_the_feed_and_lifting_them_too(api: Api) -> None:
    client = api.client
    ops = api.agent(name="ops", roles=["ops"])
    plain = api.agent(name="plain")
    cursor = _read(client)["next_cursor"]

    assert (
        client.post("/v1/freeze", json={"reason": "r1", "scope": {"role": "ops"}}).status_code
        == 201
    )
    page = _read(client, cursor)
    assert _states(page) == {("agent", ops["id"]): "frozen"}
    assert page["items"][0]["reason"] == "r1"
    assert client.post("/v1/freeze", json={"reason": "everything"}).status_code == 201
    page = _read(client, page["next_cursor"])
    assert _states(page) == {("all", "*"): "frozen"}
    assert _states(_read(client))[("all", "*")] == "frozen"
    assert client.delete("/v1/freeze").status_code == 200
    page = _read(client, page["next_cursor"])
    assert _states(page) == {("all", "*"): "active", ("agent", ops["id"]): "active"}
    assert ("agent", plain["id"]) not in _states(page)


def test_a_resource_server_credential_reads_the_feed_and_others_do_not(api: Api) -> None:
    rs = api.agent(name="rs", scopes=["tether:revocations"])
    worker = api.agent(name="worker", scopes=["tools"])
    assert _read(api.client, token=_token_for(api, rs["id"]))["reset"] is True
    refused = api.client.get("/v1/revocations", headers=bearer(_token_for(api, worker["id"])))
    assert_error(refused, 403, "forbidden")
    for role in ("supervisor", "auditor"):
        user = api.user(f"u-{role}", role)
        assert_error(api.client.get("/v1/revocations", headers=bearer(user["token"])), 403)
    assert_error(api.client.get("/v1/revocations", headers={"Authorization": ""}), 401)


# The last: full-width digits (str.isdigit() takes them; a cursor does not).
@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "9" * 19, "\uff11\uff12"])
def test_a_malformed_cursor_is_400(api: Api, cursor: str) -> None:
    response = api.client.get("/v1/revocations", params={"since": cursor})
    assert_error(response, 400, "invalid_cursor")
    stream = api.client.get("/v1/revocations/stream", params={"since": cursor})
    assert_error(stream, 400, "invalid_cursor")


def test_a_cursor_from_elsewhere_gets_the_whole_state(api: Api) -> None:
    page = _read(api.client, "999999999")
    assert page["reset"] is True
