"""/v1/policies through the HTTP API, on SQLite and PostgreSQL (API.md "Policies").

Read, validate and push (each push a new immutable version and one ``policy.updated`` ledger
event; a refused document changes nothing and lists every problem), version history with
cursor pagination, who may do what, and simulation: decisions made through
``/access/v1/evaluation`` replayed under a candidate, reporting exactly the decisions that flip —
computed here independently, from a plain-Python model of both policy sets.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from tests.conftest import Api, assert_error, bearer
from tether.audit.models import EventRow
from tether.container import Services
from tether.pagination import encode_cursor
from tether.policy.models import DecisionInputRow
from tether.policy.service import BASE_POLICIES_TEXT, BASE_SCHEMA, UNDO_POLICIES_TEXT

P = "/v1/policies"
EVAL = "/access/v1/evaluation"
BASE_IDS = {"tether.active-only", "tether.high-risk-mutating-needs-approval"}

V1 = """// version one
@id("ops-tools")
permit (principal in Role::"ops", action in [Action::"tool.call", Action::"tool.write"],
        resource is Tool);

@id("payments-secrets")
permit (principal in Role::"payments", action == Action::"secret.read", resource);

@id("team-x-datasets")
permit (principal, action == Action::"dataset.read", resource)
when { principal.hasTag("team") && principal.getTag("team") == "x" };

@id("everyone-calls-s1")
permit (principal, action == Action::"tool.call", resource is Tool)
when { resource has server && resource.server == "s1" };

@id("no-secret-datasets")
forbid (principal, action, resource is Dataset)
when { resource has classification && resource.classification == "secret" };
"""

V2 = (
    V1
    + """
@id("research-reads-datasets") @approval("required")
permit (principal in Role::"research", action == Action::"dataset.read", resource);
"""
)

REMOVED = "everyone-calls-s1"
ADDED = "no-big-amounts"
CANDIDATE = (
    V1.replace(
        """@id("everyone-calls-s1")
permit (principal, action == Action::"tool.call", resource is Tool)
when { resource has server && resource.server == "s1" };
""",
        "",
    )
    + """
@id("no-big-amounts")
forbid (principal, action, resource)
when { context has amount && context.amount >= 100 };
"""
)
assert REMOVED not in CANDIDATE

# (policy, line) of each problem in BROKEN; nothing of it may be stored.
BROKEN = """@id("fine") permit (principal, action, resource);
@id("broken") permit (principal, action resource);
permit (principal, action, resource);

@id("fine") forbid (principal, action, resource);
@id("tether.sneaky") permit (principal, action, resource);
@id("maybe") @approval("perhaps") permit (principal, action, resource);
"""
BROKEN_AT = [("broken", 2), (None, 3), ("fine", 5), ("tether.sneaky", 6), ("maybe", 7)]
ILL_TYPED = """@id("fine") permit (principal, action == Action::"tool.call", resource);

@id("typo") permit (principal, action, resource) when { principal.risk == "high" };
@id("no-such-action") permit (principal, action == Action::"tool.explode", resource);
"""
ILL_TYPED_AT = {("typo", 3), ("no-such-action", 4)}


def _current(client: TestClient) -> dict[str, Any]:
    got = client.get(P)
    assert got.status_code == 200, got.text
    return dict(got.json())


def _push(client: TestClient, policies: str, **extra: Any) -> dict[str, Any]:
    got = client.put(P, json={"policies": policies, **extra})
    assert got.status_code == 200, got.text
    return dict(got.json())


def _versions(client: TestClient, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        got = client.get(f"{P}/versions", params=params)
        assert got.status_code == 200, got.text
        page = got.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        out += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("pagination does not end")


# -- reading and pushing -------------------------------------------------------------------------


def test_initially_v0_with_the_base_schema(client: TestClient) -> None:
    cur = _current(client)
    assert cur["version"] == "v0"
    assert cur["policies"] == ""
    assert cur["schema"] == BASE_SCHEMA
    assert cur["base_policies"] == f"{BASE_POLICIES_TEXT}\n{UNDO_POLICIES_TEXT}"
    assert cur["policy_count"] == 0
    assert [v["version"] for v in _versions(client, 50)] == ["v0"]
    v0 = client.get(f"{P}/versions/v0")
    assert v0.status_code == 200, v0.text
    assert v0.json()["schema"] == BASE_SCHEMA


def test_push_makes_versions_with_history(api: Api, client: TestClient) -> None:
    before = api.events()
    v1 = _push(client, V1)
    assert v1["version"] == "v1"
    assert v1["policies"] == V1
    assert v1["schema"] == BASE_SCHEMA
    assert v1["policy_count"] == 5
    assert v1["created_by"]
    assert _current(client)["version"] == "v1"
    v2 = _push(client, V2, note="research may read, with approval")
    assert v2["version"] == "v2"
    assert v2["policy_count"] == 6
    assert v2["note"] == "research may read, with approval"
    assert v2["digest"] != v1["digest"]
    cur = _current(client)
    assert (cur["version"], cur["policies"], cur["digest"]) == ("v2", V2, v2["digest"])

    # history: newest first, v0 last, whatever the page size
    for limit in (1, 2, 3, 50):
        listed = _versions(client, limit)
        assert [v["version"] for v in listed] == ["v2", "v1", "v0"], limit
    listed = _versions(client, 50)
    assert "policies" not in listed[0]  # the list is a summary
    assert [v["digest"] for v in listed[:2]] == [v2["digest"], v1["digest"]]

    got = client.get(f"{P}/versions/v1")
    assert got.status_code == 200, got.text
    assert (got.json()["version"], got.json()["policies"]) == ("v1", V1)
    for missing in ("v3", "v99", "latest", "1"):
        assert_error(client.get(f"{P}/versions/{missing}"), 404, "policy_version_not_found")

    # one policy.updated event per push, nothing else
    events = api.new_events(before)
    assert [e["type"] for e in events] == ["policy.updated", "policy.updated"]
    for event, version, previous, pushed in (
        (events[0], "v1", "v0", v1),
        (events[1], "v2", "v1", v2),
    ):
        assert event["policy_version"] == version
        assert event["resource"] == {"type": "PolicySet", "id": version}
        assert event["outcome"] == "success"
        assert event["details"]["previous"] == previous
        assert event["details"]["digest"] == pushed["digest"]
        assert event["details"]["schema_changed"] is False
    assert events[0]["details"]["policies"] == [
        "ops-tools",
        "payments-secrets",
        "team-x-datasets",
        REMOVED,
        "no-secret-datasets",
    ]
    assert events[1]["details"]["policies"][-1] == "research-reads-datasets"
    assert events[1]["details"]["note"] == "research may read, with approval"


def test_push_with_a_schema(api: Api, client: TestClient) -> None:
    schema = BASE_SCHEMA + (
        'action "tool.delete" in ["mutating"] appliesTo '
        "{ principal: [Agent], resource: [Tool], context: TetherContext };\n"
    )
    doc = '@id("no-deletes") forbid (principal, action == Action::"tool.delete", resource);\n'
    assert_error(client.put(P, json={"policies": doc}), 422, "policy_invalid")
    pushed = _push(client, doc, schema=schema)
    assert (pushed["version"], pushed["schema"]) == ("v1", schema)
    [event] = [e for e in api.events() if e["type"] == "policy.updated"]
    assert event["details"]["schema_changed"] is True
    # a later push without a schema keeps the current one
    assert _push(client, doc)["schema"] == schema


def test_invalid_push_changes_nothing(api: Api, client: TestClient) -> None:
    _push(client, V1)
    before_events, before_current = api.events(), _current(client)
    before_versions = _versions(client, 50)

    for document, schema, expected in (
        (BROKEN, None, BROKEN_AT),
        (ILL_TYPED, None, None),
        ("", "entity Foo {", [(None, None)]),
    ):
        body: dict[str, Any] = {"policies": document}
        if schema is not None:
            body["schema"] = schema
        error = assert_error(client.put(P, json=body), 422, "policy_invalid")
        errors = error["details"]["errors"]
        for e in errors:
            assert set(e) == {"policy", "line", "message"}
            assert e["message"]
        located = [(e["policy"], e["line"]) for e in errors]
        if expected is not None:
            assert located == expected
        else:
            assert set(located) == ILL_TYPED_AT
        # validate says the same, and also changes nothing
        again = assert_error(client.post(f"{P}/validate", json=body), 422, "policy_invalid")
        assert again["details"]["errors"] == errors

    assert _current(client) == before_current
    assert _versions(client, 50) == before_versions
    assert api.events() == before_events


def test_only_an_admin_pushes(api: Api, client: TestClient) -> None:
    sup = api.user("sup", "supervisor")
    aud = api.user("aud", "auditor")
    before = api.events()
    for who in (sup, aud):
        assert_error(client.put(P, json={"policies": V1}, headers=bearer(who["token"])), 403)
        # every human may read and validate
        cur = client.get(P, headers=bearer(who["token"]))
        assert cur.status_code == 200, cur.text
        assert cur.json()["version"] == "v0"
        checked = client.post(f"{P}/validate", json={"policies": V1}, headers=bearer(who["token"]))
        assert checked.status_code == 200, checked.text
    assert api.events() == before
    assert _current(client)["version"] == "v0"
    assert_error(client.put(P, json={"policies": V1}, headers=bearer("not-a-token")), 401)


def test_validate(api: Api, client: TestClient) -> None:
    before = api.events()
    got = client.post(f"{P}/validate", json={"policies": V2})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["valid"] is True
    assert body["policies"] == [
        "ops-tools",
        "payments-secrets",
        "team-x-datasets",
        REMOVED,
        "no-secret-datasets",
        "research-reads-datasets",
    ]
    assert api.events() == before
    assert _current(client)["version"] == "v0"
    assert _push(client, V2)["digest"] == body["digest"]


# -- simulation ----------------------------------------------------------------------------------

MUTATING = {"tool.write", "dataset.write"}


@dataclass(frozen=True)
class Who:
    id: str
    roles: frozenset[str]
    tier: str
    tags: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Req:
    agent: Who
    action: str
    rtype: str
    rid: str
    props: dict[str, Any] = field(hash=False)
    context: dict[str, Any] = field(hash=False)


def _model(policies: str, r: Req) -> tuple[str, tuple[str, ...]]:
    """V1 or CANDIDATE, evaluated by hand: Tether's rules without Cedar."""
    a, server = r.agent, r.props.get("server")
    permits: dict[str, bool] = {
        "ops-tools": "ops" in a.roles
        and r.action in {"tool.call", "tool.write"}
        and r.rtype == "Tool",
        "payments-secrets": "payments" in a.roles and r.action == "secret.read",
        "team-x-datasets": r.action == "dataset.read" and a.tags.get("team") == "x",
        REMOVED: r.action == "tool.call" and r.rtype == "Tool" and server == "s1",
    }
    forbids: dict[str, bool] = {
        "no-secret-datasets": r.rtype == "Dataset" and r.props.get("classification") == "secret",
        ADDED: r.context.get("amount", 0) >= 100,
        "tether.high-risk-mutating-needs-approval": a.tier == "high" and r.action in MUTATING,
    }
    in_force = {pid for pid in [*permits, *forbids] if f'@id("{pid}")' in policies}
    in_force |= BASE_IDS
    allowed = sorted(p for p, hit in permits.items() if hit and p in in_force)
    denied = sorted(f for f, hit in forbids.items() if hit and f in in_force)
    if not denied:
        return ("allow", tuple(allowed)) if allowed else ("deny", ())
    if denied == ["tether.high-risk-mutating-needs-approval"] and allowed:
        return "approval_required", tuple(sorted([*denied, *allowed]))
    return "deny", tuple(denied)


def _agents(api: Api) -> list[Who]:
    specs = [
        ("ops-low", ["ops"], "minimal", {}),
        ("ops-high", ["ops"], "high", {"team": "y"}),
        ("payer", ["payments"], "limited", {"team": "x"}),
        ("team-x", [], "minimal", {"team": "x"}),
        ("nobody", [], "limited", {}),
    ]
    out = []
    for name, roles, tier, tags in specs:
        made = api.agent(name=name, roles=roles, risk_tier=tier, attributes=tags)
        out.append(Who(made["id"], frozenset(roles), tier, tags))
    return out


RESOURCES = [
    ("Tool", "t-s1", {"server": "s1"}),
    ("Tool", "t-s2", {"server": "s2"}),
    ("Tool", "t-bare", {}),
    ("Secret", "k", {}),
    ("Dataset", "d-open", {"classification": "public"}),
    ("Dataset", "d-secret", {"classification": "secret"}),
]
ACTIONS = {"Tool": ["tool.call", "tool.write"], "Secret": ["secret.read"],
           "Dataset": ["dataset.read", "dataset.write"]}  # fmt: skip


def _requests(agents: list[Who], n: int, seed: int) -> list[Req]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        rtype, rid, props = rnd.choice(RESOURCES)
        ctx: dict[str, Any] = {}
        if rnd.random() < 0.5:
            ctx["amount"] = rnd.choice([5, 99, 100, 250])
        out.append(Req(rnd.choice(agents), rnd.choice(ACTIONS[rtype]), rtype, rid, props, ctx))
    return out


def _decide(client: TestClient, r: Req) -> dict[str, Any]:
    body = {
        "subject": {"type": "agent", "id": r.agent.id},
        "action": {"name": r.action},
        "resource": {"type": r.rtype, "id": r.rid, "properties": r.props},
        "context": r.context,
    }
    got = client.post(EVAL, json=body)
    assert got.status_code == 200, got.text
    ctx = got.json()["context"]
    want = _model(V1, r)
    assert (ctx["decision"], tuple(ctx["reasons"])) == want, r  # the model is right about v1
    assert ctx["policy_version"] == "v1"
    assert ctx["event_id"]
    return dict(ctx)


@dataclass
class Made:
    req: Req
    event_id: str
    before: tuple[str, tuple[str, ...]]
    after: tuple[str, tuple[str, ...]]


def _curated(agents: list[Who]) -> list[Req]:
    """One of each kind of case, whatever the random draw: flips and non-flips."""
    by_name = dict(zip(["ops-low", "ops-high", "payer", "team-x", "nobody"], agents, strict=True))
    s1, s2 = {"server": "s1"}, {"server": "s2"}
    return [
        Req(by_name["nobody"], "tool.call", "Tool", "t-s1", s1, {}),  # relied on REMOVED
        Req(by_name["ops-low"], "tool.call", "Tool", "t-s1", s1, {}),  # another permit too
        Req(by_name["ops-high"], "tool.write", "Tool", "t-s2", s2, {}),  # approval, stays
        Req(by_name["ops-high"], "tool.write", "Tool", "t-s2", s2, {"amount": 100}),  # → deny
        Req(by_name["payer"], "secret.read", "Secret", "k", {}, {"amount": 250}),  # → deny
        Req(by_name["payer"], "secret.read", "Secret", "k", {}, {"amount": 99}),  # stays
        Req(by_name["nobody"], "secret.read", "Secret", "k", {}, {"amount": 250}),  # deny, stays
    ]


def _make(
    client: TestClient, agents: list[Who], n: int, seed: int, *, curated: bool = False
) -> list[Made]:
    out = []
    for r in [*(_curated(agents) if curated else []), *_requests(agents, n, seed)]:
        ctx = _decide(client, r)
        out.append(Made(r, ctx["event_id"], _model(V1, r), _model(CANDIDATE, r)))
    return out


def _expected(made: list[Made]) -> tuple[set[str], Counter[str], Counter[str]]:
    """Exactly the decisions that relied on the removed permit or hit the new forbid."""
    flips: set[str] = set()
    by_agent: Counter[str] = Counter()
    by_policy: Counter[str] = Counter()
    for m in made:
        effect, reasons = m.before
        permits = {p for p in reasons if p not in BASE_IDS and p != "no-secret-datasets"}
        relied = effect != "deny" and permits == {REMOVED}
        hit = effect != "deny" and m.req.context.get("amount", 0) >= 100
        assert (relied or hit) == (m.before[0] != m.after[0]), m  # the model agrees
        if relied or hit:
            flips.add(m.event_id)
            by_agent[m.req.agent.id] += 1
            for p in set(reasons).symmetric_difference(m.after[1]) or {"(default deny)"}:
                by_policy[p] += 1
    return flips, by_agent, by_policy


def _simulate(client: TestClient, **extra: Any) -> dict[str, Any]:
    got = client.post(f"{P}/simulate", json={"policies": CANDIDATE, **extra})
    assert got.status_code == 200, got.text
    return dict(got.json())


def _check(result: dict[str, Any], made: list[Made], *, mixed: bool = True) -> None:
    flips, by_agent, by_policy = _expected(made)
    if mixed:  # the scenario flips something, and not everything
        assert flips
        assert len(flips) < len(made)
    assert result["checked"] == len(made)
    assert result["skipped"] == 0
    assert result["truncated"] is False
    assert result["changed"] == len(result["changes"]) == len(flips)
    assert {c["event_id"] for c in result["changes"]} == flips
    by_id = {m.event_id: m for m in made}
    for change in result["changes"]:
        m = by_id[change["event_id"]]
        assert change["agent"] == m.req.agent.id
        assert change["action"] == m.req.action
        assert change["resource"]["id"] == m.req.rid
        assert change["before"] == {"decision": m.before[0], "reasons": list(m.before[1])}
        assert change["after"] == {"decision": m.after[0], "reasons": list(m.after[1])}
    assert {g["agent"]: g["changed"] for g in result["by_agent"]} == dict(by_agent)
    assert {g["policy"]: g["changed"] for g in result["by_policy"]} == dict(by_policy)
    if mixed:
        assert REMOVED in dict(by_policy)
        assert ADDED in dict(by_policy)


def test_simulate_reports_exactly_the_flips(api: Api, client: TestClient) -> None:
    agents = _agents(api)
    _push(client, V1)
    made = _make(client, agents, 40, seed=7, curated=True)
    assert {m.before[0] for m in made} == {"allow", "deny", "approval_required"}
    before = api.events()
    result = _simulate(client)
    _check(result, made)
    assert (
        result["candidate_digest"]
        == client.post(f"{P}/validate", json={"policies": CANDIDATE}).json()["digest"]
    )
    # replaying the current policies changes nothing; simulating records nothing
    same = client.post(f"{P}/simulate", json={"policies": V1})
    assert same.status_code == 200, same.text
    assert (same.json()["checked"], same.json()["changed"]) == (len(made), 0)
    assert api.events() == before
    assert _current(client)["version"] == "v1"


def test_simulate_window(api: Api, client: TestClient) -> None:
    agents = _agents(api)
    _push(client, V1)
    older = _make(client, agents, 15, seed=1, curated=True)
    time.sleep(0.01)
    newer = _make(client, agents, 15, seed=2, curated=True)
    times = {e["id"]: datetime.fromisoformat(e["time"]) for e in api.events(type="decision")}
    last_older = max(times[m.event_id] for m in older)
    first_newer = min(times[m.event_id] for m in newer)
    assert last_older < first_newer

    _check(_simulate(client, since=first_newer.isoformat()), newer)
    _check(_simulate(client, until=last_older.isoformat()), older)
    _check(_simulate(client, since=last_older.isoformat(), until=first_newer.isoformat()),
           [m for m in [*older, *newer] if times[m.event_id] in (last_older, first_newer)],
           mixed=False)  # fmt: skip
    everything = _simulate(client)
    assert everything["checked"] == len(older) + len(newer)
    empty = _simulate(client, until="2000-01-01T00:00:00Z")
    assert (empty["checked"], empty["changed"], empty["changes"]) == (0, 0, [])
    assert_error(
        client.post(f"{P}/simulate", json={"policies": CANDIDATE,
                                           "since": first_newer.isoformat(),
                                           "until": last_older.isoformat()}),
        422,
    )  # fmt: skip


def test_who_may_simulate(api: Api, client: TestClient) -> None:
    agents = _agents(api)
    _push(client, V1)
    made = _make(client, agents, 12, seed=3)
    aud = api.user("aud", "auditor")
    sup = api.user("sup", "supervisor")
    as_auditor = client.post(
        f"{P}/simulate", json={"policies": CANDIDATE}, headers=bearer(aud["token"])
    )
    assert as_auditor.status_code == 200, as_auditor.text
    assert as_auditor.json()["checked"] == len(made)
    assert as_auditor.json() == _simulate(client)
    assert_error(
        client.post(f"{P}/simulate", json={"policies": CANDIDATE}, headers=bearer(sup["token"])),
        403,
        "forbidden",
    )
    error = assert_error(client.post(f"{P}/simulate", json={"policies": BROKEN}), 422)
    assert error["code"] == "policy_invalid"
    assert [(e["policy"], e["line"]) for e in error["details"]["errors"]] == BROKEN_AT


def test_simulate_names_the_policy_whose_approval_changed(api: Api, client: TestClient) -> None:
    agents = _agents(api)
    _push(client, V1)
    ops_low = agents[0]
    r = Req(ops_low, "tool.call", "Tool", "t-bare", {}, {})
    event_id = _decide(client, r)["event_id"]
    gated = V1.replace('@id("ops-tools")', '@id("ops-tools") @approval("required")')
    got = client.post(f"{P}/simulate", json={"policies": gated})
    assert got.status_code == 200, got.text
    result = got.json()
    assert [c["event_id"] for c in result["changes"]] == [event_id]
    assert result["changes"][0]["after"]["decision"] == "approval_required"
    assert result["by_policy"] == [{"policy": "ops-tools", "changed": 1}]


def test_simulate_skips_a_record_cedar_cannot_read(
    api: Api, client: TestClient, services: Services
) -> None:
    """A decision recorded before Tether refused values Cedar cannot read (its context holds
    a bad ``__extn``) is skipped, not a failed simulation."""
    agents = _agents(api)
    _push(client, V1)
    made = _make(client, agents, 6, seed=3)
    with services.db.write() as s:
        seq = s.scalar(select(EventRow.seq).where(EventRow.id == made[0].event_id))
        row = s.get(DecisionInputRow, seq)
        assert row is not None
        legacy = json.loads(row.request)
        legacy["context"] = {"ip": {"__extn": {"fn": "ip", "arg": "not an address"}}}
        row.request = json.dumps(legacy)
    result = _simulate(client)
    assert (result["checked"], result["skipped"]) == (len(made) - 1, 1)


def test_a_version_number_past_the_column_is_not_found(api: Api) -> None:
    """``v9999999999`` fits the documented pattern but not PostgreSQL's INTEGER column: a 404,
    not the 500 of an out-of-range query (nor is its cursor form a 500)."""
    for name in ("v9999999999", "v2147483648"):
        assert_error(api.client.get(f"{P}/versions/{name}"), 404, "policy_version_not_found")
    page = api.client.get(f"{P}/versions", params={"cursor": encode_cursor("9" * 18)})
    assert page.status_code == 200, page.text
    assert [v["version"] for v in page.json()["items"]] == ["v0"]
