"""``DecisionService.decide_then``: a decision and what it allows, in one durable commit.

Allowed: the decision's event and the follower's events are consecutive in the ledger, the
follower's rows written with them, the decision's inputs kept; denied: the decision recorded
alone and the follower never run; a follower that refuses (raises) fails its request only,
leaving no allow on the record and the next decisions unharmed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.agents.schemas import AgentCreate
from tether.audit.events import NewEvent
from tether.audit.group import Chain
from tether.audit.models import EventRow
from tether.container import Services
from tether.policy.models import DecisionInputRow
from tether.policy.values import Ask, Decision
from tether.principals import SYSTEM


def _agent(services: Services) -> str:
    spec = {"name": "t", "owner": "admin", "purpose": "decide_then", "risk_tier": "minimal"}
    return services.agents.create(SYSTEM, AgentCreate.model_validate(spec)).id


def _events(services: Services) -> list[EventRow]:
    with services.db.read() as s:
        return list(s.scalars(select(EventRow).order_by(EventRow.seq)))


def _permit(services: Services, action: str) -> None:
    policy = f'@id("p") permit (principal, action == Action::"{action}", resource);'
    services.policies.push(SYSTEM, note=None, schema=None, policies=policy)


def test_an_allow_and_what_follows_are_one_commit(services: Services) -> None:
    _permit(services, "tool.call")
    agent = _agent(services)
    seen: list[Decision] = []

    def then(s: Session, decision: Decision) -> Chain:
        seen.append(decision)
        return Chain([NewEvent("test.followed", f"agent:{agent}", agent_id=agent)],
                     finish=lambda chained: chained[0].seq)  # fmt: skip

    before = len(_events(services))
    decision, seq = asyncio.run(services.decisions.decide_then(
        Ask(agent, "tool.call", "Tool", "search"), then))  # fmt: skip
    assert decision.allowed
    assert [d.allowed for d in seen] == [True]
    events = _events(services)[before:]
    assert [e.type for e in events] == ["decision", "test.followed"]
    assert decision.event_id == events[0].id
    assert seq == events[1].seq == events[0].seq + 1
    with services.db.read() as s:
        assert s.get(DecisionInputRow, events[0].seq) is not None


def test_a_deny_is_recorded_alone_and_nothing_follows(services: Services) -> None:
    agent = _agent(services)
    ran: list[Any] = []
    before = len(_events(services))

    def then(s: Session, decision: Decision) -> Chain:
        ran.append(decision)
        return Chain([], finish=lambda _: None)

    decision, result = asyncio.run(services.decisions.decide_then(
        Ask(agent, "tool.call", "Tool", "search"), then))  # fmt: skip
    assert not decision.allowed
    assert result is None
    assert ran == []
    assert [e.type for e in _events(services)[before:]] == ["decision"]


def test_a_follower_that_refuses_fails_its_request_only(services: Services) -> None:
    _permit(services, "tool.call")
    agent = _agent(services)

    def refuse(s: Session, decision: Decision) -> Chain:
        raise PermissionError("the agent changed meanwhile")

    before = len(_events(services))
    with pytest.raises(PermissionError):
        asyncio.run(services.decisions.decide_then(Ask(agent, "tool.call", "Tool", "x"), refuse))
    assert _events(services)[before:] == []  # no allow on the record: nothing took effect
    after = asyncio.run(services.decisions.decide(Ask(agent, "tool.call", "Tool", "x")))
    assert after.allowed
    with services.db.read() as s:
        assert s.scalar(select(func.count()).select_from(EventRow)) == before + 1
