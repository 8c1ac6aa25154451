"""Rollback (issue 17): the plan first, then each undo decided as the operator, run through
the gateway on the example upstream and put on the record — in reverse order, never twice,
the upstream's state as before the agent's calls, the ledger verifying."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from mcp import Client

from examples.payments_tickets.server import Ledger
from tests.conftest import admin_client
from tests.test_gateway import World, open_world, upstreams_at
from tether.container import Services

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
    assert body["dry_run"] is True and body["rollback_id"] is None
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
    assert "irreversible" in body["steps"][2]["note"] or body["steps"][2]["note"]
    assert stage.snapshot() == after  # a dry run changes nothing

    done = stage.rollback(agent)
    assert done.status_code == 200, done.text
    report = done.json()
    assert report["status"] == "done" and report["rollback_id"].startswith("rbk_")
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
    assert len(step_events) == 5 and {e["outcome"] for e in step_events} == {"undone"}
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
