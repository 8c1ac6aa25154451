"""Least-privilege right-sizing (issue 20, item 3) on a seeded history, on both backends: what
an agent used and did not, a proposal that removes exactly the unused permissions, its
simulation over the recorded traffic with zero flips, applying it (every recorded decision
decided as before, an unused permission now denied), a proposal narrowed less when its
simulation flips something, the window, who may see it, bad input, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.testclient import TestClient

from tests.conftest import Api, admin_client, assert_error, bearer
from tests.pdp import credential, env_of, push_policies, token
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.policy.values import Ask

START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
DAY = 86_400

POLICIES = """// Shared by every payments agent.
@id("payments-read")
permit (principal in Role::"payments",
        action in [Action::"dataset.read", Action::"secret.read"], resource);

@id("ops-write")
permit (principal in Role::"ops", action == Action::"tool.write", resource is Tool);

// Whoever is audited never writes to prod.
@id("no-prod")
forbid (principal in Role::"audited", action == Action::"dataset.write",
        resource == Dataset::"prod");

@id("handbook")
permit (principal, action == Action::"resource.read", resource == Resource::"handbook");

// The bot's own tools.
@id("bot-own")
permit (principal == Agent::"{bot}",
        action in [Action::"tool.call", Action::"resource.read", Action::"prompt.get"],
        resource);

// The bot's key, once.
@id("bot-key")
permit (principal == Agent::"{bot}", action == Action::"secret.read",
        resource == Secret::"api-key");
"""

# What the bot did: (action, type, id) and how Cedar answered.
TRAFFIC = [
    ("dataset.read", "Dataset", "ledger", "allow"),
    ("tool.call", "Tool", "search", "allow"),
    ("tool.call", "Tool", "search", "allow"),
    ("resource.read", "Resource", "handbook", "allow"),
    ("dataset.write", "Dataset", "prod", "deny"),
]
# Permitted and never used: (policy, action) -> whether the proposal removes it.
UNUSED = {
    ("payments-read", "secret.read"): False,  # the payments role is used: shared, kept
    ("ops-write", "tool.write"): True,  # the ops role is never used: dropped from the bot
    ("bot-own", "prompt.get"): True,  # the bot's own policy, narrowed
    ("bot-key", "secret.read"): True,  # the bot's own policy, unused: removed
}
USED = {("payments-read", "dataset.read"), ("bot-own", "tool.call"),
        ("bot-own", "resource.read"), ("handbook", "resource.read")}  # fmt: skip


def _decide(svc: Services, agent: str, action: str, kind: str, rid: str) -> str:
    """Decided and recorded: the agent's traffic."""
    return asyncio.run(svc.decisions.decide(Ask(agent, action, kind, rid))).effect.value


def _would(svc: Services, agent: str, action: str, kind: str, rid: str) -> str:
    """Decided, not recorded: what the agent may do, without it becoming a use."""
    svc.runtime.ensure_current()
    return svc.decisions.evaluate(Ask(agent, action, kind, rid)).effect.value


def _seed(svc: Services, client: TestClient) -> str:
    """The bot with three roles and three scopes, the policies above, a token carrying two
    of its scopes, and its traffic recorded through the real decision path."""
    api = Api(client)
    bot = api.agent(name="bot", roles=["payments", "ops", "audited"],
                    scopes=["docs:read", "tools:call", "admin:all"])["id"]  # fmt: skip
    push_policies(client, POLICIES.replace("{bot}", bot))
    with env_of(svc, client) as e:
        token(e, credential(e, bot), scope="docs:read tools:call")
    for action, kind, rid, expected in TRAFFIC:
        assert _decide(svc, bot, action, kind, rid) == expected, (action, rid)
    return bot


def _report(client: TestClient, agent: str, **params: Any) -> dict[str, Any]:
    got = client.get(f"/v1/agents/{agent}/rightsizing", params=params)
    assert got.status_code == 200, got.text
    return dict(got.json())


def test_the_proposal_removes_only_unused_permissions_with_zero_flips(
    services: Services, client: TestClient
) -> None:
    bot = _seed(services, client)
    r = _report(client, bot)
    assert (r["agent_id"], r["days"], r["policy_version"]) == (bot, 30, "v1")
    assert {(p["policy"], p["action"]) for p in r["used"]} == USED
    assert {(p["policy"], p["action"]): p["removed"] for p in r["unused"]} == UNUSED
    calls = next(p for p in r["used"] if (p["policy"], p["action"]) == ("bot-own", "tool.call"))
    assert (calls["count"], calls["resources"], calls["via"]) == (2, ['Tool::"search"'], "agent")
    ops = next(p for p in r["unused"] if p["policy"] == "ops-write")
    assert (ops["via"], ops["role"], ops["resource"]) == ("role", "ops", "Tool")
    assert r["roles_unused"] == ["audited", "ops"]
    assert {s["scope"]: (s["tokens"], s["credentials"]) for s in r["scopes"]} == {
        "docs:read": (1, 1), "tools:call": (1, 1), "admin:all": (0, 1)}  # fmt: skip
    assert r["scopes_unused"] == ["admin:all"]

    proposal = r["proposal"]
    assert (proposal["safe"], proposal["empty"], proposal["removes"]) == (True, False, 3)
    # "audited" grants nothing but a forbid names it: dropping it would lift the forbid
    assert proposal["role_changes"] == [{"op": "remove", "role": "ops"}]
    assert proposal["scope_changes"] == [{"op": "remove", "scope": "admin:all"}]
    assert proposal["policy_changes"] == [
        {"policy": "bot-key", "op": "remove", "actions": [], "removed_actions": ["secret.read"]},
        {"policy": "bot-own", "op": "narrow", "actions": ["resource.read", "tool.call"],
         "removed_actions": ["prompt.get"]},
    ]  # fmt: skip
    sim = proposal["simulation"]
    assert (sim["checked"], sim["flips"], sim["changes"]) == (len(TRAFFIC), 0, [])
    assert (sim["skipped"], sim["truncated"], sim["already_differing"]) == (0, False, 0)

    diff = proposal["diff"]
    assert diff.startswith("--- policies@v1\n+++ policies@proposed\n")
    removed = [x for x in diff.splitlines() if x.startswith("-") and not x.startswith("---")]
    assert any('@id("bot-key")' in x for x in removed)
    assert any("// The bot's key, once." in x for x in removed)  # its comment goes with it
    assert not any("payments" in x or "no-prod" in x or "handbook" in x for x in removed)
    text = proposal["policies"]
    assert 'action in [Action::"resource.read", Action::"tool.call"]' in text
    assert "prompt.get" not in text
    assert "bot-key" not in text
    assert "// The bot's own tools." in text  # a rewritten policy keeps its comment
    original = POLICIES.replace("{bot}", bot)
    kept = original[: original.index("// The bot's own tools.")]
    assert text.startswith(kept)  # the rest byte for byte
    valid = client.post("/v1/policies/validate", json={"policies": text})
    assert valid.status_code == 200, valid.text
    assert valid.json()["digest"] == sim["candidate_digest"]
    assert client.get("/v1/policies").json()["version"] == "v1"  # reading changes nothing


def test_applying_keeps_every_recorded_outcome_and_denies_the_unused(
    services: Services, client: TestClient
) -> None:
    bot = _seed(services, client)
    api = Api(client)
    assert _would(services, bot, "prompt.get", "Prompt", "summarise") == "allow"
    assert _would(services, bot, "tool.write", "Tool", "deploy") == "allow"
    recorded = [(e["action"], e["resource"]["type"], e["resource"]["id"], e["decision"])
                for e in api.events(type="decision", agent=bot)]  # fmt: skip
    before = api.events()

    done = client.post(f"/v1/agents/{bot}/rightsizing/apply", json={"days": 30})
    assert done.status_code == 200, done.text
    assert done.json()["policy_version"] == "v2"
    assert done.json()["rightsizing"]["proposal"]["safe"] is True
    new = api.new_events(before)
    assert [e["type"] for e in new] == ["policy.updated", "agent.updated"]
    assert "right-sizing of " + bot in new[0]["details"]["note"]
    assert new[1]["details"]["changes"] == {
        "roles": {"from": ["audited", "ops", "payments"], "to": ["audited", "payments"]},
        "scopes": {"from": ["admin:all", "docs:read", "tools:call"],
                   "to": ["docs:read", "tools:call"]},
    }  # fmt: skip
    agent = api.get(bot)
    assert (sorted(agent["roles"]), sorted(agent["scopes"])) == (
        ["audited", "payments"], ["docs:read", "tools:call"])  # fmt: skip

    for action, kind, rid, outcome in recorded:  # what it did: decided as it was
        assert _would(services, bot, action, kind, rid) == outcome, (action, rid)
    # permitted before and never used: now denied
    assert _would(services, bot, "prompt.get", "Prompt", "summarise") == "deny"
    assert _would(services, bot, "tool.write", "Tool", "deploy") == "deny"
    assert _would(services, bot, "secret.read", "Secret", "api-key") == "allow"  # payments

    again = _report(client, bot)
    assert again["policy_version"] == "v2"
    assert again["proposal"]["empty"] is True
    assert again["proposal"]["diff"] == ""
    nothing = client.post(f"/v1/agents/{bot}/rightsizing/apply", json={})
    assert nothing.status_code == 200, nothing.text
    assert nothing.json()["policy_version"] is None


def test_a_flip_narrows_the_proposal_less(services: Services, client: TestClient) -> None:
    """A role whose policy was renamed since it was used: the recorded reasons do not name
    the policy in force, so the draft drops the role; the replay flips the decision, and the
    proposal keeps the role (and still drops the one that was not needed)."""
    api = Api(client)
    agent = api.agent(name="renamed", roles=["reader", "idle"])["id"]
    rule = '@id("{id}") permit (principal in Role::"reader", action == Action::"dataset.read", ' \
           'resource);\n@id("idle") permit (principal in Role::"idle", ' \
           'action == Action::"tool.call", resource);'  # fmt: skip
    push_policies(client, rule.replace("{id}", "read-v1"))
    assert _decide(services, agent, "dataset.read", "Dataset", "d") == "allow"
    push_policies(client, rule.replace("{id}", "read-v2"))

    r = _report(client, agent)
    assert {(p["policy"], p["action"]) for p in r["unused"]} == {
        ("read-v2", "dataset.read"), ("idle", "tool.call")}  # fmt: skip
    proposal = r["proposal"]
    assert proposal["role_changes"] == [{"op": "remove", "role": "idle"}]
    assert (proposal["safe"], proposal["empty"]) == (True, False)
    assert (proposal["simulation"]["checked"], proposal["simulation"]["flips"]) == (1, 0)
    assert {(p["policy"], p["removed"]) for p in r["unused"]} == {
        ("read-v2", False), ("idle", True)}  # fmt: skip


def test_the_window(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    with admin_client(svc) as client:
        bot = _seed(svc, client)
        clock.advance(10 * DAY)
        recent = _report(client, bot, days=30)
        assert {(p["policy"], p["action"]) for p in recent["used"]} == USED
        assert recent["since"].startswith("2026-11-17T10:00:00")
        old = _report(client, bot, days=5)
        assert old["used"] == []
        assert old["scopes_unused"] == ["admin:all", "docs:read", "tools:call"]
        assert old["proposal"]["simulation"]["checked"] == 0
        # nothing recorded in the window: every agent-scoped grant and unused role goes
        assert {c["policy"]: c["op"] for c in old["proposal"]["policy_changes"]} == {
            "bot-own": "remove", "bot-key": "remove"}  # fmt: skip
        dropped = [c["role"] for c in old["proposal"]["role_changes"]]
        assert dropped == ["ops", "payments"]


def test_who_may_see_it_and_bad_input(services: Services, client: TestClient) -> None:
    api = Api(client)
    bot = _seed(services, client)
    sup, other = api.user("rs-sup"), api.user("rs-other")
    auditor = api.user("rs-auditor", role="auditor")
    mine = api.agent(name="mine", owner=sup["id"])["id"]
    url = f"/v1/agents/{mine}/rightsizing"
    for who in (sup, auditor):
        assert client.get(url, headers=bearer(who["token"])).status_code == 200
    assert_error(client.get(url, headers=bearer(other["token"])), 403, "forbidden")
    with env_of(services, client) as e:
        agent_token = token(e, credential(e, bot))
    assert_error(client.get(f"/v1/agents/{bot}/rightsizing", headers=bearer(agent_token)), 401)
    for who in (sup, auditor):  # only an admin applies
        assert_error(client.post(f"{url}/apply", json={}, headers=bearer(who["token"])), 403)

    missing = "agt_" + "0" * 26
    error = assert_error(client.get(f"/v1/agents/{missing}/rightsizing"), 404, "agent_not_found")
    assert error["details"]["agent"] == missing
    assert missing in error["message"]
    assert_error(client.post(f"/v1/agents/{missing}/rightsizing/apply", json={}), 404)
    for days in (0, -1, 100_000):
        error = assert_error(client.get(url, params={"days": days}), 422)
        assert error["details"]["field"] == "days", error
    error = assert_error(client.get(url, params={"days": "many"}), 422)
    assert "days" in json.dumps(error)
    error = assert_error(client.post(f"{url}/apply", json={"days": 0}), 422)
    assert error["details"]["field"] == "days", error
    for fraction in (30.5, "30"):  # JSON's integer 30.0 is accepted; these are not integers
        error = assert_error(client.post(f"{url}/apply", json={"days": fraction}), 422)
        assert error["details"]["field"] == "days", error
    whole = client.post(f"{url}/apply", json={"days": 30.0})
    assert whole.status_code == 200, whole.text
    assert whole.json()["rightsizing"]["days"] == 30
    error = assert_error(client.get("/v1/rightsizing", params={"days": 0}), 422)
    assert error["details"]["field"] == "days", error


def test_every_agent_a_page_at_a_time(services: Services, client: TestClient) -> None:
    api = Api(client)
    bot = _seed(services, client)
    others = {api.agent(name=f"a{i}")["id"] for i in range(3)}
    seen: list[str] = []
    cursor = None
    while True:
        got = client.get("/v1/rightsizing",
                         params={"limit": 2, **({"cursor": cursor} if cursor else {})})  # fmt: skip
        assert got.status_code == 200, got.text
        page = got.json()
        assert len(page["items"]) <= 2
        seen += [item["agent_id"] for item in page["items"]]
        if by_id := {i["agent_id"]: i for i in page["items"]}.get(bot):
            assert by_id["proposal"]["removes"] == 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(seen) == {bot, *others}
    assert len(seen) == len(set(seen))


def test_cli_rightsize(services: Services, client: TestClient) -> None:
    bot = _seed(services, client)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env |= {"TETHER_URL": f"http://127.0.0.1:{port}",
            "TETHER_TOKEN": services.settings.admin_token_path.read_text().strip()}  # fmt: skip
    with served_in_thread(create_app(services), port):
        done = run_cli("agents", "rightsize", bot, "--days", "7", "--json", env=env)
        assert done.returncode == 0, done.stderr
        found = orjson.loads(done.stdout)
        assert (found["agent_id"], found["days"]) == (bot, 7)
        assert {(p["policy"], p["action"]): p["removed"] for p in found["unused"]} == UNUSED
        assert found["proposal"]["simulation"]["flips"] == 0

        people = run_cli("agents", "rightsize", bot, env=env)
        assert people.returncode == 0, people.stderr
        assert "safe: removes 3 of 4 unused permissions" in people.stdout
        assert "drop role ops from the agent" in people.stdout
        assert "+++ policies@proposed" in people.stdout

        refused = run_cli("agents", "rightsize", bot, "--days", "0", env=env)
        assert refused.returncode != 0
        assert "days" in refused.stderr
        assert "Traceback" not in refused.stderr
