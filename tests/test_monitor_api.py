"""An agent's risk over the API and the CLI (issue 19, item 3): ``GET /v1/agents/{id}/risk``
explains it (score, level, the rules that hold with their evidence, what was last raised, the
step-up); every agent the registry returns carries ``risk``; the humans who may operate the
agent clear it (``POST /v1/agents/{id}/risk/clear``), on the record; nobody else can."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import AGENT_DEFAULTS, Api, admin_client, assert_error, bearer
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.ids import IdPrefix, new_id
from tether.monitor.rules import MonitorConfig, RuleConfig, ThresholdConfig
from tether.policy.values import Ask, Decision
from tether.principals import SYSTEM

START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
POLICY = '@id("read") permit (principal, action == Action::"resource.read", resource);'
FLOOD = RuleConfig(name="rate-flood", when={"requests": ">= 5"}, score=70,
                   because="{requests} requests in the window")  # fmt: skip
MONITOR = MonitorConfig(rules=[FLOOD], learn_buckets=10, thresholds=[
    ThresholdConfig(score=40, level="elevated", action="alert"),
    ThresholdConfig(score=70, level="high", action="require_approval"),
])  # fmt: skip
STEPPED_UP = {"score": 70, "level": "high", "step_up": True}
CLEARED = {"score": 0, "level": "low", "step_up": False}


def _decide(svc: Services, agent: str, what: str = "docs") -> Decision:
    return asyncio.run(svc.decisions.decide(Ask(agent, "resource.read", "Resource", what)))


def _step_up(svc: Services, agent: str) -> None:
    """Six requests in the window: the fifth crosses ``rate-flood`` (70, high: step-up)."""
    effects = [_decide(svc, agent, f"r{i}").effect.value for i in range(6)]
    assert effects == ["allow"] * 4 + ["approval_required"] * 2


@contextmanager
def _deployment(make_services: Callable[..., Services]) -> Iterator[tuple[Services, Api]]:
    svc = make_services(clock=FrozenClock(START), monitor=MONITOR)
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICY)
    with admin_client(svc) as client:
        yield svc, Api(client)


def _risk(api: Api, agent: str, token: str | None = None) -> dict[str, object]:
    got = api.client.get(f"/v1/agents/{agent}/risk", headers=bearer(token) if token else None)
    assert got.status_code == 200, got.text
    return dict(got.json())


def _clear(api: Api, agent: str, token: str | None = None, **body: object) -> Any:
    headers = bearer(token) if token else None
    return api.client.post(f"/v1/agents/{agent}/risk/clear", json=body, headers=headers)


def test_a_stepped_up_agents_risk_is_explained_and_on_the_agent(
    make_services: Callable[..., Services],
) -> None:
    with _deployment(make_services) as (svc, api):
        olga = api.user("olga")
        agent = api.agent(owner="olga")["id"]
        calm = api.agent(name="calm")["id"]
        assert _risk(api, agent) == {
            "agent_id": agent, "score": 0, "level": "low", "rules": [], "signals": {},
            "step_up": False, "raised": None, "cleared_at": None, "baseline": None,
        }  # fmt: skip
        assert api.get(agent)["risk"] == CLEARED
        _step_up(svc, agent)
        _decide(svc, calm)
        risk = _risk(api, agent, olga["token"])  # the owner reads it
        assert (risk["score"], risk["level"], risk["step_up"]) == (70, "high", True)
        assert risk["rules"] == [{"rule": "rate-flood", "score": 70,
                                  "because": "6 requests in the window",
                                  "evidence": {"requests": 6}}]  # fmt: skip
        signals = risk["signals"]
        assert isinstance(signals, dict)
        # the step-up's checkpoints are not the policies' approvals: they do not feed back
        assert (signals["requests"], signals["approvals"], signals["off_schedule"]) == (6, 0, False)
        raised = risk["raised"]
        assert isinstance(raised, dict)
        assert (raised["level"], raised["score"]) == ("high", 70)
        assert raised["rules"][0]["because"] == "5 requests in the window"  # when it crossed
        assert raised["trigger"] == {"action": "resource.read", "decision": "allow",
                                     "resource": {"type": "Resource", "id": "r4"}}  # fmt: skip
        assert raised["at"] == "2026-12-07T10:00:00Z"
        assert risk["cleared_at"] is None
        assert isinstance(risk["baseline"], dict)
        assert risk["baseline"]["pairs_known"] == 6
        # the registry's views carry it: one agent, the list, and every agent they return
        assert api.get(agent)["risk"] == STEPPED_UP
        assert api.get(calm)["risk"] == CLEARED
        listed = {a["id"]: a["risk"] for a in api.agents()}
        assert listed == {agent: STEPPED_UP, calm: CLEARED}
        mine = api.client.get("/v1/agents", headers=bearer(olga["token"])).json()["items"]
        assert [(a["id"], a["risk"]) for a in mine] == [(agent, STEPPED_UP)]
        assert api.ok(agent, "suspend", reason="look")["risk"] == STEPPED_UP
        assert api.ok(agent, "resume")["risk"] == STEPPED_UP


def test_the_owner_clears_it_on_the_record_and_the_agent_works_again(
    make_services: Callable[..., Services],
) -> None:
    with _deployment(make_services) as (svc, api):
        olga = api.user("olga")
        agent = api.agent(owner="olga")["id"]
        _step_up(svc, agent)
        before = api.events()
        done = _clear(api, agent, olga["token"], note="a migration batch: expected")
        assert done.status_code == 200, done.text
        risk = done.json()
        assert (risk["agent_id"], risk["score"], risk["level"]) == (agent, 0, "low")
        assert risk["step_up"] is False
        assert risk["rules"] == []
        assert risk["raised"] is None
        assert risk["cleared_at"] == "2026-12-07T10:00:00Z"
        [event] = api.new_events(before)
        assert (event["type"], event["agent_id"]) == ("agent.risk_cleared", agent)
        assert event["actor"] == f"user:{olga['id']}"
        assert event["details"] == {
            "note": "a migration batch: expected",
            "was": {"level": "high", "score": 70, "step_up": True},
        }
        assert api.get(agent)["risk"] == CLEARED
        assert _risk(api, agent)["step_up"] is False
        assert _decide(svc, agent).allowed  # no more step-up
        # no note, no body: an admin clears it again (nothing raised since: "was" is low)
        again = api.client.post(f"/v1/agents/{agent}/risk/clear")
        assert again.status_code == 200, again.text
        [second] = api.events(type="agent.risk_cleared")[1:]
        assert second["details"]["note"] is None
        assert second["details"]["was"] == {"level": "low", "score": 0, "step_up": False}


def test_only_those_who_may_operate_the_agent_clear_it_and_a_refusal_changes_nothing(
    make_services: Callable[..., Services],
) -> None:
    with _deployment(make_services) as (svc, api):
        api.user("olga")
        sam = api.user("sam")  # a supervisor of other agents
        audrey = api.user("audrey", role="auditor")
        agent = api.agent(owner="olga")["id"]
        _step_up(svc, agent)
        snapshot = api.snapshot()
        assert _risk(api, agent, audrey["token"])["step_up"] is True  # auditors read
        assert_error(_clear(api, agent, audrey["token"]), 403, "forbidden")
        refused = api.client.get(f"/v1/agents/{agent}/risk", headers=bearer(sam["token"]))
        assert_error(refused, 403, "forbidden")
        assert_error(_clear(api, agent, sam["token"], note="mine now"), 403, "forbidden")
        unknown = new_id(IdPrefix.AGENT)
        assert_error(api.client.get(f"/v1/agents/{unknown}/risk"), 404, "agent_not_found")
        assert_error(_clear(api, unknown), 404, "agent_not_found")
        for body, field in (({"note": "x" * 501}, "note"), ({"note": "a\x00b"}, "note"),
                            ({"note": 7}, "note"), ({"reason": "x"}, "reason")):  # fmt: skip
            error = assert_error(_clear(api, agent, **body), 422, "validation_error")
            assert field in json.dumps(error["details"]), error
        not_json = api.client.post(f"/v1/agents/{agent}/risk/clear", content=b"[1]",
                                   headers={"content-type": "application/json"})  # fmt: skip
        assert not_json.status_code == 422, not_json.text
        assert api.snapshot() == snapshot  # nothing on the record, nothing cleared
        assert _risk(api, agent)["step_up"] is True
        assert _decide(svc, agent).effect.value == "approval_required"
        assert len(api.events(type="agent.risk_cleared")) == 0


@pytest.mark.slow
def test_the_cli_shows_the_risk_and_clears_it(make_services: Callable[..., Services]) -> None:
    svc = make_services(clock=FrozenClock(START), monitor=MONITOR)
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICY)
    token = svc.settings.admin_token_path.read_text().strip()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_URL=f"http://127.0.0.1:{port}", TETHER_TOKEN=token)
    agent = svc.agents.create(SYSTEM, AgentCreate.model_validate(AGENT_DEFAULTS)).id
    with served_in_thread(create_app(svc), port):
        _step_up(svc, agent)

        def tether(*args: str) -> str:
            done = run_cli(*args, env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        risk = json.loads(tether("agents", "risk", agent, "--json"))
        assert (risk["level"], risk["score"], risk["step_up"]) == ("high", 70, True)
        assert [r["rule"] for r in risk["rules"]] == ["rate-flood"]
        shown = tether("agents", "risk", agent)
        for text in ("high", "70", "yes: every allowed request asks a human", "rate-flood",
                     "6 requests in the window", "requests=6", "5 requests in the window",
                     "resource.read Resource::r4 (allow)", f"clear-risk {agent}"):  # fmt: skip
            assert text in shown, (text, shown)
        assert "high 70, step-up" in tether("agents", "show", agent)
        assert "high 70, step-up" in tether("agents", "list")
        [listed] = [a for a in json.loads(tether("agents", "list", "--json")) if a["id"] == agent]
        assert listed["risk"] == STEPPED_UP
        cleared = tether("agents", "clear-risk", agent, "--note", "checked")
        assert f"cleared the risk of {agent}: now low 0, no step-up" in cleared
        again = json.loads(tether("agents", "clear-risk", agent, "--json"))
        assert (again["step_up"], again["level"]) == (False, "low")
        assert "no rule holds now" in tether("agents", "risk", agent)
        for args in (("agents", "risk", new_id(IdPrefix.AGENT)),
                     ("agents", "clear-risk", agent, "--note", "x" * 501)):  # fmt: skip
            failed = run_cli(*args, env=env)
            assert failed.returncode == 1
            assert failed.stderr.startswith("error: ")
            assert "Traceback" not in failed.stderr
