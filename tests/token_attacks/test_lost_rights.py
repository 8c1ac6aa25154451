"""Attacks: Tokens whose subject lost its rights — HTTP introspection / revocation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.token_attacks.kit import (
    START,
    Client,
    Env,
    Snapshot,
    assert_oauth_error,
    introspect,
    issued,
    ledger,
    new_agent,
    new_client,
    post_token,
)
from tether.principals import SYSTEM


@pytest.mark.parametrize("op", ["kill", "suspend", "retire"])
def test_token_of_a_stopped_agent_introspects_inactive(env: Env, op: str) -> None:
    client = new_client(env)
    token = issued(env, client)
    agents = env.services.agents
    if op == "kill":
        cut = agents.kill(SYSTEM, client.agent_id, reason="rogue")
        assert cut["cut_off"]["tokens"] == 1  # the row itself is revoked, too
    elif op == "suspend":
        agents.suspend(SYSTEM, client.agent_id, reason="investigating")
    else:
        agents.retire(SYSTEM, client.agent_id, reason="decommissioned")
    assert introspect(env, token) == {"active": False}
    # ...and it cannot fetch a replacement (audited; see section 3 for the reasons).
    assert_oauth_error(post_token(env, client.form), 401, "invalid_client")


def test_revoked_token_introspects_inactive(env: Env) -> None:
    client = new_client(env)
    token = issued(env, client)
    revoked = env.http.post(
        "/oauth/revoke",
        data={"token": token, "client_id": client.agent_id, "client_secret": client.secret},
    )
    assert revoked.status_code == 200
    assert introspect(env, token) == {"active": False}
    assert [ev.type for ev in ledger(env)].count("token.revoked") == 1


def test_another_agent_cannot_revoke_my_token(env: Env) -> None:
    """Revocation is not a weapon: B's revoke of A's token is a silent no-op (RFC 7009 §2.2)."""
    victim, attacker = new_client(env), new_client(env)
    token = issued(env, victim)
    before = Snapshot.of(env)
    response = env.http.post(
        "/oauth/revoke",
        data={
            "token": token,
            "client_id": attacker.agent_id,
            "client_secret": attacker.secret,
        },
    )
    assert response.status_code == 200
    assert introspect(env, token)["active"] is True
    assert before.new_events(env) == []


def test_a_non_admin_user_cannot_revoke_an_agent_token(env: Env) -> None:
    client = new_client(env)
    token = issued(env, client)
    username = f"sup{uuid.uuid4().hex[:8]}"
    user = env.http.post(
        "/v1/users", json={"username": username, "role": "supervisor"}, headers=env.admin
    ).json()
    user_token = env.http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=env.admin).json()[
        "token"
    ]
    before = Snapshot.of(env)
    response = env.http.post(
        "/oauth/revoke", data={"token": token}, headers={"Authorization": f"Bearer {user_token}"}
    )
    assert response.status_code == 200
    assert introspect(env, token)["active"] is True
    assert before.new_events(env) == []


@pytest.mark.parametrize("caller", ["nobody", "wrong-secret", "access-token-as-bearer"])
def test_introspection_requires_an_authenticated_caller(env: Env, caller: str) -> None:
    """Token scanning without credentials: 401, and the token's claims do not leak."""
    client = new_client(env)
    token = issued(env, client)
    data = {"token": token}
    headers: dict[str, str] = {}
    if caller == "wrong-secret":
        data.update(client_id=client.agent_id, client_secret="tsk_guess")
    elif caller == "access-token-as-bearer":
        headers["Authorization"] = f"Bearer {token}"  # an agent token is not a user token
    response = env.http.post("/oauth/introspect", data=data, headers=headers)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert "active" not in response.json()
    assert client.agent_id not in response.text


def test_token_of_an_expired_agent_introspects_inactive(fresh: Env) -> None:
    agent_id = new_agent(fresh, expires_at=datetime.fromtimestamp(START + 60, UTC))
    _cred, secret = fresh.services.credentials.create_api_key(SYSTEM, agent_id)
    client = Client(agent_id, secret, _cred.id)
    token = issued(fresh, client)
    fresh.clock.advance(120)  # the agent expired 60 s ago; the token's exp is START + 300
    assert_oauth_error(post_token(fresh, client.form), 401, "invalid_client")  # holds today
    assert introspect(fresh, token) == {"active": False}
