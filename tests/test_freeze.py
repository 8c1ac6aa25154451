"""Freeze (issue 12, item 1), on SQLite and PostgreSQL: the incident switch.

While a freeze holds an agent, every enforcement path refuses it with ``tether.frozen`` —
decisions (single and batch, and an agent anywhere in a delegation chain), the token
endpoint, token exchange, subject tokens, introspection — and nothing is revoked, so lifting
it restores service. Scopes (owner, role, risk tier, combined) hold exactly their agents.
Freezing and lifting are admin-only ledger events, and alert through the webhooks. Bad input
is refused naming the field and freezes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, assert_error, bearer
from tether.api.app import create_app
from tether.container import Services
from tether.sdk.webhooks import verify_webhook

ALLOW = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
FROZEN = "tether.frozen"


def _agent(api: Api, **fields: Any) -> dict[str, Any]:
    return api.agent(scopes=["tools"], **fields)


def _decide(client: TestClient, agent_id: str, token: str | None = None) -> dict[str, Any]:
    body = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
    response = client.post("/access/v1/evaluation", json=body,
                           headers=bearer(token) if token else None)  # fmt: skip
    assert response.status_code == 200, response.text
    return dict(response.json())


def _allowed(client: TestClient, agent_id: str) -> bool:
    answer = _decide(client, agent_id)
    if not answer["decision"]:
        assert answer["context"]["reasons"] == [FROZEN], answer
    return bool(answer["decision"])


class Keyholder:
    """An agent with an API key, and what it does at the token endpoint."""

    def __init__(self, api: Api, **fields: Any) -> None:
        self.client = api.client
        self.agent = _agent(api, **fields)
        self.id = self.agent["id"]
        created = self.client.post(f"/v1/agents/{self.id}/credentials", json={"type": "api_key"})
        assert created.status_code == 201, created.text
        self.secret = created.json()["client_secret"]

    def token_response(self) -> Any:
        form = {"grant_type": "client_credentials", "client_id": self.id,
                "client_secret": self.secret}  # fmt: skip
        return self.client.post("/oauth/token", data=form, headers={"Authorization": ""})

    def token(self) -> str:
        response = self.token_response()
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.client.post("/oauth/introspect", data={"token": token})
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def policy(client: TestClient) -> None:
    assert client.put("/v1/policies", json={"policies": ALLOW}).status_code == 200


def _freeze(client: TestClient, status: int = 201, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/freeze", json={"reason": "incident 42", **body})
    assert response.status_code == status, response.text
    return dict(response.json())


def _unfreeze(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = client.delete("/v1/freeze", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["lifted"])


@pytest.mark.usefixtures("policy")
def test_a_global_freeze_stops_every_path_and_lifting_it_restores_service(api: Api) -> None:
    client = api.client
    holder = Keyholder(api)
    other = _agent(api, name="other")
    token = holder.token()
    assert holder.introspect(token)["active"] is True
    assert _allowed(client, holder.id)

    frozen = _freeze(client)
    assert frozen["scope"] == {}
    assert frozen["reason"] == "incident 42"
    # Decisions: the subject, asked by an admin and by the agent itself; any other agent.
    answer = _decide(client, holder.id)
    assert answer["decision"] is False
    assert answer["context"]["reasons"] == [FROZEN]
    assert "incident 42" in answer["context"]["error"]["message"]
    assert _decide(client, holder.id, token=token)["decision"] is False
    assert not _allowed(client, other["id"])
    batch = client.post("/access/v1/evaluations", json={
        "subject": {"type": "agent", "id": holder.id}, "action": {"name": "tool.call"},
        "evaluations": [{"resource": {"type": "Tool", "id": f"t{i}"}} for i in range(3)],
    })  # fmt: skip
    assert batch.status_code == 200, batch.text
    assert [e["decision"] for e in batch.json()["evaluations"]] == [False] * 3
    # The token endpoint and introspection.
    refused = holder.token_response()
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_client"
    assert holder.introspect(token) == {"active": False}

    assert [f["id"] for f in _unfreeze(client)] == [frozen["id"]]
    # Nothing was revoked: the same token is good again, and so is the key.
    assert holder.introspect(token)["active"] is True
    assert _allowed(client, holder.id)
    assert _allowed(client, other["id"])
    holder.token()


@pytest.mark.usefixtures("policy")
def test_scopes_hold_exactly_their_agents(api: Api) -> None:
    client = api.client
    alice = api.user("alice")
    agents = {
        "alice-ops-high": _agent(api, owner="alice", roles=["ops"], risk_tier="high"),
        "alice-ops": _agent(api, owner="alice", roles=["ops"]),
        "admin-ops-high": _agent(api, roles=["ops", "billing"], risk_tier="high"),
        "admin-plain": _agent(api, roles=["billing"]),
    }

    def stopped() -> set[str]:
        return {name for name, a in agents.items() if not _allowed(client, a["id"])}

    by_owner = _freeze(client, scope={"owner": "alice"})
    assert by_owner["scope"] == {"owner": alice["id"]}  # a username resolves to the user id
    assert stopped() == {"alice-ops-high", "alice-ops"}
    _unfreeze(client, id=by_owner["id"])
    assert stopped() == set()

    _freeze(client, scope={"role": "ops"})
    assert stopped() == {"alice-ops-high", "alice-ops", "admin-ops-high"}
    _freeze(client, scope={"risk_tier": "high"})
    assert stopped() == {"alice-ops-high", "alice-ops", "admin-ops-high"}
    assert [f["scope"] for f in _unfreeze(client, role="ops")] == [{"role": "ops"}]
    assert stopped() == {"alice-ops-high", "admin-ops-high"}  # the tier freeze still holds
    _unfreeze(client)

    _freeze(client, scope={"owner": alice["id"], "role": "ops", "risk_tier": "high"})
    assert stopped() == {"alice-ops-high"}  # every part of a scope must match
    _unfreeze(client)
    assert stopped() == set()


@pytest.mark.usefixtures("policy")
def test_an_agent_frozen_anywhere_in_a_delegation_chain_stops_the_chain(api: Api) -> None:
    client = api.client
    lead = Keyholder(api, roles=["lead"])
    helper = Keyholder(api, roles=["helper"])
    lead_token = lead.token()
    helper_token = helper.token()
    exchange = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": lead_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "actor_token": helper_token,
        "actor_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "client_id": helper.id, "client_secret": helper.secret,
    }  # fmt: skip
    delegated = client.post("/oauth/token", data=exchange, headers={"Authorization": ""})
    assert delegated.status_code == 200, delegated.text
    chained = delegated.json()["access_token"]
    assert helper.introspect(chained)["active"] is True
    assert _decide(client, helper.id, token=chained)["decision"] is True

    _freeze(client, scope={"role": "lead"})  # the subject of the chain, not the acting agent
    answer = _decide(client, helper.id, token=chained)
    assert answer["decision"] is False
    assert answer["context"]["reasons"] == [FROZEN]
    assert "delegation chain" in answer["context"]["error"]["message"]
    assert helper.introspect(chained) == {"active": False}
    again = client.post("/oauth/token", data={**exchange, "subject_token": lead_token},
                        headers={"Authorization": ""})  # fmt: skip
    assert again.status_code == 400, again.text
    assert again.json()["error"] == "invalid_grant"
    assert "frozen" in again.json()["error_description"]
    assert _allowed(client, helper.id)  # the helper on its own is not frozen
    _unfreeze(client)
    assert helper.introspect(chained)["active"] is True


def test_a_frozen_agent_gets_no_subject_token(api: Api) -> None:
    agent = _agent(api)
    _freeze(api.client)
    minted = api.client.post("/v1/users/admin/subject-tokens", json={"agent": agent["id"]})
    error = assert_error(minted, 422, "validation_error")
    assert error["details"]["field"] == "agent"
    assert "frozen" in error["message"]


def test_freeze_and_unfreeze_are_recorded_once_and_refreezing_is_idempotent(api: Api) -> None:
    client = api.client
    before = api.events()
    first = _freeze(client, scope={"risk_tier": "high"})
    again = _freeze(client, status=200, reason="someone else pressed it too",
                    scope={"risk_tier": "high"})  # fmt: skip
    assert again == first
    started = api.new_events(before)
    assert [e["type"] for e in started] == ["freeze.started"]  # once, not for the repeat
    assert started[0]["actor"].startswith("user:")
    assert started[0]["details"] == {"scope": {"risk_tier": "high"}, "reason": "incident 42"}
    assert started[0]["resource"] == {"type": "Freeze", "id": first["id"]}

    state = client.get("/v1/freeze").json()
    assert state["frozen"] is True
    assert state["everything"] is False
    assert [f["id"] for f in state["freezes"]] == [first["id"]]
    assert state["freezes"][0]["since"].endswith("Z")

    mid = api.events()
    (lifted,) = _unfreeze(client, reason="contained")
    assert lifted["lift_reason"] == "contained"
    assert lifted["lifted_at"].endswith("Z")
    assert _unfreeze(client) == []  # nothing in force: nothing lifted, nothing recorded
    (event,) = api.new_events(mid)
    assert event["type"] == "freeze.lifted"
    assert event["details"]["reason"] == "contained"
    state = client.get("/v1/freeze").json()
    assert state["frozen"] is False
    assert state["freezes"] == []
    assert state["recent"][0]["id"] == first["id"]
    assert client.get("/v1/audit/verify").json()["ok"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": {"role": "nobody-has-this"}}, "scope.role"),
        ({"scope": {"owner": "ghost"}}, "scope.owner"),
        ({"scope": {"risk_tier": "extreme"}}, "scope.risk_tier"),
        ({"scope": {"team": "payments"}}, "scope.team"),
        ({"scope": {"role": "ops\x00"}}, "scope.role"),
        ({"reason": ""}, "reason"),
        ({"reason": None}, "reason"),
        ({"reason": "r" * 1001}, "reason"),
        ({"reason": "ok", "everything": True}, "everything"),
    ],
)
def test_bad_freeze_requests_name_the_field_and_freeze_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    api.agent(roles=["ops"])
    before = api.snapshot()
    response = api.client.post("/v1/freeze", json={"reason": "incident", **body})
    error = assert_error(response, 422)
    assert field in str(error["details"]), error
    assert api.snapshot() == before
    assert api.client.get("/v1/freeze").json()["frozen"] is False


def test_only_an_admin_freezes_and_only_people_read_the_state(api: Api) -> None:
    supervisor = api.user("sup", "supervisor")
    auditor = api.user("aud", "auditor")
    holder = Keyholder(api)
    before = api.snapshot()
    for who in (supervisor, auditor):
        refused = api.client.post("/v1/freeze", json={"reason": "x"}, headers=bearer(who["token"]))
        assert_error(refused, 403, "forbidden")
        assert_error(api.client.delete("/v1/freeze", headers=bearer(who["token"])), 403)
        seen = api.client.get("/v1/freeze", headers=bearer(who["token"]))
        assert seen.status_code == 200, seen.text
    agent_token = holder.token()  # not a management credential at all
    assert_error(api.client.get("/v1/freeze", headers=bearer(agent_token)), 401)
    assert_error(
        api.client.post("/v1/freeze", json={"reason": "x"}, headers=bearer(agent_token)), 401
    )
    assert api.snapshot()[1] == before[1]
    assert api.client.get("/v1/freeze").json()["frozen"] is False


def test_a_role_freeze_lifts_by_name_after_the_role_left_every_agent(api: Api) -> None:
    agent = api.agent(roles=["ops"])
    frozen = _freeze(api.client, scope={"role": "ops"})
    api.ok(agent["id"], "patch", roles=[])
    assert [f["id"] for f in _unfreeze(api.client, role="ops")] == [frozen["id"]]


def test_lifting_an_unknown_freeze_is_404(api: Api) -> None:
    assert_error(
        api.client.delete("/v1/freeze", params={"id": "frz_nope"}), 404, "freeze_not_found"
    )
    # A role nobody holds names no freeze: nothing to lift (200, empty), nothing changed.
    assert _unfreeze(api.client, role="ghost-role") == []


# -- the alert ---------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    arrived: threading.Semaphore

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()
        self.arrived.release()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"received": [], "arrived": threading.Semaphore(0)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_freeze_and_unfreeze_alert_through_the_signed_webhooks(
    make_services: Callable[..., Services], receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    svc = make_services(approval_webhooks=[url], approval_webhook_secret="s3cret")
    token = svc.settings.admin_token_path.read_text().strip()
    with TestClient(create_app(svc)) as c:
        c.headers.update(bearer(token))
        frozen = c.post("/v1/freeze", json={"reason": "breach"}).json()
        assert handler.arrived.acquire(timeout=10)
        c.delete("/v1/freeze", params={"reason": "over"}).raise_for_status()
        assert handler.arrived.acquire(timeout=10)
    events = []
    for headers, body in handler.received:
        verify_webhook(body, headers["x-tether-signature"], b"s3cret")
        events.append((headers["x-tether-event"], orjson.loads(body)))
    assert [name for name, _ in events] == ["freeze.started", "freeze.lifted"]
    assert events[0][1]["freeze"]["id"] == frozen["id"]
    assert events[0][1]["freeze"]["reason"] == "breach"
    assert events[1][1]["freeze"]["lift_reason"] == "over"
    assert events[0][1]["event_id"].startswith("evt_")
