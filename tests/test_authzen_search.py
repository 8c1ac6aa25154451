"""AuthZEN search over HTTP (Authorization API 1.0 §8; issue 16 item 8):
``POST /access/v1/search/{resource,action,subject}``.

* differential: for every subject, action and resource type, the resource search's results are
  exactly the candidates an evaluation allows, and its ``approval_required`` exactly those an
  evaluation answers approval_required for; the action and subject searches likewise for every
  resource and every action. Candidates are derived here, not by the code under test: the
  agents, the secrets with the labels a read is decided with, the entities the policies name.
  The evaluations are an ``/access/v1/evaluations`` batch per subject, held to single
  ``/access/v1/evaluation`` answers on a random sample;
* pages: any limit, followed to the empty ``next_token``, gives the one-page answer in the
  same order with nothing repeated, also when pages stop at the scan budget;
* who may search about whom is who may evaluate; bad input is 422 naming the field and records
  nothing; one ``decision.search`` event per search, none per candidate, and no approval
  opened; an unwritable ledger fails the search (503) and answers nothing;
* discovery names the three endpoints; the in-process call the MCP gateway can make.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import tether.policy.search as search_module
from tests.conftest import BACKENDS, admin_client, assert_error, backend_for, bearer, make_settings
from tests.pdp import EVAL, EVALS, Env, credential, env_of, events_since, head, token
from tests.test_decisions_api import ledger_unwritable
from tether.bootstrap import prepare
from tether.container import build_services
from tether.errors import ValidationFailed
from tether.policy.search import Candidate, SearchService
from tether.policy.values import Ask, Effect

SUBJECTS = "/access/v1/search/subject"
RESOURCES = "/access/v1/search/resource"
ACTIONS = "/access/v1/search/action"
BASE_SCHEMA = Path(__file__).parents[1] / "src/tether/policy/base/schema.cedarschema"
SCHEMA = BASE_SCHEMA.read_text() + (
    '\naction "agent.inspect" appliesTo { principal: [Agent], resource: [Agent], '
    "context: TetherContext };\n"
)
UNICODE = "prompt-ünïcode-✓"
POLICIES = f"""
@id("support-tools")
permit (principal in Role::"support", action == Action::"tool.call", resource is Tool)
unless {{ resource has server && resource.server == "prod" }};

@id("search-for-all")
permit (principal, action == Action::"tool.call", resource == Tool::"search");

@id("refund-minimal-only")
forbid (principal, action == Action::"tool.call", resource == Tool::"refund")
unless {{ principal.risk_tier == "minimal" }};

@id("support-writes")
permit (principal in Role::"support", action in Action::"mutating", resource);

@id("ops-secrets")
permit (principal in Role::"ops", action == Action::"secret.read", resource)
when {{ resource has labels && resource.labels.contains("ops") }};

@id("shared-secret")
permit (principal, action == Action::"secret.read", resource == Secret::"shared");

@id("leads-inspect-their-owners-agents")
permit (principal in Role::"lead", action == Action::"agent.inspect", resource)
when {{ resource.owner == principal.owner }};

@id("datasets-with-a-ticket")
permit (principal, action == Action::"dataset.read", resource)
when {{ [Dataset::"sales", Dataset::"hr"].contains(resource) && context has ticket }};

@id("unicode-prompt")
permit (principal in Role::"support", action == Action::"prompt.get",
        resource == Prompt::"{UNICODE}");
"""
# What the policies name, by type (the test's own reading of POLICIES).
NAMED = {
    "Tool": {"search", "refund"},
    "Secret": {"shared"},
    "Dataset": {"sales", "hr"},
    "Prompt": {UNICODE},
}
TYPES = ["Agent", "Tool", "Secret", "Dataset", "Prompt", "Resource", "DatabaseRole"]
ACTION_NAMES = ["tool.call", "tool.write", "secret.read", "resource.read", "prompt.get",
                "secret.lease", "dataset.read", "dataset.write", "agent.inspect"]  # fmt: skip
TICKET = {"ticket": "T-1"}


@dataclass
class World:
    env: Env
    agents: dict[str, str]  # name -> id
    supervisor: str  # the token of "sup", who owns some agents

    @property
    def http(self) -> Any:
        return self.env.http


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One deployment per backend: POLICIES over SCHEMA, agents of every kind, secrets."""
    tmp = tmp_path_factory.mktemp(f"search-{request.param}")
    with backend_for(request.param, tmp) as backend:
        # every approval_required answer opens an approval: none may be refused as a flood
        settings = make_settings(backend, tmp / "data", approval_max_pending_per_agent=100_000)
        services = build_services(settings)
        try:
            prepare(services)
            with admin_client(services) as http, env_of(services, http) as e:
                pushed = http.put("/v1/policies", json={"policies": POLICIES, "schema": SCHEMA})
                assert pushed.status_code == 200, pushed.text
                yield _populate(e)
        finally:
            services.close()


def _populate(e: Env) -> World:
    sup = e.api.user("sup")
    specs = {
        "support-min": {"roles": ["support"], "risk_tier": "minimal"},
        "support-high": {"roles": ["support"], "risk_tier": "high"},
        "ops": {"roles": ["ops"], "risk_tier": "limited"},
        "lead-admin": {"roles": ["lead"]},
        "lead-sup": {"roles": ["lead"], "owner": "sup"},
        "mixed": {"roles": ["support", "ops"], "owner": "sup"},
        "stopped": {"roles": ["support"]},
    }
    agents = {name: str(e.api.agent(name=name, **spec)["id"]) for name, spec in specs.items()}
    e.api.ok(agents["stopped"], "suspend", reason="investigating")
    for name, body in {
        "ops-db": {"labels": ["ops"]},
        "shared": {},
        "hr-db": {"labels": ["hr"]},
        "ops-broker": {"labels": ["ops"], "broker_only": True},
    }.items():
        put = e.http.put(f"/v1/secrets/{name}", json={"value": "v", **body})
        assert put.status_code in (200, 201), put.text
    return World(e, agents, sup["token"])


# -- helpers ----------------------------------------------------------------------------------


def _key(entity: dict[str, Any]) -> bytes:
    return str(entity.get("id", entity.get("name"))).encode()


def search(w: World, path: str, body: dict[str, Any], token_: str | None = None) -> Any:
    got = w.http.post(path, json=body, headers=bearer(token_) if token_ else None)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert list(answer) == ["page", "context", "results"], answer  # §8.3: page first
    assert answer["page"]["count"] == len(answer["results"])
    assert answer["context"]["event_id"].startswith("evt_"), answer
    return answer


def search_all(w: World, path: str, body: dict[str, Any], limit: int | None = None) -> Any:
    """Every page, following next_token: (results, approval_required, pages)."""
    results: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    page: dict[str, Any] = {"limit": limit} if limit else {}
    pages = 0
    while True:
        answer = search(w, path, {**body, "page": page})
        pages += 1
        results += answer["results"]
        approvals += answer["context"]["approval_required"]
        if not answer["page"]["next_token"]:
            return results, approvals, pages
        page = {**page, "token": answer["page"]["next_token"]}
        assert pages < 1000, "no end of pages"


def _secrets(w: World) -> dict[str, dict[str, Any]]:
    got = w.http.get("/v1/secrets", params={"limit": 500})
    assert got.status_code == 200, got.text
    body = got.json()
    items = body["items"] if isinstance(body, dict) else body
    return {s["name"]: {"labels": s["labels"], "broker_only": s["broker_only"]} for s in items}


def universe(w: World) -> dict[str, dict[str, dict[str, Any]]]:
    """By type, every resource Tether can find, with the properties it is decided with (a
    named entity Tether holds nothing of: the request's, here none)."""
    out: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TYPES}
    out["Agent"] = {a["id"]: {} for a in w.env.api.agents()}
    out["Secret"] = _secrets(w)
    for kind, ids in NAMED.items():
        for rid in ids:
            out[kind].setdefault(rid, {})
    return out


def ask(subject: str, action: str, rtype: str, rid: str, props: dict[str, Any],
        context: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "subject": {"type": "agent", "id": subject},
        "action": {"name": action},
        "resource": {"type": rtype, "id": rid, "properties": props},
        "context": context,
    }


def evaluate_all(w: World, asks: list[dict[str, Any]]) -> list[str]:
    """Each ask's answer as Tether says it: allow, deny or approval_required."""
    out: list[str] = []
    for i in range(0, len(asks), 1000):
        got = w.http.post(EVALS, json={"evaluations": asks[i : i + 1000]})
        assert got.status_code == 200, got.text
        out += [answer["context"]["decision"] for answer in got.json()["evaluations"]]
    return out


def entity(rtype: str, rid: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"type": rtype, "id": rid, **({"properties": props} if props else {})}


def ordered(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entities, key=_key)


# ===========================================================================================
# Differential: a search answers what evaluations answer
# ===========================================================================================


def test_every_search_answers_what_evaluations_answer(world: World) -> None:
    w = world
    found = universe(w)
    subjects = [*w.env.api.agents(), {"id": f"agt_{uuid.uuid4().hex[:26].upper()}"}]
    subject_ids = [s["id"] for s in subjects]
    # The truth table, from evaluations: (subject, action, type, id) -> answer.
    table: dict[tuple[str, str, str, str], str] = {}
    for subject in subject_ids:
        keys = [(subject, action, rtype, rid) for action in ACTION_NAMES
                for rtype, ids in found.items() for rid in ids]  # fmt: skip
        asks = [ask(*k, found[k[2]][k[3]], TICKET) for k in keys]
        table.update(zip(keys, evaluate_all(w, asks), strict=True))
    assert {"allow", "deny", "approval_required"} <= set(table.values())  # a telling world

    # ... which single evaluations agree with
    rng = random.Random(20_261_129)
    for k in rng.sample(sorted(table), 40):
        got = w.http.post(EVAL, json=ask(*k, found[k[2]][k[3]], TICKET))
        assert got.status_code == 200, got.text
        assert got.json()["context"]["decision"] == table[k], k

    def expect(keys: list[tuple[str, str, str, str]], shape: Any, effect: str) -> list[Any]:
        return ordered([shape(k) for k in keys if table[k] == effect])

    # Resources: every subject, action and type.
    for subject in subject_ids:
        for action in ACTION_NAMES:
            for rtype in TYPES:
                body = {"subject": {"type": "agent", "id": subject}, "action": {"name": action},
                        "resource": {"type": rtype}, "context": TICKET}  # fmt: skip
                results, approvals, _ = search_all(w, RESOURCES, body)
                keys = [(subject, action, rtype, rid) for rid in found[rtype]]

                def shape(k: tuple[str, str, str, str]) -> dict[str, Any]:
                    return entity(k[2], k[3], found[k[2]][k[3]])

                assert results == expect(keys, shape, "allow"), (subject, action, rtype)
                assert approvals == expect(keys, shape, "approval_required"), (subject, action)

    # Actions: every subject and resource.
    for subject in subject_ids:
        for rtype, ids in found.items():
            for rid, props in ids.items():
                body = {"subject": {"type": "agent", "id": subject},
                        "resource": {"type": rtype, "id": rid, "properties": props},
                        "context": TICKET}  # fmt: skip
                results, approvals, _ = search_all(w, ACTIONS, body)
                keys = [(subject, action, rtype, rid) for action in ACTION_NAMES]
                assert results == expect(keys, lambda k: {"name": k[1]}, "allow"), (subject, rid)
                assert approvals == expect(keys, lambda k: {"name": k[1]}, "approval_required")

    # Subjects (an admin asks about every agent): every action and resource.
    agents = [s["id"] for s in subjects[:-1]]
    for action in ACTION_NAMES:
        for rtype, ids in found.items():
            for rid, props in ids.items():
                body = {"subject": {"type": "agent"}, "action": {"name": action},
                        "resource": {"type": rtype, "id": rid, "properties": props},
                        "context": TICKET}  # fmt: skip
                results, approvals, _ = search_all(w, SUBJECTS, body)
                keys = [(agent, action, rtype, rid) for agent in agents]

                def agent_of(k: tuple[str, str, str, str]) -> dict[str, Any]:
                    return {"type": "agent", "id": k[0]}

                assert results == expect(keys, agent_of, "allow"), (action, rtype, rid)
                assert approvals == expect(keys, agent_of, "approval_required"), (action, rid)


@pytest.mark.parametrize(
    ("properties", "context"), [({"server": "prod"}, {}), ({"server": "crm"}, TICKET)]
)
def test_a_resource_search_decides_with_the_request_properties_and_context(
    world: World, properties: dict[str, Any], context: dict[str, Any]
) -> None:
    """Entities Tether holds nothing of (here the tools the policies name) are decided with
    the request's properties, and returned with them; Tether's own keep theirs."""
    w = world
    for name in ("support-min", "support-high", "ops"):
        subject = w.agents[name]
        for rtype, action in (("Tool", "tool.call"), ("Dataset", "dataset.read"),
                              ("Secret", "secret.read")):  # fmt: skip
            held = _secrets(w) if rtype == "Secret" else {}
            ids = sorted(NAMED[rtype] | set(held))
            asks = [ask(subject, action, rtype, rid, held.get(rid, properties), context)
                    for rid in ids]  # fmt: skip
            answers = evaluate_all(w, asks)
            body = {"subject": {"type": "agent", "id": subject}, "action": {"name": action},
                    "resource": {"type": rtype, "properties": properties},
                    "context": context}  # fmt: skip
            results, _, _ = search_all(w, RESOURCES, body)
            expected = [entity(rtype, rid, held.get(rid, properties))
                        for rid, answer in zip(ids, answers, strict=True)
                        if answer == "allow"]  # fmt: skip
            assert results == ordered(expected), (name, rtype, properties)


def test_every_result_evaluated_as_returned_is_allowed(world: World) -> None:
    """§8.1: a result, used in an evaluation as it is, answers ``"decision": true``."""
    w = world
    subject = w.agents["ops"]
    body = {"subject": {"type": "agent", "id": subject}, "action": {"name": "secret.read"},
            "resource": {"type": "Secret"}}  # fmt: skip
    results, _, _ = search_all(w, RESOURCES, body)
    assert {r["id"] for r in results} == {"ops-db", "ops-broker", "shared"}
    assert results[0]["properties"] == {"labels": ["ops"], "broker_only": True}  # ops-broker
    for result in results:
        got = w.http.post(EVAL, json={"subject": body["subject"], "action": body["action"],
                                      "resource": result})  # fmt: skip
        assert got.json()["decision"] is True, (result, got.text)


# ===========================================================================================
# Pages
# ===========================================================================================


def _paging_cases(w: World) -> list[tuple[str, dict[str, Any]]]:
    return [
        (RESOURCES, {"subject": {"type": "agent", "id": w.agents["lead-admin"]},
                     "action": {"name": "agent.inspect"}, "resource": {"type": "Agent"}}),
        (SUBJECTS, {"subject": {"type": "agent"}, "action": {"name": "tool.write"},
                    "resource": {"type": "Tool", "id": "anything"}}),
        (ACTIONS, {"subject": {"type": "agent", "id": w.agents["mixed"]},
                   "resource": {"type": "Tool", "id": "search"}}),
    ]  # fmt: skip


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_pages_followed_to_the_end_give_the_whole_answer_in_order(world: World, limit: int) -> None:
    for path, body in _paging_cases(world):
        whole, approvals, pages = search_all(world, path, body)
        assert pages == 1
        assert len(whole) >= 2, (path, whole)  # enough to page
        assert whole == sorted(whole, key=_key)  # ids in UTF-8 byte order
        paged, paged_approvals, pages = search_all(world, path, body, limit=limit)
        assert paged == whole, (path, limit)
        assert paged_approvals == approvals, (path, limit)
        assert pages >= -(-len(whole) // limit)


def test_a_page_stops_at_its_scan_budget(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    wholes = [search_all(world, path, body) for path, body in _paging_cases(world)]
    monkeypatch.setattr(search_module, "SCAN_BUDGET", 2)
    for (path, body), (whole, approvals, _) in zip(_paging_cases(world), wholes, strict=True):
        paged, paged_approvals, pages = search_all(world, path, body, limit=1000)
        assert (paged, paged_approvals) == (whole, approvals), path
        assert pages > 1


def test_a_token_is_a_place_in_the_order(world: World) -> None:
    """The token names the last id a page looked at; the next page starts after it, whatever
    the rest of the request (§8.2: not bound to it)."""
    w = world
    body = {"subject": {"type": "agent", "id": w.agents["lead-admin"]},
            "action": {"name": "agent.inspect"}, "resource": {"type": "Agent"}}  # fmt: skip
    whole, _, _ = search_all(w, RESOURCES, body)
    first = search(w, RESOURCES, {**body, "page": {"limit": 1}})
    assert first["results"] == whole[:1]
    token_ = first["page"]["next_token"]
    assert token_
    rest = search(w, RESOURCES, {**body, "page": {"token": token_, "limit": 1000}})
    assert rest["results"] == whole[1:]
    assert rest["page"]["next_token"] == ""
    # an empty token is the first page, as no token is
    assert search(w, RESOURCES, {**body, "page": {"token": ""}})["results"] == whole


# ===========================================================================================
# Who may search about whom, and Tether's refusals
# ===========================================================================================


def test_an_agent_searches_about_itself_only(world: World) -> None:
    w = world
    me = w.agents["mixed"]
    mine = token(w.env, credential(w.env, me))
    for path, case in _paging_cases(w):
        body = case if path == SUBJECTS else {**case, "subject": {"type": "agent", "id": me}}
        search(w, path, body, mine)
        other = {**body, "subject": {"type": "agent", "id": w.agents["ops"]}}
        if path != SUBJECTS:
            assert_error(w.http.post(path, json=other, headers=bearer(mine)), 403, "forbidden")
    answer = search(w, SUBJECTS, {"subject": {"type": "agent"}, "action": {"name": "tool.call"},
                                  "resource": {"type": "Tool", "id": "search"}}, mine)  # fmt: skip
    assert answer["results"] == [{"type": "agent", "id": me}]


def test_a_supervisor_finds_only_the_agents_they_answer_for(world: World) -> None:
    w = world
    body = {"subject": {"type": "agent"}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
    theirs = search(w, SUBJECTS, body, w.supervisor)["results"]
    assert {r["id"] for r in theirs} == {w.agents["lead-sup"], w.agents["mixed"]}
    everyone = search(w, SUBJECTS, body)["results"]
    assert len(everyone) > len(theirs)
    about = {"subject": {"type": "agent", "id": w.agents["ops"]}, "action": {"name": "tool.call"},
             "resource": {"type": "Tool"}}  # fmt: skip
    assert_error(w.http.post(RESOURCES, json=about, headers=bearer(w.supervisor)), 403)
    about["subject"]["id"] = w.agents["mixed"]
    search(w, RESOURCES, about, w.supervisor)


def test_auditors_and_strangers_may_not_search(world: World) -> None:
    w = world
    auditor = w.env.api.user(f"aud-{uuid.uuid4().hex[:8]}", role="auditor")["token"]
    for path, body in _paging_cases(w):
        assert_error(w.http.post(path, json=body, headers=bearer(auditor)), 403, "forbidden")
        got = w.env.anon.post(path, json=body)
        assert got.status_code == 401, got.text


def test_a_refused_subject_finds_nothing_and_says_why(world: World) -> None:
    w = world
    unknown = f"agt_{uuid.uuid4().hex[:26].upper()}"
    for subject, code in ((w.agents["stopped"], "agent_not_active"), (unknown, "agent_not_found")):
        for path, body in _paging_cases(w)[0:3:2]:
            answer = search(w, path, {**body, "subject": {"type": "agent", "id": subject}})
            assert answer["results"] == []
            assert answer["page"]["next_token"] == ""
            assert answer["context"]["error"]["code"] == code
    body = {"subject": {"type": "agent", "id": w.agents["ops"]}, "action": {"name": "no.such"},
            "resource": {"type": "Tool"}}  # fmt: skip
    answer = search(w, RESOURCES, body)
    assert answer["context"]["error"]["code"] == "unknown_action"
    assert answer["results"] == []


@pytest.mark.parametrize(
    ("path", "change", "field"),
    [
        (RESOURCES, {"resource": {"type": "Role"}}, "resource.type"),
        (RESOURCES, {"resource": {"type": "MyAction"}}, "resource.type"),
        (RESOURCES, {"context": {"chain": ["x"]}}, "context"),
        (RESOURCES, {"context": {"n": 1.5}}, "context"),
        (RESOURCES, {"page": {"limit": 0}}, "page.limit"),
        (RESOURCES, {"page": {"limit": 1001}}, "page.limit"),
        (RESOURCES, {"page": {"token": "a"}}, "page.token"),
        (RESOURCES, {"page": {"token": "not/base64"}}, "page.token"),
        (RESOURCES, {"page": {"cursor": "x"}}, "page"),
        (RESOURCES, {"subject": {"type": "agent"}}, "subject.id"),
        (RESOURCES, {"subject": {"type": "user", "id": "u"}}, "subject.type"),
        (SUBJECTS, {"subject": {"id": "agt_x"}}, "subject.type"),
        (SUBJECTS, {"resource": {"type": "Tool"}}, "resource.id"),
        (ACTIONS, {"action": {"name": "tool.call"}}, "action"),
        (ACTIONS, {"resource": {"type": "Tool"}}, "resource.id"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_records_nothing(
    world: World, path: str, change: dict[str, Any], field: str
) -> None:
    w = world
    body = dict(next(b for p, b in _paging_cases(w) if p == path))
    body.update(change)
    since = head(w.env)
    error = assert_error(w.http.post(path, json=body), 422)
    assert str(error["details"]["field"]).startswith(field), error
    assert events_since(w.env, since) == []


# ===========================================================================================
# The ledger: one event per search, none per candidate, no approval opened
# ===========================================================================================


def test_a_search_is_one_ledger_event_and_opens_no_approval(world: World) -> None:
    w = world
    high = w.agents["support-high"]
    body = {"subject": {"type": "agent", "id": high}, "action": {"name": "tool.write"},
            "resource": {"type": "Tool"}, "context": {"why": "search"}}  # fmt: skip
    pending = w.http.get("/v1/approvals", params={"status": "pending", "limit": 500}).json()
    since = head(w.env)
    answer = search(w, RESOURCES, body)
    assert answer["results"] == []
    assert {a["id"] for a in answer["context"]["approval_required"]} == NAMED["Tool"]
    (event,) = events_since(w.env, since)
    assert event["id"] == answer["context"]["event_id"]
    assert event["type"] == "decision.search"
    assert event["agent_id"] == high
    assert event["action"] == "tool.write"
    assert event["resource"] == {"type": "Tool"}
    assert event["policy_version"] == answer["context"]["policy_version"]
    assert event["details"]["search"] == "resource"
    assert event["details"]["count"] == 0
    assert event["details"]["approval_required"] == len(NAMED["Tool"])
    assert event["details"]["results_digest"] == hashlib.sha256(b"[]").hexdigest()
    context_digest = hashlib.sha256(orjson.dumps({"why": "search"})).hexdigest()
    assert event["details"]["context_digest"] == context_digest
    after = w.http.get("/v1/approvals", params={"status": "pending", "limit": 500}).json()
    assert after == pending

    since = head(w.env)
    found = search(w, SUBJECTS, {"subject": {"type": "agent"}, "action": {"name": "tool.call"},
                                 "resource": {"type": "Tool", "id": "search"}})  # fmt: skip
    (event,) = events_since(w.env, since)
    ids = [r["id"] for r in found["results"]]
    assert event["details"]["count"] == len(ids) > 1
    assert event["details"]["results_digest"] == hashlib.sha256(orjson.dumps(ids)).hexdigest()
    assert event["agent_id"] is None
    assert event["actor"].startswith("user:")
    assert event["details"]["search"] == "subject"

    since = head(w.env)
    body = {"subject": {"type": "agent", "id": high}, "resource": {"type": "Tool", "id": "search"}}
    found = search(w, ACTIONS, body)
    (event,) = events_since(w.env, since)
    assert (event["details"]["search"], event["action"]) == ("action", None)
    assert event["resource"] == {"type": "Tool", "id": "search"}
    assert event["details"]["count"] == len(found["results"])


def test_an_unwritable_ledger_fails_the_search(world: World) -> None:
    w = world
    body = _paging_cases(w)[0][1]
    since = head(w.env)
    with ledger_unwritable(w.env.services):
        assert_error(w.http.post(RESOURCES, json=body), 503, "ledger_unavailable")
    assert events_since(w.env, since) == []
    search(w, RESOURCES, body)  # restored
    verified = w.http.get("/v1/audit/verify")
    assert verified.json()["ok"] is True, verified.json()


# ===========================================================================================
# Discovery, and the in-process call
# ===========================================================================================


def test_the_configuration_names_the_search_endpoints(world: World) -> None:
    got = world.env.anon.get("/.well-known/authzen-configuration")
    assert got.status_code == 200, got.text
    base = world.env.base
    assert got.json()["search_subject_endpoint"] == f"{base}{SUBJECTS}"
    assert got.json()["search_resource_endpoint"] == f"{base}{RESOURCES}"
    assert got.json()["search_action_endpoint"] == f"{base}{ACTIONS}"


def test_an_in_process_caller_searches_its_own_candidates(world: World) -> None:
    """What the MCP gateway does for ``tools/list``: its tools as candidates, each with its
    properties, every result at once, nothing recorded."""
    w = world
    services = w.env.services
    searcher = SearchService(services.decisions)
    tools = [Candidate("crm.update", {"server": "crm"}),
             Candidate("prod.refund", {"server": "prod"}), Candidate("search"),
             Candidate("refund")]  # fmt: skip
    since = head(w.env)
    for name in ("support-min", "support-high", "ops", "stopped"):
        agent = w.agents[name]
        template = Ask(agent, "tool.call", "Tool", "", caller=f"agent:{agent}")
        page = asyncio.run(searcher.resources(template, candidates=tools, limit=None,
                                              record=False))  # fmt: skip
        asks = [Ask(agent, "tool.call", "Tool", t.id, t.properties or {}) for t in tools]
        decided = services.decisions.evaluate_many(asks)
        allowed = [a.resource_id for a, d in zip(asks, decided, strict=True)
                   if d.effect is Effect.ALLOW]  # fmt: skip
        assert [f.id for f in page.results] == sorted(allowed, key=str.encode), name
        assert page.next_token == ""
        assert all(f.decision.allowed for f in page.results)
    assert events_since(w.env, since) == []
    # an id given twice counts once (its first); a candidate's properties are checked
    agent = w.agents["support-min"]
    template = Ask(agent, "tool.call", "Tool", "")
    twice = [Candidate("search"), Candidate("search", {"server": "prod"})]
    page = asyncio.run(searcher.resources(template, candidates=twice, record=False))
    assert [(f.id, f.ask.properties) for f in page.results] == [("search", {})]
    with pytest.raises(ValidationFailed) as bad:
        asyncio.run(searcher.resources(template, candidates=[Candidate("x", {"n": None})]))
    assert bad.value.details["field"] == "candidates"
    with pytest.raises(ValidationFailed):
        asyncio.run(searcher.resources(template, candidates=tools, limit=0))
