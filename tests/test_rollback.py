"""Rollback (issue 17): the plan first, then each undo decided as the operator, run through
the gateway on the example upstream and put on the record — in reverse order, never twice,
the upstream's state as before the agent's calls, the ledger verifying."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from examples.payments_tickets.server import Ledger
from mcp import Client

from tests.conftest import Api, admin_client
from tests.pdp import AT, EXCHANGE, credential, env_of
from tests.pdp import token as pdp_token
from tests.serverproc import run_cli
from tests.test_gateway import World, open_world, upstreams_at
from tether.container import Services
from tether.sdk import AgentClient, guard

RULES = {
    "refund": {"undo": "cancel_refund", "args": {"refund_id": "{result.id}"}},
    "create_ticket": {"undo": "delete_ticket", "args": {"ticket_id": "{result.id}"}},
    "close_ticket": {"undo": "reopen_ticket", "args": {"ticket_id": "{args.ticket_id}"}},
    "transfer": {"irreversible": True},
}
POLICIES = """
@id("payers")
permit (principal in Role::"payer", action == Action::"tool.call", resource);
"""


def _upstreams(up_port: int) -> list[dict[str, Any]]:
    first, *_ = upstreams_at(up_port)
    return [{**first, "tools": RULES}]


class Stage:
    """The world, the upstream's state, and an agent that did things through the gateway."""

    def __init__(self, world: World, state: Ledger) -> None:
        self.world, self.state = world, state
        self.admin = world.services.settings.admin_token_path.read_text().strip()

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.world.url, timeout=60,
                            headers={"Authorization": f"Bearer {token or self.admin}"})  # fmt: skip

    def rollback(self, agent: str, token: str | None = None, **body: Any) -> httpx.Response:
        with self.http(token) as http:
            return http.post(f"/v1/agents/{agent}/rollback", json=body)

    def snapshot(self) -> dict[str, Any]:
        """What the agent's calls change: balances, pending refunds, tickets."""
        pending = {k: v for k, v in self.state.refunds.items() if v["status"] == "pending"}
        return copy.deepcopy({"balances": self.state.balances, "pending": pending,
                              "tickets": self.state.tickets})  # fmt: skip


@pytest.fixture
def stage(make_services: Callable[..., Services], tmp_path: Path) -> Iterator[Stage]:
    state = Ledger()
    with open_world(make_services, tmp_path, upstreams=_upstreams, ready=("payments",),
                    policies=POLICIES, state=state) as world:  # fmt: skip
        yield Stage(world, state)


def _act(stage: Stage, agent_token: str) -> dict[str, Any]:
    """Reversible and irreversible calls, a read and a failed one; what each returned."""

    async def calls(c: Client) -> dict[str, Any]:
        opened = await c.call_tool("payments.create_ticket", {"title": "to close"})
        out = {
            "balance": await c.call_tool("payments.get_balance", {"account": "ops"}),
            "refund1": await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": 100}),
            "ticket": await c.call_tool("payments.create_ticket", {"title": "refund issued"}),
            "transfer": await c.call_tool("payments.transfer", {"from_account": "ops",
                                          "to_account": "sales", "amount": 5}),
            "failed": await c.call_tool("payments.close_ticket", {"ticket_id": "t_404"}),
            "refund2": await c.call_tool("payments.refund", {"payment_id": "pay_2", "amount": 10}),
            "closed": await c.call_tool("payments.close_ticket",
                                        {"ticket_id": opened.structured_content["id"]}),
        }  # fmt: skip
        assert not any(v.is_error for k, v in out.items() if k != "failed")
        return {"opened": opened, **out}

    return stage.world.session(agent_token, calls)  # type: ignore[no-any-return]


def test_dry_run_then_rollback_undoes_in_reverse_and_restores_the_upstream(stage: Stage) -> None:
    # Set-up calls by the agent before the window (a ticket to close later) are in it too:
    # the window starts at the agent's first call.
    agent, token = stage.world.token(["payer"])
    before = stage.snapshot()
    did = _act(stage, token)
    after = stage.snapshot()
    assert after != before

    plan = stage.rollback(agent, dry_run=True)
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert body["dry_run"] is True
    assert body["rollback_id"] is None
    steps = [(s["tool"], s["plan"]) for s in body["steps"]]
    assert steps == [  # newest first; the read and the failed call are not in it
        ("payments.close_ticket", "undo"),
        ("payments.refund", "undo"),
        ("payments.transfer", "irreversible"),
        ("payments.create_ticket", "undo"),
        ("payments.refund", "undo"),
        ("payments.create_ticket", "undo"),
    ]
    assert body["summary"] == {"undo": 5, "undone": 0, "uncertain": 0, "irreversible": 1}
    assert body["steps"][1]["undo"] == {
        "tool": "payments.cancel_refund",
        "arguments": {"refund_id": did["refund2"].structured_content["id"]},
    }
    assert body["steps"][2]["note"] == "declared irreversible in the configuration"
    assert stage.snapshot() == after  # a dry run changes nothing

    done = stage.rollback(agent)
    assert done.status_code == 200, done.text
    report = done.json()
    assert report["status"] == "done"
    assert report["rollback_id"].startswith("rbk_")
    assert [(s["tool"], s.get("outcome")) for s in report["steps"]] == [
        ("payments.close_ticket", "undone"),
        ("payments.refund", "undone"),
        ("payments.transfer", None),
        ("payments.create_ticket", "undone"),
        ("payments.refund", "undone"),
        ("payments.create_ticket", "undone"),
    ]
    assert report["summary"]["outcome_undone"] == 5
    assert report["summary"]["irreversible"] == 1
    # the upstream is as before the agent's calls, but for the transfer nothing undoes
    restored = stage.snapshot()
    expected = copy.deepcopy(before)
    expected["balances"]["ops"] -= 5
    expected["balances"]["sales"] += 5
    assert restored == expected

    # every step is on the record: started, a decision and a step per undo, finished
    world = stage.world
    started = world.events("rollback.started")
    finished = world.events("rollback.finished")
    step_events = world.events("rollback.step")
    assert [e["details"]["rollback_id"] for e in started + finished] == [report["rollback_id"]] * 2
    assert len(step_events) == 5
    assert {e["outcome"] for e in step_events} == {"undone"}
    undo_decisions = [e for e in world.events("decision") if e["action"] == "tool.undo"]
    assert len(undo_decisions) == 5
    assert {e["decision"] for e in undo_decisions} == {"allow"}
    assert {e["actor"] for e in undo_decisions} == {f"user:{_admin_id(stage)}"}
    assert {e["agent_id"] for e in undo_decisions + step_events} == {agent}
    ran = [e["resource"]["id"] for e in sorted(step_events, key=lambda e: e["seq"])]
    assert ran == ["payments.reopen_ticket", "payments.cancel_refund", "payments.delete_ticket",
                   "payments.cancel_refund", "payments.delete_ticket"]  # fmt: skip
    by_id = {e["id"]: e for e in undo_decisions}
    for e in step_events:
        assert e["details"]["decision_event"] in by_id
    with admin_client(world.services) as http:
        verified = http.get("/v1/audit/verify")
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] is True

    # a second rollback undoes nothing twice
    again = stage.rollback(agent)
    assert again.status_code == 200, again.text
    assert [s["plan"] for s in again.json()["steps"]] == [
        "undone", "undone", "irreversible", "undone", "undone", "undone"]  # fmt: skip
    assert again.json()["summary"]["outcome_undone"] == 0
    assert stage.snapshot() == restored
    assert len(world.events("rollback.step")) == 5


def _admin_id(stage: Stage) -> str:
    with stage.http() as http:
        return str(http.get("/v1/users/me").json()["id"])


# -- faults ---------------------------------------------------------------------------------------


def _refunds(stage: Stage, token: str, *amounts: int) -> list[str]:
    async def calls(c: Client) -> list[str]:
        out = []
        for amount in amounts:
            got = await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": amount})
            assert not got.is_error, got
            out.append(str(got.structured_content["id"]))
        return out

    return stage.world.session(token, calls)  # type: ignore[no-any-return]


@pytest.mark.parametrize("on_failure", ["continue", "stop"])
def test_a_compensation_failing_upstream_is_reported_and_continue_goes_on(
    stage: Stage, on_failure: str
) -> None:
    agent, token = stage.world.token(["payer"])
    first, middle, last = _refunds(stage, token, 10, 20, 30)
    # Someone cancelled the middle refund by hand meanwhile: its undo fails upstream.
    stage.state.refunds[middle]["status"] = "cancelled"
    got = stage.rollback(agent, on_failure=on_failure)
    assert got.status_code == 200, got.text
    report = got.json()
    outcomes = [s.get("outcome") for s in report["steps"]]  # newest first: last, middle, first
    failed = report["steps"][1]
    assert failed["outcome"] == "failed"
    assert f"refund {middle} is cancelled, not pending" in failed["error"]
    if on_failure == "continue":
        assert outcomes == ["undone", "failed", "undone"]
        assert report["status"] == "done"
        assert stage.state.refunds[first]["status"] == "cancelled"
    else:
        assert outcomes == ["undone", "failed", "not_run"]
        assert report["status"] == "stopped"
        assert stage.state.refunds[first]["status"] == "pending"  # not touched
    assert stage.state.refunds[last]["status"] == "cancelled"
    steps = stage.world.events("rollback.step")
    expected = ["failed", "undone", "undone"] if on_failure == "continue" else ["failed", "undone"]
    assert sorted(e["outcome"] for e in steps) == expected
    # The failed undo changed nothing upstream, so the next rollback may run it again (and
    # with the refund back to pending it goes through); the undone ones are not run twice.
    stage.state.refunds[middle]["status"] = "pending"
    again = stage.rollback(agent).json()
    assert [s["plan"] for s in again["steps"]] == [
        "undone", "undo", "undo" if on_failure == "stop" else "undone"]  # fmt: skip
    assert again["steps"][1]["outcome"] == "undone"
    assert all(r["status"] == "cancelled" for r in stage.state.refunds.values())


def test_only_those_who_answer_for_the_agent_roll_it_back(stage: Stage) -> None:
    agent, token = stage.world.token(["payer"])
    _refunds(stage, token, 10)
    with admin_client(stage.world.services) as http:
        api = Api(http)
        stranger = api.user("stranger", "supervisor")
        auditor = api.user("auditor1", "auditor")
        supervisor = api.user("watcher", "supervisor")
        patched = http.patch(f"/v1/agents/{agent}", json={"supervisors": [supervisor["id"]]})
        assert patched.status_code == 200, patched.text
    for who in (stranger, auditor):
        for body in ({"dry_run": True}, {}):
            refused = stage.rollback(agent, who["token"], **body)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "forbidden"
    refused = stage.rollback(agent, token)  # the agent itself
    assert refused.status_code in (401, 403), refused.text
    assert not stage.world.events("rollback.started")
    assert all(r["status"] == "pending" for r in stage.state.refunds.values())
    done = stage.rollback(agent, supervisor["token"])  # a supervisor of the agent may
    assert done.status_code == 200, done.text
    assert done.json()["summary"]["outcome_undone"] == 1
    step = stage.world.events("rollback.step")[0]
    assert step["actor"] == f"user:{supervisor['id']}"


@pytest.mark.parametrize("body", [
    {"since": "yesterday"},
    {"since": "2026-12-01T10:00:00"},  # no offset
    {"since": 1733400000},
    {"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
    {"on_failure": "retry"},
    {"dry_run": "maybe"},
    {"whatever": True},
])  # fmt: skip
def test_a_bad_window_or_option_is_422_and_nothing_changes(
    stage: Stage, body: dict[str, Any]
) -> None:
    agent, token = stage.world.token(["payer"])
    _refunds(stage, token, 10)
    refused = stage.rollback(agent, **body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "validation_error"
    assert not stage.world.events("rollback.started")
    assert all(r["status"] == "pending" for r in stage.state.refunds.values())
    assert stage.rollback("agt_01NOSUCHAGENT0000000000000", dry_run=True).status_code == 404


def test_the_window_bounds_what_is_rolled_back(stage: Stage) -> None:
    agent, token = stage.world.token(["payer"])
    early = _refunds(stage, token, 10)
    plan = stage.rollback(agent, dry_run=True).json()
    cut = plan["steps"][0]["at"]
    late = _refunds(stage, token, 20, 30)
    since_cut = stage.rollback(agent, dry_run=True, since=cut).json()["steps"]
    assert len(since_cut) == 3  # "since" is inclusive
    done = stage.rollback(agent, until=cut).json()
    assert [s["call"] for s in done["steps"]] == [plan["steps"][0]["call"]]
    assert stage.state.refunds[early[0]]["status"] == "cancelled"
    assert all(stage.state.refunds[r]["status"] == "pending" for r in late)


UNDO_SCHEMA = """
entity User { role: String };
type UndoContext = { agent: String, undoes: String, call: String };
action "tool.undo" appliesTo { principal: [User], resource: [Tool], context: UndoContext };
"""


def test_policies_restrict_who_undoes_what_once_the_schema_declares_it(stage: Stage) -> None:
    agent, token = stage.world.token(["payer"])
    with admin_client(stage.world.services) as http:
        api = Api(http)
        supervisor = api.user("watcher", "supervisor")
        assert http.patch(f"/v1/agents/{agent}",
                          json={"supervisors": [supervisor["id"]]}).status_code == 200  # fmt: skip
        current = http.get("/v1/policies").json()
        schema = current["schema"].replace("entity User;\n", "") + UNDO_SCHEMA
        policies = (
            current["policies"]
            + """
@id("refunds-undone-by-admins")
forbid (principal, action == Action::"tool.undo", resource)
when { resource has tool && resource.tool == "cancel_refund" && principal.role != "admin" };
"""
        )
        pushed = http.put("/v1/policies", json={"policies": policies, "schema": schema})
        assert pushed.status_code == 200, pushed.text

    async def calls(c: Client) -> Any:
        await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": 10})
        return await c.call_tool("payments.create_ticket", {"title": "x"})

    stage.world.session(token, calls)
    report = stage.rollback(agent, supervisor["token"], on_failure="continue").json()
    assert [(s["tool"], s["outcome"]) for s in report["steps"]] == [
        ("payments.create_ticket", "undone"), ("payments.refund", "refused")]  # fmt: skip
    assert "refunds-undone-by-admins" in report["steps"][1]["error"]
    undo = [e for e in stage.world.events("decision") if e["action"] == "tool.undo"]
    assert sorted((e["resource"]["id"], e["decision"]) for e in undo) == [
        ("payments.cancel_refund", "deny"), ("payments.delete_ticket", "allow")]  # fmt: skip
    assert all(r["status"] == "pending" for r in stage.state.refunds.values())
    # the admin may; the refused step was never claimed, so it runs now
    admin = stage.rollback(agent).json()
    assert [(s["plan"], s.get("outcome")) for s in admin["steps"]] == [
        ("undone", None), ("undo", "undone")]  # fmt: skip
    assert all(r["status"] == "cancelled" for r in stage.state.refunds.values())


def test_delegates_calls_are_rolled_back_with_the_agent_on_request(stage: Stage) -> None:
    world = stage.world
    with admin_client(world.services) as http, env_of(world.services, http) as e:
        ids = []
        for name in ("principal-agent", "helper-agent"):
            body = {"name": name, "owner": "admin", "purpose": "p", "risk_tier": "minimal",
                    "roles": ["payer"]}  # fmt: skip
            ids.append(http.post("/v1/agents", json=body).json()["id"])
        a, b = (credential(e, i) for i in ids)
        mcp = {"resource": f"{world.url}/mcp"}
        a_token, b_token = pdp_token(e, a, **mcp), pdp_token(e, b, **mcp)
        got = e.anon.post("/oauth/token", data={
            "grant_type": EXCHANGE, **b.form, "subject_token": a_token,
            "subject_token_type": AT, "actor_token": b_token, "actor_token_type": AT, **mcp,
        })  # fmt: skip
        assert got.status_code == 200, got.text
        delegated = got.json()["access_token"]
    own = _refunds(stage, a_token, 10)
    for_a = _refunds(stage, delegated, 20)
    alone = _refunds(stage, b_token, 30)  # b for itself: never a's
    plain = stage.rollback(a.agent_id, dry_run=True).json()
    assert [s["agent_id"] for s in plain["steps"]] == [a.agent_id]
    both = stage.rollback(a.agent_id, delegates=True).json()
    assert [(s["agent_id"], s["outcome"]) for s in both["steps"]] == [
        (b.agent_id, "undone"), (a.agent_id, "undone")]  # fmt: skip
    assert stage.state.refunds[own[0]]["status"] == "cancelled"
    assert stage.state.refunds[for_a[0]]["status"] == "cancelled"
    assert stage.state.refunds[alone[0]]["status"] == "pending"


def test_a_kill_offers_to_roll_back_what_the_agent_did(stage: Stage) -> None:
    agent, token = stage.world.token(["payer"])
    _refunds(stage, token, 10, 20)

    async def more(c: Client) -> Any:
        await c.call_tool("payments.get_balance", {"account": "ops"})  # read: nothing to undo
        return await c.call_tool("payments.transfer", {"from_account": "ops",
                                 "to_account": "sales", "amount": 5})  # fmt: skip

    stage.world.session(token, more)
    with stage.http() as http:
        killed = http.post(f"/v1/agents/{agent}/kill", json={"reason": "misbehaving"})
    assert killed.status_code == 200, killed.text
    offer = killed.json()["rollback"]
    assert offer["reversible_actions"] == 2
    assert offer["hours"] == 24
    assert offer["command"] == f"tether rollback {agent} --since {offer['since']} --dry-run"
    assert offer["request"]["body"] == {"since": offer["since"], "dry_run": True}
    # what it offers works on the killed agent: its calls are undone by the operator
    done = stage.rollback(agent, since=offer["since"]).json()
    assert done["summary"]["outcome_undone"] == 2
    assert all(r["status"] == "cancelled" for r in stage.state.refunds.values())


# -- the command line -----------------------------------------------------------------------------


def _cli(stage: Stage, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_URL=stage.world.url, TETHER_TOKEN=stage.admin)
    return run_cli("rollback", *args, env=env)


def test_tether_rollback_shows_the_plan_then_runs_it_when_confirmed(stage: Stage) -> None:
    agent, token = stage.world.token(["payer"])
    refund = _refunds(stage, token, 10)[0]

    async def transfer(c: Client) -> Any:
        return await c.call_tool("payments.transfer", {"from_account": "ops",
                                 "to_account": "sales", "amount": 5})  # fmt: skip

    stage.world.session(token, transfer)
    plan = _cli(stage, agent, "--since", "1h", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "payments.refund" in plan.stdout
    assert "payments.cancel_refund" in plan.stdout
    assert "irreversible" in plan.stdout
    assert "1 to undo, 1 irreversible, 0 already undone, 0 uncertain" in plan.stdout
    # no terminal and no --yes: refused, nothing runs
    unconfirmed = _cli(stage, agent)
    assert unconfirmed.returncode != 0
    assert "add --yes" in unconfirmed.stderr
    assert "Traceback" not in unconfirmed.stderr
    assert stage.state.refunds[refund]["status"] == "pending"
    done = _cli(stage, agent, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["outcome_undone"] == 1
    assert stage.state.refunds[refund]["status"] == "cancelled"
    again = _cli(stage, agent, "--yes")
    assert again.returncode == 0, again.stderr
    assert "nothing to undo" in again.stdout
    bad = _cli(stage, agent, "--since", "yesterday", "--dry-run")
    assert bad.returncode != 0
    assert "since" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- the SDK's guard ------------------------------------------------------------------------------


def test_guard_compensate_journals_in_process_calls_and_a_rollback_undoes_them(
    stage: Stage,
) -> None:
    world = stage.world
    with admin_client(world.services) as http, env_of(world.services, http) as e:
        body = {"name": "in-process", "owner": "admin", "purpose": "p", "risk_tier": "minimal",
                "roles": ["payer"]}  # fmt: skip
        agent_id = http.post("/v1/agents", json=body).json()["id"]
        cred = credential(e, agent_id)
    agent = AgentClient(world.url, agent_id, client_secret=cred.secret)
    with agent:
        _guarded_calls_rolled_back(stage, agent, agent_id)


def _guarded_calls_rolled_back(stage: Stage, agent: AgentClient, agent_id: str) -> None:
    world, state = stage.world, stage.state

    def hold(payment_id: str, amount: int) -> dict[str, Any]:
        """The in-process tool: writes the payment system's state itself."""
        refund_id = f"re_local_{len(state.refunds) + 1}"
        state.balances["ops"] -= amount
        state.refunds[refund_id] = {"id": refund_id, "payment_id": payment_id,
                                    "amount": amount, "currency": "EUR", "status": "pending"}  # type: ignore[assignment]  # fmt: skip
        return dict(state.refunds[refund_id])

    def cancel(result: dict[str, Any], *_args: Any, **_kwargs: Any) -> dict[str, Any]:
        return {"tool": "payments.cancel_refund", "arguments": {"refund_id": result["id"]}}

    @guard("tool.call", resource="crm.hold_refund", client=agent, compensate=cancel)
    def hold_refund(payment_id: str, amount: int) -> dict[str, Any]:
        return hold(payment_id, amount)

    @guard(
        "tool.call", resource="crm.send_email", client=agent, compensate=lambda *_a, **_k: None
    )  # nothing unsends an email
    def send_email(to: str) -> str:
        return f"sent to {to}"

    @guard("tool.call", resource="crm.fails", client=agent, compensate=lambda *_: {"tool": "x.y"})
    def fails() -> None:
        raise RuntimeError("nope")

    before = stage.snapshot()
    held = hold_refund("pay_1", 40)
    send_email("c_17@example.com")
    with pytest.raises(RuntimeError):
        fails()
    assert stage.snapshot() != before
    plan = stage.rollback(agent_id, dry_run=True).json()
    assert [(s["tool"], s["plan"]) for s in plan["steps"]] == [
        ("crm.send_email", "irreversible"), ("crm.hold_refund", "undo")]  # fmt: skip
    assert plan["steps"][1]["undo"] == {"tool": "payments.cancel_refund", "declared_by": "agent",
                                        "arguments": {"refund_id": held["id"]}}  # fmt: skip
    assert plan["steps"][0]["note"] == "the agent declared it irreversible"
    done = stage.rollback(agent_id).json()
    assert done["summary"]["outcome_undone"] == 1
    assert stage.snapshot() == before  # the refund cancelled by the upstream, its hold back
    event = next(e for e in world.events("tool.called") if e["resource"]["id"] == "crm.hold_refund")
    assert event["details"]["reversible"] is True
    assert event["details"]["undo"]["tool"] == "payments.cancel_refund"


def test_an_agents_journal_report_is_checked(stage: Stage) -> None:
    with admin_client(stage.world.services) as http, env_of(stage.world.services, http) as e:
        body = {"name": "reporter", "owner": "admin", "purpose": "p", "risk_tier": "minimal",
                "roles": ["payer"]}  # fmt: skip
        agent_id = http.post("/v1/agents", json=body).json()["id"]
        cred = credential(e, agent_id)
    with AgentClient(stage.world.url, agent_id, client_secret=cred.secret) as agent:
        decision = agent.authorize("tool.call", resource="crm.lookup")
        token = agent.access_token()
    base = {"decision_event": decision.event_id, "tool": "crm.lookup", "outcome": "ok"}
    undo = {"tool": "payments.cancel_refund", "arguments": {"refund_id": "re_1"}}
    with stage.http(token) as http:
        for bad in ({**base, "undo": undo, "irreversible": True},
                    {**base, "undo": "reversible"},
                    {**base, "undo": {"tool": "nodot"}},
                    {**base, "args": {"a\u0000": 1}},
                    {**base, "undo": {"tool": "a.b", "arguments": {"x": "\u0000"}}},
                    {**base, "undo": {"tool": "a.b", "arguments": [1]}},
                    {**base, "undo": {"tool": "a.b", "extra": 1}}):  # fmt: skip
            got = http.post("/v1/tool-calls", json=bad)
            assert got.status_code == 422, (bad, got.text)
    assert not [e for e in stage.world.events("tool.called") if e["agent_id"] == agent_id]


def test_a_running_rollback_holds_its_agent_while_an_undo_runs_long(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    # 8 s, under this upstream's timeout (20 s): the two refused attempts below must land
    # while it runs, on a loaded machine too (4 s was once not enough for both on CI)
    rules = {**RULES, "close_ticket": {"undo": "slow", "args": {"seconds": 8}}}

    def upstreams(up_port: int) -> list[dict[str, Any]]:
        first, *_ = upstreams_at(up_port)
        return [{**first, "tools": rules, "timeout_seconds": 20}]

    state = Ledger()
    with open_world(make_services, tmp_path, upstreams=upstreams, ready=("payments",),
                    policies=POLICIES, state=state, rollback_lease_seconds=1) as world:  # fmt: skip
        stage = Stage(world, state)
        agent, token = world.token(["payer"])

        async def calls(c: Client) -> Any:
            opened = await c.call_tool("payments.create_ticket", {"title": "t"})
            return await c.call_tool("payments.close_ticket",
                                     {"ticket_id": opened.structured_content["id"]})  # fmt: skip

        world.session(token, calls)
        answers: list[httpx.Response] = []
        first = threading.Thread(target=lambda: answers.append(stage.rollback(agent)))
        first.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            e["resource"]["id"] == "payments.slow" for e in world.events("decision")
        ):
            time.sleep(0.05)
        time.sleep(1.5)  # past one lease: held all the same while the upstream works
        for body in ({}, {"retry_uncertain": True}):
            second = stage.rollback(agent, **body)
            assert second.status_code == 409, second.text
            assert second.json()["error"]["code"] == "rollback_in_progress"
        first.join(30)
        assert answers[0].status_code == 200, answers[0].text
        report = answers[0].json()
        assert [s["outcome"] for s in report["steps"]] == ["undone", "undone"]
        with stage.http() as http:
            record = http.get(f"/v1/rollbacks/{report['rollback_id']}").json()
        assert record["status"] == "done"
        assert record["summary"]["outcome_undone"] == 2
        assert len(world.events("rollback.started")) == 1
