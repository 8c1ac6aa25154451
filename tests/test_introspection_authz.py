"""Who may introspect a token (issue 10, item 5; RFC 7662 §2.1), on SQLite and PostgreSQL.

Any authenticated caller used to read any token's ``sub``, ``scope``, ``client_id``, ``aud``
and ``jti`` — another agent, an auditor. Now: resource servers (a credential with the
``tether:introspect`` scope, or the client the token is addressed to), admins and the token's
own client see it; everyone else gets exactly ``{"active": false}``, as for an unknown token.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, bearer
from tether.credentials.introspection import INTROSPECT_SCOPE

INACTIVE = {"active": False}


def _agent_client(api: Api, name: str, scopes: list[str] | None = None) -> dict[str, Any]:
    agent = api.agent(name=name, scopes=scopes or ["tools:read"])
    cred = api.client.post(f"/v1/agents/{agent['id']}/credentials", json={"type": "api_key"})
    assert cred.status_code == 201, cred.text
    return {"id": agent["id"], "spiffe_id": agent["spiffe_id"],
            "auth": (cred.json()["client_id"], cred.json()["client_secret"])}  # fmt: skip


def _token(client: TestClient, who: dict[str, Any], **form: str) -> str:
    response = client.post("/oauth/token", auth=who["auth"],
                           data={"grant_type": "client_credentials", **form})  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _as_client(client: TestClient, who: dict[str, Any], token: str) -> dict[str, Any]:
    response = client.post("/oauth/introspect", data={"token": token}, auth=who["auth"],
                           headers={"Authorization": ""})  # fmt: skip
    assert response.status_code == 200, response.text
    return dict(response.json())


def _as_user(client: TestClient, user_token: str, token: str) -> dict[str, Any]:
    response = client.post("/oauth/introspect", data={"token": token}, headers=bearer(user_token))
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def world(api: Api, admin_token: str) -> dict[str, Any]:
    owner = _agent_client(api, "owner-bot")
    return {
        "owner": owner,
        "other": _agent_client(api, "other-bot"),
        "rs": _agent_client(api, "resource-server", [INTROSPECT_SCOPE]),
        "addressee": _agent_client(api, "addressee"),
        "auditor": api.user("eve", "auditor")["token"],
        "supervisor": api.user("sam", "supervisor")["token"],
        "admin": admin_token,
        "token": _token(api.client, owner, resource="https://tools.example/mcp"),
    }


def test_the_tokens_own_client_and_an_admin_see_it(api: Api, world: dict[str, Any]) -> None:
    own = _as_client(api.client, world["owner"], world["token"])
    assert own["active"] is True
    assert own["sub"] == world["owner"]["id"]
    admin = _as_user(api.client, world["admin"], world["token"])
    assert admin == own


def test_a_resource_server_credential_sees_any_token(api: Api, world: dict[str, Any]) -> None:
    info = _as_client(api.client, world["rs"], world["token"])
    assert info["active"] is True
    assert info["client_id"] == world["owner"]["id"]


@pytest.mark.parametrize("claim", ["id", "spiffe_id"])
def test_the_client_a_token_is_addressed_to_sees_it(
    api: Api, world: dict[str, Any], claim: str
) -> None:
    addressee = world["addressee"]
    form = {"audience": addressee[claim]} if claim == "id" else {"resource": addressee[claim]}
    token = _token(api.client, world["owner"], **form)
    assert _as_client(api.client, addressee, token)["active"] is True
    # ...but not a token addressed elsewhere.
    assert _as_client(api.client, addressee, world["token"]) == INACTIVE


@pytest.mark.parametrize("caller", ["other", "auditor", "supervisor"])
def test_anyone_else_learns_nothing(api: Api, world: dict[str, Any], caller: str) -> None:
    """The attack: hold someone else's token and ask what it is. Exactly the answer for a
    token that does not exist."""
    if caller == "other":
        info = _as_client(api.client, world["other"], world["token"])
    else:
        info = _as_user(api.client, world[caller], world["token"])
    assert info == INACTIVE


def test_a_scope_the_agent_does_not_hold_grants_nothing(api: Api, world: dict[str, Any]) -> None:
    """The permission is the agent's scope: a credential cannot claim it on its own."""
    other = world["other"]
    cred = api.client.post(f"/v1/agents/{other['id']}/credentials",
                           json={"type": "api_key", "scopes": [INTROSPECT_SCOPE]})  # fmt: skip
    assert cred.status_code == 422, cred.text  # a ceiling beyond the agent's scopes
