"""A kill of a large family: every agent and every live token in one short transaction.

An agent with 200 descendants (spawned through the service, so a tree several generations
deep) holding 1,000 live tokens is killed: every agent is revoked with exactly one
``agent.killed`` each, in cascade order (nearest generation first, id order within one); every
live token is revoked and named once in the change feed, nothing else is touched, and the
ledger verifies. The kill's statements are counted: as many for that family as for a single
agent, give or take a fixed few (the write lock is held while they run, and every decision's
ledger event waits for it). Past ``CUT_OFF_BATCH`` tokens the kill marks the rest revoked after
its commit, a batch per write transaction, in the background once it has returned (its
tokens are refused meanwhile): no transaction of the kill touches more than a batch, and
another agent's decision commits in between.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import Session

from tests.conftest import admin_client
from tests.pdp import EVAL, Env, credential, env_of, push_policies, token
from tether.agents.schemas import AgentCreate
from tether.clock import FrozenClock, to_micros, to_rfc3339
from tether.container import Services
from tether.credentials import oauth
from tether.credentials.models import AccessTokenRow
from tether.principals import Principal
from tether.runtime import changes

START = datetime.fromtimestamp(1_800_000_000, UTC)
CALLS = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
ASK = {"action": {"name": "tool.call"}, "resource": {"type": "Tool", "id": "search"}}
HOUR_US = 3600 * 1_000_000


@dataclass
class World:
    e: Env
    clock: FrozenClock
    admin: Principal

    @property
    def svc(self) -> Services:
        return self.e.services

    def agent(self, name: str, parent: str | None = None, **fields: Any) -> str:
        spec = AgentCreate(name=name, owner="admin", purpose="kill at scale",
                           risk_tier="minimal", parent=parent, **fields)  # fmt: skip
        return self.svc.agents.create(self.admin, spec).id

    def family(self, size: int, *, seed: int = 12) -> tuple[str, dict[str, str]]:
        """A root and ``size`` descendants, each spawned by a random earlier member; the
        root and its parent map (child -> parent)."""
        rng = random.Random(seed)
        root = self.agent("root")
        members, parents = [root], {}
        for i in range(size):
            parent = members[rng.randrange(len(members))]
            child = self.agent(f"member-{i}", parent)
            parents[child] = parent
            members.append(child)
        return root, parents

    def token_rows(self, agents: list[str], n: int, **row: Any) -> list[str]:
        """``n`` access-token rows spread over ``agents`` (live unless ``row`` says
        otherwise); their jtis."""
        now_us = to_micros(self.clock.now())
        rows = [{"jti": f"atk_{secrets.token_hex(12)}", "agent_id": agents[i % len(agents)],
                 "client_id": agents[i % len(agents)], "issued_at": now_us,
                 "expires_at": now_us + HOUR_US, "revoked_at": None, **row}
                for i in range(n)]  # fmt: skip
        with self.svc.db.write() as s:
            s.execute(insert(AccessTokenRow), rows)
        return [r["jti"] for r in rows]

    def feed_head(self) -> int:
        with self.svc.db.read() as s:
            return changes.head(s)

    def feed_since(self, seq: int) -> list[tuple[str, str]]:
        with self.svc.db.read() as s:
            found = changes.since(s, seq, limit=100_000)
        assert not found.gap
        return [(kind, key) for _seq, kind, key, _t in found.rows]

    def revoked_at(self, jtis: list[str]) -> dict[str, int | None]:
        with self.svc.db.read() as s:
            q = select(AccessTokenRow.jti, AccessTokenRow.revoked_at)
            return dict(s.execute(q.where(AccessTokenRow.jti.in_(jtis))).all())


@pytest.fixture
def world(make_services: Callable[..., Services]) -> Iterator[World]:
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    with admin_client(svc) as http, env_of(svc, http) as e:
        push_policies(http, CALLS)
        admin = svc.users.authenticate(svc.settings.admin_token_path.read_text().strip())
        yield World(e, clock, admin)


def jti_of(access: str) -> str:
    payload = access.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def cascade_order(root: str, parents: dict[str, str]) -> list[str]:
    """The root, then each generation below it in id order."""
    order, level = [root], [root]
    while level:
        level = sorted(c for c, p in parents.items() if p in set(level))
        order += level
    return order


def test_a_family_of_200_with_1000_tokens_is_killed_whole(world: World) -> None:
    w = world
    root, parents = w.family(200)
    members = [root, *parents]
    # Real tokens for three members; 1,000 more rows beside them; rows a kill must not touch.
    creds = [credential(w.e, m) for m in (root, members[50], members[-1])]
    real = [token(w.e, c) for c in creds]
    live = w.token_rows(members, 1000)
    now_us = to_micros(w.clock.now())
    gone = w.token_rows(members, 5, expires_at=now_us)  # expired: not live, not revoked
    earlier = w.token_rows(members, 5, revoked_at=now_us - 1)
    stranger = w.agent("stranger")
    untouched = w.token_rows([stranger], 3)
    before, seq = w.e.api.events(), w.feed_head()

    killed = w.e.api.ok(root, "kill", reason="compromised")
    w.svc.db.drain()  # past 1,000 tokens, they are marked in the background after the return

    order = cascade_order(root, parents)
    assert len(order) == 201
    assert killed.pop("rollback")["reversible_actions"] == 0
    assert killed == {
        "revoked": order,
        "cut_off": {"tokens": 1003, "keys": 0, "approvals": 0, "leases": 0},
    }
    assert {a["id"] for a in w.e.api.agents(status="revoked")} == set(order)
    assert [a["id"] for a in w.e.api.agents(status="active")] == [stranger]
    events = w.e.api.new_events(before)
    assert [(e["type"], e["agent_id"]) for e in events] == [("agent.killed", a) for a in order]
    for e in events:
        assert e["details"] == {"reason": "compromised", "previous_status": "active",
                                "cascade": True, "root": root}  # fmt: skip
        assert e["resource"] == {"type": "Agent", "id": e["agent_id"]}
    feed = w.feed_since(seq)
    assert [k for kind, k in feed if kind == "agent"] == order
    revoked_jtis = [k for kind, k in feed if kind == "token"]
    assert len(revoked_jtis) == 1003
    assert set(revoked_jtis) == set(live) | {jti_of(access) for access in real}
    assert {kind for kind, _ in feed} == {"agent", "token"}
    assert set(w.revoked_at(live).values()) == {now_us}
    assert set(w.revoked_at(gone).values()) == {None}
    assert set(w.revoked_at(earlier).values()) == {now_us - 1}
    assert set(w.revoked_at(untouched).values()) == {None}
    for access, cred in zip(real, creds, strict=True):
        body = {"subject": {"type": "agent", "id": cred.agent_id}, **ASK}
        decided = w.e.anon.post(EVAL, json=body, headers={"Authorization": f"Bearer {access}"})
        assert decided.status_code == 200, decided.text
        assert decided.json()["decision"] is False
        assert w.e.http.post("/oauth/introspect", data={"token": access}).json() == {
            "active": False
        }
    verified = w.e.http.get("/v1/audit/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is True, verified.json()


def test_the_cascade_passes_through_every_status_and_stores_unswept_expiries_first(
    world: World,
) -> None:
    w = world
    root = w.agent("root")
    expiring = w.agent("expiring", root, expires_at=to_rfc3339(START + timedelta(seconds=60)))
    suspended = w.agent("suspended", root)
    retired = w.agent("retired", root)
    revoked = w.agent("revoked", root)
    below = {name: w.agent(f"below-{name}", parent)
             for name, parent in (("expiring", expiring), ("suspended", suspended),
                                  ("retired", retired), ("revoked", revoked))}  # fmt: skip
    w.e.api.ok(suspended, "suspend", reason="odd")
    w.e.api.ok(retired, "retire", reason="done")
    w.e.api.ok(revoked, "kill", reason="alone", cascade=False)
    tokens = w.token_rows([expiring], 2)
    w.clock.advance(61)  # `expiring` expires; the sweep has not run
    before = w.e.api.events()

    killed = w.e.api.ok(root, "kill", reason="compromised")

    level1 = sorted([expiring, suspended, retired, revoked])
    level2 = sorted(below.values())
    assert killed["revoked"] == [root, *(a for a in level1 if a not in (retired, revoked)),
                                 *level2]  # fmt: skip
    assert killed["cut_off"]["tokens"] == 0  # the expiry took them
    events = w.e.api.new_events(before)
    assert [(e["type"], e["agent_id"]) for e in events] == [
        ("agent.expired", expiring),
        *(("agent.killed", a) for a in killed["revoked"]),
    ]
    assert events[0]["details"]["cut_off"] == {"tokens": 2, "approvals": 0, "leases": 0}
    previous = {e["agent_id"]: e["details"]["previous_status"] for e in events[1:]}
    assert previous == {root: "active", expiring: "expired", suspended: "suspended",
                        **dict.fromkeys(level2, "active")}  # fmt: skip
    assert set(w.revoked_at(tokens).values()) == {to_micros(w.clock.now())}
    assert w.e.api.get(retired)["status"] == "retired"
    assert w.e.api.get(revoked)["status_reason"] == "alone"
    assert w.svc.agents.expiry.expire_due() == 0
    assert w.e.http.get("/v1/audit/verify").json()["ok"] is True


def test_a_big_kill_revokes_its_tokens_a_batch_per_transaction_and_lets_others_decide_between(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No wall clock: after every write transaction of the kill, how many of the family's
    tokens are revoked (each transaction adds at most a batch), and a decision about another
    agent made from there, while tokens of the family are still unrevoked — it is in the ledger
    after the kill's ``agent.killed`` events, its write having taken the lock between the
    kill's batches."""
    w = world
    monkeypatch.setattr(oauth, "CUT_OFF_BATCH", 100)
    monkeypatch.setattr(oauth, "REVOKE_BATCH", 100)
    root, parents = w.family(30)
    order = cascade_order(root, parents)
    live = w.token_rows(order, 1000)
    other = credential(w.e, w.agent("other"))
    access = token(w.e, other)
    before, seq = w.e.api.events(), w.feed_head()
    revoked_seen: list[int] = []
    decided: list[tuple[int, bool]] = []  # (family tokens unrevoked then, the decision)
    write, killing = w.svc.db.write, threading.get_ident()
    deciding = threading.Lock()

    @contextmanager
    def observed(**options: Any) -> Iterator[Session]:
        with write(**options) as s:
            yield s
        mine = threading.get_ident() == killing
        if not mine and not threading.current_thread().name.startswith("tether-db-after"):
            return  # the decision's group commit, for one
        with deciding, w.svc.db.read() as s:  # the kill's thread and the background's
            done = s.scalar(
                select(func.count()).select_from(AccessTokenRow)
                .where(AccessTokenRow.jti.in_(live), AccessTokenRow.revoked_at.is_not(None))
            )  # fmt: skip
            revoked_seen.append(int(done or 0))
            if decided or revoked_seen[-1] == len(live):
                return
            body = {"subject": {"type": "agent", "id": other.agent_id}, **ASK}
            got = w.e.anon.post(EVAL, json=body, headers={"Authorization": f"Bearer {access}"})
            assert got.status_code == 200, got.text
            decided.append((len(live) - revoked_seen[-1], got.json()["decision"]))

    monkeypatch.setattr(w.svc.db, "write", observed)
    killed = w.svc.agents.kill(w.admin, root, reason="compromised")
    w.svc.db.drain()  # the batches run in the background after the kill returned
    monkeypatch.undo()

    cut = {"tokens": 1000, "keys": 0, "approvals": 0, "leases": 0}
    assert killed == {"revoked": order, "cut_off": cut}
    # Every token revoked as of the kill and in the feed...
    assert set(w.revoked_at(live).values()) == {to_micros(w.clock.now())}
    feed = w.feed_since(seq)
    assert [k for kind, k in feed if kind == "agent"] == order
    assert sorted(k for kind, k in feed if kind == "token") == sorted(live)
    # ... by 10 transactions of at most a batch each, after the one that revoked the agents...
    steps = [b - a for a, b in zip([0, *revoked_seen], revoked_seen, strict=False)]
    assert revoked_seen[-1] == 1000
    assert max(steps) <= 100, steps
    assert len([n for n in steps if n]) == 10, steps
    # ... and between them another agent was decided (allowed), its event written after the
    # agents were revoked and before the family's last token was.
    assert len(decided) == 1, decided
    assert decided[0][0] >= 100, decided
    assert decided[0][1] is True, decided
    events = w.e.api.new_events(before)
    kinds = [(e["type"], e["agent_id"]) for e in events]
    assert kinds[: len(order)] == [("agent.killed", a) for a in order]
    assert [a for t, a in kinds[len(order) :]] == [other.agent_id], kinds[len(order) :]
    assert w.e.http.get("/v1/audit/verify").json()["ok"] is True


def test_tokens_a_kill_left_to_after_its_commit_are_revoked_by_the_maintenance_loop(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between the kill's commit and its batches: the agents are revoked,
    their tokens refused, and the maintenance task finishes the rest, as of the kill."""
    w = world
    monkeypatch.setattr(oauth, "CUT_OFF_BATCH", 100)
    root, parents = w.family(10)
    order = cascade_order(root, parents)
    live = w.token_rows(order, 350)
    cred = credential(w.e, order[-1])
    access = token(w.e, cred)
    stranger = w.agent("stranger")
    untouched = w.token_rows([stranger], 3)
    kill_us = to_micros(w.clock.now())
    monkeypatch.setattr(oauth.OAuthService, "_revoke_tokens_after", lambda *_a: None)

    killed = w.svc.agents.kill(w.admin, root, reason="compromised")

    assert killed["cut_off"]["tokens"] == 351
    family = [*live, jti_of(access)]
    assert len([at for at in w.revoked_at(family).values() if at is None]) == 351
    body = {"subject": {"type": "agent", "id": cred.agent_id}, **ASK}
    refused = w.e.anon.post(EVAL, json=body, headers={"Authorization": f"Bearer {access}"})
    assert refused.status_code == 200, refused.text
    assert refused.json()["decision"] is False
    assert w.e.http.post("/oauth/introspect", data={"token": access}).json() == {"active": False}
    seq = w.feed_head()
    task = next(t for t in w.svc.maintenance if t.name == "oauth.finish_cut_offs")
    w.clock.advance(oauth.FINISH_AFTER_SECONDS - 1)
    monkeypatch.setattr(oauth, "FINISH_EVERY_SECONDS", 0.0)
    assert task.run() == 0  # a kill's own batches may still be running: not yet

    w.clock.advance(2)
    assert task.run() == 351
    assert task.run() == 0
    assert set(w.revoked_at(family).values()) == {kill_us}
    assert set(w.revoked_at(untouched).values()) == {None}
    assert len([k for kind, k in w.feed_since(seq) if kind == "token"]) == 351


def test_a_big_kill_returns_before_its_tokens_are_marked_and_they_are_refused_meanwhile(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background batches are held back: the kill has returned, every row of the
    family's tokens is still unrevoked, and yet a token of the family is refused by a decision
    and by introspection; the feed already names the agents. Released, the batches mark every
    token revoked as of the kill."""
    w = world
    monkeypatch.setattr(oauth, "CUT_OFF_BATCH", 100)
    root, parents = w.family(5)
    order = cascade_order(root, parents)
    live = w.token_rows(order, 300)
    cred = credential(w.e, order[-1])
    access = token(w.e, cred)
    kill_us = to_micros(w.clock.now())
    seq = w.feed_head()
    release, started = threading.Event(), threading.Event()
    batches = oauth.OAuthService._revoke_tokens_after

    def held(self: oauth.OAuthService, agent_ids: list[str], now_us: int) -> None:
        started.set()
        assert release.wait(30)
        batches(self, agent_ids, now_us)

    monkeypatch.setattr(oauth.OAuthService, "_revoke_tokens_after", held)
    try:
        killed = w.svc.agents.kill(w.admin, root, reason="compromised")
        assert killed["cut_off"]["tokens"] == 301
        assert started.wait(10)
        family = [*live, jti_of(access)]
        assert set(w.revoked_at(family).values()) == {None}  # not one row marked yet
        assert sorted(k for kind, k in w.feed_since(seq) if kind == "agent") == sorted(order)
        body = {"subject": {"type": "agent", "id": cred.agent_id}, **ASK}
        refused = w.e.anon.post(EVAL, json=body, headers={"Authorization": f"Bearer {access}"})
        assert refused.status_code == 200, refused.text
        assert refused.json()["decision"] is False
        assert w.e.http.post("/oauth/introspect", data={"token": access}).json() == {
            "active": False
        }
    finally:
        release.set()
    w.svc.db.drain()
    assert set(w.revoked_at(family).values()) == {kill_us}
    assert len([k for kind, k in w.feed_since(seq) if kind == "token"]) == 301


# -- statements ------------------------------------------------------------------------------


@contextmanager
def statements(svc: Services) -> Iterator[list[str]]:
    """Every statement SQLAlchemy sends on the deployment's write engine meanwhile from this
    thread (the ledger append goes to the driver directly: a head read and one COPY, or
    INSERTs of 32 rows). Not the runtime's poller's, nor the propagation wait's look-ups of
    other workers' positions (how many depends on when they report, not on the kill)."""
    seen: list[str] = []
    me = threading.get_ident()

    def count(_conn: Any, _cur: Any, sql: str, *_args: Any) -> None:
        if threading.get_ident() == me and "runtime_positions" not in sql:
            seen.append(" ".join(sql.split()))

    event.listen(svc.db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", count)


def _kills(w: World) -> tuple[list[str], list[str]]:
    """The statements of a kill of one agent with one token, and of one with 200 descendants
    holding 1,000 tokens."""
    single = w.agent("single")
    w.token_rows([single], 1)
    root, parents = w.family(200)
    w.token_rows([root, *parents], 1000)
    with statements(w.svc) as small:
        w.svc.agents.kill(w.admin, single, reason="r")
    with statements(w.svc) as large:
        assert len(w.svc.agents.kill(w.admin, root, reason="r")["revoked"]) == 201
    return small, large


FEED_INSERT = "INSERT INTO runtime_changes"


def test_a_kill_of_200_agents_and_1000_tokens_takes_as_many_statements_as_one(
    world: World,
) -> None:
    small, large = _kills(world)
    # What the kill itself sends up to its commit (the change feed's rows, written last, are
    # runtime.changes.record's): the local snapshot's reads after it depend on whether this
    # thread or the runtime's listener applied the change first.
    own, own_large = _until_feed(small), _until_feed(large)
    assert len(own) <= 16, own
    assert any(s.startswith("UPDATE agents") for s in own), own
    # The same statements, once each.
    assert len(own_large) == len(own), own_large


def _until_feed(seen: list[str]) -> list[str]:
    """The statements before the change feed's rows are written (the transaction's last)."""
    return seen[: next((i for i, s in enumerate(seen) if FEED_INSERT in s), len(seen))]


def test_a_kill_writes_the_change_feed_in_as_few_statements_for_1000_tokens_as_for_one(
    world: World,
) -> None:
    small, large = _kills(world)
    feed = [s for s in small if FEED_INSERT in s]
    feed_large = [s for s in large if FEED_INSERT in s]
    assert feed
    assert len(feed_large) <= len(feed) + 2, len(feed_large)
