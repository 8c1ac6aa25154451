"""Sequence-aware decisions through the MCP gateway: a tool's data labels and egress flag,
declared per tool in configuration (``labels``, ``egress``; an upstream's ``resource_labels``
for its resources), are the attributes its calls are decided with, and an allowed call adds
its labels to its session's. So "read customer PII, then send it outside" is refused where
agents act — also for a second agent acting for the first through a delegated token — and a
session that read nothing labelled sends as before. Wrong labels or flags are refused when
the configuration loads, naming the upstream, tool and field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from examples.payments_tickets.server import Ledger
from mcp import Client
from pydantic import ValidationError

from tests.conftest import admin_client
from tests.pdp import AT, EXCHANGE, credential, env_of, token
from tests.test_gateway import World, open_world, upstreams_at
from tether.config import load_settings
from tether.container import Services
from tether.errors import ConfigurationError
from tether.gateway.upstreams import UpstreamLink
from tether.gateway_config import Upstream

RULES = {
    "list_payments": {"labels": ["pii", "payments"]},
    "send_email": {"egress": True, "irreversible": True},
}
POLICIES = """
@id("payers")
permit (principal in Role::"payer",
        action in [Action::"tool.call", Action::"resource.read"], resource);

@id("pii-then-egress")
forbid (principal, action == Action::"tool.call", resource) when {
  context.session.labels.contains("pii") && resource has egress && resource.egress };
"""
MAIL = {"to": "someone@elsewhere.example", "subject": "payments", "body": "c_17, c_42"}


def _labelled(up_port: int) -> list[dict[str, Any]]:
    first, *_ = upstreams_at(up_port)
    return [{**first, "tools": RULES, "resource_labels": ["pii"]}]


def _agent(world: World, name: str, roles: list[str]) -> tuple[str, str, Any]:
    """An agent, its token for the gateway, and its credential."""
    with admin_client(world.services) as http, env_of(world.services, http) as e:
        body = {"name": name, "owner": "admin", "purpose": "gateway", "risk_tier": "minimal",
                "roles": roles}  # fmt: skip
        agent = http.post("/v1/agents", json=body).json()["id"]
        cred = credential(e, agent)
        return agent, token(e, cred, resource=f"{world.url}/mcp"), cred


def _acting_for(world: World, actor: Any, subject_token: str) -> str:
    """RFC 8693: ``actor`` acts for whoever ``subject_token`` names, at the gateway."""
    with admin_client(world.services) as http, env_of(world.services, http) as e:
        got = e.anon.post("/oauth/token", data={
            "grant_type": EXCHANGE, **actor.form, "resource": f"{world.url}/mcp",
            "subject_token": subject_token, "subject_token_type": AT,
            "actor_token": token(e, actor), "actor_token_type": AT,
        })  # fmt: skip
        assert got.status_code == 200, got.text
        return str(got.json()["access_token"])


def _refused(result: Any) -> dict[str, Any]:
    assert result.is_error
    body: dict[str, Any] = json.loads(result.content[0].text)
    return body


def _calls(world: World, agent: str) -> list[tuple[str, str, str]]:
    return [(e["resource"]["id"], e["outcome"], e["decision"])
            for e in world.events("tool.called") if e["agent_id"] == agent]  # fmt: skip


def test_pii_then_egress_is_refused_through_the_gateway_also_for_an_agent_acting_for_it(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    state = Ledger()
    with open_world(make_services, tmp_path, upstreams=_labelled, ready=("payments",),
                    policies=POLICIES, state=state) as world:  # fmt: skip
        # Every agent and token first: each admin client starts an app over these services,
        # which reloads the runtime, and a reload forgets the touches monitoring has not yet
        # published (at its next sync, within a second) — not what this test is about.
        reader, reader_token, _ = _agent(world, "reader", ["payer"])
        fresh, fresh_token, _ = _agent(world, "fresh", ["payer"])
        helper, helper_token, helper_cred = _agent(world, "helper", ["payer"])
        delegated = _acting_for(world, helper_cred, reader_token)

        async def read_then_send(c: Client) -> tuple[Any, Any]:
            listed = await c.call_tool("payments.list_payments", {})
            return listed, await c.call_tool("payments.send_email", MAIL)

        listed, sent = world.session(reader_token, read_then_send)
        assert not listed.is_error  # labelled pii: allowed, and now in the session's labels
        refusal = _refused(sent)
        assert refusal["error"] == "access_denied"
        assert refusal["reasons"] == ["pii-then-egress"]
        assert "policy does not permit payments.send_email" in refusal["message"]
        assert state.outbox == []  # nothing went out

        # a fresh agent, whose session read nothing labelled, sends
        first = world.session(fresh_token, lambda c: c.call_tool("payments.send_email", MAIL))
        assert not first.is_error, first
        assert [m["to"] for m in state.outbox] == [MAIL["to"]]

        # the helper acting for the reader (the reader's token exchanged): the reader's session
        through = world.session(delegated, lambda c: c.call_tool("payments.send_email", MAIL))
        assert _refused(through)["reasons"] == ["pii-then-egress"]
        # the helper on its own token is a session of its own: it sends
        alone = world.session(helper_token, lambda c: c.call_tool("payments.send_email", MAIL))
        assert not alone.is_error
        assert len(state.outbox) == 2

        # each on the record: the refusals as refused calls linked to their denials
        assert _calls(world, reader) == [("payments.list_payments", "ok", "allow"),
                                         ("payments.send_email", "refused", "deny")]  # fmt: skip
        assert _calls(world, fresh) == [("payments.send_email", "ok", "allow")]
        assert _calls(world, helper) == [("payments.send_email", "refused", "deny"),
                                         ("payments.send_email", "ok", "allow")]  # fmt: skip
        by_helper = [e for e in world.events("tool.called") if e["agent_id"] == helper]
        assert [e["on_behalf_of"] for e in by_helper] == [reader, None]
        decisions = {e["id"]: e for e in world.events("decision")}
        refused = decisions[by_helper[0]["details"]["decision_event"]]
        assert refused["reasons"] == ["pii-then-egress"]
        assert refused["on_behalf_of"] == reader


def test_tools_are_decided_with_their_labels_and_egress(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    with open_world(make_services, tmp_path, upstreams=_labelled, ready=("payments",),
                    policies=POLICIES) as world:  # fmt: skip
        agent, _, _ = _agent(world, "asker", ["payer"])
        gateway = world.services.gateway.gateway
        assert gateway is not None
        _, _, listing = gateway.tool("payments.list_payments")
        _, _, mail = gateway.tool("payments.send_email")
        _, _, balance = gateway.tool("payments.get_balance")
        assert (listing["labels"], listing["egress"]) == (["pii", "payments"], False)
        assert (mail["labels"], mail["egress"], mail["reversible"]) == ([], True, False)
        assert (balance["labels"], balance["egress"]) == ([], False)
        # what /access/v1/search/resource finds for type Tool carries them too
        body = {"subject": {"type": "agent", "id": agent}, "action": {"name": "tool.call"},
                "resource": {"type": "Tool"}}  # fmt: skip
        with admin_client(world.services) as http:
            found = http.post("/access/v1/search/resource", json=body)
        assert found.status_code == 200, found.text
        props = {r["id"]: r["properties"] for r in found.json()["results"]}
        assert props["payments.send_email"]["egress"] is True
        assert props["payments.list_payments"]["labels"] == ["pii", "payments"]


def test_a_resource_of_a_labelled_upstream_labels_the_session(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    state = Ledger()
    with open_world(make_services, tmp_path, upstreams=_labelled, ready=("payments",),
                    policies=POLICIES, state=state) as world:  # fmt: skip
        _agent_id, agent_token, _ = _agent(world, "notes", ["payer"])

        async def ticket_then_read_then_send(c: Client) -> tuple[Any, Any, Any]:
            made = await c.call_tool("payments.create_ticket", {"title": "c_17 called"})
            before = await c.call_tool("payments.send_email", MAIL)  # nothing labelled yet
            ticket = json.loads(made.content[0].text)["id"]
            read = await c.read_resource(f"tickets://{ticket}")  # resource_labels: pii
            return before, read, await c.call_tool("payments.send_email", MAIL)

        before, read, after = world.session(agent_token, ticket_then_read_then_send)
        assert not before.is_error
        assert json.loads(read.contents[0].text)["title"] == "c_17 called"
        assert _refused(after)["reasons"] == ["pii-then-egress"]
        assert len(state.outbox) == 1


# -- the configuration --------------------------------------------------------------------------


def _upstream(**more: Any) -> dict[str, Any]:
    return {"name": "crm", "url": "http://127.0.0.1:1/mcp", **more}


def test_labels_and_egress_load_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    longest = "a" + "b" * 63
    rules = {"export": {"egress": True, "labels": ["pii", "customer.v2", "x-1_y", longest]},
             "lookup": {"labels": [f"l{i}" for i in range(32)]}}  # fmt: skip
    upstreams = [_upstream(tools=rules, resource_labels=["internal"])]
    monkeypatch.setenv("TETHER_GATEWAY_UPSTREAMS", json.dumps(upstreams))
    (crm,) = load_settings().gateway_upstreams
    assert crm.tools["export"].egress is True
    assert crm.tools["export"].labels == ["pii", "customer.v2", "x-1_y", longest]
    assert len(crm.tools["lookup"].labels) == 32
    assert crm.tools["lookup"].egress is False
    assert crm.resource_labels == ["internal"]
    plain = Upstream.model_validate(_upstream())
    assert plain.resource_labels == []


@pytest.mark.parametrize(
    ("upstream", "says"),
    [
        (
            _upstream(tools={"export": {"labels": ["PII"]}}),
            "[1].tools.export.labels[0]: String should match pattern '^[a-z0-9][a-z0-9._-]{0,63}$'",
        ),
        (
            _upstream(tools={"export": {"labels": ["pii", "a" * 65]}}),
            "[1].tools.export.labels[1]: String should match pattern",
        ),
        (_upstream(tools={"export": {"labels": [""]}}), "[1].tools.export.labels[0]: String"),
        (_upstream(tools={"export": {"labels": ["-pii"]}}), "[1].tools.export.labels[0]: String"),
        (_upstream(tools={"export": {"labels": ["p ii"]}}), "[1].tools.export.labels[0]: String"),
        (
            _upstream(tools={"export": {"labels": [7]}}),
            "[1].tools.export.labels[0]: Input should be a valid string",
        ),
        (
            _upstream(tools={"export": {"labels": "pii"}}),
            "[1].tools.export.labels: Input should be a valid list",
        ),
        (
            _upstream(tools={"export": {"labels": [f"l{i}" for i in range(33)]}}),
            "[1].tools.export.labels: List should have at most 32 items",
        ),
        (
            _upstream(tools={"export": {"labels": ["pii", "x", "pii"]}}),
            "[1].tools.export.labels: Value error, pii given more than once",
        ),
        (
            _upstream(tools={"export": {"egress": "yes"}}),
            "[1].tools.export.egress: Input should be a valid boolean",
        ),
        (
            _upstream(tools={"export": {"egress": 1}}),
            "[1].tools.export.egress: Input should be a valid boolean",
        ),
        (
            _upstream(resource_labels=["Customer Data"]),
            "[1].resource_labels[0]: String should match pattern",
        ),
        (_upstream(resource_labels="pii"), "[1].resource_labels: Input should be a valid list"),
    ],
)
def test_wrong_labels_or_egress_are_refused_naming_upstream_tool_and_field(
    monkeypatch: pytest.MonkeyPatch, upstream: dict[str, Any], says: str
) -> None:
    upstreams = [{"name": "fine", "url": "http://127.0.0.1:2/mcp"}, upstream]
    monkeypatch.setenv("TETHER_GATEWAY_UPSTREAMS", json.dumps(upstreams))
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert f"TETHER_GATEWAY_UPSTREAMS{says}" in caught.value.message, caught.value.message


def test_an_unknown_per_tool_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"tools\.export\.egres\n  Extra inputs"):
        Upstream.model_validate(_upstream(tools={"export": {"egres": True}}))


def test_labels_for_a_tool_the_upstream_does_not_have_keep_it_from_being_served() -> None:
    config = Upstream.model_validate(_upstream(tools={"exprt": {"egress": True},
                                                      "lookup": {"labels": ["pii"]}}))  # fmt: skip
    link = UpstreamLink(config, lambda name: "")
    link.tools = {name: mt.Tool(name=name, input_schema={"type": "object"})
                  for name in ("export", "lookup")}  # fmt: skip
    found, why = link._compensations()
    assert found == {}
    assert why == "upstream crm: tools.exprt: crm has no tool 'exprt'"


def test_the_readme_example_loads_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("- **Data labels and egress**") :]
    (block,) = re.findall(r"```toml\n(.*?)```", section, re.S)[:1]
    config = tmp_path / "tether.toml"
    config.write_text("\n".join(line.strip() for line in block.splitlines()))
    monkeypatch.setenv("TETHER_CONFIG", str(config))
    (payments,) = load_settings().gateway_upstreams
    assert payments.tools["list_payments"].labels == ["pii", "payments"]
    assert payments.tools["send_email"].egress is True
    assert payments.tools["send_email"].irreversible is True
    assert payments.resource_labels == ["internal"]
