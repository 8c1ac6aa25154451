"""Kill switch everywhere (issue 12): what one node is told, every node enforces.

Two ``tether serve`` processes on one PostgreSQL schema are two nodes of one deployment: one
data dir (keys, admin token; the second start finds the deployment bootstrapped) and one
public URL (the issuer), each on its own port. A kill, a freeze or its lifting made through
node A governs node B at once: its introspection (it reads the database) and its decisions
(they read node B's in-memory snapshot, which NOTIFY — or the poll — brings up to date; node
A's call returns only once every live worker applied the change, tether.runtime.positions).
A kill reaches a clone and every token delegated through the killed agent, at node B and at
a resource server that follows node B's revocation feed with the SDK's RevocationFollower. A
LISTEN connection dropped under node B heals through the poll, and reconnects. On one node, a
kill is absolute from the moment its call returns, under load (SQLite and PostgreSQL).

Waits are bounded wait-until loops; nothing sleeps for a fixed time beyond a poll interval.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from joserfc.jwk import ECKey
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import PG_URL, Backend, backend_for
from tests.serverproc import http_client, running_server
from tests.token_attacks.kit import assertion, assertion_form
from tether.runtime.changes import channel
from tether.sdk import JWKSCache, TetherAuthMiddleware
from tether.sdk.revocations import RevocationFollower

pytestmark = pytest.mark.slow

PUBLIC_URL = "http://tether.nodes.test"  # both nodes' issuer, as behind one load balancer
ALLOW = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
AGENT = {"name": "worker", "owner": "admin", "purpose": "kill switch", "risk_tier": "minimal",
         "scopes": ["tools"]}  # fmt: skip
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
NOT_ACTIVE = "tether.agent-not-active"
REVOKED_TOKEN = "tether.token-revoked"
FROZEN = "tether.frozen"
# Node B learns of a change from NOTIFY (or the poll) asynchronously, but node A's call returns
# only once every live worker — node B's included — has reported it applied the change
# (tether.runtime.positions; before that barrier, 5 to 17 in 100 kill-then-decide rounds
# were still allowed by node B under load). So the decision checks below ask node B once,
# right after the call returned, without retry.
RS_BOUND = 2.0  # seconds for a follower of node B's feed to refuse what node A was told
HEAL_BOUND = 3.0  # node B without its LISTEN connection: the 0.25 s poll must still tell it
RECONNECT_BOUND = 5.0  # the listener waits 1 s after losing its connection, then reconnects


def _until(predicate: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


# -- two nodes ------------------------------------------------------------------------------


@dataclass
class Node:
    """A ``tether serve`` process's URL, and an admin client of it."""

    name: str
    url: str
    app_name: str  # PGAPPNAME: its connections' application_name in pg_stat_activity
    http: httpx.Client = field(init=False)

    def open(self, admin_token: str) -> None:
        self.http = http_client(base_url=self.url, timeout=30,
                                headers={"Authorization": f"Bearer {admin_token}"})  # fmt: skip

    def decide(self, agent_id: str, token: str | None = None) -> dict[str, Any]:
        """``POST /access/v1/evaluation`` for ``agent_id``, as the admin or with ``token``."""
        body = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": "tool.call"},
                "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = self.http.post("/access/v1/evaluation", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def allows(self, agent_id: str, token: str | None = None) -> bool:
        return bool(self.decide(agent_id, token)["decision"])

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.http.post("/oauth/introspect", data={"token": token})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def post(self, path: str, status: int = 200, **body: Any) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        assert response.status_code == status, response.text
        return dict(response.json())

    def agent(self, **fields: Any) -> Keyholder:
        agent = self.post("/v1/agents", 201, **{**AGENT, **fields})
        key = self.post(f"/v1/agents/{agent['id']}/credentials", 201, type="api_key")
        return Keyholder(agent["id"], key["client_secret"])

    def token(self, who: Keyholder, **form: str) -> str:
        response = self.http.post("/oauth/token", data={**who.form, **form},
                                  headers={"Authorization": ""})  # fmt: skip
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def exchange(self, actor: Keyholder, subject_token: str) -> str:
        """RFC 8693: ``actor`` acts for the subject of ``subject_token``."""
        form = {"grant_type": EXCHANGE, "client_id": actor.id, "client_secret": actor.secret,
                "subject_token": subject_token, "subject_token_type": AT,
                "actor_token": self.token(actor), "actor_token_type": AT}  # fmt: skip
        response = self.http.post("/oauth/token", data=form, headers={"Authorization": ""})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@dataclass(frozen=True)
class Keyholder:
    id: str
    secret: str

    @property
    def form(self) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_id": self.id,
                "client_secret": self.secret}  # fmt: skip


@contextmanager
def _node(backend: Backend, data_dir: Path, workdir: Path, name: str) -> Iterator[Node]:
    """``tether serve`` on ``backend`` with the shared ``data_dir`` and public URL, on a port of
    its own (tests.serverproc.running_server)."""
    app_name = f"tether-{name}-{secrets.token_hex(4)}"
    env = {"TETHER_PUBLIC_URL": PUBLIC_URL, "PGAPPNAME": app_name}
    with running_server(backend, workdir, extra_env=env, data_dir=data_dir) as (url, _env):
        node = Node(name, url, app_name)
        node.open((data_dir / "admin.token").read_text().strip())
        try:
            yield node
        finally:
            node.http.close()


@dataclass
class Nodes:
    a: Node
    b: Node
    backend: Backend
    admin_token: str


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """Node A (the first start: migrates, bootstraps), then node B on the same schema and data
    dir; a policy allowing tool calls, in force on both. One pair for the module's tests (per
    xdist worker): each test makes its own agents and leaves no freeze behind; starting a
    pair is most of a test's time."""
    tmp_path = tmp_path_factory.mktemp("nodes")
    # backend_for skips only when TETHER_TEST_POSTGRES_URL is empty, never when it is set.
    with backend_for("postgresql", tmp_path) as backend, ExitStack() as stack:
        data_dir = tmp_path / "data"
        a = stack.enter_context(_node(backend, data_dir, tmp_path / "a", "a"))
        token_file = data_dir / "admin.token"
        first_token = token_file.read_text()
        written = token_file.stat().st_mtime_ns
        b = stack.enter_context(_node(backend, data_dir, tmp_path / "b", "b"))
        # Node B did not bootstrap again: the admin token is the first start's, untouched.
        assert token_file.read_text() == first_token
        assert token_file.stat().st_mtime_ns == written
        first_start = (tmp_path / "a" / "server.log").read_text()
        assert "created user 'admin'" in first_start
        assert "created user 'admin'" not in (tmp_path / "b" / "server.log").read_text()
        a.http.put("/v1/policies", json={"policies": ALLOW}).raise_for_status()
        probe = a.agent(name="probe")
        assert _until(lambda: b.allows(probe.id), 5.0), "node B never learnt the policy"
        yield Nodes(a, b, backend, first_token.strip())


def _refused(answer: dict[str, Any], reason: str) -> None:
    assert answer["decision"] is False, answer
    assert answer["context"]["reasons"] == [reason], answer


def _within_propagation(holds: Callable[[], bool]) -> None:
    """``holds()``, asked of node B once, right after node A's call returned: no retry."""
    assert holds(), "node B answered from before the change node A's call had returned"


def _known_at(node: Node, *agents: Keyholder) -> None:
    """Wait until ``node`` has learnt of agents just created elsewhere (it decides on them)."""
    for who in agents:
        assert _until(partial(node.allows, who.id), 5.0), f"{node.name} never learnt {who}"


# -- 1. a kill ----------------------------------------------------------------------------------


def test_a_kill_on_node_a_governs_node_b(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    victim = a.agent(name="victim")
    bystander = a.agent(name="bystander")
    token = a.token(victim)  # issued by node A
    _known_at(b, victim, bystander)
    # Controls: node B honours the agent and node A's token.
    assert b.allows(victim.id)
    assert b.allows(victim.id, token)
    assert b.introspect(token)["active"] is True

    killed = a.post(f"/v1/agents/{victim.id}/kill", reason="rogue")
    assert killed["revoked"] == [victim.id]
    # Introspection reads the database: the very next request, no retry.
    assert b.introspect(token) == {"active": False}
    # Decisions: node B's very next answer refuses, and every one after it.
    _within_propagation(lambda: not b.allows(victim.id))
    _refused(b.decide(victim.id), NOT_ACTIVE)
    with_token = b.decide(victim.id, token)
    assert with_token["decision"] is False, with_token
    assert with_token["context"]["reasons"] in ([REVOKED_TOKEN], [NOT_ACTIVE]), with_token
    assert b.allows(bystander.id)  # nothing else was stopped
    # The agent gets no new token from either node.
    for node in (a, b):
        response = node.http.post("/oauth/token", data=victim.form, headers={"Authorization": ""})
        assert response.status_code in (400, 401), response.text
        assert "access_token" not in response.json()


def test_node_b_refuses_the_very_next_decision_after_a_kill_on_node_a(nodes: Nodes) -> None:
    """The stricter guarantee, no retry at all: rounds of kill at node A, then one decision at
    node B for the agent just killed (each known at node B before)."""
    a, b = nodes.a, nodes.b
    victims = [a.post("/v1/agents", 201, **{**AGENT, "name": f"v{i}"})["id"] for i in range(30)]
    assert _until(lambda: all(b.allows(v) for v in victims), 5.0)
    stale = []
    for victim in victims:
        a.post(f"/v1/agents/{victim}/kill", reason="rogue")
        if b.allows(victim):  # the first request node B gets after the kill returned
            stale.append(victim)
    assert stale == [], f"node B allowed {len(stale)} of {len(victims)} just-killed agents"


# -- 2. freezes and their lifting -----------------------------------------------------------------


def test_freezes_and_unfreezes_on_node_a_govern_node_b(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    alice = a.post("/v1/users", 201, username="alice", role="supervisor")
    ops = a.agent(name="ops", roles=["ops"])
    alices = a.agent(name="alices", owner="alice")
    plain = a.agent(name="plain")
    everyone = (ops, alices, plain)
    tokens = {who.id: a.token(who) for who in everyone}
    _known_at(b, *everyone)

    def introspected_inactive() -> set[str]:
        return {w.id for w in everyone if not b.introspect(tokens[w.id])["active"]}

    def refused_at_b() -> set[str]:
        """Which agents node B refuses; only a freeze may refuse them here."""
        out = set()
        for who in everyone:
            answer = b.decide(who.id)
            if not answer["decision"]:
                assert answer["context"]["reasons"] == [FROZEN], answer
                out.add(who.id)
        return out

    def node_b_enforces(expected: set[str]) -> None:
        # Introspection at once; decisions within the bound, then exactly ``expected``.
        assert introspected_inactive() == expected
        _within_propagation(lambda: refused_at_b() == expected)
        assert refused_at_b() == expected

    node_b_enforces(set())
    try:
        by_role = a.post("/v1/freeze", 201, reason="ops incident", scope={"role": "ops"})
        node_b_enforces({ops.id})
        a.http.delete("/v1/freeze", params={"id": by_role["id"]}).raise_for_status()
        node_b_enforces(set())  # lifted: the same token is good again

        by_owner = a.post("/v1/freeze", 201, reason="alice's", scope={"owner": alice["id"]})
        assert by_owner["scope"] == {"owner": alice["id"]}
        node_b_enforces({alices.id})
        a.http.delete("/v1/freeze").raise_for_status()
        node_b_enforces(set())

        a.post("/v1/freeze", 201, reason="everything stops")
        node_b_enforces({ops.id, alices.id, plain.id})
        assert b.decide(plain.id, tokens[plain.id])["decision"] is False
        lifted = a.http.delete("/v1/freeze")
        lifted.raise_for_status()
        assert len(lifted.json()["lifted"]) == 1
        # Nothing was revoked: node B honours the same agents and tokens again.
        node_b_enforces(set())
        assert b.allows(plain.id, tokens[plain.id])
    finally:
        a.http.delete("/v1/freeze")


# -- 3. the cascade ------------------------------------------------------------------------------


@contextmanager
def _resource_server(node: Node, follower: RevocationFollower) -> Iterator[TestClient]:
    """A Starlette app guarded by the SDK's middleware: Tether's tokens verified offline
    (keys from ``node``), refused when ``node``'s revocation feed says so."""

    async def tool(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.tether_claims.sub})

    jwks = JWKSCache(f"{node.url}/.well-known/jwks.json")
    app = Starlette(routes=[Route("/tool", tool)])
    app.add_middleware(TetherAuthMiddleware, issuer=PUBLIC_URL, audience=PUBLIC_URL,
                       jwks=jwks, revocation_check=follower)  # fmt: skip
    try:
        with TestClient(app, base_url="https://rs.test") as rs:
            yield rs
    finally:
        jwks.close()


def _rs_honours(rs: TestClient, token: str) -> bool:
    response = rs.get("/tool", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def test_a_kill_cascades_to_clones_and_delegated_tokens_on_node_b_and_its_followers(
    nodes: Nodes,
) -> None:
    a, b = nodes.a, nodes.b
    parent = a.agent(name="parent")
    clone = a.post(f"/v1/agents/{parent.id}/clone", 201, name="clone")
    clone_key = a.post(f"/v1/agents/{clone['id']}/credentials", 201, type="api_key")
    child = Keyholder(clone["id"], clone_key["client_secret"])
    helper = a.agent(name="helper")  # acts for the parent
    principal = a.agent(name="principal")  # the parent acts for it
    bystander = a.agent(name="bystander")

    parent_token, child_token = a.token(parent), a.token(child)
    bystander_token = a.token(bystander)
    for_parent = a.exchange(helper, parent_token)  # sub=parent, act=helper
    by_parent = a.exchange(parent, a.token(principal))  # sub=principal, act=parent
    delegated = {helper.id: for_parent, parent.id: by_parent}  # the acting agent: its token
    doomed = [parent_token, child_token, for_parent, by_parent]

    reader = a.agent(name="rs", scopes=["tether:revocations"])
    _known_at(b, parent, child, helper, principal, bystander, reader)
    follower = RevocationFollower(b.url, b.token(reader), max_staleness=5)
    with follower, _resource_server(b, follower) as rs:
        assert follower.wait_current(5.0), "the follower never heard node B's feed"
        # Controls, at node B and at its follower.
        for actor, token in delegated.items():
            assert b.allows(actor, token), actor
        for token in [*doomed, bystander_token]:
            assert b.introspect(token)["active"] is True
            assert _rs_honours(rs, token)

        killed = a.post(f"/v1/agents/{parent.id}/kill", reason="rogue parent")
        returned = time.monotonic()
        assert set(killed["revoked"]) == {parent.id, child.id}

        # Node B: introspection at once; decisions once it has the kill, which is all of it.
        for token in doomed:
            assert b.introspect(token) == {"active": False}
        _within_propagation(lambda: not b.allows(parent.id))
        _refused(b.decide(parent.id), NOT_ACTIVE)
        _refused(b.decide(child.id), NOT_ACTIVE)
        for actor, token in delegated.items():
            answer = b.decide(actor, token)
            assert answer["decision"] is False, (actor, answer)
        assert b.allows(bystander.id, bystander_token)
        assert b.allows(helper.id)  # the helper on its own is not killed

        # The follower of node B's feed, within RS_BOUND of the kill's return.
        assert _until(lambda: not any(_rs_honours(rs, t) for t in doomed), RS_BOUND), [
            _rs_honours(rs, t) for t in doomed
        ]
        assert time.monotonic() - returned < RS_BOUND + 0.5
        assert follower.state(parent.id) == "revoked"
        assert follower.state(child.id) == "revoked"
        assert _rs_honours(rs, bystander_token)  # the follower refuses only what it must


# -- 4. a dropped LISTEN connection ---------------------------------------------------------------


def _listeners(admin: Any, node: Node, listen: str) -> set[int]:
    rows = admin.execute(
        text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
             "AND application_name = :app AND query = :listen"),
        {"app": node.app_name, "listen": listen},
    )  # fmt: skip
    return {int(pid) for (pid,) in rows}


def test_a_dropped_listener_heals_through_the_poll_and_reconnects(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    target = a.agent(name="target")
    _known_at(b, target)
    listen = f'LISTEN "{channel(nodes.backend.schema)}"'
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with engine.connect() as admin:
            found: set[int] = set()

            def listening() -> bool:
                found.clear()
                found.update(_listeners(admin, b, listen))
                return len(found) == 1

            assert _until(listening, 5.0), f"node B's LISTEN backend: {found}"
            (old,) = found
            assert _listeners(admin, a, listen), "node A listens too, as its own backend"
            assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": old}).scalar()
            assert _until(lambda: old not in _listeners(admin, b, listen), 5.0)

            a.post(f"/v1/agents/{target.id}/suspend", reason="while B was not listening")
            suspended = time.monotonic()
            assert _until(lambda: not b.allows(target.id), HEAL_BOUND), "node B never learnt"
            # The poll told it: node B had no LISTEN connection yet (the listener waits 1 s
            # before it reconnects; the poll runs every 0.25 s).
            assert _listeners(admin, b, listen) == set(), "healed by a new LISTEN, not the poll"
            assert time.monotonic() - suspended < HEAL_BOUND
            _refused(b.decide(target.id), NOT_ACTIVE)

            # Node B listens again, on a new backend: NOTIFY is back as the fast path.
            assert _until(lambda: listening() and old not in found, RECONNECT_BOUND), found
            a.post(f"/v1/agents/{target.id}/resume")
            assert _until(lambda: b.allows(target.id), HEAL_BOUND)
    finally:
        engine.dispose()


# -- 5. one node, under load --------------------------------------------------------------------


@dataclass
class _Sent:
    at: float  # time.monotonic() before the request was sent
    ok: bool  # an allow, or a token
    token: str | None = None


def test_after_a_kill_returns_its_node_allows_and_issues_nothing_under_load(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One node: PostgreSQL's is node A of the pair (its peer changes nothing here; the policy
    is in force), SQLite's a server of its own."""
    if backend.name == "postgresql":
        _load_then_kill(request.getfixturevalue("nodes").a)
        return
    with running_server(backend, tmp_path) as (url, _env):
        admin = (tmp_path / ".tether" / "admin.token").read_text().strip()
        node = Node("single", url, "")
        node.open(admin)
        try:
            node.http.put("/v1/policies", json={"policies": ALLOW}).raise_for_status()
            _load_then_kill(node)
        finally:
            node.http.close()


def _load_then_kill(node: Node) -> None:
    """Two threads decide for the agent, two ask for its tokens, in a loop; the kill comes in
    the middle. Nothing sent after the kill returned is allowed or issued (the request's send
    time is taken before sending: a request counted as late was sent later still)."""
    victim = node.agent(name="victim")
    assert node.allows(victim.id)
    decisions: list[_Sent] = []
    tokens: list[_Sent] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    body = {"subject": {"type": "agent", "id": victim.id}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "search"}}  # fmt: skip

    def decide(http: httpx.Client) -> None:
        sent = time.monotonic()
        response = http.post("/access/v1/evaluation", json=body)
        assert response.status_code == 200, response.text
        decisions.append(_Sent(sent, bool(response.json()["decision"])))

    def token(http: httpx.Client) -> None:
        sent = time.monotonic()
        response = http.post("/oauth/token", data=victim.form, headers={"Authorization": ""})
        assert response.status_code in (200, 400, 401), response.text
        issued = response.json().get("access_token") if response.status_code == 200 else None
        tokens.append(_Sent(sent, issued is not None, issued))

    def loop(step: Callable[[httpx.Client], None]) -> None:
        try:
            with http_client(base_url=node.url, timeout=30,
                             headers=dict(node.http.headers)) as http:  # fmt: skip
                while not stop.is_set():
                    step(http)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(step,), daemon=True)
               for step in (decide, decide, token, token)]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        # Load first: both kinds of request succeed before the kill (the control).
        def warmed() -> bool:
            served = [sum(s.ok for s in sent) for sent in (decisions, tokens)]
            return min(served) >= 5 or stop.is_set()

        assert _until(warmed, 10.0)
        node.post(f"/v1/agents/{victim.id}/kill", reason="under load")
        returned = time.monotonic()

        def enough_after() -> bool:
            late = [sum(s.at > returned for s in sent) for sent in (decisions, tokens)]
            return min(late) >= 10 or stop.is_set()

        assert _until(enough_after, 10.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert sum(d.ok for d in decisions if d.at < returned) >= 5
    assert sum(t.ok for t in tokens if t.at < returned) >= 5
    late_decisions = [d for d in decisions if d.at > returned]
    late_tokens = [t for t in tokens if t.at > returned]
    assert late_decisions
    assert late_tokens
    assert [d for d in late_decisions if d.ok] == []
    assert [t for t in late_tokens if t.ok] == []
    # Every token it was ever given is dead: the kill revoked those issued before it.
    issued = [t.token for t in tokens if t.token is not None]
    assert [t for t in issued if node.introspect(t)["active"]] == []


def test_an_assertion_replayed_at_once_on_both_nodes_gets_one_token(nodes: Nodes) -> None:
    """Issue 14: a ``private_key_jwt`` assertion's ``jti`` is spent in the group commit that
    issues the token, not under a lock per request — and stays single-use across processes:
    eight clients race one assertion, four at each node, and exactly one gets a token; the
    others are refused as a replay (and audited)."""
    agent = nodes.a.post("/v1/agents", 201, **{**AGENT, "name": "asserter"})
    key = ECKey.generate_key("P-256")
    nodes.a.post(f"/v1/agents/{agent['id']}/credentials", 201, type="public_key",
                 jwk=key.as_dict(private=False))  # fmt: skip
    form = assertion_form(assertion(key, agent["id"], PUBLIC_URL, int(time.time())), agent["id"])
    barrier = threading.Barrier(8)
    codes: list[tuple[int, str]] = []
    lock = threading.Lock()

    def race(node: Node) -> None:
        with http_client(base_url=node.url, timeout=30) as http:
            barrier.wait()
            response = http.post("/oauth/token", data=form)
        with lock:
            codes.append((response.status_code, response.json().get("error", "")))

    threads = [threading.Thread(target=race, args=(n,)) for n in [nodes.a, nodes.b] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [(200, "")] + [(401, "invalid_client")] * 7
    failures = nodes.a.http.get(
        "/v1/audit/events",
        params={"type": "client.auth_failed", "agent": agent["id"], "limit": 50},
    ).json()["items"]
    reasons = [event["details"]["reason"] for event in failures]
    assert reasons == ["assertion jti already used (replay)"] * 7
