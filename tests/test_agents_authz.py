"""Who may do what (API.md "Humans"): admins everything; supervisors operate the agents they
own or supervise and manage only those they own; auditors read only; no token, no access."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, admin_client, assert_error, bearer
from tether.clock import FrozenClock
from tether.container import Services


@dataclass
class Cast:
    alice: dict[str, Any]  # supervisor, owns ``mine``
    bob: dict[str, Any]  # supervisor, owns ``his``; no say over alice's agents
    carol: dict[str, Any]  # supervisor listed in ``mine``'s supervisors, owns nothing
    audrey: dict[str, Any]  # auditor
    mine: dict[str, Any]
    his: dict[str, Any]


@pytest.fixture
def cast(api: Api) -> Cast:
    alice, bob = api.user("alice"), api.user("bob")
    carol, audrey = api.user("carol"), api.user("audrey", role="auditor")
    mine = api.agent(alice["token"], name="alices", owner="alice", supervisors=["carol"])
    his = api.agent(bob["token"], name="bobs", owner="bob")
    return Cast(alice, bob, carol, audrey, mine, his)


OPS: dict[str, dict[str, Any]] = {
    "patch": {"purpose": "taken over"},
    "suspend": {"reason": "mine now"},
    "resume": {},
    "retire": {"reason": "mine now"},
    "kill": {"reason": "mine now"},
    "clone": {"name": "stolen"},
}


def _ready_for(api: Api, agent_id: str, op: str) -> None:
    """Put the agent where ``op`` would succeed for someone allowed, so only authority fails."""
    if op == "resume":
        api.ok(agent_id, "suspend", reason="so it can be resumed")


# -- supervisors and other people's agents -----------------------------------------------------


def test_supervisor_cannot_read_anothers_agent(api: Api, cast: Cast) -> None:
    response = api.client.get(f"/v1/agents/{cast.mine['id']}", headers=bearer(cast.bob["token"]))
    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("op", list(OPS))
def test_supervisor_cannot_touch_anothers_agent(api: Api, cast: Cast, op: str) -> None:
    _ready_for(api, cast.mine["id"], op)
    before = api.snapshot()
    response = api.act(cast.mine["id"], op, token=cast.bob["token"], **OPS[op])
    assert_error(response, 403, "forbidden")
    assert api.snapshot() == before


def test_supervisor_cannot_spawn_under_anothers_agent(api: Api, cast: Cast) -> None:
    before = api.snapshot()
    body = {"name": "x", "owner": "bob", "purpose": "p", "risk_tier": "minimal"}
    response = api.client.post(
        "/v1/agents", json={**body, "parent": cast.mine["id"]}, headers=bearer(cast.bob["token"])
    )
    assert_error(response, 403, "forbidden")
    assert api.snapshot() == before


def test_supervisor_creates_agents_only_for_themselves(api: Api, cast: Cast) -> None:
    before = api.snapshot()
    body = {"name": "x", "owner": "bob", "purpose": "p", "risk_tier": "minimal"}
    response = api.client.post("/v1/agents", json=body, headers=bearer(cast.alice["token"]))
    assert assert_error(response, 403, "forbidden")["details"]["field"] == "owner"
    assert api.snapshot() == before
    own = api.agent(cast.alice["token"], owner=cast.alice["id"])
    assert own["owner"] == cast.alice["id"]


# -- owners ------------------------------------------------------------------------------------


def test_owner_operates_and_manages_their_agent(api: Api, cast: Cast) -> None:
    token, agent_id = cast.alice["token"], cast.mine["id"]
    before = api.events()
    assert api.client.get(f"/v1/agents/{agent_id}", headers=bearer(token)).status_code == 200
    steps = [
        ("patch", {"purpose": "better"}, 200),
        ("suspend", {"reason": "check"}, 200),
        ("resume", {}, 200),
        ("clone", {"name": "alices-2"}, 201),
        ("retire", {"reason": "done"}, 200),
    ]
    for op, body, status in steps:
        response = api.act(agent_id, op, token=token, **body)
        assert response.status_code == status, (op, response.text)
    other = api.agent(token, owner="alice")
    assert api.act(other["id"], "kill", token=token, reason="done").status_code == 200
    events = api.new_events(before)
    assert len(events) == 7  # five steps, the new agent, its kill
    assert {e["actor"] for e in events} == {f"user:{cast.alice['id']}"}


def test_owner_cannot_change_the_owner(api: Api, cast: Cast) -> None:
    before = api.snapshot()
    response = api.act(cast.mine["id"], "patch", token=cast.alice["token"], name="x", owner="bob")
    assert assert_error(response, 403, "forbidden")["details"]["field"] == "owner"
    assert api.snapshot() == before  # the name change in the same request did not stick
    assert api.ok(cast.mine["id"], "patch", owner="bob")["owner"] == cast.bob["id"]  # admin may


# -- listed supervisors ------------------------------------------------------------------------


def test_listed_supervisor_reads_and_operates(api: Api, cast: Cast) -> None:
    token, agent_id = cast.carol["token"], cast.mine["id"]
    assert cast.mine["supervisors"] == [cast.carol["id"]]
    got = api.client.get(f"/v1/agents/{agent_id}", headers=bearer(token))
    assert got.status_code == 200
    assert got.json()["id"] == agent_id
    for op, body in (("suspend", {"reason": "odd"}), ("resume", {})):
        response = api.act(agent_id, op, token=token, **body)
        assert response.status_code == 200, response.text
    killed = api.act(agent_id, "kill", token=token, reason="compromised")
    assert killed.status_code == 200
    assert killed.json()["revoked"] == [agent_id]
    [event] = api.events(type="agent.killed", agent=agent_id)
    assert event["actor"] == f"user:{cast.carol['id']}"


@pytest.mark.parametrize("op", ["patch", "clone", "retire"])
def test_listed_supervisor_cannot_manage(api: Api, cast: Cast, op: str) -> None:
    before = api.snapshot()
    response = api.act(cast.mine["id"], op, token=cast.carol["token"], **OPS[op])
    assert_error(response, 403, "forbidden")
    assert api.snapshot() == before


def test_supervisors_list_only_their_agents(api: Api, cast: Cast) -> None:
    carols = api.agent(cast.carol["token"], name="carols", owner="carol")

    def listed(user: dict[str, Any]) -> set[str]:
        response = api.client.get("/v1/agents", headers=bearer(user["token"]))
        assert response.status_code == 200
        return {a["id"] for a in response.json()["items"]}

    assert listed(cast.alice) == {cast.mine["id"]}
    assert listed(cast.bob) == {cast.his["id"]}
    assert listed(cast.carol) == {cast.mine["id"], carols["id"]}
    assert {a["id"] for a in api.agents()} == {cast.mine["id"], cast.his["id"], carols["id"]}
    # A filter cannot widen the view.
    response = api.client.get("/v1/agents?owner=alice", headers=bearer(cast.bob["token"]))
    assert response.json()["items"] == []


# -- auditors ----------------------------------------------------------------------------------


def test_auditor_reads_agents_and_audit(api: Api, cast: Cast) -> None:
    headers = bearer(cast.audrey["token"])
    assert api.client.post("/v1/audit/checkpoints").status_code == 200
    got = api.client.get(f"/v1/agents/{cast.mine['id']}", headers=headers)
    assert got.status_code == 200
    assert got.json() == api.get(cast.mine["id"])
    listed = api.client.get("/v1/agents", headers=headers).json()["items"]
    assert {a["id"] for a in listed} == {cast.mine["id"], cast.his["id"]}
    events = api.client.get("/v1/audit/events", headers=headers)
    assert events.status_code == 200
    assert events.json()["items"] == api.events()[:100]
    verify = api.client.get("/v1/audit/verify", headers=headers)
    assert verify.status_code == 200
    assert verify.json()["ok"] is True
    assert api.client.get("/v1/audit/checkpoints/latest", headers=headers).status_code == 200


AUDITOR_WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/agents", {"name": "x", "owner": "admin", "purpose": "p", "risk_tier": "minimal"}),
    ("PATCH", "/v1/agents/{agent}", {"purpose": "mine"}),
    ("POST", "/v1/agents/{agent}/suspend", {"reason": "r"}),
    ("POST", "/v1/agents/{suspended}/resume", {}),
    ("POST", "/v1/agents/{agent}/retire", {"reason": "r"}),
    ("POST", "/v1/agents/{agent}/kill", {"reason": "r"}),
    ("POST", "/v1/agents/{agent}/clone", {"name": "copy"}),
    ("POST", "/v1/users", {"username": "eve", "role": "admin"}),
    ("POST", "/v1/users/alice/tokens", {}),
    ("DELETE", "/v1/users/alice/tokens/{alice_token}", None),
    ("POST", "/v1/audit/checkpoints", None),
]


def test_auditor_writes_nothing(api: Api, cast: Cast) -> None:
    suspended = api.agent(name="paused")
    api.ok(suspended["id"], "suspend", reason="pause")
    [alice_token] = api.client.get("/v1/users/alice/tokens").json()["items"]
    ids = {"agent": cast.mine["id"], "suspended": suspended["id"], "alice_token": alice_token["id"]}
    before = api.snapshot(), api.client.get("/v1/users").json()
    for method, path, body in AUDITOR_WRITES:
        url = path.format(**ids)
        response = api.client.request(method, url, json=body, headers=bearer(cast.audrey["token"]))
        assert response.status_code == 403, (method, url, response.text)
        assert_error(response, 403, "forbidden")
    assert (api.snapshot(), api.client.get("/v1/users").json()) == before
    # The token the auditor tried to revoke still works.
    assert api.client.get("/v1/whoami", headers=bearer(cast.alice["token"])).status_code == 200


@pytest.mark.parametrize("role", ["supervisor", "auditor"])
def test_only_admins_create_users(api: Api, role: str) -> None:
    someone = api.user("someone", role=role)
    before = api.snapshot(), api.client.get("/v1/users").json()
    response = api.client.post(
        "/v1/users", json={"username": "eve", "role": "admin"}, headers=bearer(someone["token"])
    )
    assert_error(response, 403, "forbidden")
    assert (api.snapshot(), api.client.get("/v1/users").json()) == before
    assert_error(api.client.get("/v1/users/eve"), 404, "user_not_found")


def test_supervisor_cannot_read_the_ledger(api: Api, cast: Cast) -> None:
    response = api.client.get("/v1/audit/events", headers=bearer(cast.alice["token"]))
    assert_error(response, 403, "forbidden")
    assert_error(api.client.get("/v1/audit/verify", headers=bearer(cast.alice["token"])), 403)


@pytest.mark.parametrize("who", ["alice", "carol"])
def test_supervisor_reads_the_history_of_their_own_agents_only(
    api: Api, cast: Cast, who: str
) -> None:
    token = bearer(getattr(cast, who)["token"])
    own = api.client.get("/v1/audit/events", params={"agent": cast.mine["id"]}, headers=token)
    assert own.status_code == 200
    events = own.json()["items"]
    assert [e["type"] for e in events] == ["agent.created"]
    assert {e["agent_id"] for e in events} == {cast.mine["id"]}
    other = api.client.get("/v1/audit/events", params={"agent": cast.his["id"]}, headers=token)
    assert_error(other, 403, "forbidden")
    missing = api.client.get("/v1/audit/events", params={"agent": "agt_nope"}, headers=token)
    assert_error(missing, 404, "agent_not_found")


# -- authentication ----------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/agents"),
    ("POST", "/v1/agents"),
    ("GET", "/v1/agents/{agent}"),
    ("POST", "/v1/agents/{agent}/kill"),
    ("GET", "/v1/audit/events"),
    ("GET", "/v1/audit/verify"),
    ("POST", "/v1/users"),
    ("GET", "/v1/whoami"),
]
BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer "},
    "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "unknown token": {"Authorization": "Bearer tth_" + "x" * 43},
    "not a tether token": {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_no_valid_token_is_401(api: Api, client: TestClient, credentials: str) -> None:
    agent = api.agent()
    before = api.snapshot()
    anonymous = TestClient(client.app)  # no default Authorization header
    bodies = {
        "/v1/agents": {"name": "x", "owner": "admin", "purpose": "p", "risk_tier": "minimal"},
        "/v1/agents/{agent}/kill": {"reason": "r"},
        "/v1/users": {"username": "eve", "role": "admin"},
    }
    for method, path in PROTECTED:
        url = path.format(agent=agent["id"])
        response = anonymous.request(
            method, url, json=bodies.get(path), headers=BAD_CREDENTIALS[credentials]
        )
        assert response.status_code == 401, (method, url, response.text)
        assert_error(response, 401, "unauthenticated")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.snapshot() == before


def test_revoked_token_is_401(api: Api) -> None:
    alice = api.user("alice")
    spare = api.client.post("/v1/users/alice/tokens", json={"name": "spare"}).json()
    assert api.client.get("/v1/whoami", headers=bearer(alice["token"])).status_code == 200
    [first] = [t for t in api.client.get("/v1/users/alice/tokens").json()["items"] if not t["name"]]
    revoked = api.client.delete(f"/v1/users/alice/tokens/{first['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert_error(
        api.client.get("/v1/whoami", headers=bearer(alice["token"])), 401, "unauthenticated"
    )
    assert_error(api.client.get("/v1/agents", headers=bearer(alice["token"])), 401)
    # Only that token: the user's other token still works.
    assert api.client.get("/v1/whoami", headers=bearer(spare["token"])).json()["id"] == alice["id"]


def test_expired_token_is_401(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock()
    services = make_services(clock=clock)
    with admin_client(services) as client:
        api = Api(client)
        alice = api.user("alice")
        created = client.post("/v1/users/alice/tokens", json={"expires_in": 3600})
        assert created.status_code == 201
        token = created.json()["token"]
        clock.advance(3599)
        assert client.get("/v1/whoami", headers=bearer(token)).json()["id"] == alice["id"]
        clock.advance(1)
        assert_error(client.get("/v1/whoami", headers=bearer(token)), 401, "unauthenticated")
        assert_error(client.get("/v1/agents", headers=bearer(token)), 401, "unauthenticated")
        # A token without an expiry is not affected by the passing of time.
        clock.advance(10 * 365 * 86_400)
        assert client.get("/v1/whoami", headers=bearer(alice["token"])).status_code == 200
