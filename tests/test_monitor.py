"""Continuous monitoring (issue 19): behaviour windows fed from the decision path, risk rules,
the configured response taken within the decision that crossed the threshold, and
sequence-aware decisions (``context.session``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from tether.agents.schemas import AgentCreate
from tether.audit.models import EventRow
from tether.clock import FrozenClock
from tether.container import Services
from tether.monitor.rules import MonitorConfig, RuleConfig, ThresholdConfig
from tether.policy.values import Ask, Decision
from tether.principals import SYSTEM

START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday
POLICIES = """
@id("read") permit (principal, action in [Action::"resource.read", Action::"tool.call",
                                          Action::"dataset.read"], resource);
@id("pii-then-egress") forbid (principal, action == Action::"tool.call", resource) when {
  context.session.labels.contains("pii") && resource has egress && resource.egress };
"""


def monitor(*rules: RuleConfig, **kw: Any) -> MonitorConfig:
    thresholds = kw.pop("thresholds", [
        ThresholdConfig(score=40, level="elevated", action="alert"),
        ThresholdConfig(score=70, level="high", action="require_approval"),
        ThresholdConfig(score=100, level="critical", action="suspend"),
    ])  # fmt: skip
    return MonitorConfig(rules=list(rules), thresholds=thresholds, learn_buckets=10, **kw)


def _agent(svc: Services, name: str = "a", **more: Any) -> str:
    spec = {"name": name, "owner": "admin", "purpose": "p", "risk_tier": "minimal", **more}
    return svc.agents.create(SYSTEM, AgentCreate.model_validate(spec)).id


def _decide(svc: Services, ask: Ask) -> Decision:
    return asyncio.run(svc.decisions.decide(ask))


def _events(svc: Services, type_: str) -> list[EventRow]:
    with svc.db.read() as s:
        return list(s.scalars(select(EventRow).where(EventRow.type == type_)
                              .order_by(EventRow.seq)))  # fmt: skip


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _steady(svc: Services, clock: FrozenClock, agent: str, buckets: int) -> None:
    """One request every bucket (10 s): a baseline of 1 per bucket."""
    for _ in range(buckets):
        assert _decide(svc, Ask(agent, "resource.read", "Resource", "docs")).allowed
        clock.advance(10)


def test_a_rate_spike_steps_the_agent_up_at_the_decision_that_crossed(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    rule = RuleConfig(name="rate-spike", when={"rate_ratio": ">= 5", "requests": ">= 30"},
                      score=70, because="{requests} requests, {rate_ratio}x baseline")
    svc = make_services(clock=clock, monitor=monitor(rule))
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc)
    _steady(svc, clock, agent, 20)
    answers = [_decide(svc, Ask(agent, "resource.read", "Resource", f"r{i}")) for i in range(40)]
    effects = [d.effect.value for d in answers]
    first = effects.index("approval_required")
    assert effects[:first] == ["allow"] * first
    assert set(effects[first:]) == {"approval_required"}  # stepped up until a human clears it
    raised = _events(svc, "agent.risk_raised")
    assert len(raised) == 1
    d = orjson.loads(raised[0].details)
    assert d["response"] == "require_approval" and d["step_up"] is True
    assert d["rules"][0]["rule"] == "rate-spike" and d["signals"]["requests"] >= 30
    # the response is on the record before the decision that triggered it
    trigger = answers[first]
    assert "tether.risk-step-up" in trigger.reasons
    assert svc.monitor.describe(agent)["step_up"] is True
    svc.monitor.clear(SYSTEM, agent, note="checked: a migration batch")
    clock.advance(1)
    assert _decide(svc, Ask(agent, "resource.read", "Resource", "docs")).allowed


def test_pii_then_egress_is_denied_also_across_a_delegation_chain(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, monitor=monitor())
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    a, b = _agent(svc, "a"), _agent(svc, "b")
    email = {"egress": True}
    assert _decide(svc, Ask(a, "tool.call", "Tool", "mail.send", email)).allowed
    assert _decide(svc, Ask(a, "resource.read", "Resource", "crm/customers",
                            {"labels": ["pii"]})).allowed  # fmt: skip
    denied = _decide(svc, Ask(a, "tool.call", "Tool", "mail.send", email))
    assert not denied.allowed and denied.reasons == ("pii-then-egress",)
    # b acts for a (a's token exchanged): one session, the chain's root's
    c = _agent(svc, "c")
    assert _decide(svc, Ask(c, "resource.read", "Resource", "crm/customers",
                            {"labels": ["pii"]}, chain=(c,))).allowed  # fmt: skip
    delegated = Ask(b, "tool.call", "Tool", "mail.send", email, chain=(c, b))
    assert not _decide(svc, delegated).allowed
    assert _decide(svc, Ask(b, "tool.call", "Tool", "mail.send", email)).allowed  # b alone
