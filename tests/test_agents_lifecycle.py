"""The agent registry through the HTTP API: status rules, creation rules, fingerprints, clone,
kill cascade, and exactly one ledger event for every change (none for a failure or a no-op)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Api, admin_client, assert_error
from tether.container import Services

ZERO_CUT = {"tokens": 0, "keys": 0, "approvals": 0, "leases": 0}
AGENT_ID = re.compile(r"^agt_[0-9A-HJKMNP-TV-Z]{26}$")
FP_A = {"model": "gpt-x", "model_version": "2026-01", "prompt_sha256": "a" * 64}
FP_B = {**FP_A, "tools_sha256": "b" * 64}


def expected_digest(fingerprint: dict[str, Any]) -> str:
    parts = {
        k: fingerprint.get(k) for k in ("model", "model_version", "prompt_sha256", "tools_sha256")
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- status transitions ------------------------------------------------------------------------


def test_suspend_then_resume(api: Api) -> None:
    agent = api.agent()
    before = api.events()
    suspended = api.ok(agent["id"], "suspend", reason="odd traffic")
    assert suspended["status"] == "suspended"
    assert suspended["status_reason"] == "odd traffic"
    assert api.get(agent["id"])["status"] == "suspended"
    resumed = api.ok(agent["id"], "resume", note="checked")
    assert resumed["status"] == "active"
    assert resumed["status_reason"] is None
    assert api.get(agent["id"])["status"] == "active"
    events = api.new_events(before)
    assert [(e["type"], e["agent_id"]) for e in events] == [
        ("agent.suspended", agent["id"]),
        ("agent.resumed", agent["id"]),
    ]
    assert events[0]["details"] == {"from": "active", "to": "suspended", "reason": "odd traffic"}
    assert events[1]["details"] == {"from": "suspended", "to": "active", "note": "checked"}


def test_suspending_a_suspended_agent_is_409(api: Api) -> None:
    agent = api.agent()
    api.ok(agent["id"], "suspend", reason="first")
    before = api.snapshot()
    assert_error(api.act(agent["id"], "suspend", reason="again"), 409, "invalid_transition")
    assert api.snapshot() == before
    assert api.get(agent["id"])["status_reason"] == "first"


def test_resuming_an_active_agent_is_409(api: Api) -> None:
    agent = api.agent()
    before = api.snapshot()
    assert_error(api.act(agent["id"], "resume"), 409, "invalid_transition")
    assert api.snapshot() == before


@pytest.mark.parametrize("start", ["active", "suspended"])
def test_retire(api: Api, start: str) -> None:
    agent = api.agent()
    if start == "suspended":
        api.ok(agent["id"], "suspend", reason="pause")
    before = api.events()
    retired = api.ok(agent["id"], "retire", reason="replaced by v2")
    assert retired["status"] == "retired"
    assert retired["status_reason"] == "replaced by v2"
    assert api.get(agent["id"])["status"] == "retired"
    [event] = api.new_events(before)
    assert event["type"] == "agent.retired"
    assert event["details"]["from"] == start


@pytest.mark.parametrize("start", ["active", "suspended"])
def test_kill_revokes(api: Api, start: str) -> None:
    agent = api.agent()
    if start == "suspended":
        api.ok(agent["id"], "suspend", reason="pause")
    killed = api.ok(agent["id"], "kill", reason="exfiltration")
    offer = killed.pop("rollback")
    assert killed == {"revoked": [agent["id"]], "cut_off": ZERO_CUT}
    assert offer["reversible_actions"] == 0  # it made no tool call
    assert offer["command"].startswith(f"tether rollback {agent['id']} --since ")
    after = api.get(agent["id"])
    assert after["status"] == "revoked"
    assert after["status_reason"] == "exfiltration"


TERMINAL_OPS: dict[str, dict[str, Any]] = {
    "patch": {"name": "renamed"},
    "suspend": {"reason": "again"},
    "resume": {},
    "retire": {"reason": "again"},
    "kill": {"reason": "again"},
}


@pytest.mark.parametrize(
    ("ending", "code"), [("kill", "agent_revoked"), ("retire", "invalid_transition")]
)
def test_revoked_and_retired_are_terminal(api: Api, ending: str, code: str) -> None:
    agent = api.agent()
    api.ok(agent["id"], ending, reason="the end")
    before = api.snapshot()
    for op, body in TERMINAL_OPS.items():
        response = api.act(agent["id"], op, **body)
        assert response.status_code == 409, (op, response.text)
        assert_error(response, 409, code)
    assert api.snapshot() == before


# -- creation rules ----------------------------------------------------------------------------


def test_owner_is_required(api: Api) -> None:
    before = api.snapshot()
    body = {"name": "x", "purpose": "p", "risk_tier": "minimal"}
    error = assert_error(api.client.post("/v1/agents", json=body), 422, "validation_error")
    assert error["details"]["field"] == "owner"
    assert api.snapshot() == before


@pytest.mark.parametrize("owner", ["nobody", "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ"])
def test_owner_must_exist(api: Api, owner: str) -> None:
    before = api.snapshot()
    response = api.client.post("/v1/agents", json={**_body(), "owner": owner})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "owner"
    assert api.snapshot() == before


def test_owner_must_be_able_to_own(api: Api) -> None:
    api.user("audrey", role="auditor")
    before = api.snapshot()
    response = api.client.post("/v1/agents", json={**_body(), "owner": "audrey"})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "owner"
    assert api.snapshot() == before


def test_owner_may_be_a_username_or_a_user_id(api: Api) -> None:
    alice = api.user("alice")
    by_name = api.agent(owner="alice")
    by_id = api.agent(owner=alice["id"])
    for agent in (by_name, by_id):
        assert agent["owner"] == alice["id"]
        assert agent["owner_username"] == "alice"
    assert {a["id"] for a in api.agents(owner="alice")} == {by_name["id"], by_id["id"]}


def test_prohibited_risk_tier_is_refused(api: Api) -> None:
    before = api.snapshot()
    response = api.client.post("/v1/agents", json={**_body(), "risk_tier": "prohibited"})
    error = assert_error(response, 422, "risk_tier_prohibited")
    assert error["details"]["field"] == "risk_tier"
    assert api.snapshot() == before


def test_new_agent_shape(api: Api) -> None:
    agent = api.agent(
        name="billing-bot",
        purpose="reconcile invoices",
        risk_tier="high",
        roles=["reader", "billing", "reader"],
        attributes={"team": "finance", "max_spend": 100, "regions": ["eu"], "pii": False},
        expires_at="2099-01-01T00:00:00Z",
    )
    assert AGENT_ID.match(agent["id"])
    assert agent["status"] == "active"
    assert agent["status_reason"] is None
    assert agent["roles"] == ["billing", "reader"]
    assert agent["attributes"] == {
        "team": "finance",
        "max_spend": 100,
        "regions": ["eu"],
        "pii": False,
    }
    assert agent["parent"] is None
    assert agent["lineage"] == []
    assert agent["lineage_kind"] is None
    assert agent["fingerprint"] is None
    assert agent["supervisors"] == []
    assert agent["expires_at"] == "2099-01-01T00:00:00Z"
    # A high-risk agent is due for re-certification 90 days after creation by default.
    assert _time(agent["recertify_by"]) - _time(agent["created_at"]) == timedelta(days=90)
    assert api.get(agent["id"]) == agent


def test_spiffe_id_uses_the_trust_domain(make_services: Callable[..., Services]) -> None:
    services = make_services(trust_domain="corp.example")
    with admin_client(services) as client:
        agent = Api(client).agent()
    assert agent["spiffe_id"] == f"spiffe://corp.example/agent/{agent['id']}"


def test_spiffe_id_default_trust_domain(api: Api, services: Services) -> None:
    agent = api.agent()
    domain = services.settings.trust_domain
    assert agent["spiffe_id"] == f"spiffe://{domain}/agent/{agent['id']}"


def test_ids_are_unique_and_never_reused(api: Api) -> None:
    first = [api.agent(name=f"a{i}")["id"] for i in range(8)]
    for agent_id in first[:3]:
        api.ok(agent_id, "kill", reason="gone")
    for agent_id in first[3:6]:
        api.ok(agent_id, "retire", reason="gone")
    second = [api.agent(name=f"b{i}")["id"] for i in range(8)]
    ids = first + second
    assert len(set(ids)) == len(ids)
    assert all(AGENT_ID.match(i) for i in ids)
    listed = api.agents()
    assert sorted(a["id"] for a in listed) == sorted(ids)  # nothing is ever deleted
    assert len({a["spiffe_id"] for a in listed}) == len(ids)
    assert {api.get(i)["status"] for i in first[:3]} == {"revoked"}


@pytest.mark.parametrize(
    "fingerprint",
    [FP_A, FP_B, {"model": "m"}, {"model": "m", "model_version": "1", "tools_sha256": "c" * 64}],
)
def test_fingerprint_digest_is_computed_from_its_parts(
    api: Api, fingerprint: dict[str, Any]
) -> None:
    agent = api.agent(fingerprint=fingerprint)
    fp = agent["fingerprint"]
    assert fp["digest"] == expected_digest(fingerprint)
    for part in ("model", "model_version", "prompt_sha256", "tools_sha256"):
        assert fp[part] == fingerprint.get(part)
    [event] = api.events(type="agent.created", agent=agent["id"])
    assert event["details"]["fingerprint_digest"] == fp["digest"]


def test_different_fingerprints_have_different_digests(api: Api) -> None:
    a = api.agent(fingerprint=FP_A)["fingerprint"]["digest"]
    b = api.agent(fingerprint=FP_B)["fingerprint"]["digest"]
    assert a != b


def test_parent_must_exist(api: Api) -> None:
    before = api.snapshot()
    response = api.client.post("/v1/agents", json={**_body(), "parent": "agt_" + "0" * 26})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "parent"
    assert api.snapshot() == before


def test_parent_must_be_active(api: Api) -> None:
    parent = api.agent(name="parent")
    api.ok(parent["id"], "suspend", reason="pause")
    before = api.snapshot()
    response = api.client.post("/v1/agents", json={**_body(), "parent": parent["id"]})
    assert_error(response, 409, "invalid_transition")
    assert api.snapshot() == before


def test_lineage_is_nearest_first(api: Api) -> None:
    root = api.agent(name="root")
    child = api.agent(name="child", parent=root["id"])
    grandchild = api.agent(name="grandchild", parent=child["id"])
    assert root["lineage"] == []
    assert child["lineage"] == [root["id"]]
    assert grandchild["lineage"] == [child["id"], root["id"]]
    assert grandchild["parent"] == child["id"]
    assert child["lineage_kind"] == grandchild["lineage_kind"] == "spawned"


def _body(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "owner": "admin", "purpose": "p", "risk_tier": "minimal", **fields}


# -- fingerprints ------------------------------------------------------------------------------


def test_fingerprint_change_suspends_a_high_risk_agent_until_resumed(api: Api) -> None:
    agent = api.agent(risk_tier="high", fingerprint=FP_A)
    before = api.events()
    patched = api.ok(agent["id"], "patch", fingerprint=FP_B)
    assert patched["status"] == "suspended"
    assert "fingerprint" in patched["status_reason"]
    assert patched["fingerprint"]["digest"] == expected_digest(FP_B)
    [event] = api.new_events(before)
    assert event["type"] == "agent.updated"
    changes = event["details"]["changes"]
    assert changes["status"] == {"from": "active", "to": "suspended"}
    assert changes["fingerprint_digest"] == {
        "from": expected_digest(FP_A),
        "to": expected_digest(FP_B),
    }
    resumed = api.ok(agent["id"], "resume", note="new prompt reviewed")
    assert resumed["status"] == "active"
    assert resumed["status_reason"] is None
    assert resumed["fingerprint"]["digest"] == expected_digest(FP_B)


@pytest.mark.parametrize("tier", ["minimal", "limited"])
def test_fingerprint_change_does_not_suspend_lower_tiers(api: Api, tier: str) -> None:
    agent = api.agent(risk_tier=tier, fingerprint=FP_A)
    patched = api.ok(agent["id"], "patch", fingerprint=FP_B)
    assert patched["status"] == "active"
    assert patched["status_reason"] is None
    assert patched["fingerprint"]["digest"] == expected_digest(FP_B)
    [event] = api.events(type="agent.updated", agent=agent["id"])
    assert "status" not in event["details"]["changes"]


def test_same_fingerprint_is_not_a_change(api: Api) -> None:
    agent = api.agent(risk_tier="high", fingerprint=FP_A)
    before = api.snapshot()
    patched = api.ok(agent["id"], "patch", fingerprint=dict(reversed(FP_A.items())))
    assert patched["status"] == "active"
    assert api.snapshot() == before


# -- clone -------------------------------------------------------------------------------------


def test_clone_copies_roles_and_attributes_but_not_identity(api: Api) -> None:
    api.user("carol")
    source = api.agent(
        name="source",
        roles=["reader", "writer"],
        attributes={"team": "ops", "level": 3},
        supervisors=["carol"],
        fingerprint=FP_A,
    )
    before = api.events()
    response = api.act(source["id"], "clone", name="copy")
    assert response.status_code == 201, response.text
    clone = response.json()
    assert clone["id"] != source["id"]
    assert AGENT_ID.match(clone["id"])
    assert clone["spiffe_id"] != source["spiffe_id"]
    assert clone["spiffe_id"].endswith(clone["id"])
    assert clone["name"] == "copy"
    assert clone["lineage"][0] == source["id"]
    assert clone["lineage"] == [source["id"]]
    assert clone["lineage_kind"] == "cloned"
    assert clone["roles"] == source["roles"]
    assert clone["attributes"] == source["attributes"]
    assert clone["owner"] == source["owner"]
    assert clone["status"] == "active"
    # No credential of the source travels with the clone: nothing secret is in the response.
    assert not [k for k in clone if re.search("secret|credential|token|key", k)]
    assert api.get(source["id"]) == source  # the source is untouched
    [event] = api.new_events(before)
    assert (event["type"], event["agent_id"]) == ("agent.cloned", clone["id"])
    assert event["details"]["source"] == source["id"]


def test_clone_of_a_clone_keeps_the_whole_lineage(api: Api) -> None:
    source = api.agent(name="source")
    first = api.ok(source["id"], "clone", name="first")
    second = api.ok(first["id"], "clone", name="second")
    assert second["lineage"] == [first["id"], source["id"]]


def test_clone_of_a_revoked_agent_is_409(api: Api) -> None:
    source = api.agent()
    api.ok(source["id"], "kill", reason="gone")
    before = api.snapshot()
    assert_error(api.act(source["id"], "clone", name="copy"), 409, "agent_revoked")
    assert api.snapshot() == before


# -- kill cascade ------------------------------------------------------------------------------


def _family(api: Api) -> tuple[str, str, str, str]:
    parent = api.agent(name="parent")["id"]
    child = api.agent(name="child", parent=parent)["id"]
    grandchild = api.agent(name="grandchild", parent=child)["id"]
    unrelated = api.agent(name="unrelated")["id"]
    return parent, child, grandchild, unrelated


def test_kill_cascades_to_every_descendant(api: Api) -> None:
    parent, child, grandchild, unrelated = _family(api)
    api.agent(name="nephew", parent=unrelated)
    before = api.events()
    result = api.ok(parent, "kill", reason="compromised")
    assert sorted(result["revoked"]) == sorted([parent, child, grandchild])
    assert len(result["revoked"]) == 3
    assert result["revoked"][0] == parent
    assert result["cut_off"] == ZERO_CUT
    for agent_id in (parent, child, grandchild):
        assert api.get(agent_id)["status"] == "revoked"
    assert api.get(unrelated)["status"] == "active"
    assert {a["status"] for a in api.agents(status="active")} == {"active"}
    assert len(api.agents(status="active")) == 2
    events = api.new_events(before)
    assert [e["type"] for e in events] == ["agent.killed"] * 3
    assert sorted(e["agent_id"] for e in events) == sorted(result["revoked"])
    assert {e["details"]["root"] for e in events} == {parent}


def test_kill_without_cascade_revokes_only_the_root(api: Api) -> None:
    parent, child, grandchild, unrelated = _family(api)
    before = api.events()
    result = api.ok(parent, "kill", reason="compromised", cascade=False)
    assert result.pop("rollback")["reversible_actions"] == 0
    assert result == {"revoked": [parent], "cut_off": ZERO_CUT}
    assert api.get(parent)["status"] == "revoked"
    for agent_id in (child, grandchild, unrelated):
        assert api.get(agent_id)["status"] == "active"
    assert [(e["type"], e["agent_id"]) for e in api.new_events(before)] == [
        ("agent.killed", parent)
    ]


def test_kill_cascade_passes_over_retired_descendants(api: Api) -> None:
    parent, child, grandchild, _ = _family(api)
    api.ok(child, "retire", reason="done")
    api.ok(grandchild, "suspend", reason="pause")
    result = api.ok(parent, "kill", reason="compromised")
    assert sorted(result["revoked"]) == sorted([parent, grandchild])
    assert api.get(child)["status"] == "retired"
    assert api.get(grandchild)["status"] == "revoked"


# -- one ledger event per change ---------------------------------------------------------------

ONE_EVENT: list[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any], str]] = [
    ("patch", [], {"purpose": "changed"}, "agent.updated"),
    ("suspend", [], {"reason": "r"}, "agent.suspended"),
    ("resume", [("suspend", {"reason": "r"})], {}, "agent.resumed"),
    ("retire", [], {"reason": "r"}, "agent.retired"),
    ("kill", [], {"reason": "r"}, "agent.killed"),
    ("clone", [], {"name": "twin"}, "agent.cloned"),
]


@pytest.mark.parametrize(("op", "setup", "body", "type_"), ONE_EVENT, ids=[c[0] for c in ONE_EVENT])
def test_each_change_writes_exactly_one_event(
    api: Api,
    services: Services,
    op: str,
    setup: list[tuple[str, dict[str, Any]]],
    body: dict[str, Any],
    type_: str,
) -> None:
    agent = api.agent()
    for step, args in setup:
        api.ok(agent["id"], step, **args)
    before = api.events()
    result = api.ok(agent["id"], op, **body)
    [event] = api.new_events(before)
    subject = result["id"] if op == "clone" else agent["id"]
    assert event["type"] == type_
    assert event["agent_id"] == subject
    assert event["resource"] == {"type": "Agent", "id": subject}
    admin = api.client.get("/v1/whoami").json()["id"]
    assert event["actor"] == f"user:{admin}"
    assert event["seq"] == before[-1]["seq"] + 1
    assert event["prev_hash"] == before[-1]["hash"]


def test_create_writes_exactly_one_event(api: Api) -> None:
    before = api.events()
    agent = api.agent(roles=["b", "a"])
    [event] = api.new_events(before)
    assert (event["type"], event["agent_id"]) == ("agent.created", agent["id"])
    assert event["details"]["roles"] == ["a", "b"]
    assert event["details"]["owner"] == agent["owner"]


def test_patch_records_what_changed(api: Api) -> None:
    agent = api.agent(roles=["a"])
    before = api.events()
    api.ok(agent["id"], "patch", name="renamed", roles=["b", "a"])
    [event] = api.new_events(before)
    assert event["details"]["changes"] == {
        "name": {"from": "worker", "to": "renamed"},
        "roles": {"from": ["a"], "to": ["a", "b"]},
    }


def test_noop_patch_changes_nothing(api: Api) -> None:
    agent = api.agent(roles=["a", "b"], attributes={"x": 1, "y": "z"})
    before = api.snapshot()
    same = {
        "name": agent["name"],
        "purpose": agent["purpose"],
        "risk_tier": agent["risk_tier"],
        "roles": ["b", "a", "b"],
        "attributes": {"y": "z", "x": 1},
        "supervisors": [],
    }
    for body in ({}, same):
        patched = api.ok(agent["id"], "patch", **body)
        assert patched == agent
    assert api.snapshot() == before


def test_failed_patch_leaves_no_partial_change(api: Api) -> None:
    agent = api.agent()
    before = api.snapshot()
    response = api.act(agent["id"], "patch", name="renamed", supervisors=["nobody"])
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "supervisors"
    assert api.snapshot() == before


# -- listing -----------------------------------------------------------------------------------


def test_list_pages_and_filters(api: Api) -> None:
    api.user("alice")
    made = [
        api.agent(name="a0", risk_tier="high", roles=["ops"]),
        api.agent(name="a1", owner="alice"),
        api.agent(name="a2", roles=["ops"]),
        api.agent(name="a3", owner="alice", risk_tier="high"),
        api.agent(name="a4"),
    ]
    ids = [a["id"] for a in made]
    api.ok(ids[2], "suspend", reason="pause")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/agents", params=params).json()
        assert len(page["items"]) <= 2
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert seen == sorted(seen)  # creation (id) order, no duplicates

    def ids_of(**filters: Any) -> set[str]:
        return {a["id"] for a in api.agents(**filters)}

    assert ids_of(status="suspended") == {ids[2]}
    assert ids_of(role="ops") == {ids[0], ids[2]}
    assert ids_of(risk_tier="high") == {ids[0], ids[3]}
    assert ids_of(owner="alice") == {ids[1], ids[3]}
    assert ids_of(owner="alice", risk_tier="high") == {ids[3]}
    assert ids_of(owner="nobody") == set()
