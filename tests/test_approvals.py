"""Approval checkpoints over HTTP (API.md "Approvals"; ARCHITECTURE.md security invariant 4).

A high-risk agent's mutating request (``tool.write``, permitted by policy) is
``approval_required`` under the base policy ``tether.high-risk-mutating-needs-approval``.
What is pinned here:

* one pending approval per exact request (asking again returns the same one); once approved,
  the identical request is allowed exactly once — also under concurrency — and a request that
  differs in context, resource or properties never consumes it;
* denied, expired, used and cancelled (by a kill) approvals allow nothing and cannot be
  approved again (409 ``approval_not_pending``);
* only a human with authority over the agent decides: its owner, a listed supervisor, an
  admin — not another supervisor (who cannot even see it), not an auditor, not an agent, and
  not the human the agent acts for unless ``approval_allow_self_approval`` is on;
* the agent may poll (and long-poll) its own approval, never another agent's;
* an agent cannot flood its supervisors: past ``approval_max_pending_per_agent`` it is denied
  with ``tether.approval-flood`` and an ``approval.flood`` ledger event;
* every request, approve and deny is a ledger event.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import (
    BACKENDS,
    admin_client,
    assert_error,
    backend_for,
    bearer,
    make_settings,
)
from tests.pdp import (
    AT,
    EVAL,
    EVALS,
    EXCHANGE,
    Cred,
    Env,
    credential,
    env_of,
    events_since,
    head,
    push_policies,
    token,
)
from tether.approvals.models import ApprovalRow
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services

JWT = "urn:ietf:params:oauth:token-type:jwt"
APPROVAL = "tether.high-risk-mutating-needs-approval"
START = datetime.fromtimestamp(1_800_000_000, UTC)

POLICIES = """
@id("call-tools")
permit (principal, action == Action::"tool.call", resource);

@id("write-tools")
permit (principal, action == Action::"tool.write", resource);
"""


# -- deployments ------------------------------------------------------------------------------


def _deploy(services: Services, *, push: bool = True) -> Iterator[Env]:
    with admin_client(services) as http, env_of(services, http) as e:
        if push:
            push_policies(http, POLICIES)
        yield e


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One deployment per backend (default settings), shared by the module."""
    tmp = tmp_path_factory.mktemp(f"approvals-{request.param}")
    with backend_for(request.param, tmp) as backend:
        services = build_services(make_settings(backend, tmp / "data"))
        try:
            prepare(services)
            yield from _deploy(services)
        finally:
            services.close()


@pytest.fixture
def deploy(make_services: Callable[..., Services]) -> Iterator[Callable[..., Env]]:
    """A deployment of this test's own, with other settings or a frozen clock."""
    stack: list[Iterator[Env]] = []

    def build(*, push: bool = True, **options: Any) -> Env:
        gen = _deploy(make_services(**options), push=push)
        stack.append(gen)
        return next(gen)

    yield build
    for gen in reversed(stack):
        next(gen, None)


# -- helpers ----------------------------------------------------------------------------------


def user(e: Env, role: str = "supervisor") -> dict[str, Any]:
    return e.api.user(f"{role[:3]}{uuid.uuid4().hex[:10]}", role=role)


def new_agent(e: Env, **fields: Any) -> str:
    body = {
        "name": "payer",
        "owner": "admin",
        "purpose": "approval tests",
        "risk_tier": "high",
        "scopes": ["read"],
        **fields,
    }
    created = e.http.post("/v1/agents", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def write(
    agent: str,
    rid: str = "ledger-db",
    properties: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The request under approval: a high-risk agent writes with a tool."""
    return {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": "tool.write"},
        "resource": {"type": "Tool", "id": rid, "properties": properties or {"server": "pay"}},
        "context": context if context is not None else {"amount": 120, "currency": "EUR"},
    }


def evaluate(e: Env, body: dict[str, Any], access: str | None = None) -> dict[str, Any]:
    got = e.http.post(EVAL, json=body, headers=bearer(access) if access else None)
    assert got.status_code == 200, got.text
    return dict(got.json())


def pending(e: Env, body: dict[str, Any], access: str | None = None) -> str:
    """Evaluate; the answer must be approval_required; returns its approval id."""
    answer = evaluate(e, body, access)
    ctx = answer["context"]
    assert answer["decision"] is False, answer
    assert ctx["decision"] == "approval_required", answer
    assert ctx["approval_required"] is True
    assert ctx["approval_status"] == "pending"
    assert sorted(ctx["reasons"]) == [APPROVAL, "write-tools"]
    assert str(ctx["event_id"]).startswith("evt_")
    return str(ctx["approval_id"])


def allowed_once(e: Env, body: dict[str, Any], approval_id: str) -> None:
    answer = evaluate(e, body)
    assert answer["decision"] is True, answer
    assert answer["context"]["decision"] == "allow"
    assert answer["context"]["approval_id"] == approval_id


def approval(e: Env, approval_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    got = e.http.get(f"/v1/approvals/{approval_id}", headers=headers)
    assert got.status_code == 200, got.text
    return dict(got.json())


def decide(e: Env, approval_id: str, verdict: str, who: str | None = None, **body: Any) -> Any:
    """``POST /v1/approvals/{id}/approve|deny`` as ``who`` (a user token; admin by default)."""
    headers = bearer(who) if who else None
    return e.http.post(f"/v1/approvals/{approval_id}/{verdict}", json=body, headers=headers)


def approve(e: Env, approval_id: str, who: str | None = None) -> dict[str, Any]:
    got = decide(e, approval_id, "approve", who, note="looks right")
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "approved"
    return dict(got.json())


def approvals_of(e: Env, agent: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"agent": agent, **({"status": status} if status else {})}
    listed = e.http.get("/v1/approvals", params=params)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["items"])


def admin_ref(e: Env) -> str:
    me = e.http.get("/v1/whoami")
    assert me.status_code == 200, me.text
    return f"user:{me.json()['id']}"


# ===========================================================================================
# The state machine: pending -> approved -> used (once)
# ===========================================================================================


def test_an_approved_request_is_allowed_exactly_once(env: Env) -> None:
    agent = new_agent(env)
    request = write(agent)
    since = head(env)
    first = pending(env, request)
    shown = approvals_of(env, agent, "pending")
    assert [a["id"] for a in shown] == [first]
    assert shown[0]["agent_id"] == agent
    assert shown[0]["request"]["context"] == request["context"]
    # Asking again does not open a second approval.
    assert pending(env, request) == first
    assert [a["id"] for a in approvals_of(env, agent)] == [first]
    requested = events_since(env, since, "approval.requested")
    assert [ev["details"]["approval_id"] for ev in requested] == [first]
    # Approved by an admin: the identical request passes, once.
    since = head(env)
    decided = approve(env, first)
    assert decided["decided_by"] == admin_ref(env)
    assert decided["note"] == "looks right"
    (ev,) = events_since(env, since, "approval.approved")
    assert (ev["actor"], ev["agent_id"], ev["decision"]) == (admin_ref(env), agent, "approved")
    assert ev["details"]["approval_id"] == first
    allowed_once(env, request, first)
    used = approval(env, first)
    assert used["status"] == "used"
    assert used["used_at"] is not None
    # ...and never again: the next identical request needs a new approval.
    second = pending(env, request)
    assert second != first
    for verdict in ("approve", "deny"):
        assert_error(decide(env, first, verdict), 409, "approval_not_pending")
    assert approval(env, first)["status"] == "used"
    decisions = events_since(env, since, "decision")
    assert [d["decision"] for d in decisions] == ["allow", "approval_required"]
    assert decisions[0]["details"]["approval_id"] == first
    with env.services.db.read() as s:  # the approval names the decision that used it
        row = s.get(ApprovalRow, first)
        assert row is not None
        assert row.used_event_id == decisions[0]["id"]


def test_concurrent_identical_requests_consume_an_approval_once(env: Env) -> None:
    agent = new_agent(env)
    request = write(agent)
    approve(env, pending(env, request))

    def ask() -> dict[str, Any]:
        return evaluate(env, request)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: ask(), range(6)))
    assert sum(a["decision"] for a in answers) == 1, answers
    assert {a["context"]["decision"] for a in answers} == {"allow", "approval_required"}


def test_a_different_request_does_not_consume_the_approval(env: Env) -> None:
    """The approval is bound to the digest of subject, chain, action, resource and context."""
    agent = new_agent(env)
    request = write(agent)
    granted = pending(env, request)
    approve(env, granted)
    others = [
        write(agent, context={"amount": 9_999, "currency": "EUR"}),
        write(agent, context={}),
        write(agent, rid="other-db"),
        write(agent, properties={"server": "pay", "mutating": True}),
    ]
    opened = {pending(env, other) for other in others}
    assert granted not in opened
    assert len(opened) == len(others)
    assert approval(env, granted)["status"] == "approved"
    # The same request with its context keys in another order is the same request.
    reordered = {**request, "context": {"currency": "EUR", "amount": 120}}
    allowed_once(env, reordered, granted)


def test_a_denied_approval_allows_nothing(env: Env) -> None:
    agent = new_agent(env)
    request = write(agent)
    refused = pending(env, request)
    since = head(env)
    denied = decide(env, refused, "deny", note="not this month")
    assert denied.status_code == 200, denied.text
    assert denied.json()["status"] == "denied"
    assert denied.json()["decided_by"] == admin_ref(env)
    (ev,) = events_since(env, since, "approval.denied")
    assert (ev["agent_id"], ev["decision"], ev["details"]["approval_id"]) == (
        agent,
        "denied",
        refused,
    )
    assert_error(decide(env, refused, "approve"), 409, "approval_not_pending")
    assert approval(env, refused)["status"] == "denied"
    again = pending(env, request)  # still not allowed: a fresh approval is needed
    assert again != refused


def test_an_approval_expires_pending_or_approved(deploy: Callable[..., Env]) -> None:
    clock = FrozenClock(START)
    e = deploy(clock=clock, approval_ttl_seconds=60)
    agent = new_agent(e)
    request = write(agent)
    stale = pending(e, request)
    assert approval(e, stale)["expires_at"] == "2027-01-15T08:01:00Z"
    clock.advance(61)
    assert approval(e, stale)["status"] == "expired"
    assert approvals_of(e, agent, "pending") == []
    assert [a["id"] for a in approvals_of(e, agent, "expired")] == [stale]
    since = head(e)
    refused = assert_error(decide(e, stale, "approve"), 409, "approval_not_pending")
    assert refused["details"] == {"status": "expired"}
    assert events_since(e, since, "approval.approved") == []
    # the refusal records the expiry it found (not rolled back with the refusal)
    (expired,) = events_since(e, since, "approval.expired")
    assert expired["details"]["approval_id"] == stale
    fresh = pending(e, request)  # not allowed; a new approval opens
    assert fresh != stale
    # Approved, but used too late: still not allowed.
    approve(e, fresh)
    clock.advance(61)
    assert approval(e, fresh)["status"] == "expired"
    third = pending(e, request)
    assert third not in (stale, fresh)


# ===========================================================================================
# Who may decide
# ===========================================================================================


def test_only_a_human_with_authority_over_the_agent_decides(env: Env) -> None:
    owner, listed, stranger = user(env), user(env), user(env)
    auditor = user(env, "auditor")
    agent = new_agent(env, owner=owner["username"], supervisors=[listed["username"]])
    access = token(env, credential(env, agent))
    first, second = pending(env, write(agent)), pending(env, write(agent, rid="b"))
    since = head(env)
    before = approval(env, first)
    # A supervisor of other agents cannot even see it.
    for verdict in ("approve", "deny"):
        assert_error(decide(env, first, verdict, stranger["token"]), 404, "approval_not_found")
    assert_error(env.http.get(f"/v1/approvals/{first}", headers=bearer(stranger["token"])), 404)
    listed_for_stranger = env.http.get("/v1/approvals", headers=bearer(stranger["token"]))
    assert listed_for_stranger.json()["items"] == []
    # An auditor sees it, but decides nothing.
    assert approval(env, first, bearer(auditor["token"]))["status"] == "pending"
    assert_error(decide(env, first, "approve", auditor["token"]), 403, "forbidden")
    # The agent itself is not a human: its access token is no user token.
    assert_error(decide(env, first, "approve", access), 401, "unauthenticated")
    assert_error(env.anon.post(f"/v1/approvals/{first}/approve", json={}), 401)
    assert approval(env, first) == before
    assert events_since(env, since) == []
    # Its owner and a listed supervisor do.
    assert approve(env, first, owner["token"])["decided_by"] == f"user:{owner['id']}"
    assert approve(env, second, listed["token"])["decided_by"] == f"user:{listed['id']}"
    for granted in (first, second):
        assert approval(env, granted, bearer(owner["token"]))["status"] == "approved"


def test_approve_and_deny_racing_one_wins(env: Env) -> None:
    agent = new_agent(env)
    contested = pending(env, write(agent))
    since = head(env)
    barrier = threading.Barrier(2)

    def race(verdict: str) -> int:
        barrier.wait()
        return int(decide(env, contested, verdict).status_code)

    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = sorted(pool.map(race, ["approve", "deny"]))
    assert statuses == [200, 409]
    final = approval(env, contested)["status"]
    assert final in ("approved", "denied")
    decided = [ev for ev in events_since(env, since) if ev["type"].startswith("approval.")]
    assert [ev["decision"] for ev in decided] == [final]


def _delegated_by_human(e: Env, human: dict[str, Any], cred: Cred) -> str:
    """``human`` lets the agent act for them (subject token, RFC 8693 exchange)."""
    minted = e.http.post(
        f"/v1/users/{human['id']}/subject-tokens",
        json={"agent": cred.agent_id, "scopes": ["read"]},
        headers=bearer(human["token"]),
    )
    assert minted.status_code == 201, minted.text
    got = e.anon.post(
        "/oauth/token",
        data={
            "grant_type": EXCHANGE,
            **cred.form,
            "subject_token": minted.json()["subject_token"],
            "subject_token_type": JWT,
            "actor_token": token(e, cred),
            "actor_token_type": AT,
        },
    )
    assert got.status_code == 200, got.text
    return str(got.json()["access_token"])


def test_the_human_an_agent_acts_for_does_not_approve_its_request(
    deploy: Callable[..., Env],
) -> None:
    """Alice supervises the agent and delegated to it: its request on her behalf needs
    someone else — unless a node runs with ``approval_allow_self_approval``."""
    strict = deploy()
    alice, bob = user(strict), user(strict)
    agent = new_agent(strict, owner=alice["username"], supervisors=[bob["username"]])
    cred = credential(strict, agent)
    for_alice = _delegated_by_human(strict, alice, cred)
    first = pending(strict, write(agent), for_alice)
    shown = approval(strict, first)
    assert shown["on_behalf_of"] == alice["id"]
    assert shown["request"]["chain"] == [alice["id"], agent]
    since = head(strict)
    for verdict in ("approve", "deny"):
        assert_error(decide(strict, first, verdict, alice["token"]), 403, "forbidden")
    assert approval(strict, first) == shown
    assert events_since(strict, since) == []
    approve(strict, first, bob["token"])
    answer = evaluate(strict, write(agent), for_alice)
    assert answer["decision"] is True, answer
    # A second node on the same database, configured to allow it: there alice may approve.
    second = pending(strict, write(agent), for_alice)
    permissive = deploy(approval_allow_self_approval=True, push=False)
    assert approve(permissive, second, alice["token"])["decided_by"] == f"user:{alice['id']}"
    assert evaluate(strict, write(agent), for_alice)["decision"] is True


# ===========================================================================================
# The agent's view
# ===========================================================================================


def test_an_agent_polls_its_own_approval_and_only_its_own(env: Env) -> None:
    mine, theirs = credential(env, new_agent(env)), credential(env, new_agent(env))
    my_token, their_token = token(env, mine), token(env, theirs)
    waiting = pending(env, write(mine.agent_id), my_token)
    other = pending(env, write(theirs.agent_id), their_token)
    assert approval(env, waiting, bearer(my_token))["status"] == "pending"
    assert_error(
        env.anon.get(f"/v1/approvals/{other}", headers=bearer(my_token)), 404, "approval_not_found"
    )
    assert_error(env.anon.get(f"/v1/approvals/{other}?wait=1", headers=bearer(my_token)), 404)
    listed = env.anon.get("/v1/approvals", headers=bearer(my_token))
    assert [a["id"] for a in listed.json()["items"]] == [waiting]
    # A short wait with nothing happening returns it still pending.
    started = time.monotonic()
    polled = env.anon.get(f"/v1/approvals/{waiting}?wait=0.5", headers=bearer(my_token))
    assert polled.json()["status"] == "pending"
    assert time.monotonic() - started >= 0.4
    # A long poll returns as soon as a human approves, not at the end of the wait.
    approver = threading.Timer(0.3, lambda: approve(env, waiting))
    started = time.monotonic()
    approver.start()
    try:
        polled = env.anon.get(f"/v1/approvals/{waiting}?wait=10", headers=bearer(my_token))
    finally:
        approver.join()
    assert polled.status_code == 200, polled.text
    assert polled.json()["status"] == "approved"
    assert time.monotonic() - started < 5
    answer = evaluate(env, write(mine.agent_id), my_token)
    assert (answer["decision"], answer["context"]["approval_id"]) == (True, waiting)


# ===========================================================================================
# Floods, kills, and the ledger
# ===========================================================================================


def test_an_agent_cannot_flood_its_supervisors(deploy: Callable[..., Env]) -> None:
    e = deploy(approval_max_pending_per_agent=3)
    agent, bystander = new_agent(e), new_agent(e)
    opened = [pending(e, write(agent, rid=f"db-{i}")) for i in range(3)]
    since = head(e)
    answer = evaluate(e, write(agent, rid="db-3"))
    ctx = answer["context"]
    assert answer["decision"] is False
    assert ctx["decision"] == "deny"
    assert "tether.approval-flood" in ctx["reasons"]
    assert ctx["error"]["code"] == "approval_flood"
    assert "approval_id" not in ctx
    (flood,) = events_since(e, since, "approval.flood")
    assert (flood["agent_id"], flood["action"], flood["outcome"]) == (
        agent,
        "tool.write",
        "refused",
    )
    (decision,) = events_since(e, since, "decision")
    assert (decision["id"], decision["decision"]) == (ctx["event_id"], "deny")
    assert len(approvals_of(e, agent, "pending")) == 3
    # Repeating a request that already waits is not a new one; other agents are unaffected.
    assert pending(e, write(agent, rid="db-0")) == opened[0]
    pending(e, write(bystander))
    # Once a human decides one, there is room again.
    assert decide(e, opened[1], "deny").status_code == 200
    pending(e, write(agent, rid="db-3"))


def test_killing_an_agent_cancels_its_open_approvals(env: Env) -> None:
    agent = new_agent(env)
    request = write(agent)
    open_one = pending(env, write(agent, rid="other"))
    granted = pending(env, request)
    approve(env, granted)
    killed = env.http.post(f"/v1/agents/{agent}/kill", json={"reason": "rogue"})
    assert killed.status_code == 200, killed.text
    assert killed.json()["cut_off"]["approvals"] == 2
    for cancelled in (open_one, granted):
        assert approval(env, cancelled)["status"] == "cancelled"
        assert_error(decide(env, cancelled, "approve"), 409, "approval_not_pending")
    answer = evaluate(env, request)
    assert answer["decision"] is False
    assert answer["context"]["reasons"] == ["tether.agent-not-active"]
    assert approval(env, granted)["used_at"] is None


def test_a_cancellation_by_kill_is_in_the_ledger(env: Env) -> None:
    agent = new_agent(env)
    waiting = pending(env, write(agent))
    since = head(env)
    assert env.http.post(f"/v1/agents/{agent}/kill", json={"reason": "rogue"}).status_code == 200
    assert approval(env, waiting)["status"] == "cancelled"
    mentioned = [ev for ev in events_since(env, since) if waiting in str(ev["details"])]
    assert mentioned, "no ledger event records that the approval was cancelled"


def test_permit_on_first_permit_stops_at_an_approved_request(env: Env) -> None:
    agent = new_agent(env)
    request = write(agent)
    approve(env, pending(env, request))
    since = head(env)
    batch = {
        "subject": request["subject"],
        "evaluations": [
            {k: v for k, v in request.items() if k != "subject"},
            {"action": {"name": "tool.write"}, "resource": {"type": "Tool", "id": "another"}},
        ],
        "options": {"evaluations_semantic": "permit_on_first_permit"},
    }
    got = env.http.post(EVALS, json=batch)
    assert got.status_code == 200, got.text
    answers = got.json()["evaluations"]
    assert answers[0]["decision"] is True
    assert len(answers) == 1, answers
    assert len(events_since(env, since, "decision")) == 1


def test_a_notifier_failure_does_not_turn_a_recorded_checkpoint_into_an_error(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval and its decision event are committed before announce(); if announcing
    fails, the agent still gets its approval_required answer with the approval's id."""

    def broken(*_: Any) -> None:
        raise RuntimeError("notifier down")

    monkeypatch.setattr(env.services.approvals, "announce", broken)
    approval_id = pending(env, write(new_agent(env)))
    assert approval(env, approval_id)["status"] == "pending"
