"""Recertification (issue 20, item 2): notice before an agent's ``recertify_by``, each tier's
response once it has passed (alert, require approval for every allow, suspend), each once per
due date on every node; ``POST /v1/agents/{id}/recertify`` and ``tether agents recertify``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from tests.conftest import Api, admin_client, assert_error
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.audit.models import EventRow
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services
from tether.errors import InvalidTransition
from tether.policy.values import Ask, Decision
from tether.principals import SYSTEM

START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
DAY = 86_400
POLICIES = '@id("read") permit (principal, action == Action::"resource.read", resource);'


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _agent(svc: Services, tier: str, name: str = "a", **more: Any) -> str:
    spec = {"name": name, "owner": "admin", "purpose": "p", "risk_tier": tier, **more}
    return svc.agents.create(SYSTEM, AgentCreate.model_validate(spec)).id


def _events(svc: Services, type_: str, agent_id: str | None = None) -> list[EventRow]:
    q = select(EventRow).where(EventRow.type == type_)
    if agent_id is not None:
        q = q.where(EventRow.agent_id == agent_id)
    with svc.db.read() as s:
        return list(s.scalars(q.order_by(EventRow.seq)))


def _details(row: EventRow) -> dict[str, Any]:
    return dict(orjson.loads(row.details))


def _decide(svc: Services, agent: str) -> Decision:
    return asyncio.run(svc.decisions.decide(Ask(agent, "resource.read", "Resource", "docs")))


def _at(clock: FrozenClock, when: datetime) -> None:
    clock.advance((when - clock.now()).total_seconds())


def test_notice_comes_once_at_its_time_then_a_minimal_agent_is_only_alerted(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    one = make_services(clock=clock)
    two = make_services(clock=clock)  # another node sweeping the same registry
    one.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(one, "minimal")
    due = START + timedelta(days=365)
    _at(clock, due - timedelta(days=14, seconds=1))
    assert one.agents.recertification.sweep() == 0
    assert _events(one, "agent.recertification_due") == []
    clock.advance(2)
    assert one.agents.recertification.sweep() == 1
    assert two.agents.recertification.sweep() == 0
    assert one.agents.recertification.sweep() == 0
    (notice,) = _events(one, "agent.recertification_due")
    assert notice.agent_id == agent
    assert notice.actor == "system"
    assert _details(notice) == {"recertify_by": to_rfc3339(due), "risk_tier": "minimal",
                                "overdue_action": "alert"}  # fmt: skip
    _at(clock, due)
    for svc in (two, one, two):
        svc.agents.recertification.sweep()
    (overdue,) = _events(one, "agent.recertification_overdue")
    assert _details(overdue)["suspended"] is False
    assert _details(overdue)["overdue_action"] == "alert"
    assert one.agents.get(SYSTEM, agent).status == "active"
    assert _decide(one, agent).allowed  # minimal: only alerted
    assert len(_events(one, "agent.recertification_due")) == 1
    one.alerts.project()
    alerts = {a.kind: a for a in one.alerts.list(SYSTEM).items}
    assert alerts["agent.recertification_due"].severity == "info"
    assert alerts["agent.recertification_overdue"].severity == "warning"


def test_an_overdue_high_risk_agent_is_suspended_on_schedule_with_its_ledger_event(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock)
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc, "high")
    due = START + timedelta(days=90)
    _at(clock, due - timedelta(seconds=1))
    svc.agents.recertification.sweep()
    assert svc.agents.get(SYSTEM, agent).status == "active"
    assert _decide(svc, agent).allowed
    clock.advance(1)
    assert svc.agents.recertification.sweep() == 1
    assert svc.agents.recertification.sweep() == 0
    got = svc.agents.get(SYSTEM, agent)
    assert got.status == "suspended"
    assert got.status_reason == f"recertification overdue since {to_rfc3339(due)}"
    (overdue,) = _events(svc, "agent.recertification_overdue", agent)
    (suspended,) = _events(svc, "agent.suspended", agent)
    assert overdue.seq < suspended.seq
    assert _details(overdue) == {"recertify_by": to_rfc3339(due), "risk_tier": "high",
                                 "overdue_action": "suspend", "suspended": True}  # fmt: skip
    assert suspended.actor == "system"
    assert _details(suspended)["reason"] == got.status_reason
    clock.advance(1)
    denied = _decide(svc, agent)
    assert denied.effect.value == "deny"
    svc.alerts.project()
    alerts = {a.kind: a for a in svc.alerts.list(SYSTEM).items}
    assert alerts["agent.recertification_overdue"].severity == "critical"
    # a resume alone does not lift it: the recertification comes first
    with pytest.raises(InvalidTransition) as refused:
        svc.agents.resume(SYSTEM, agent)
    assert refused.value.details["field"] == "recertify_by"
    assert svc.agents.get(SYSTEM, agent).status == "suspended"
    assert _events(svc, "agent.resumed", agent) == []
    # recertified and resumed, it is not suspended again for that date
    svc.agents.recertify(SYSTEM, agent, note="still needed for payroll")
    svc.agents.resume(SYSTEM, agent)
    svc.agents.recertification.sweep()
    assert svc.agents.get(SYSTEM, agent).status == "active"


def test_an_overdue_limited_agent_needs_approval_for_every_allow_until_recertified(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock)
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc, "limited")
    minimal = _agent(svc, "minimal", "m", recertify_by="2027-01-01T00:00:00Z")
    _at(clock, START + timedelta(days=180) - timedelta(seconds=1))
    assert _decide(svc, agent).allowed
    clock.advance(1)  # overdue: from memory, before any sweep
    stepped = _decide(svc, agent)
    assert stepped.effect.value == "approval_required"
    assert stepped.reasons == ("read", "tether.recertification-overdue")
    assert _decide(svc, minimal).allowed  # overdue too, but minimal: only alerted
    svc.agents.recertification.sweep()
    overdue = _events(svc, "agent.recertification_overdue", agent)
    assert [_details(e)["overdue_action"] for e in overdue] == ["require_approval"]
    assert svc.agents.get(SYSTEM, agent).status == "active"
    recertified = svc.agents.recertify(SYSTEM, agent, note="reviewed with the owner")
    assert recertified.recertify_by == clock.now() + timedelta(days=180)
    clock.advance(1)
    assert _decide(svc, agent).allowed
    (event,) = _events(svc, "agent.recertified", agent)
    assert _details(event) == {
        "note": "reviewed with the owner", "by": "system",
        "previous": to_rfc3339(START + timedelta(days=180)),
        "recertify_by": to_rfc3339(recertified.recertify_by),
    }  # fmt: skip


def test_the_overdue_response_per_tier_is_configurable(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, recertify_overdue={"high": "alert"}, recertify_notice_days=0)
    assert svc.settings.recertify_overdue == {"minimal": "alert", "limited": "require_approval",
                                              "high": "alert"}  # fmt: skip
    agent = _agent(svc, "high")
    _at(clock, START + timedelta(days=90))
    assert svc.agents.recertification.sweep() == 1
    assert svc.agents.get(SYSTEM, agent).status == "active"
    assert _events(svc, "agent.recertification_due") == []  # found overdue: no late notice


def test_recertify_endpoint_rules(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock)
    with admin_client(svc) as client:
        api = Api(client)
        owner = api.user("owner")
        auditor = api.user("auditor", role="auditor")
        stranger = api.user("stranger")
        agent = api.agent(owner["token"], owner="owner", risk_tier="high")
        url = f"/v1/agents/{agent['id']}/recertify"
        before = api.snapshot()
        assert_error(client.post(url, json={"note": "x"}, headers=_bearer(auditor)), 403)
        assert_error(client.post(url, json={"note": "x"}, headers=_bearer(stranger)), 403)
        too_far = to_rfc3339(START + timedelta(days=90, seconds=1))
        error = assert_error(client.post(url, json={"note": "x", "until": too_far}), 422)
        assert error["details"]["field"] == "until"
        past = to_rfc3339(START - timedelta(seconds=1))
        error = assert_error(client.post(url, json={"note": "x", "until": past}), 422)
        assert error["details"]["field"] == "until"
        error = assert_error(client.post(url, json={}), 422)
        assert error["details"]["field"] == "note"
        error = assert_error(client.post(url, json={"note": "x" * 1001}), 422)
        assert error["details"]["field"] == "note"
        missing = "/v1/agents/agt_01JAAAAAAAAAAAAAAAAAAAAAAA/recertify"
        assert_error(client.post(missing, json={"note": "x"}), 404)
        assert api.snapshot() == before
        until = to_rfc3339(START + timedelta(days=30))
        done = client.post(url, json={"note": "quarterly review", "until": until},
                           headers=_bearer(owner))  # fmt: skip
        assert done.status_code == 200, done.text
        assert done.json()["recertify_by"] == until
        (event,) = [e for e in api.new_events(before[0]) if e["type"] == "agent.recertified"]
        assert event["details"]["by"] == f"user:{owner['id']}"
        assert event["details"]["note"] == "quarterly review"


def _bearer(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


def test_cli_recertify(make_services: Callable[..., Services], clock: FrozenClock) -> None:
    svc = make_services(clock=clock)
    agent = _agent(svc, "limited")
    port = free_port()
    token = svc.settings.admin_token_path.read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env |= {"TETHER_URL": f"http://127.0.0.1:{port}", "TETHER_TOKEN": token}
    with served_in_thread(create_app(svc), port):
        done = run_cli("agents", "recertify", agent, "--note", "still needed", "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["recertify_by"] == to_rfc3339(START + timedelta(days=180))
        far = to_rfc3339(START + timedelta(days=181))
        refused = run_cli("agents", "recertify", agent, "--note", "x", "--until", far, env=env)
        assert refused.returncode != 0
        assert "until" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_agents_due_for_recertification_are_listed_for_those_who_may_see_them(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock)
    with admin_client(svc) as client:
        api = Api(client)
        owner = api.user("owner")
        high = api.agent(owner["token"], owner="owner", risk_tier="high", name="high")["id"]
        limited = api.agent(owner["token"], owner="owner", risk_tier="limited", name="lim")["id"]
        other = _agent(svc, "high", name="admins")  # the admin's: not the owner's to see
        killed = _agent(svc, "high", name="gone")
        svc.agents.kill(SYSTEM, killed, reason="test", cascade=True)

        def due(within: int, who: dict[str, Any] | None = None) -> list[str]:
            answer = client.get("/v1/agents", params={"recertify_due_within": within},
                                headers=_bearer(who) if who else None)  # fmt: skip
            assert answer.status_code == 200, answer.text
            return sorted(a["id"] for a in answer.json()["items"])

        assert due(0) == []  # nothing overdue yet
        assert due(89) == []
        assert due(90) == sorted([high, other])  # high risk: 90 days; the killed one is not
        assert due(90, owner) == [high]
        assert due(180) == sorted([high, limited, other])
        _at(clock, START + timedelta(days=91))
        assert due(0) == sorted([high, other])
        svc.agents.recertify(SYSTEM, high, note="still needed")
        assert due(0) == [other]
        error = assert_error(client.get("/v1/agents", params={"recertify_due_within": -1}), 422)
        assert "recertify_due_within" in str(error)
