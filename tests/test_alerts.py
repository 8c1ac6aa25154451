"""Alerts (issue 19, first part): notable events raised from the ledger exactly once whichever
node projects, deduplicated with a suppressed count, delivered as Standard Webhooks that a
receiver built with the ``standardwebhooks`` package verifies — in order, and after a receiver
that was down comes back; a dead-letter list and its replay; read, acknowledged and followed
as each role may; one JSON line per alert for a SIEM."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import Api
from tests.serverproc import free_port, served_in_thread
from tests.test_agents_lifecycle import FP_A, FP_B
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.ids import IdPrefix, new_id
from tether.principals import SYSTEM

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver as a security team would write one: the package's verifier."""

    def __init__(self, secret: str) -> None:
        self.hook = Webhook(secret)
        self.got: list[dict[str, Any]] = []
        self.refused = 0
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            payload = self.hook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            with self.lock:
                self.refused += 1
            return Response(status_code=400)
        with self.lock:
            self.got.append({"id": request.headers["webhook-id"], **payload})
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.receive, methods=["POST"])])


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _agent(svc: Services, name: str, **more: Any) -> str:
    spec = {"name": name, "owner": "admin", "purpose": "p", "risk_tier": "minimal", **more}
    return svc.agents.create(SYSTEM, AgentCreate.model_validate(spec)).id


def test_notable_events_raise_alerts_once_whichever_node_projects(
    make_services: Callable[..., Services], clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    one = make_services(clock=clock)
    two = make_services(clock=clock)
    killed = _agent(one, "doomed")
    risky = _agent(one, "risky", risk_tier="high", fingerprint=FP_A)
    one.agents.kill(SYSTEM, killed, reason="exfiltration")
    from tether.agents.schemas import AgentUpdate
    from tether.freeze.service import ScopeRequest

    one.agents.update(SYSTEM, risky, AgentUpdate.model_validate({"fingerprint": FP_B}))
    one.freezes.freeze(SYSTEM, reason="incident 42", scope=ScopeRequest())
    with caplog.at_level(logging.WARNING, logger="tether.alerts"):
        threads = [threading.Thread(target=svc.alerts.project) for svc in (one, two, one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    alerts = one.alerts.list(SYSTEM).items
    kinds = sorted(a.kind for a in alerts)
    assert kinds == ["agent.fingerprint_changed", "agent.killed", "freeze.started"]
    by_kind = {a.kind: a for a in alerts}
    assert by_kind["agent.killed"].severity == "critical"
    assert by_kind["agent.killed"].agent_id == killed
    assert "exfiltration" in by_kind["agent.killed"].summary
    assert by_kind["agent.fingerprint_changed"].severity == "critical"  # high risk: suspended
    assert "incident 42" in by_kind["freeze.started"].summary
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tether.alerts"]
    assert sorted(line["finding_info"]["title"] for line in lines) == kinds
    assert {line["class_uid"] for line in lines} == {2004}
    assert one.alerts.project() == 0  # nothing new: nothing raised twice


def test_projecting_reads_only_the_events_a_rule_reads(
    make_services: Callable[..., Services], clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions, most of a ledger, are skipped by the database, and the cursor still moves
    past them: an alerting event after them is raised once, and nothing is read twice."""
    from tether.audit import store
    from tether.audit.events import EventType, NewEvent

    svc = make_services(clock=clock)
    agent = _agent(svc, "busy")
    svc.alerts.project()
    decisions = [NewEvent(EventType.DECISION, f"agent:{agent}", agent_id=agent, decision="allow")
                 for _ in range(30)]  # fmt: skip
    with svc.db.write() as s:
        svc.ledger.append(s, decisions, now=clock.now())
    svc.agents.kill(SYSTEM, agent, reason="after the decisions")
    read: list[str] = []
    real = store._event

    def counted(row: Any) -> Any:
        event = real(row)
        read.append(event.type)
        return event

    monkeypatch.setattr(store, "_event", counted)
    assert svc.alerts.project() == 1
    assert "decision" not in read
    assert [a.kind for a in svc.alerts.list(SYSTEM).items] == ["agent.killed"]
    read.clear()
    assert svc.alerts.project() == 0  # the cursor is past all of it
    assert read == []


def test_a_burst_folds_into_one_alert_with_its_count_until_acknowledged(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, alert_dedup_seconds=300)
    for i in range(4):
        agent = _agent(svc, f"a{i}")
        svc.agents.suspend(SYSTEM, agent, reason="x")
        svc.agents.resume(SYSTEM, agent)
        if i == 0:
            first = agent
    for _ in range(3):  # the same agent again and again
        svc.agents.suspend(SYSTEM, first, reason="again")
        svc.agents.resume(SYSTEM, first)
        clock.advance(10)
    svc.alerts.project()
    mine = [a for a in svc.alerts.list(SYSTEM).items if a.agent_id == first]
    assert len(mine) == 1
    assert mine[0].suppressed == 3
    assert len(svc.alerts.list(SYSTEM).items) == 4  # one per agent
    svc.alerts.ack(SYSTEM, mine[0].id, note="known: a flaky deploy")
    svc.agents.suspend(SYSTEM, first, reason="after the ack")
    svc.alerts.project()
    assert len([a for a in svc.alerts.list(SYSTEM).items if a.agent_id == first]) == 2


def test_deliveries_are_verified_and_a_receiver_down_gets_them_in_order_when_back(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    svc = make_services(clock=clock, alert_webhooks=[url], alert_retry_max_seconds=5)
    receiver = Receiver(svc.alerts.secret)
    agents = [_agent(svc, f"k{i}") for i in range(5)]
    for agent in agents:
        svc.agents.kill(SYSTEM, agent, reason="order")
    svc.alerts.project()
    assert svc.alerts.deliver() == 0  # nobody listens yet
    svc.alerts.deliver()
    assert receiver.got == []
    with served_in_thread(receiver.app(), port):
        assert svc.alerts.deliver() == 0  # the head waits for its retry time
        clock.advance(10)
        assert svc.alerts.deliver() == 5
    assert receiver.refused == 0
    assert [r["data"]["agent_id"] for r in receiver.got] == agents  # in order
    assert {r["type"] for r in receiver.got} == {"alert.agent.killed"}
    assert len({r["id"] for r in receiver.got}) == 5
    # a receiver holding another secret refuses them: the signature is real
    other = Receiver("whsec_" + "b" * 43 + "=")
    with served_in_thread(other.app(), port):
        svc.agents.kill(SYSTEM, _agent(svc, "late"), reason="x")
        svc.alerts.project()
        svc.alerts.deliver()
    assert other.refused == 1
    assert other.got == []


def test_given_up_deliveries_are_dead_letters_an_admin_replays_in_order(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    svc = make_services(clock=clock, alert_webhooks=[url], alert_dead_after_hours=1)
    receiver = Receiver(svc.alerts.secret)
    agents = [_agent(svc, f"d{i}") for i in range(3)]
    for agent in agents:
        svc.agents.kill(SYSTEM, agent, reason="dead letters")
    svc.alerts.project()
    svc.alerts.deliver()
    clock.advance(2 * 3600)
    svc.alerts.deliver()
    dead = svc.alerts.dead_letters(SYSTEM)
    assert [d["kind"] for d in dead] == ["agent.killed"] * 3
    # the receiver shown without its path (it may hold a secret)
    assert all(d["receiver"] == f"http://127.0.0.1:{port}" for d in dead)
    assert dead[0]["attempts"] >= 1
    assert svc.alerts.replay(SYSTEM) == 3
    assert svc.alerts.dead_letters(SYSTEM) == []
    with served_in_thread(receiver.app(), port):
        assert svc.alerts.deliver() == 3
    assert [r["data"]["agent_id"] for r in receiver.got] == agents
    assert receiver.refused == 0


def test_each_role_reads_and_acknowledges_what_the_api_lets_it(
    services: Services, api: Api
) -> None:
    sam = api.user("sam", "supervisor")
    audrey = api.user("audrey", "auditor")
    mine = api.agent(owner="sam", name="sams")
    theirs = api.agent(name="admins")
    for agent in (mine, theirs):
        assert api.act(agent["id"], "suspend", reason="watch").status_code == 200
    services.alerts.project()
    with TestClient(create_app(services)) as http:

        def as_(who: dict[str, Any]) -> dict[str, str]:
            return {"Authorization": f"Bearer {who['token']}"}

        seen = http.get("/v1/alerts", headers=as_(audrey)).json()["items"]
        assert {a["agent_id"] for a in seen} >= {mine["id"], theirs["id"]}
        own = http.get("/v1/alerts", headers=as_(sam)).json()["items"]
        assert {a["agent_id"] for a in own} == {mine["id"]}
        alert = next(a for a in seen if a["agent_id"] == theirs["id"])
        refused = http.post(f"/v1/alerts/{alert['id']}/ack", json={}, headers=as_(audrey))
        assert refused.status_code == 403
        refused = http.post(f"/v1/alerts/{alert['id']}/ack", json={}, headers=as_(sam))
        assert refused.status_code == 403
        done = api.client.post(f"/v1/alerts/{alert['id']}/ack", json={"note": "looked"})
        assert done.status_code == 200, done.text
        assert done.json()["acked_by"].startswith("user:")
        assert done.json()["acked_by_name"] == "admin"
        assert [e["details"]["note"] for e in api.events(type="alert.acknowledged")] == ["looked"]
        assert http.get("/v1/alerts?status=open", headers=as_(audrey)).json()["items"]
        assert http.get("/v1/alerts/deliveries/dead", headers=as_(audrey)).status_code == 200
        assert http.get("/v1/alerts/deliveries/dead", headers=as_(sam)).status_code == 403
        replayed = http.post("/v1/alerts/deliveries/replay", json={}, headers=as_(audrey))
        assert replayed.status_code == 403
        missing = api.client.post(f"/v1/alerts/{new_id(IdPrefix.ALERT)}/ack", json={})
        assert missing.status_code == 404
        assert api.client.post("/v1/alerts/not-an-id/ack", json={}).status_code == 422


def test_a_supervisor_finds_their_agents_alerts_behind_many_others(
    make_services: Callable[..., Services], clock: FrozenClock, api: Api
) -> None:
    svc = make_services(clock=clock)
    sam = api.user("sam", "supervisor")
    mine = _agent(svc, "sams", owner="sam")
    svc.agents.suspend(SYSTEM, mine, reason="mine")
    for i in range(120):  # newer alerts about others push it far back
        svc.agents.suspend(SYSTEM, _agent(svc, f"other{i}"), reason="theirs")
    svc.alerts.project()
    svc.alerts.project()
    from tether.principals import Principal, Role

    who = Principal("user", sam["id"], "sam", Role.SUPERVISOR)
    page = svc.alerts.list(who, limit=5)
    assert [a.agent_id for a in page.items] == [mine]


def test_a_running_server_delivers_an_alert_for_a_kill_within_seconds(
    make_services: Callable[..., Services],
) -> None:
    """Through the server's own loop (no test calling project or deliver): kill an agent over
    the API, and a receiver verifying with the package gets the alert."""
    import time

    hook_port, port = free_port(), free_port()
    svc = make_services(alert_webhooks=[f"http://127.0.0.1:{hook_port}/hook"],
                        alert_poll_seconds=0.2)  # fmt: skip
    receiver = Receiver(svc.alerts.secret)
    agent = _agent(svc, "served")
    token = svc.settings.admin_token_path.read_text().strip()
    with served_in_thread(receiver.app(), hook_port), served_in_thread(create_app(svc), port):
        import httpx2

        killed = httpx2.post(f"http://127.0.0.1:{port}/v1/agents/{agent}/kill",
                             json={"reason": "served"},
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
        assert killed.status_code == 200, killed.text
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not receiver.got:
            time.sleep(0.05)
    assert receiver.refused == 0
    assert [(r["type"], r["data"]["agent_id"]) for r in receiver.got] == [
        ("alert.agent.killed", agent)]  # fmt: skip


def test_a_failed_verification_is_on_the_record_and_a_critical_alert(
    make_services: Callable[..., Services],
) -> None:
    from tests.ledger_tampering import small_ledger, tamper

    svc = small_ledger(make_services)
    assert svc.audit.verify(SYSTEM).ok
    svc.alerts.project()
    assert [a.kind for a in svc.alerts.list(SYSTEM).items] == []
    tamper(svc, "UPDATE audit_events SET actor = 'user:forger' WHERE seq = 3")
    result = svc.audit.verify(SYSTEM)
    assert not result.ok
    [event] = svc.audit.events(SYSTEM, type_="ledger.verification_failed").items
    assert event.details["first_bad_seq"] == 3
    svc.alerts.project()
    [alert] = [a for a in svc.alerts.list(SYSTEM).items if a.kind == "ledger.verification_failed"]
    assert alert.severity == "critical"
    assert "from event 3" in alert.summary
