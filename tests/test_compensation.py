"""Compensations (issue 17, first part): declared per tool in configuration, checked when the
configuration loads (their form) and when the upstream's tools are known (against the tools'
schemas, naming tool and field); each completed call through the gateway journalled in the
same commit as its ``tool.called`` event — its undo derived from its arguments and result,
ready to run, or marked irreversible — and ``resource.reversible`` visible to policies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from pydantic import ValidationError

from tests.test_gateway import World, open_world, upstreams_at
from tether.compensation import Compensation, CompensationError, Ref, check_schemas, parse_value
from tether.container import Services
from tether.gateway_config import ToolRule, Upstream

RULES = {
    "refund": {"undo": "cancel_refund", "args": {"refund_id": "{result.id}"}},
    "create_ticket": {"undo": "close_ticket", "args": {"ticket_id": "{result.id}"}},
    "transfer": {"irreversible": True},
}
POLICIES = """
@id("payers")
permit (principal in Role::"payer", action == Action::"tool.call", resource);

@id("irreversible-needs-a-human")
@approval("required")
permit (principal in Role::"careful", action == Action::"tool.call", resource)
when { resource has reversible && !resource.reversible };

@id("reversible-goes")
permit (principal in Role::"careful", action == Action::"tool.call", resource)
when { resource has reversible && resource.reversible };
"""


# -- the declarations ---------------------------------------------------------------------------


def test_references_are_parsed_and_literals_kept() -> None:
    assert parse_value("{args.payment_id}", "x") == Ref("args", ("payment_id",))
    assert parse_value("{result.items[0].id}", "x") == Ref("result", ("items", 0, "id"))
    assert parse_value("{result}", "x") == Ref("result", ())
    for literal in ("cancelled", 5, True, None, {"a": 1}, "not {a ref} inside"):
        assert parse_value(literal, "x") == literal
    for bad in ("{args}", "{argz.x}", "{result.}", "{result..a}", "{result[x]}", "{ args.x }"):
        with pytest.raises(CompensationError, match="x: "):
            parse_value(bad, "x")


def test_an_undo_is_derived_from_the_call_or_says_what_is_missing() -> None:
    comp = Compensation("refund", "cancel_refund", {
        "refund_id": Ref("result", ("id",)), "payment": Ref("args", ("payment_id",)),
        "first": Ref("result", ("lines", 0, "sku")), "reason": "rollback"})  # fmt: skip
    result = {"id": "re_7", "lines": [{"sku": "A"}]}
    assert comp.derive({"payment_id": "pay_1"}, result) == {
        "refund_id": "re_7", "payment": "pay_1", "first": "A", "reason": "rollback"}  # fmt: skip
    with pytest.raises(CompensationError, match=r"\{result\.lines\[0\]\} is not in"):
        comp.derive({"payment_id": "pay_1"}, {"id": "re_7", "lines": []})
    with pytest.raises(CompensationError, match=r"\{args\.payment_id\} is not in"):
        comp.derive({}, result)


def test_rules_are_checked_when_the_configuration_loads() -> None:
    ok = Upstream.model_validate({"name": "p", "url": "http://x/mcp", "tools": RULES})
    refund = ok.tools["refund"].compensation("refund")
    assert refund is not None
    assert refund.arguments == {"refund_id": Ref("result", ("id",))}
    assert ok.tools["transfer"].compensation("transfer") is None
    for rule, needle in [
        ({"undo": "x", "irreversible": True}, "not irreversible"),
        ({"args": {"a": "{result.id}"}}, "args without undo"),
        ({"undo": "x", "args": {"a": "{result.}"}}, "args.a: '{result.}' is no reference"),
        ({"undo": "bad name!"}, "String should match pattern"),
        ({"undo": "x", "unknown": 1}, "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValidationError, match=needle):
            ToolRule.model_validate(rule)


def test_rules_are_checked_against_the_tools_schemas() -> None:
    refund_in = {"type": "object", "properties": {"payment_id": {}, "amount": {}},
                 "required": ["payment_id", "amount"]}  # fmt: skip
    refund_out = {"type": "object", "properties": {"id": {"type": "string"}}}
    cancel_in = {"type": "object", "properties": {"refund_id": {}}, "required": ["refund_id"]}
    good = Compensation("refund", "cancel_refund", {"refund_id": Ref("result", ("id",))})
    assert check_schemas(good, refund_in, refund_out, cancel_in) == []
    free = {"type": "object", "additionalProperties": True}  # a free-form result: at the call
    assert check_schemas(good, refund_in, free, cancel_in) == []
    problems = check_schemas(
        Compensation("refund", "cancel_refund", {"refund_idx": Ref("result", ("idd",)),
                                                 "note": Ref("args", ("nope",))}),
        refund_in, refund_out, cancel_in,
    )  # fmt: skip
    assert problems == [
        "compensation of refund: cancel_refund takes no argument 'refund_idx'",
        "compensation of refund: cancel_refund takes no argument 'note'",
        "compensation of refund: cancel_refund's required argument 'refund_id' is not given",
        "compensation of refund: refund_idx = {result.idd}: 'idd' is not a field the tool declares",
        "compensation of refund: note = {args.nope}: 'nope' is not a field the tool declares",
    ]
    assert check_schemas(good, refund_in, refund_out, None) == [
        "compensation of refund: the upstream has no tool 'cancel_refund' to undo it"]  # fmt: skip


# -- through the gateway ------------------------------------------------------------------------


def _with_rules(rules: dict[str, Any]) -> Callable[[int], list[dict[str, Any]]]:
    def upstreams(up_port: int) -> list[dict[str, Any]]:
        first, *_ = upstreams_at(up_port)
        return [{**first, "tools": rules}]

    return upstreams


def _journal(world: World, agent: str) -> list[dict[str, Any]]:
    """The agent's tool_calls rows, oldest first."""
    from sqlalchemy import select

    from tether.gateway.models import ToolCallRow

    with world.services.db.read() as s:
        mine = select(ToolCallRow).where(ToolCallRow.agent_id == agent)
        rows = s.execute(mine.order_by(ToolCallRow.at, ToolCallRow.event_id)).scalars().all()
        return [{"tool": r.tool, "outcome": r.outcome, "event_id": r.event_id,
                 "reversible": r.reversible, "undo": json.loads(r.undo) if r.undo else None,
                 "undo_error": r.undo_error} for r in rows]  # fmt: skip


def test_each_call_is_journalled_with_its_undo_in_the_commit_of_its_event(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    with open_world(make_services, tmp_path, upstreams=_with_rules(RULES), ready=("payments",),
                    policies=POLICIES) as world:  # fmt: skip
        agent, token = world.token(["payer"])

        async def calls(c: Client) -> list[Any]:
            return [
                await c.call_tool("payments.get_balance", {"account": "ops"}),
                await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": 100}),
                await c.call_tool("payments.create_ticket", {"title": "refund issued"}),
                await c.call_tool("payments.transfer",
                                  {"from_account": "ops", "to_account": "sales", "amount": 5}),
                await c.call_tool("payments.close_ticket", {"ticket_id": "t_404"}),  # fails
            ]  # fmt: skip

        _balance, refund, ticket, transfer, failed = world.session(token, calls)
        assert not refund.is_error
        assert not ticket.is_error
        assert not transfer.is_error
        assert failed.is_error
        refund_id = refund.structured_content["id"]
        ticket_id = ticket.structured_content["id"]
        journal = _journal(world, agent)
        assert [(j["tool"], j["outcome"], j["reversible"]) for j in journal] == [
            ("payments.get_balance", "ok", None),  # read-only: nothing to undo
            ("payments.refund", "ok", True),
            ("payments.create_ticket", "ok", True),
            ("payments.transfer", "ok", False),  # declared irreversible
            ("payments.close_ticket", "tool_error", None),  # nothing happened to undo
        ]
        assert journal[1]["undo"] == {"tool": "payments.cancel_refund",
                                      "arguments": {"refund_id": refund_id}}  # fmt: skip
        assert journal[2]["undo"] == {"tool": "payments.close_ticket",
                                      "arguments": {"ticket_id": ticket_id}}  # fmt: skip
        assert journal[3]["undo"] is None
        assert journal[3]["undo_error"] == "declared irreversible in the configuration"
        assert journal[4]["undo_error"] is None  # a failed call: nothing to undo, nothing said
        # the journal row and the ledger event are one: linked, and the event says the same
        events = {e["id"]: e for e in world.events("tool.called")}
        for row in journal:
            event = events[row["event_id"]]
            assert event["resource"]["id"] == row["tool"]
            assert event["details"].get("reversible") == row["reversible"]
        assert events[journal[1]["event_id"]]["details"]["undo"]["arguments"] == {
            "refund_id": refund_id}  # fmt: skip
        assert len(events[journal[1]["event_id"]]["details"]["undo_digest"]) == 64


def test_policies_see_whether_a_tool_can_be_undone(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    with open_world(make_services, tmp_path, upstreams=_with_rules(RULES), ready=("payments",),
                    policies=POLICIES) as world:  # fmt: skip
        _agent, token = world.token(["careful"])

        async def calls(c: Client) -> list[Any]:
            return [
                await c.call_tool("payments.refund", {"payment_id": "pay_2", "amount": 10}),
                await c.call_tool("payments.transfer",
                                  {"from_account": "ops", "to_account": "sales", "amount": 5}),
                await c.call_tool("payments.close_ticket", {"ticket_id": "t_1"}),  # no rule
            ]  # fmt: skip

        refund, transfer, close = world.session(token, calls)
        assert not refund.is_error  # reversible: goes
        assert json.loads(transfer.content[0].text)["error"] == "approval_required"
        assert json.loads(close.content[0].text)["error"] == "approval_required"  # a write
        # without a declared undo is irreversible by default


def test_a_compensation_that_does_not_fit_the_tools_is_refused_naming_tool_and_field(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    bad = {"refund": {"undo": "cancel_refund", "args": {"refund_id": "{result.refund_idx}"}},
           "create_ticket": {"undo": "purge_ticket", "args": {"ticket_id": "{result.id}"}},
           "no_such_tool": {"irreversible": True}}  # fmt: skip
    with open_world(make_services, tmp_path, upstreams=_with_rules(bad), ready=(),
                    policies=POLICIES) as world:  # fmt: skip
        link = world.services.gateway.links["payments"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (link.last_error or "").startswith("not connected"):
            time.sleep(0.05)
        assert not link.up
        error = link.last_error or ""
        assert "refund_id = {result.refund_idx}: 'refund_idx' is not a field" in error
        assert "no tool 'purge_ticket' to undo it" in error
        assert "tools.no_such_tool: payments has no tool 'no_such_tool'" in error
