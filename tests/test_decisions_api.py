"""AuthZEN decisions over HTTP (API.md "Decisions"; ARCHITECTURE.md security invariants 2, 3, 5).

``POST /access/v1/evaluation``, ``POST /access/v1/evaluations`` and
``GET /.well-known/authzen-configuration``, attacked from the outside:

* every answer — allow, deny, approval_required, and Tether's own refusals before Cedar — is a
  ledger event whose id, decision, reasons, policy version, action and resource match the
  answer, and there are exactly as many decision events as answers;
* who may ask: no, broken, expired, foreign, revoked or DPoP-bound-as-Bearer tokens are 401;
  an agent asks only about itself (403 otherwise); a delegated token decides as the acting
  agent with the whole chain, and dies with any member of it;
* state changes made through the API are seen by the very next decision (no cached allows);
* bad input is 422 naming the field (413 when too large) and writes nothing;
* a ledger that cannot be written turns the answer into deny (fail closed), counted in
  ``tether_decisions_failed_closed_total{reason="ledger"}``.

Most cases share one deployment per backend (module scope); each creates the agents it uses
and reads back only the ledger events written since it started. Cases that need their own
clock or break the database get a deployment of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, Key
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from tests.conftest import (
    BACKENDS,
    Api,
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
from tether.api.app import create_app
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services
from tether.credentials.dpop import access_token_hash

RS = "https://rs.example"
START = datetime.fromtimestamp(1_800_000_000, UTC)

POLICIES = """
@id("call-tools")
permit (principal, action == Action::"tool.call", resource);

@id("write-tools")
permit (principal, action == Action::"tool.write", resource);

@id("no-prod-tools")
forbid (principal, action == Action::"tool.call", resource)
when { resource has server && resource.server like "prod*" };

@id("read-for-the-delegator")
permit (principal, action == Action::"dataset.read", resource)
when {
  context.delegated && context has on_behalf_of && context.chain.contains(context.on_behalf_of)
};
"""
APPROVAL = "tether.high-risk-mutating-needs-approval"


# -- deployments ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One deployment per backend with POLICIES in force, shared by the module."""
    tmp = tmp_path_factory.mktemp(f"decisions-{request.param}")
    with backend_for(request.param, tmp) as backend:
        services = build_services(make_settings(backend, tmp / "data"))
        try:
            prepare(services)
            with admin_client(services) as http, env_of(services, http) as e:
                push_policies(http, POLICIES)
                yield e
        finally:
            services.close()


@pytest.fixture
def own(services: Services, client: TestClient) -> Iterator[Env]:
    """A deployment of this test's own (for cases that break the database)."""
    push_policies(client, POLICIES)
    with env_of(services, client) as e:
        yield e


# -- helpers ----------------------------------------------------------------------------------


def new_agent(e: Env, **fields: Any) -> str:
    body = {
        "name": "worker",
        "owner": "admin",
        "purpose": "decision tests",
        "risk_tier": "minimal",
        "scopes": ["read"],
        **fields,
    }
    created = e.http.post("/v1/agents", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def exchange(e: Env, actor: Cred, subject_token: str) -> str:
    """RFC 8693: ``actor`` acts for whoever ``subject_token`` names."""
    got = e.anon.post(
        "/oauth/token",
        data={
            "grant_type": EXCHANGE,
            **actor.form,
            "subject_token": subject_token,
            "subject_token_type": AT,
            "actor_token": token(e, actor),
            "actor_token_type": AT,
        },
    )
    assert got.status_code == 200, got.text
    return str(got.json()["access_token"])


def ask(
    subject: str,
    action: str = "tool.call",
    rtype: str = "Tool",
    rid: str = "search",
    properties: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": subject},
        "action": {"name": action},
        "resource": {"type": rtype, "id": rid, "properties": properties or {}},
        "context": context or {},
    }


def evaluate(e: Env, body: dict[str, Any], token_: str | None = None) -> dict[str, Any]:
    """One evaluation that must be answered (200); returns the AuthZEN answer."""
    got = e.http.post(EVAL, json=body, headers=bearer(token_) if token_ else None)
    assert got.status_code == 200, got.text
    return dict(got.json())


def current_version(e: Env) -> str:
    return str(e.http.get("/v1/policies").json()["version"])


def assert_answer(answer: dict[str, Any], decision: str, reasons: list[str] | None = None) -> None:
    """AuthZEN's shape, with Tether's context: reasons, policy_version, event_id."""
    assert set(answer) == {"decision", "context"}, answer
    ctx = answer["context"]
    assert answer["decision"] is (decision == "allow"), answer
    assert ctx["decision"] == decision, answer
    assert isinstance(ctx["reasons"], list)
    assert isinstance(ctx["policy_version"], str)
    assert ctx["policy_version"]
    assert str(ctx["event_id"]).startswith("evt_"), answer
    if reasons is not None:
        assert sorted(ctx["reasons"]) == sorted(reasons), answer


def assert_recorded(e: Env, since: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Each (request, answer) has its own decision event, matching it; and no other one."""
    events = events_since(e, since, "decision")
    assert len(events) == len(pairs), (len(events), len(pairs))
    by_id = {ev["id"]: ev for ev in events}
    assert len(by_id) == len(pairs)
    for request, answer in pairs:
        ctx = answer["context"]
        ev = by_id.pop(ctx["event_id"])
        assert ev["type"] == "decision"
        assert ev["decision"] == ctx["decision"]
        assert ev["reasons"] == ctx["reasons"]
        assert ev["policy_version"] == ctx["policy_version"]
        assert ev["action"] == request["action"]["name"]
        assert ev["resource"] == {
            "type": request["resource"]["type"],
            "id": request["resource"]["id"],
        }
        if ctx.get("approval_id"):
            assert ev["details"]["approval_id"] == ctx["approval_id"]
        digest = hashlib.sha256(
            orjson.dumps(request.get("context") or {}, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        assert ev["details"]["context_digest"] == digest
    assert by_id == {}


def suspend(e: Env, agent_id: str) -> None:
    done = e.http.post(f"/v1/agents/{agent_id}/suspend", json={"reason": "investigating"})
    assert done.status_code == 200, done.text


def failed_closed(reason: str) -> float:
    value = REGISTRY.get_sample_value("tether_decisions_failed_closed_total", {"reason": reason})
    return value or 0.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(jwt_: str) -> dict[str, Any]:
    body = jwt_.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def sign(header: dict[str, Any], claims: dict[str, Any], key: Key) -> str:
    return jws.serialize_compact(
        header, json.dumps(claims).encode(), key, algorithms=[header["alg"]]
    )


# ===========================================================================================
# Discovery
# ===========================================================================================


def test_authzen_configuration_names_the_endpoints(env: Env) -> None:
    got = env.anon.get("/.well-known/authzen-configuration")
    assert got.status_code == 200, got.text
    assert got.json() == {
        "policy_decision_point": env.base,
        "access_evaluation_endpoint": f"{env.base}{EVAL}",
        "access_evaluations_endpoint": f"{env.base}{EVALS}",
        "search_subject_endpoint": f"{env.base}/access/v1/search/subject",
        "search_resource_endpoint": f"{env.base}/access/v1/search/resource",
        "search_action_endpoint": f"{env.base}/access/v1/search/action",
    }


# ===========================================================================================
# Every answer is in the ledger
# ===========================================================================================


def test_every_kind_of_answer_is_a_matching_ledger_event(env: Env) -> None:
    minimal, high, stopped = new_agent(env), new_agent(env, risk_tier="high"), new_agent(env)
    suspend(env, stopped)
    cases: list[tuple[dict[str, Any], str, list[str], str | None]] = [
        (ask(minimal, context={"ticket": "T-1", "n": 3}), "allow", ["call-tools"], None),
        (ask(minimal, properties={"server": "prod-eu"}), "deny", ["no-prod-tools"], None),
        (ask(minimal, "dataset.write", "Dataset", "sales"), "deny", [], None),  # default deny
        (ask(minimal, "secret.read", "Secret", "db"), "deny", [], None),
        (ask(high, "tool.write"), "approval_required", [APPROVAL, "write-tools"], None),
        (ask(stopped), "deny", ["tether.agent-not-active"], "agent_not_active"),
        (ask(f"agt_{uuid.uuid4().hex[:26]}"), "deny", ["tether.unknown-agent"], "agent_not_found"),
        (ask(minimal, "tool.delete"), "deny", ["tether.unknown-action"], "unknown_action"),
    ]
    since = head(env)
    version = current_version(env)
    pairs = []
    for request, decision, reasons, error in cases:
        answer = evaluate(env, request)
        assert_answer(answer, decision, reasons)
        assert answer["context"]["policy_version"] == version
        if error is not None:
            assert answer["context"]["error"]["code"] == error
        if decision == "approval_required":
            assert answer["context"]["approval_required"] is True
            assert answer["context"]["approval_id"].startswith("apr_")
        pairs.append((request, answer))
    assert_recorded(env, since, pairs)
    unknown = next(
        ev for ev in events_since(env, since, "decision") if "tether.unknown-agent" in ev["reasons"]
    )
    assert unknown["agent_id"] is None  # an unknown id is not filed under any agent
    assert unknown["details"]["subject"] == cases[6][0]["subject"]["id"]


def test_no_permit_means_deny_on_a_fresh_deployment(client: TestClient, api: Api) -> None:
    """Default deny: nothing but the base policies in force, every action is refused."""
    agent = api.agent()
    for action in ("tool.call", "tool.write", "secret.read", "dataset.read", "dataset.write"):
        got = client.post(EVAL, json=ask(agent["id"], action))
        assert got.status_code == 200, got.text
        assert_answer(got.json(), "deny", [])


# ===========================================================================================
# Who may ask
# ===========================================================================================


def _genuine(env: Env) -> str:
    return token(env, credential(env, new_agent(env)))


def _forged(env: Env, key: Key | None = None, **changes: Any) -> str:
    """A genuine token's claims with ``changes``, signed with Tether's key (or ``key``)."""
    genuine = _genuine(env)
    signer = env.services.signing_keys.signer()
    header = {"typ": "at+jwt", "alg": str(signer.alg), "kid": str(signer.kid)}
    return sign(header, {**claims_of(genuine), **changes}, key or signer)


def _unsigned(env: Env) -> str:
    header = {"typ": "at+jwt", "alg": "none"}
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_of(_genuine(env))).encode())}."
    )


def _subject_token(env: Env) -> str:
    """A human's RFC 8693 subject token (typ JWT) is not an access token."""
    agent = new_agent(env)
    minted = env.http.post("/v1/users/admin/subject-tokens", json={"agent": agent})
    assert minted.status_code == 201, minted.text
    return str(minted.json()["subject_token"])


def _revoked_user_token(env: Env) -> str:
    user = env.api.user(f"u{uuid.uuid4().hex[:10]}", role="supervisor")
    listed = env.http.get(f"/v1/users/{user['id']}/tokens").json()["items"]
    assert env.anon.post(EVAL, json=ask("agt_x"), headers=bearer(user["token"])).status_code == 200
    gone = env.http.delete(f"/v1/users/{user['id']}/tokens/{listed[0]['id']}")
    assert gone.status_code == 200, gone.text
    return str(user["token"])


UNAUTHENTICATED: dict[str, Any] = {
    "no token": lambda env: None,
    "garbage": lambda env: "Bearer not-a-token",
    "empty bearer": lambda env: "Bearer ",
    "basic scheme": lambda env: "Basic " + base64.b64encode(b"admin:admin").decode(),
    "unknown user token": lambda env: "Bearer tth_" + secrets.token_urlsafe(32),
    "revoked user token": lambda env: "Bearer " + _revoked_user_token(env),
    "expired access token": lambda env: "Bearer " + _forged(env, exp=1_000_000_000),
    "other issuer": lambda env: "Bearer " + _forged(env, iss="https://evil.example"),
    "signed by another key": lambda env: "Bearer " + _forged(env, key=ECKey.generate_key("P-256")),
    "alg none": lambda env: "Bearer " + _unsigned(env),
    "human subject token": lambda env: "Bearer " + _subject_token(env),
}


@pytest.mark.parametrize("kind", list(UNAUTHENTICATED))
def test_unauthenticated_callers_get_401_and_write_nothing(env: Env, kind: str) -> None:
    agent = new_agent(env)
    authorization = UNAUTHENTICATED[kind](env)
    since = head(env)
    headers = {"Authorization": authorization} if authorization is not None else None
    for path, body in ((EVAL, ask(agent)), (EVALS, {"evaluations": [ask(agent)]})):
        got = env.anon.post(path, json=body, headers=headers)
        assert_error(got, 401, "unauthenticated")
        assert got.headers["WWW-Authenticate"].startswith("Bearer")
    assert events_since(env, since) == []


def test_expired_access_token_is_refused_even_after_it_was_accepted(
    make_services: Callable[..., Services],
) -> None:
    """The verified-claims cache must not outlive the token: a real token, used, then expired."""
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    with admin_client(svc) as http, env_of(svc, http) as e:
        push_policies(http, POLICIES)
        cred = credential(e, new_agent(e))
        access = token(e, cred)
        assert_answer(evaluate(e, ask(cred.agent_id), access), "allow")
        clock.advance(claims_of(access)["exp"] - int(START.timestamp()))  # exactly at exp
        since = head(e)
        assert_error(e.anon.post(EVAL, json=ask(cred.agent_id), headers=bearer(access)), 401)
        assert events_since(e, since) == []
        # A fresh token works again: the refusal was about the token, not the agent.
        assert_answer(evaluate(e, ask(cred.agent_id), token(e, cred)), "allow")


def test_an_agent_asks_only_about_itself(env: Env) -> None:
    me, other = credential(env, new_agent(env)), new_agent(env)
    access = token(env, me)
    since = head(env)
    answer = evaluate(env, ask(me.agent_id, context={"k": "v"}), access)
    assert_answer(answer, "allow", ["call-tools"])
    assert_recorded(env, since, [(ask(me.agent_id, context={"k": "v"}), answer)])
    (ev,) = events_since(env, since, "decision")
    assert ev["actor"] == f"agent:{me.agent_id}"
    assert ev["agent_id"] == me.agent_id
    assert ev["chain"] == [me.agent_id]
    assert ev["on_behalf_of"] is None
    assert ev["details"]["caller"] == f"agent:{me.agent_id}"
    assert ev["details"]["jti"] == claims_of(access)["jti"]
    since = head(env)
    forbidden = env.anon.post(EVAL, json=ask(other), headers=bearer(access))
    assert assert_error(forbidden, 403, "forbidden")["details"] == {"field": "subject.id"}
    batch = {
        "subject": {"type": "agent", "id": me.agent_id},
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "t"},
        "evaluations": [{}, {"subject": {"type": "agent", "id": other}}],
    }
    assert_error(env.anon.post(EVALS, json=batch, headers=bearer(access)), 403, "forbidden")
    assert events_since(env, since) == []  # not even the first, allowed, item


def test_a_suspension_through_the_api_denies_the_very_next_decision(env: Env) -> None:
    cred = credential(env, new_agent(env))
    access = token(env, cred)
    request = ask(cred.agent_id)
    assert_answer(evaluate(env, request), "allow")
    assert_answer(evaluate(env, request, access), "allow")  # its claims are now cached
    suspend(env, cred.agent_id)
    since = head(env)
    for who in (None, access):
        answer = evaluate(env, request, who)
        assert_answer(answer, "deny", ["tether.agent-not-active"])
        assert answer["context"]["error"]["code"] == "agent_not_active"
    resumed = env.http.post(f"/v1/agents/{cred.agent_id}/resume", json={})
    assert resumed.status_code == 200, resumed.text
    again = evaluate(env, request, access)
    assert_answer(again, "allow")
    assert len(events_since(env, since, "decision")) == 3


def test_a_killed_agents_unexpired_token_gets_nothing(env: Env) -> None:
    cred = credential(env, new_agent(env))
    access = token(env, cred)
    assert_answer(evaluate(env, ask(cred.agent_id), access), "allow")
    killed = env.http.post(f"/v1/agents/{cred.agent_id}/kill", json={"reason": "rogue"})
    assert killed.status_code == 200, killed.text
    for who in (access, None):
        got = env.http.post(EVAL, json=ask(cred.agent_id), headers=bearer(who) if who else None)
        if got.status_code == 401:
            continue
        assert got.status_code == 200, got.text
        assert got.json()["decision"] is False
        assert set(got.json()["context"]["reasons"]) <= {
            "tether.agent-not-active",
            "tether.token-revoked",
        }


def test_a_revoked_token_is_denied_and_the_agents_other_tokens_are_not(env: Env) -> None:
    cred = credential(env, new_agent(env))
    revoked, other = token(env, cred), token(env, cred)
    assert_answer(evaluate(env, ask(cred.agent_id), revoked), "allow")
    done = env.anon.post("/oauth/revoke", data={"token": revoked, **cred.form})
    assert done.status_code == 200, done.text
    since = head(env)
    answer = evaluate(env, ask(cred.agent_id), revoked)
    assert_answer(answer, "deny", ["tether.token-revoked"])
    assert answer["context"]["error"]["code"] == "token_revoked"
    assert_answer(evaluate(env, ask(cred.agent_id), other), "allow", ["call-tools"])
    assert len(events_since(env, since, "decision")) == 2


def test_a_delegated_token_decides_as_the_acting_agent_with_the_whole_chain(env: Env) -> None:
    """B acts for A (RFC 8693 ``act``): B is the principal, the chain is [A, B], and the chain
    dies with any member of it."""
    a, b = credential(env, new_agent(env, name="a")), credential(env, new_agent(env, name="b"))
    via_b = exchange(env, b, token(env, a))
    assert claims_of(via_b)["act"] == {"sub": b.agent_id}
    own_b = token(env, b)
    read = ask(b.agent_id, "dataset.read", "Dataset", "sales")
    since = head(env)
    # Cedar sees context.delegated and a chain that contains the delegator.
    answer = evaluate(env, read, via_b)
    assert_answer(answer, "allow", ["read-for-the-delegator"])
    assert_recorded(env, since, [(read, answer)])
    (ev,) = events_since(env, since, "decision")
    assert ev["actor"] == f"agent:{b.agent_id}"
    assert ev["agent_id"] == b.agent_id
    assert ev["chain"] == [a.agent_id, b.agent_id]
    assert ev["on_behalf_of"] == a.agent_id
    # Without the delegation, B alone is not the delegator's reader.
    assert_answer(evaluate(env, read, own_b), "deny", [])
    # The delegated token speaks for B, not as A.
    as_a = env.anon.post(EVAL, json=ask(a.agent_id), headers=bearer(via_b))
    assert_error(as_a, 403, "forbidden")
    # A caller cannot forge the chain through the context (see the bad-input cases, too).
    forged = env.anon.post(
        EVAL,
        headers=bearer(own_b),
        json=ask(
            b.agent_id,
            "dataset.read",
            "Dataset",
            "sales",
            context={"delegated": True, "chain": [a.agent_id, b.agent_id]},
        ),
    )
    assert_error(forged, 422, "validation_error")
    # Suspending A stops the chain at once; B's own token is unaffected.
    suspend(env, a.agent_id)
    for request in (read, ask(b.agent_id)):
        answer = evaluate(env, request, via_b)
        assert_answer(answer, "deny", ["tether.chain-member-not-active"])
        assert answer["context"]["error"]["code"] == "chain_member_not_active"
    assert_answer(evaluate(env, ask(b.agent_id), own_b), "allow")


def test_unknown_agent_and_unknown_action_are_denied_and_recorded(env: Env) -> None:
    agent = new_agent(env)
    since = head(env)
    unknown_agent = ask("agt_00000000000000000000000000")
    unknown_action = ask(agent, "tool.launch_missiles")
    pairs = []
    for request, reason in (
        (unknown_agent, "tether.unknown-agent"),
        (unknown_action, "tether.unknown-action"),
    ):
        answer = evaluate(env, request)
        assert_answer(answer, "deny", [reason])
        pairs.append((request, answer))
    assert_recorded(env, since, pairs)


def test_a_dpop_bound_token_works_only_with_its_proof(env: Env) -> None:
    """RFC 9449 §7.2: a DPoP-bound token presented as a Bearer token is refused."""
    cred = credential(env, new_agent(env))
    key = ECKey.generate_key("P-256")

    def proof(htm: str, htu: str, **claims: Any) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
        body = {
            "jti": uuid.uuid4().hex,
            "htm": htm,
            "htu": htu,
            "iat": int(datetime.now(UTC).timestamp()),
            **claims,
        }
        return sign(header, body, key)

    got = env.anon.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **cred.form},
        headers={"DPoP": proof("POST", env.services.oauth.endpoints.token)},
    )
    assert got.status_code == 200, got.text
    assert got.json()["token_type"] == "DPoP"
    bound = got.json()["access_token"]
    since = head(env)
    assert_error(env.anon.post(EVAL, json=ask(cred.agent_id), headers=bearer(bound)), 401)
    no_proof = {"Authorization": f"DPoP {bound}"}
    wrong_url = {
        **no_proof,
        "DPoP": proof("POST", f"{env.base}{EVALS}", ath=access_token_hash(bound)),
    }
    # the decision fast path, and a FastAPI route that takes agent tokens
    for path in (EVAL, "/v1/approvals/apr_00000000000000000000000000"):
        for headers in (no_proof, wrong_url):
            if path == EVAL:
                refused = env.anon.post(path, json=ask(cred.agent_id), headers=headers)
            else:
                refused = env.anon.get(path, headers=headers)
            error = assert_error(refused, 401, "invalid_dpop_proof")
            # RFC 9449 §7.1: a DPoP challenge naming the error and the accepted algorithms
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith('DPoP error="invalid_dpop_proof", error_description="')
            assert 'algs="' in challenge
            assert "ES256" in challenge.split('algs="')[1]
            assert "\n" not in challenge
            assert error["message"].count("DPoP proof rejected") == 1
    assert events_since(env, since) == []
    good = {**no_proof, "DPoP": proof("POST", f"{env.base}{EVAL}", ath=access_token_hash(bound))}
    answered = env.anon.post(EVAL, json=ask(cred.agent_id), headers=good)
    assert answered.status_code == 200, answered.text
    assert_answer(answered.json(), "allow")


def test_a_token_for_another_audience_is_not_accepted_by_the_decision_api(env: Env) -> None:
    """RFC 8707 / RFC 9068 §4: tokens are audience-bound. A resource server that received an
    agent's token (aud = that server) must not be able to replay it at Tether to ask, open
    approvals for, or consume approvals of, that agent."""
    cred = credential(env, new_agent(env))
    for_rs = token(env, cred, resource=RS)
    assert claims_of(for_rs)["aud"] == RS
    since = head(env)
    got = env.anon.post(EVAL, json=ask(cred.agent_id), headers=bearer(for_rs))
    assert_error(got, 401)
    assert events_since(env, since) == []


# ===========================================================================================
# Bad input: 422 naming the field (413 when too large), and nothing written
# ===========================================================================================


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth):
        value = {"n": value}
    return value


BAD_INPUT: dict[str, tuple[dict[str, Any], str]] = {
    "float in context": ({"context": {"amount": 1.5}}, "context.amount"),
    "null in context": ({"context": {"note": None}}, "context.note"),
    "float inside a list": ({"context": {"items": [1, 2.5]}}, "context.items[1]"),
    "float in a nested record": ({"context": {"a": {"b": 0.1}}}, "context.a.b"),
    "integer beyond 64 bits": ({"context": {"big": 2**63}}, "context.big"),
    "nested too deeply": ({"context": _nested(20)}, "context" + ".n" * 17),
    "float in properties": (
        {"resource": {"type": "Tool", "id": "t", "properties": {"weight": 0.5}}},
        "resource.properties.weight",
    ),
    "null in properties": (
        {"resource": {"type": "Tool", "id": "t", "properties": {"server": None}}},
        "resource.properties.server",
    ),
    "reserved context key chain": ({"context": {"chain": ["agt_x"]}}, "context.chain"),
    "reserved context key delegated": ({"context": {"delegated": True}}, "context.delegated"),
    "reserved context key on_behalf_of": (
        {"context": {"on_behalf_of": "usr_x"}},
        "context.on_behalf_of",
    ),
    "extension value Cedar cannot read in context": (
        {"context": {"ip": {"__extn": {"fn": "ip", "arg": "not an address"}}}},
        "context",
    ),
    "extension value Cedar cannot read in properties": (
        {
            "resource": {
                "type": "Tool",
                "id": "t",
                "properties": {"ip": {"__extn": {"fn": "ip", "arg": "not an address"}}},
            }
        },
        "resource.properties",
    ),
    "subject is a user": ({"subject": {"type": "user", "id": "admin"}}, "subject.type"),
    "resource is an action": ({"resource": {"type": "Action", "id": "tool.call"}}, "resource.type"),
    "resource is a namespaced action": (
        {"resource": {"type": "Tether::Action", "id": "x"}},
        "resource.type",
    ),
    "resource is a role": ({"resource": {"type": "Role", "id": "admins"}}, "resource.type"),
    "resource type is not a name": (
        {"resource": {"type": 'Tool::"x"', "id": "x"}},
        "resource.type",
    ),
    "action name missing": ({"action": {}}, "action.name"),
    "unknown member": ({"extra": 1}, "extra"),
    "subject id too long": ({"subject": {"type": "agent", "id": "a" * 65}}, "subject.id"),
    "context not an object": ({"context": ["a"]}, "context"),
}


def _path(field: str) -> str:
    """``a.b[1]`` and ``a.b.1`` name the same member (Tether's and pydantic's spelling)."""
    return re.sub(r"\[(\d+)\]", r".\1", field)


def _named(error: dict[str, Any]) -> set[str]:
    """Every field a 422 names: its headline field and each of its listed errors."""
    details = error["details"]
    return {_path(f) for f in [details["field"], *(e["field"] for e in details.get("errors", []))]}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_422_naming_the_field_and_writes_nothing(env: Env, case: str) -> None:
    agent = new_agent(env)
    change, field = BAD_INPUT[case]
    body = {**ask(agent), **change}
    since = head(env)
    error = assert_error(env.http.post(EVAL, json=body), 422)
    named = _named(error)
    assert _path(field) in named, error
    assert _path(field).startswith(_path(error["details"]["field"])), error  # it or its parent
    # The same item inside a batch refuses the whole batch, valid items included.
    batch = {"evaluations": [ask(agent), body]}
    error = assert_error(env.http.post(EVALS, json=batch), 422)
    assert any(name.endswith(_path(field)) for name in _named(error)), error
    assert events_since(env, since) == []


def test_a_bad_batch_item_is_named_by_its_index(env: Env) -> None:
    agent = new_agent(env)
    since = head(env)
    items = [ask(agent), {**ask(agent), "context": {"amount": 1.5}}, ask(agent)]
    error = assert_error(env.http.post(EVALS, json={"evaluations": items}), 422)
    assert _path(error["details"]["field"]) == "evaluations.1.context.amount", error
    reserved = [ask(agent), ask(agent), {**ask(agent), "context": {"chain": []}}]
    error = assert_error(env.http.post(EVALS, json={"evaluations": reserved}), 422)
    assert _path(error["details"]["field"]) == "evaluations.2.context.chain", error
    assert error["message"].startswith("evaluations[2]: "), error
    assert events_since(env, since) == []


def test_an_oversized_body_is_413_and_writes_nothing(env: Env) -> None:
    agent = new_agent(env)
    limit = env.services.settings.max_body_bytes
    since = head(env)
    for path, body in (
        (EVAL, ask(agent, context={"blob": "x" * (limit + 1)})),
        (EVALS, {"evaluations": [ask(agent, rid=f"t{i}") for i in range(limit // 100)]}),
    ):
        error = assert_error(env.http.post(path, json=body), 413, "payload_too_large")
        assert error["details"]["field"] == "body"
    assert events_since(env, since) == []


def test_malformed_json_is_400_and_writes_nothing(env: Env) -> None:
    since = head(env)
    got = env.http.post(EVAL, content=b'{"subject": ', headers={"Content-Type": "application/json"})
    assert_error(got, 400, "malformed_json")
    assert events_since(env, since) == []


@pytest.mark.parametrize("server", [["prod-eu"], 7, {"name": "prod-eu"}])
def test_an_ill_typed_property_cannot_switch_a_forbid_off(env: Env, server: Any) -> None:
    """The schema says ``Tool.server: String``. Sent as anything else, ``resource.server like
    "prod*"`` errors, Cedar skips the erroring forbid, and ``call-tools`` allows. Tether must
    fail closed: 422 naming resource.properties.server, or deny."""
    agent = new_agent(env)
    assert_answer(evaluate(env, ask(agent, properties={"server": "prod-eu"})), "deny")
    got = env.http.post(EVAL, json=ask(agent, properties={"server": server}))
    if got.status_code == 422:
        assert got.json()["error"]["details"]["field"] == "resource.properties.server"
    else:
        assert got.status_code == 200, got.text
        assert got.json()["decision"] is False, got.json()


# ===========================================================================================
# The batch form
# ===========================================================================================


def _merged(body: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """AuthZEN: an item's own subject/action/resource/context replace the batch defaults."""
    return {
        part: item.get(part, body.get(part, {}))
        for part in ("subject", "action", "resource", "context")
    }


def test_batch_defaults_and_overrides_are_each_answered_and_recorded(env: Env) -> None:
    mine, other = new_agent(env), new_agent(env, risk_tier="high")
    body: dict[str, Any] = {
        "subject": {"type": "agent", "id": mine},
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "search", "properties": {"server": "dev"}},
        "context": {"ticket": "T-1"},
        "evaluations": [
            {},
            {"context": {"ticket": "T-2", "attempt": 2}},
            {"resource": {"type": "Tool", "id": "deploy", "properties": {"server": "prod-1"}}},
            {"action": {"name": "dataset.write"}, "resource": {"type": "Dataset", "id": "sales"}},
            {"subject": {"type": "agent", "id": other}, "action": {"name": "tool.write"}},
            {"action": {"name": "no.such.action"}},
        ],
    }
    expected = [
        ("allow", ["call-tools"]),
        ("allow", ["call-tools"]),
        ("deny", ["no-prod-tools"]),
        ("deny", []),
        ("approval_required", [APPROVAL, "write-tools"]),
        ("deny", ["tether.unknown-action"]),
    ]
    since = head(env)
    got = env.http.post(EVALS, json=body)
    assert got.status_code == 200, got.text
    answers = got.json()["evaluations"]
    assert set(got.json()) == {"evaluations"}
    assert len(answers) == len(expected)
    for answer, (decision, reasons) in zip(answers, expected, strict=True):
        assert_answer(answer, decision, reasons)
    requests = [_merged(body, item) for item in body["evaluations"]]
    assert_recorded(env, since, list(zip(requests, answers, strict=True)))


def test_a_batch_without_items_is_one_evaluation_of_the_defaults(env: Env) -> None:
    agent = new_agent(env)
    since = head(env)
    got = env.http.post(EVALS, json=ask(agent))
    assert got.status_code == 200, got.text
    (answer,) = got.json()["evaluations"]
    assert_answer(answer, "allow", ["call-tools"])
    assert_recorded(env, since, [(ask(agent), answer)])


def test_a_batch_item_without_subject_or_default_is_422(env: Env) -> None:
    agent = new_agent(env)
    since = head(env)
    body = {
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "t"},
        "evaluations": [{"subject": {"type": "agent", "id": agent}}, {}],
    }
    error = assert_error(env.http.post(EVALS, json=body), 422)
    assert error["details"]["field"] == "evaluations[1].subject"
    too_many = {**ask(agent), "evaluations": [{}] * 1001}
    assert_error(env.http.post(EVALS, json=too_many), 422)
    unknown = {**ask(agent), "options": {"evaluations_semantic": "deny_all"}}
    error = assert_error(env.http.post(EVALS, json=unknown), 422)
    assert error["details"]["field"] == "options.evaluations_semantic"
    assert events_since(env, since) == []


SEMANTICS = {
    # items: True = a request that is allowed, False = one that is denied
    "execute_all": ([True, False, True, False], 4),
    "deny_on_first_deny": ([True, True, False, True, False], 3),
    "permit_on_first_permit": ([False, False, True, False, True], 3),
}


@pytest.mark.parametrize("semantic", list(SEMANTICS))
def test_short_circuit_semantics_answer_and_record_only_up_to_the_stop(
    env: Env, semantic: str
) -> None:
    agent = new_agent(env)
    pattern, answered = SEMANTICS[semantic]
    items = [
        {
            "resource": {
                "type": "Tool",
                "id": f"t{i}",
                "properties": {"server": "dev" if allowed else "prod"},
            }
        }
        for i, allowed in enumerate(pattern)
    ]
    body = {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": "tool.call"},
        "evaluations": items,
        "options": {"evaluations_semantic": semantic},
    }
    since = head(env)
    got = env.http.post(EVALS, json=body)
    assert got.status_code == 200, got.text
    answers = got.json()["evaluations"]
    assert [a["decision"] for a in answers] == pattern[:answered]
    for answer, allowed in zip(answers, pattern, strict=False):
        assert_answer(answer, "allow" if allowed else "deny")
    requests = [_merged(body, item) for item in items[:answered]]
    assert_recorded(env, since, list(zip(requests, answers, strict=True)))


# ===========================================================================================
# Fail closed when the ledger cannot be written
# ===========================================================================================


@contextmanager
def ledger_unwritable(svc: Services) -> Iterator[None]:
    """Every INSERT into audit_events fails, through a trigger made on a separate connection;
    reads keep working, so the ledger can be verified once the trigger is gone."""
    if svc.db.dialect == "sqlite":
        create = [
            "CREATE TRIGGER test_ledger_offline BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'ledger offline (test)'); END"
        ]
        drop = ["DROP TRIGGER test_ledger_offline"]
    else:
        create = [
            "CREATE FUNCTION test_ledger_offline() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'ledger offline (test)'; END $$",
            "CREATE TRIGGER test_ledger_offline BEFORE INSERT ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION test_ledger_offline()",
        ]
        drop = [
            "DROP TRIGGER test_ledger_offline ON audit_events",
            "DROP FUNCTION test_ledger_offline()",
        ]
    with svc.db.engine.begin() as conn:
        for sql in create:
            conn.exec_driver_sql(sql)
    try:
        yield
    finally:
        with svc.db.engine.begin() as conn:
            for sql in drop:
                conn.exec_driver_sql(sql)


def _metric(e: Env, name: str, labels: str) -> float:
    text = e.anon.get("/metrics").text
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_an_unwritable_ledger_turns_every_answer_into_deny(own: Env) -> None:
    e = own
    allowed, stopped = new_agent(e), new_agent(e)
    suspend(e, stopped)
    assert_answer(evaluate(e, ask(allowed)), "allow")  # control
    since = head(e)
    counter = failed_closed("ledger")
    scraped = _metric(e, "tether_decisions_failed_closed_total", 'reason="ledger"')
    with ledger_unwritable(e.services):
        single = evaluate(e, ask(allowed))
        batch = e.http.post(
            EVALS, json={"evaluations": [ask(allowed), ask(stopped), ask(allowed, "dataset.write")]}
        )
        assert batch.status_code == 200, batch.text
        answers = [single, *batch.json()["evaluations"]]
        for answer in answers:
            assert answer["decision"] is False, answer
            assert answer["context"]["decision"] == "deny"
            assert answer["context"]["reasons"] == ["tether.ledger-unavailable"]
            assert answer["context"]["error"]["code"] == "ledger_unavailable"
            assert answer["context"]["event_id"] is None  # nothing was recorded
    assert failed_closed("ledger") == counter + len(answers)
    assert _metric(e, "tether_decisions_failed_closed_total", 'reason="ledger"') == (
        scraped + len(answers)
    )
    assert events_since(e, since) == []
    # Restored: decisions are recorded again and the chain verifies end to end.
    assert_answer(evaluate(e, ask(allowed)), "allow")
    verified = e.http.get("/v1/audit/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is True, verified.json()


def test_an_unwritable_ledger_denies_approval_checkpoints_too(services: Services) -> None:
    with TestClient(create_app(services), raise_server_exceptions=False) as http:
        http.headers["Authorization"] = (
            f"Bearer {services.settings.admin_token_path.read_text().strip()}"
        )
        push_policies(http, POLICIES)
        with env_of(services, http) as e:
            high = new_agent(e, risk_tier="high")
            counter = failed_closed("ledger")
            with ledger_unwritable(services):
                got = http.post(EVAL, json=ask(high, "tool.write"))
            assert got.status_code == 200, got.text
            assert got.json()["decision"] is False
            assert got.json()["context"]["reasons"] == ["tether.ledger-unavailable"]
            assert failed_closed("ledger") == counter + 1
