"""Agents past ``expires_at`` (README "Agent lifecycle"), on both backends with a frozen clock.

* from the moment ``expires_at`` passes an agent is shown ``expired`` (show, list filter),
  gets no token, its tokens introspect inactive and its decisions are denied — before the
  sweep stores anything;
* the sweep stores it with one ``agent.expired`` event each and revokes its live tokens
  (announced to every worker); a second sweep, or another node sweeping at the same time,
  does nothing more;
* suspend is refused; resume is refused until ``expires_at`` is moved into the future;
  retire and kill work; a change to an agent the sweep has not reached stores its expiry
  first; the ledger verifies throughout.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Api, admin_client, assert_error, bearer
from tests.pdp import EVAL, Cred, Env, credential, env_of, push_policies, token
from tether.agents.models import AgentRow
from tether.agents.schemas import AgentCreate
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services
from tether.principals import SYSTEM, Role

START = datetime.fromtimestamp(1_800_000_000, UTC)
CALLS = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
ASK = {"action": {"name": "tool.call"}, "resource": {"type": "Tool", "id": "search"}}


@dataclass
class World:
    e: Env
    clock: FrozenClock

    @property
    def svc(self) -> Services:
        return self.e.services

    @property
    def api(self) -> Api:
        return self.e.api

    def at(self, seconds: float) -> str:
        return to_rfc3339(START + timedelta(seconds=seconds))

    def sweep(self) -> int:
        return self.svc.agents.expiry.expire_due()

    def expired_events(self) -> list[dict[str, Any]]:
        return self.api.events(type="agent.expired")

    def decide(self, agent_id: str, access: str) -> dict[str, Any]:
        body = {"subject": {"type": "agent", "id": agent_id}, **ASK}
        got = self.e.anon.post(EVAL, json=body, headers=bearer(access))
        assert got.status_code == 200, got.text
        return dict(got.json())

    def introspect(self, access: str) -> dict[str, Any]:
        got = self.e.http.post("/oauth/introspect", data={"token": access})
        assert got.status_code == 200, got.text
        return dict(got.json())

    def token_status(self, cred: Cred) -> int:
        form = {"grant_type": "client_credentials", **cred.form}
        return self.e.anon.post("/oauth/token", data=form).status_code

    def stored(self, agent_id: str) -> tuple[str, str | None]:
        with self.svc.db.read() as s:
            row = s.get(AgentRow, agent_id)
            assert row is not None
            return row.status, row.status_reason

    def listed(self, status: str) -> set[str]:
        return {a["id"] for a in self.api.agents(status=status)}

    def verify(self) -> None:
        got = self.e.http.get("/v1/audit/verify")
        assert got.status_code == 200, got.text
        assert got.json()["ok"] is True, got.json()


@pytest.fixture
def world(make_services: Callable[..., Services]) -> Iterator[World]:
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    with admin_client(svc) as http, env_of(svc, http) as e:
        push_policies(http, CALLS)
        yield World(e, clock)


def _agent(w: World, **fields: Any) -> str:
    return str(w.api.agent(**fields)["id"])


# -- the whole story ---------------------------------------------------------------------------


def test_an_expired_agent_is_shown_refused_swept_once_and_resumable_after_an_extension(
    world: World,
) -> None:
    w = world
    doomed = _agent(w, name="doomed")  # no expiry yet: its first token outlives what follows
    later = _agent(w, name="later", expires_at=w.at(7200))
    forever = _agent(w, name="forever")
    cred = credential(w.e, doomed)
    old = token(w.e, cred)  # exp START+300
    assert w.decide(doomed, old)["decision"] is True
    w.clock.advance(10)
    w.api.ok(doomed, "patch", expires_at=w.at(60))
    w.clock.advance(51)  # START+61: past expires_at, the sweep has not run

    # Between sweeps every reader already sees it expired, and it gets nothing.
    shown = w.api.get(doomed)
    assert (shown["status"], shown["status_reason"]) == ("expired", f"expired at {w.at(60)}")
    assert w.stored(doomed) == ("active", None)
    assert doomed in w.listed("expired")
    assert doomed not in w.listed("active")
    assert {later, forever} <= w.listed("active")
    assert w.expired_events() == []
    assert w.introspect(old) == {"active": False}
    refused = w.decide(doomed, old)
    assert refused["decision"] is False
    assert refused["context"]["reasons"] == ["tether.agent-not-active"]
    assert w.token_status(cred) == 401

    # The sweep stores it: one event, its live token revoked; the others untouched.
    assert w.sweep() == 1
    assert w.stored(doomed) == ("expired", f"expired at {w.at(60)}")
    [event] = w.expired_events()
    assert event["agent_id"] == doomed
    assert event["actor"] == "system"
    assert event["details"] == {
        "from": "active", "to": "expired", "expires_at": w.at(60),
        "cut_off": {"tokens": 1, "approvals": 0, "leases": 0},
    }  # fmt: skip
    assert w.sweep() == 0
    assert len(w.expired_events()) == 1
    assert w.api.get(later)["status"] == w.api.get(forever)["status"] == "active"
    assert w.listed("expired") == {doomed}
    assert w.token_status(cred) == 401
    w.verify()

    # Suspending is pointless; resuming needs a later expires_at first.
    before = w.api.snapshot()
    assert_error(w.api.act(doomed, "suspend", reason="x"), 409, "invalid_transition")
    refusal = assert_error(w.api.act(doomed, "resume"), 409, "invalid_transition")
    assert "expires_at" in refusal["message"]
    assert w.api.snapshot() == before
    extended = w.api.ok(doomed, "patch", expires_at=w.at(86_400))
    assert extended["status"] == "expired"  # still needs a human to resume it
    assert w.token_status(cred) == 401
    resumed = w.api.ok(doomed, "resume", note="renewed")
    assert (resumed["status"], resumed["status_reason"]) == ("active", None)
    assert doomed in w.listed("active")
    assert doomed not in w.listed("expired")

    # The token cut off by the expiry stays dead on every path; a new one works.
    assert w.introspect(old) == {"active": False}
    assert w.decide(doomed, old)["context"]["reasons"] == ["tether.token-revoked"]
    fresh = token(w.e, cred)
    assert w.introspect(fresh)["active"] is True
    assert w.decide(doomed, fresh)["decision"] is True
    assert len(w.expired_events()) == 1
    w.verify()


def test_a_sweep_with_nothing_due_writes_nothing(world: World) -> None:
    w = world
    agent = _agent(w, expires_at=w.at(100))
    before = w.api.events()
    w.clock.advance(99)
    assert w.sweep() == 0
    assert w.api.get(agent)["status"] == "active"
    w.clock.advance(1)  # exactly at expires_at: expired
    assert w.api.get(agent)["status"] == "expired"
    assert w.sweep() == 1
    assert [e["type"] for e in w.api.new_events(before)] == ["agent.expired"]


@pytest.mark.parametrize(("op", "status"), [("retire", "retired"), ("kill", "revoked")])
def test_retire_and_kill_from_expired(world: World, op: str, status: str) -> None:
    w = world
    agent = _agent(w, expires_at=w.at(60))
    w.clock.advance(61)
    assert w.sweep() == 1
    before = w.api.events()
    w.api.ok(agent, op, reason="done with it")
    assert w.api.get(agent)["status"] == status
    [event] = w.api.new_events(before)
    assert event["type"] == f"agent.{'killed' if op == 'kill' else 'retired'}"
    assert event["details"]["previous_status" if op == "kill" else "from"] == "expired"
    assert w.sweep() == 0
    w.verify()


@pytest.mark.parametrize("op", ["kill", "retire", "patch"])
def test_a_change_before_the_sweep_records_the_expiry_first(world: World, op: str) -> None:
    w = world
    agent = _agent(w, expires_at=w.at(60))
    w.clock.advance(61)
    before = w.api.events()
    body = {"expires_at": w.at(3600)} if op == "patch" else {"reason": "r"}
    w.api.ok(agent, op, **body)
    types = [e["type"] for e in w.api.new_events(before)]
    assert types == ["agent.expired", {"kill": "agent.killed", "retire": "agent.retired",
                                       "patch": "agent.updated"}[op]]  # fmt: skip
    if op == "patch":  # extended, but a human must still resume it
        assert w.api.get(agent)["status"] == "expired"
    assert w.sweep() == 0
    w.verify()


def test_a_refused_change_before_the_sweep_writes_nothing(world: World) -> None:
    w = world
    agent = _agent(w, expires_at=w.at(60))
    w.clock.advance(61)
    before = w.api.snapshot()
    assert_error(w.api.act(agent, "suspend", reason="x"), 409, "invalid_transition")
    assert_error(w.api.act(agent, "resume"), 409, "invalid_transition")
    assert w.api.snapshot() == before
    assert w.stored(agent) == ("active", None)


def test_a_suspended_agent_expires_too_and_keeps_why_it_was_suspended(world: World) -> None:
    w = world
    agent = _agent(w, expires_at=w.at(60))
    w.api.ok(agent, "suspend", reason="odd traffic")
    assert w.listed("suspended") == {agent}
    w.clock.advance(61)
    assert w.listed("suspended") == set()
    assert w.listed("expired") == {agent}
    assert w.sweep() == 1
    [event] = w.expired_events()
    assert event["details"]["from"] == "suspended"
    assert event["details"]["previous_reason"] == "odd traffic"
    assert w.api.get(agent)["status"] == "expired"


def test_an_expired_parent_spawns_nothing(world: World) -> None:
    w = world
    parent = _agent(w, expires_at=w.at(60))
    w.clock.advance(61)
    got = w.api.client.post(
        "/v1/agents", json={"name": "kid", "owner": "admin", "purpose": "p",
                            "risk_tier": "minimal", "parent": parent},
    )  # fmt: skip
    assert assert_error(got, 409, "invalid_transition")["details"]["field"] == "parent"


def test_an_expired_agent_is_not_cloned_until_extended(world: World) -> None:
    """A clone copies expires_at: of an expired agent it would be born expired."""
    w = world
    source = _agent(w, expires_at=w.at(60))
    w.clock.advance(61)
    before = w.api.snapshot()
    got = w.api.act(source, "clone", name="copy")
    assert assert_error(got, 409, "invalid_transition")["details"]["status"] == "expired"
    assert w.api.snapshot() == before
    w.api.ok(source, "patch", expires_at=w.at(3600))
    clone = w.api.ok(source, "clone", name="copy")
    assert clone["status"] == "active"
    assert clone["expires_at"] == w.at(3600)


# -- several nodes -----------------------------------------------------------------------------


def test_nodes_sweeping_together_expire_each_agent_once(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock(START)
    nodes = [make_services(clock=clock) for _ in range(3)]
    ids = [
        nodes[0].agents.create(SYSTEM, AgentCreate(
            name=f"a{i}", owner="admin", purpose="p", risk_tier="minimal",
            expires_at=START + timedelta(seconds=60 + i),
        )).id
        for i in range(12)
    ]  # fmt: skip
    clock.advance(3600)
    gate = threading.Barrier(len(nodes))
    counts: list[int] = []

    def sweep(node: Services) -> None:
        gate.wait()
        counts.append(node.agents.expiry.expire_due())

    threads = [threading.Thread(target=sweep, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts, reverse=True)[0] >= 1
    assert sum(counts) == len(ids)
    events = nodes[1].audit.events(SYSTEM, type_="agent.expired", limit=500).items
    assert sorted(e.agent_id or "" for e in events) == sorted(ids)
    # An hour passed with no maintenance loop to sign the head: sign it as the loop would,
    # or verify rightly reports events older than the checkpoint interval left unsigned.
    nodes[2].audit.checkpoint_tick()
    assert nodes[2].audit.verify(SYSTEM).ok is True


# -- the maintenance loop ----------------------------------------------------------------------


@contextmanager
def _serving(svc: Services) -> Iterator[Api]:
    with admin_client(svc) as http:
        yield Api(http)


def test_the_server_sweeps_in_its_maintenance_loop(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock(START)
    svc = make_services(clock=clock, checkpoint_every_seconds=0.05)
    agent = svc.agents.create(SYSTEM, AgentCreate(
        name="a", owner="admin", purpose="p", risk_tier="minimal",
        expires_at=START + timedelta(seconds=60),
    ))  # fmt: skip
    with _serving(svc) as api:
        clock.advance(61)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not api.events(type="agent.expired"):
            time.sleep(0.05)
        [event] = api.events(type="agent.expired")
        assert event["agent_id"] == agent.id


# -- listing -----------------------------------------------------------------------------------


def _pages(svc: Services, actor: Any, limit: int, status: str | None) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = svc.agents.list(actor, cursor=cursor, limit=limit, status=status)
        ids += [a.id for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def test_the_status_filter_matches_what_each_agent_shows(
    make_services: Callable[..., Services],
) -> None:
    """Stored and not-yet-stored expiries mixed with every other status, for an admin and a
    supervisor (two merged queries), at every page size."""
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    sup = svc.users.create(SYSTEM, username="sup", role=Role.SUPERVISOR)
    rnd = random.Random(11)
    for i in range(30):
        expires = rnd.choice([None, 30, 90, 500])
        agent = svc.agents.create(SYSTEM, AgentCreate(
            name=f"a{i}", owner=rnd.choice([sup.id, "admin"]), purpose="p",
            risk_tier="minimal", supervisors=[sup.id] if rnd.random() < 0.3 else [],
            expires_at=START + timedelta(seconds=expires) if expires else None,
        ))  # fmt: skip
        if rnd.random() < 0.3:
            svc.agents.suspend(SYSTEM, agent.id, reason="x")
        elif rnd.random() < 0.15:
            svc.agents.retire(SYSTEM, agent.id, reason="x")
    clock.advance(60)
    assert svc.agents.expiry.expire_due() > 0  # the agents due at +30 are stored expired
    clock.advance(60)  # those due at +90 are expired but not stored
    everything = svc.agents.list(SYSTEM, limit=500).items
    shown = {a.status for a in everything}
    assert {"active", "suspended", "expired", "retired"} <= shown
    with svc.db.read() as s:
        stored = dict(s.execute(select(AgentRow.id, AgentRow.status)).all())
    assert any(a.status == "expired" and stored[a.id] != "expired" for a in everything)
    assert any(a.status == "expired" and stored[a.id] == "expired" for a in everything)
    mine = {a.id for a in everything if a.owner == sup.id or sup.id in a.supervisors}
    for status in (None, "active", "suspended", "expired", "retired"):
        expected = [a.id for a in everything if status is None or a.status == status]
        for limit in (1, 3, 500):
            assert _pages(svc, SYSTEM, limit, status) == expected, (status, limit)
            got = _pages(svc, sup.principal(), limit, status)
            assert got == [a for a in expected if a in mine], (status, limit)


def test_expiry_cancels_open_approvals_for_good(world: World) -> None:
    """An approval asked for before expiry can't be used after an extension and resume."""
    w = world
    push_policies(w.e.http, '@id("writes") permit(principal, action, resource);')
    agent = _agent(w, risk_tier="high", expires_at=w.at(60))
    body = {"subject": {"type": "agent", "id": agent}, "action": {"name": "tool.write"},
            "resource": {"type": "Tool", "id": "db"}}  # fmt: skip
    asked = w.e.http.post(EVAL, json=body).json()["context"]
    assert asked["decision"] == "approval_required"
    approval_id = asked["approval_id"]
    approved = w.e.http.post(f"/v1/approvals/{approval_id}/approve", json={})
    assert approved.status_code == 200, approved.text
    w.clock.advance(61)
    assert w.sweep() == 1
    [event] = w.expired_events()
    assert event["details"]["cut_off"]["approvals"] == 1
    [cancelled] = w.api.events(type="approval.cancelled")
    assert cancelled["details"] == {"approval_id": approval_id, "why": "agent expired"}
    assert w.e.http.get(f"/v1/approvals/{approval_id}").json()["status"] == "cancelled"
    # extended and resumed within the approval's lifetime: the approval is still gone
    w.api.ok(agent, "patch", expires_at=w.at(3600))
    w.api.ok(agent, "resume")
    again = w.e.http.post(EVAL, json=body).json()["context"]
    assert again["decision"] == "approval_required"
    assert again["approval_id"] != approval_id
    w.verify()
