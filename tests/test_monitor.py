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
from tether.principals import SYSTEM, Principal, Role

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
    rule = RuleConfig(
        name="rate-spike",
        when={"rate_ratio": ">= 5", "requests": ">= 30"},
        score=70,
        because="{requests} requests, {rate_ratio}x baseline",
    )
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
    assert d["response"] == "require_approval"
    assert d["step_up"] is True
    assert d["rules"][0]["rule"] == "rate-spike"
    assert d["signals"]["requests"] >= 30
    # the response is on the record before the decision that triggered it, which it changed
    trigger = answers[first]
    assert "tether.risk-step-up" in trigger.reasons
    assert _seq(svc, answers[first - 1].event_id) < raised[0].seq
    assert svc.monitor.describe(agent)["step_up"] is True
    # a human approves the stepped-up request: the identical call goes through, once
    with svc.db.read() as s:
        user = svc.users.store.resolve(s, "admin")
    assert user is not None
    admin = Principal("user", user.id, user.username, Role.ADMIN)
    asked = Ask(agent, "resource.read", "Resource", "r39")
    assert answers[-1].approval_id is not None
    svc.approvals.approve(admin, answers[-1].approval_id, note="expected")
    assert _decide(svc, asked).allowed
    assert _decide(svc, asked).effect.value == "approval_required"
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
    assert not denied.allowed
    assert denied.reasons == ("pii-then-egress",)
    # b acts for a (a's token exchanged): one session, the chain's root's
    c = _agent(svc, "c")
    assert _decide(svc, Ask(c, "resource.read", "Resource", "crm/customers",
                            {"labels": ["pii"]}, chain=(c,))).allowed  # fmt: skip
    delegated = Ask(b, "tool.call", "Tool", "mail.send", email, chain=(c, b))
    assert not _decide(svc, delegated).allowed
    assert _decide(svc, Ask(b, "tool.call", "Tool", "mail.send", email)).allowed  # b alone


def test_a_reload_forgets_no_touch_not_yet_published(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, monitor=monitor())
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    a = _agent(svc)
    assert _decide(svc, Ask(a, "resource.read", "Resource", "crm", {"labels": ["pii"]})).allowed
    svc.runtime.load()  # start-up, or a gap in the change feed: before the next sync
    assert not _decide(svc, Ask(a, "tool.call", "Tool", "mail.send", {"egress": True})).allowed


def _seq(svc: Services, event_id: str | None) -> int:
    with svc.db.read() as s:
        row = s.scalars(select(EventRow).where(EventRow.id == event_id)).one()
        return row.seq


def test_a_burst_of_denials_suspends_the_agent_at_the_decision_that_crossed(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    rule = RuleConfig(name="deny-burst", when={"denies": ">= 10", "deny_ratio": ">= 0.5"},
                      score=100, because="{denies} of {requests} denied")  # fmt: skip
    svc = make_services(clock=clock, monitor=monitor(rule))
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc)
    for _ in range(5):  # a few allowed first: the ratio counts them
        assert _decide(svc, Ask(agent, "resource.read", "Resource", "docs")).allowed
    answers = [_decide(svc, Ask(agent, "secret.read", "Secret", f"s{i}")) for i in range(14)]
    reasons = [d.reasons for d in answers]
    # denied by default deny 9 times; the 10th denial crosses and suspends, within itself
    assert all("tether.risk-suspended" not in r for r in reasons[:9])
    assert "tether.risk-suspended" in reasons[9]
    assert all(r == ("tether.agent-not-active",) for r in reasons[10:])
    suspended = _events(svc, "agent.suspended")
    raised = _events(svc, "agent.risk_raised")
    assert len(suspended) == len(raised) == 1
    assert suspended[0].actor == "system"
    assert "deny-burst" in orjson.loads(suspended[0].details)["reason"]
    assert raised[0].seq < suspended[0].seq < _seq(svc, answers[9].event_id)
    evidence = orjson.loads(raised[0].details)
    assert evidence["response"] == "suspend"
    assert evidence["rules"][0]["evidence"] == {"denies": 10, "deny_ratio": 0.67, "requests": 15}
    # reversible by a human; the same level is not acted on again within the cool-down
    svc.agents.resume(SYSTEM, agent, note="false alarm: a misconfigured secret name")
    assert _decide(svc, Ask(agent, "resource.read", "Resource", "docs")).allowed
    assert len(_events(svc, "agent.suspended")) == 1


def test_a_burst_of_first_seen_resources_raises_an_alert_at_the_decision_that_crossed(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    rule = RuleConfig(name="first-seen-burst", when={"first_seen": ">= 5"}, score=40,
                      because="{first_seen} new pairs")  # fmt: skip
    svc = make_services(clock=clock, monitor=monitor(rule))
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc)
    for i in range(12):  # learning: every pair is new to a new agent, and none counts
        for r in ("docs", "wiki"):
            assert _decide(svc, Ask(agent, "resource.read", "Resource", r)).allowed
        clock.advance(10 + i % 3)
    assert _events(svc, "agent.risk_raised") == []
    answers = [_decide(svc, Ask(agent, "resource.read", "Resource", f"hr/{i}")) for i in range(6)]
    assert all(d.allowed for d in answers)  # an alert only: the agent keeps working
    raised = _events(svc, "agent.risk_raised")
    assert len(raised) == 1
    assert _seq(svc, answers[3].event_id) < raised[0].seq < _seq(svc, answers[4].event_id)
    assert orjson.loads(raised[0].details)["signals"]["first_seen"] == 5
    svc.alerts.project()
    alerts = svc.alerts.list(SYSTEM, limit=10).items
    assert [a.kind for a in alerts] == ["risk.elevated"]
    assert "first-seen-burst: 5 new pairs" in alerts[0].summary


def test_activity_outside_the_declared_schedule_is_a_risk(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    rule = RuleConfig(name="off-schedule", when={"off_schedule": True}, score=70,
                      because="outside its hours")  # fmt: skip
    svc = make_services(clock=clock, monitor=monitor(rule))
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(svc, attributes={"schedule": "mon-fri 08:00-18:00 Europe/Berlin"})
    assert _decide(svc, Ask(agent, "resource.read", "Resource", "docs")).allowed  # 11:00 Berlin
    clock.advance(9 * 3600)  # 20:00 Berlin
    late = _decide(svc, Ask(agent, "resource.read", "Resource", "docs"))
    assert late.effect.value == "approval_required"
    assert "tether.risk-step-up" in late.reasons
    assert orjson.loads(_events(svc, "agent.risk_raised")[0].details)["signals"][
        "off_schedule"] is True  # fmt: skip


def test_a_schedule_that_cannot_be_read_is_refused_naming_the_field(
    make_services: Callable[..., Services],
) -> None:
    from tether.errors import ValidationFailed

    svc = make_services()
    for bad in ("weekdays 9-5", "mon-fri 08:00-08:00", "mon-fri 08:00-18:00 Mars/Olympus", 7):
        with pytest.raises(ValidationFailed) as err:
            _agent(svc, attributes={"schedule": bad})
        assert err.value.details["field"] == "attributes.schedule"


def test_a_rate_spike_spread_over_two_nodes_is_seen_as_one(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    rule = RuleConfig(name="rate-flood", when={"requests": ">= 30"}, score=70,
                      because="{requests} requests")  # fmt: skip
    one = make_services(clock=clock, monitor=monitor(rule))
    two = make_services(clock=clock, monitor=monitor(rule))
    one.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agent = _agent(one)
    for node in (one, two):
        node.runtime.ensure_current()
        for i in range(14):
            assert _decide(node, Ask(agent, "resource.read", "Resource", f"r{i}")).allowed
    for node in (one, two):  # each has seen 14: under the rule alone
        assert node.monitor.describe(agent)["score"] == 0
        node.monitor.sync()
    one.monitor.sync()  # reads what two published after it
    answers = [_decide(one, Ask(agent, "resource.read", "Resource", "x")) for _ in range(2)]
    assert answers[1].effect.value == "approval_required"  # 14 + 14 + 2 = 30: crossed
    two.runtime.sync()  # the step-up's change-feed key (NOTIFY / a wake-up, served)
    later = [_decide(two, Ask(agent, "resource.read", "Resource", "y")) for _ in range(3)]
    assert {d.effect.value for d in later} == {"approval_required"}  # two knows: stepped up
    assert len(_events(one, "agent.risk_raised")) == 1  # acted on once
    assert two.monitor.describe(agent)["step_up"] is True


def test_a_steady_workload_raises_nothing(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    """10,000 decisions by 100 agents with the default rules and thresholds (README,
    "Monitoring"): varied but steady rates, a few denials, a fixed set of resources each,
    inside their schedules, some delegated — no risk raised, no alert, nothing stepped up."""
    import random

    svc = make_services(clock=clock, monitor=MonitorConfig())
    svc.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    rng = random.Random(20261207)
    agents = [_agent(svc, f"w{i}", attributes={"schedule": "daily 00:00-24:00"} if i % 2 else {})
              for i in range(100)]  # fmt: skip
    rate = {a: rng.choice([0.5, 1, 2, 4]) for a in agents}  # requests per 10 s bucket
    own = {a: [f"{a}/r{k}" for k in range(rng.randint(2, 6))] for a in agents}
    made = 0
    allowed = 0
    while made < 10_000:
        asks = []
        for a in agents:
            for _ in range(_poisson(rng, rate[a])):
                if rng.random() < 0.05:
                    asks.append(Ask(a, "secret.read", "Secret", "prod-db"))  # denied
                elif rng.random() < 0.1:
                    asks.append(Ask(a, "tool.call", "Tool", "search", chain=(agents[0], a)))
                else:
                    asks.append(Ask(a, "resource.read", "Resource", rng.choice(own[a])))
        answers = asyncio.run(svc.decisions.decide_many(asks[: 10_000 - made]))
        made += len(answers)
        allowed += sum(d.allowed for d in answers)
        assert all("tether.risk-" not in " ".join(d.reasons) for d in answers)
        clock.advance(10)
    assert made == 10_000
    assert allowed > 9_000
    assert _events(svc, "agent.risk_raised") == []
    svc.alerts.project()
    assert svc.alerts.list(SYSTEM, limit=10).items == []
    assert max(svc.monitor.describe(a)["score"] for a in agents) == 0


def _poisson(rng: Any, lam: float) -> int:
    import math

    n, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p < limit:
            return n
        n += 1


def test_an_agent_that_works_in_sparse_bursts_learns_its_baseline() -> None:
    """A bucket is folded into the baseline before it leaves the window: an agent asking once
    two minutes still learns (its active buckets counted), and is compared with its own rate."""
    from tether.monitor.windows import AgentWindow

    w = AgentWindow()
    bucket_us = 10_000_000
    for burst in range(40):
        b = (1_796_637_600_000_000 + burst * 120_000_000) // bucket_us
        if b != w.bucket:  # as the decision path does (Monitor.before)
            w.roll(b, 6, 0.02)
        w.req += 3
    assert w.active == 39  # every burst but the latest (one bucket of grace)
    assert w.mean == pytest.approx(3.0)
    ratio, _ = w.rate(3, 6, 10)
    assert ratio == pytest.approx(3 / 18)


def test_a_costly_sync_waits_longer_so_syncing_takes_about_one_percent_of_a_worker(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    """The next sync is ``sync_seconds`` away while syncs are cheap; a costly one (thousands of
    busy agents' counts: CPU time) spaces them so that they take ~1 % of the worker's CPU,
    never more than half a bucket apart."""
    svc = make_services(clock=clock, monitor=monitor(sync_seconds=0.5, bucket_seconds=10))
    m = svc.monitor
    assert m.next_sync(0.001) == 0.5  # quick: every sync_seconds
    assert m.next_sync(0.02) == pytest.approx(2.0)  # 20 ms a sync: every 2 s
    assert m.next_sync(0.2) == 5.0  # at most half a bucket late
    wide = make_services(clock=clock, monitor=monitor(sync_seconds=8, bucket_seconds=10))
    assert wide.monitor.next_sync(1.0) == 8  # never sooner than configured
    agent = _agent(svc)
    _decide(svc, Ask(agent, "resource.read", "Resource", "docs"))
    cpu = m.sync()  # what it published and merged, in this thread's CPU seconds
    assert 0 < cpu < 1


def test_the_servers_sync_on_the_event_loop_merges_what_the_thread_sync_does(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    """``sync_async`` (a server worker's: its Python on the event loop in slices, only the
    statements in a thread) publishes and merges exactly what ``sync`` does: more agents
    than one slice, each seen at both nodes, are seen whole at each after a sync."""
    one = make_services(clock=clock, monitor=monitor())
    two = make_services(clock=clock, monitor=monitor())
    one.policies.push(SYSTEM, note=None, schema=None, policies=POLICIES)
    agents = [_agent(one, f"a{i}") for i in range(3)]
    for node in (one, two):
        node.runtime.ensure_current()
    # More entries than one slice: one agent's window seen by many (action, resource) pairs
    for node in (one, two):
        for agent in agents:
            for i in range(4):
                assert _decide(node, Ask(agent, "resource.read", "Resource", f"r{i}")).allowed
    assert asyncio.run(one.monitor.sync_async()) >= 0
    two.monitor.sync()
    assert asyncio.run(one.monitor.sync_async()) >= 0
    for node in (one, two):
        for agent in agents:
            assert node.monitor.describe(agent)["signals"]["requests"] == 8, agent
