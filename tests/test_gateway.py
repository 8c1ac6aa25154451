"""The MCP gateway end to end (issue 16, first part): Tether's app and the example upstream
each served by uvicorn on a real port, the `mcp` SDK's client over streamable HTTP.

Refused without a token, with Tether's own token (another audience) or a user token (401
with the RFC 9728 challenge); an agent sees only the tools policy may let it call, as
``<server>.<tool>``; calls are decided with their arguments (a bound on ``amount``), recorded
with redacted arguments and result and linked to their decision; the upstream gets the
broker-only key and never the agent's token; a frozen agent's next call is refused; an
upstream that is down gives a clear tool error, recorded, while the gateway stays healthy.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from examples.payments_tickets.server import Ledger, http_app
from joserfc.jwk import ECKey
from mcp import Client
from mcp.client.auth.extensions.client_credentials import (
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client
from prometheus_client import REGISTRY

from tests.conftest import admin_client
from tests.pdp import credential, env_of
from tests.serverproc import free_port, served_in_thread
from tether.api.app import create_app
from tether.container import Services
from tether.policy.values import _MAX_DEPTH as MAX_CEDAR_DEPTH

POLICIES = """
@id("read-payments")
permit (principal in Role::"payer", action == Action::"tool.call", resource)
when { resource has tool && ["get_balance", "list_payments"].contains(resource.tool) };

@id("small-refunds")
permit (principal in Role::"payer", action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "refund" && context has args
       && context.args has amount && context.args.amount < 100 };

@id("transfers-need-a-human")
@approval("required")
permit (principal in Role::"payer", action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "transfer" };

@id("slow-for-payers")
permit (principal in Role::"payer", action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "slow" };

@id("tickets")
permit (principal in Role::"support", action == Action::"tool.call", resource)
when { resource has tool && ["list_tickets", "create_ticket"].contains(resource.tool) };
"""


def _schema_with_args(schema: str) -> str:
    """The base schema, its context declaring the arguments these policies read."""
    return schema.replace(
        "  on_behalf_of?: String,\n};",
        "  on_behalf_of?: String,\n  args?: { amount?: Long },\n};",
        1,
    )


class World:
    def __init__(self, services: Services, url: str, header_log: Path) -> None:
        self.services, self.url, self.header_log = services, url, header_log

    def token(self, roles: list[str]) -> tuple[str, str]:
        with admin_client(self.services) as http, env_of(self.services, http) as e:
            body = {"name": "mcp-agent", "owner": "admin", "purpose": "gateway",
                    "risk_tier": "minimal", "roles": roles}  # fmt: skip
            agent = http.post("/v1/agents", json=body).json()["id"]
            cred = credential(e, agent)
            form = {"grant_type": "client_credentials", "resource": f"{self.url}/mcp", **cred.form}
            got = e.anon.post("/oauth/token", data=form)
            assert got.status_code == 200, got.text
            return agent, str(got.json()["access_token"])

    def session(self, token: str, fn: Callable[[Client], Any]) -> Any:
        async def run() -> Any:
            http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            async with (
                http,
                Client(streamable_http_client(f"{self.url}/mcp", http_client=http)) as c,
            ):
                return await fn(c)

        return asyncio.run(run())

    def events(self, type_: str) -> list[dict[str, Any]]:
        with admin_client(self.services) as http:
            return list(http.get("/v1/audit/events", params={"type": type_, "limit": 500})
                        .json()["items"])  # fmt: skip


def upstreams_at(up_port: int) -> list[dict[str, Any]]:
    """The example upstream under two names (one with a short timeout), and one that is down."""
    return [
        {"name": "payments", "url": f"http://127.0.0.1:{up_port}/mcp", "timeout_seconds": 5,
         "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"}},
        {"name": "down", "url": f"http://127.0.0.1:{free_port()}/mcp", "timeout_seconds": 2},
        {"name": "quick", "url": f"http://127.0.0.1:{up_port}/mcp", "timeout_seconds": 1,
         "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"}},
    ]  # fmt: skip


@contextmanager
def open_world(
    make_services: Callable[..., Services], tmp_path: Path, *,
    upstreams: Callable[[int], list[dict[str, Any]]] = upstreams_at,
    ready: tuple[str, ...] = ("payments", "quick"), policies: str = POLICIES,
    wrap: Callable[[Any], Any] | None = None, state: Ledger | None = None, **settings: Any,
) -> Iterator[World]:  # fmt: skip
    """Tether (``settings`` passed to ``make_services``: a ``clock`` too) and the example
    upstream (``wrap`` wrapping its ASGI app) served on ports of their own, ``policies`` in
    force, the broker-only key stored; yielded once the upstreams named in ``ready`` are up."""
    up_port, port = free_port(), free_port()
    log = tmp_path / "headers.jsonl"
    configured = upstreams(up_port)
    services = make_services(public_url=f"http://127.0.0.1:{port}", gateway_upstreams=configured,
                             **settings)  # fmt: skip
    with admin_client(services) as http:
        stored = http.put("/v1/secrets/payments-key", json={"value": "k-upstream-123",
                                                           "broker_only": True})  # fmt: skip
        assert stored.status_code == 201, stored.text
        schema = _schema_with_args(http.get("/v1/policies").json()["schema"])
        pushed = http.put("/v1/policies", json={"policies": policies, "schema": schema})
        assert pushed.status_code == 200, pushed.text
    upstream = http_app(api_key="k-upstream-123", header_log=str(log), state=state)
    with served_in_thread(wrap(upstream) if wrap else upstream, up_port), \
            served_in_thread(create_app(services), port):  # fmt: skip
        world = World(services, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(services.gateway.links[n].up for n in ready):
            time.sleep(0.05)
        yield world


@pytest.fixture
def world(make_services: Callable[..., Services], tmp_path: Path) -> Iterator[World]:
    with open_world(make_services, tmp_path) as world:
        yield world


def test_without_a_token_for_the_gateway_the_answer_is_401_with_the_metadata(world: World) -> None:
    resource_meta = f"{world.url}/.well-known/oauth-protected-resource/mcp"
    ask = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    _agent, tether_token = world.token(["payer"])
    admin = world.services.settings.admin_token_path.read_text().strip()
    tokens = {"none": None, "garbage": "x.y.z", "user": admin}
    for label, token in tokens.items():
        headers = {**accept, **({"Authorization": f"Bearer {token}"} if token else {})}
        got = httpx.post(f"{world.url}/mcp", json=ask, headers=headers)
        assert got.status_code == 401, (label, got.text)
        assert f'resource_metadata="{resource_meta}"' in got.headers["www-authenticate"]
    # a token for Tether's own API (no resource) is for another audience
    with admin_client(world.services) as http, env_of(world.services, http) as e:
        agent = http.post("/v1/agents", json={"name": "x", "owner": "admin", "purpose": "p",
                                              "risk_tier": "minimal"}).json()["id"]  # fmt: skip
        cred = credential(e, agent)
        plain = e.anon.post("/oauth/token", data={"grant_type": "client_credentials",
                                                  **cred.form}).json()["access_token"]  # fmt: skip
    got = httpx.post(f"{world.url}/mcp", json=ask,
                     headers={**accept, "Authorization": f"Bearer {plain}"})  # fmt: skip
    assert got.status_code == 401
    assert "resource=" in got.json()["error_description"]
    assert tether_token


def test_each_agent_sees_and_calls_only_what_policy_allows(world: World) -> None:
    payer, payer_token = world.token(["payer"])
    _support, support_token = world.token(["support"])

    async def payer_session(c: Client) -> dict[str, Any]:
        names = sorted(t.name for t in (await c.list_tools()).tools)
        balance = await c.call_tool("payments.get_balance", {"account": "ops"})
        small = await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": 50})
        big = await c.call_tool("payments.refund", {"payment_id": "pay_1", "amount": 500})
        other = await c.call_tool("payments.create_ticket", {"title": "x"})
        return {"names": names, "balance": balance, "small": small, "big": big, "other": other}

    seen = world.session(payer_token, payer_session)
    assert [n for n in seen["names"] if n.startswith("payments.")] == [
        "payments.get_balance", "payments.list_payments", "payments.refund", "payments.slow",
        "payments.transfer",  # allowed after a human's approval
    ]  # fmt: skip
    assert not seen["balance"].is_error
    assert json.loads(seen["balance"].content[0].text)["balance"] == 100_000
    assert not seen["small"].is_error
    assert seen["big"].is_error
    assert json.loads(seen["big"].content[0].text)["error"] == "access_denied"
    assert seen["other"].is_error
    support_names = world.session(support_token, lambda c: c.list_tools())
    support_sees = sorted(t.name for t in support_names.tools if t.name.startswith("payments."))
    assert support_sees == ["payments.create_ticket", "payments.list_tickets"]

    calls = [e for e in world.events("tool.called") if e["agent_id"] == payer]
    assert [(e["resource"]["id"], e["outcome"], e["decision"]) for e in calls] == [
        ("payments.get_balance", "ok", "allow"), ("payments.refund", "ok", "allow"),
        ("payments.refund", "refused", "deny"), ("payments.create_ticket", "refused", "deny"),
    ]  # fmt: skip
    decisions = {e["id"]: e for e in world.events("decision") if e["agent_id"] == payer}
    for call in calls:  # each call linked to its own decision
        assert decisions[call["details"]["decision_event"]]["decision"] == call["decision"]
        assert len(call["details"]["args_digest"]) == 64
    assert calls[1]["details"]["args"]["amount"] == 50
    assert calls[2]["details"]["args"]["amount"] == 500
    assert "result" not in calls[2]["details"] or calls[2]["details"]["result"] is None
    # the upstream got the broker-only key, never an agent's token; the key is on no record
    headers = [json.loads(line) for line in world.header_log.read_text().splitlines()]
    assert headers
    assert all(h["x-api-key"] == "k-upstream-123" and h["authorization"] is None
               for h in headers)  # fmt: skip
    assert "k-upstream-123" not in json.dumps(world.events("tool.called"))


def test_a_frozen_agent_is_refused_at_its_next_call(world: World) -> None:
    agent, token = world.token(["payer", "frozen-role"])

    async def twice(c: Client) -> tuple[Any, Any]:
        first = await c.call_tool("payments.get_balance", {"account": "ops"})
        with admin_client(world.services) as http:
            frozen = http.post("/v1/freeze", json={"reason": "incident",
                                                   "scope": {"role": "frozen-role"}})  # fmt: skip
            assert frozen.status_code == 201, frozen.text
        second = await c.call_tool("payments.get_balance", {"account": "ops"})
        return first, second

    first, second = world.session(token, twice)
    assert not first.is_error
    assert second.is_error
    assert "tether.frozen" in second.content[0].text
    del agent


def test_an_upstream_that_is_down_is_a_clear_tool_error_and_the_gateway_stays_up(
    world: World,
) -> None:
    statuses = {s["name"]: s["up"] for s in world.services.gateway.status()}
    assert statuses == {"payments": True, "down": False, "quick": True}
    _agent, token = world.token(["payer"])
    names = world.session(token, lambda c: c.list_tools())
    assert all(t.name.startswith(("payments.", "quick.")) for t in names.tools)
    assert httpx.get(f"{world.url}/healthz").status_code == 200
    ready = httpx.get(f"{world.url}/readyz")
    assert ready.status_code == 200  # the gateway's upstreams are reported, not required
    upstreams = {u["name"]: u for u in ready.json()["upstreams"]}
    assert upstreams["payments"]["up"] is True
    assert upstreams["payments"]["tools"] >= 10
    assert upstreams["down"]["up"] is False
    assert upstreams["down"]["error"]


def test_a_slow_upstream_is_a_timeout_tool_error_recorded_and_others_go_on(world: World) -> None:
    agent, token = world.token(["payer"])

    async def slow_then_fast(c: Client) -> tuple[Any, Any]:
        slow = await c.call_tool("quick.slow", {"seconds": 3})
        fast = await c.call_tool("payments.get_balance", {"account": "ops"})
        return slow, fast

    slow, fast = world.session(token, slow_then_fast)
    assert slow.is_error
    assert "timed out" in slow.content[0].text
    assert not fast.is_error
    outcomes = [(e["resource"]["id"], e["outcome"]) for e in world.events("tool.called")
                if e["agent_id"] == agent]  # fmt: skip
    assert outcomes == [("quick.slow", "upstream_failure"), ("payments.get_balance", "ok")]


def test_malformed_messages_are_json_rpc_errors_and_no_call(world: World) -> None:
    _agent, token = world.token(["payer"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}  # fmt: skip
    before = len(world.events("tool.called"))
    bad = httpx.post(f"{world.url}/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
                     headers=headers)  # fmt: skip
    assert bad.status_code in (200, 400), bad.text
    assert bad.json()["error"]["code"] == -32700  # parse error
    wrong = httpx.post(f"{world.url}/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": 42}})  # fmt: skip
    assert "error" in wrong.json()
    assert len(world.events("tool.called")) == before


def test_a_killed_agents_next_request_is_refused(world: World) -> None:
    agent, token = world.token(["payer"])

    async def call(c: Client) -> Any:
        return await c.call_tool("payments.get_balance", {"account": "ops"})

    assert not world.session(token, call).is_error
    with admin_client(world.services) as http:
        assert http.post(f"/v1/agents/{agent}/kill", json={"reason": "rogue"}).status_code == 200
    got = httpx.post(f"{world.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                     headers={"Authorization": f"Bearer {token}",
                              "Accept": "application/json, text/event-stream"})  # fmt: skip
    assert got.status_code == 401


def test_an_approval_checkpoint_holds_the_call_until_a_human_approves(world: World) -> None:
    _agent, token = world.token(["payer"])
    args = {"from_account": "ops", "to_account": "sales", "amount": 700}

    async def call(c: Client) -> Any:
        return await c.call_tool("payments.transfer", args)

    held = world.session(token, call)
    assert held.is_error
    answer = json.loads(held.content[0].text)
    assert answer["error"] == "approval_required"
    approval = answer["approval_id"]
    assert f"/v1/approvals/{approval}" in answer["message"]
    with admin_client(world.services) as http:
        approved = http.post(f"/v1/approvals/{approval}/approve", json={"note": "ok"})
        assert approved.status_code == 200, approved.text
    done = world.session(token, call)
    assert not done.is_error, done.content[0].text
    assert json.loads(done.content[0].text)["amount"] == 700
    again = world.session(token, call)  # the approval was for one call
    assert json.loads(again.content[0].text)["error"] == "approval_required"


class _Memory:
    """The SDK's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.info: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.info

    async def set_client_info(self, info: Any) -> None:
        self.info = info


def test_the_mcp_sdks_own_oauth_client_completes_the_whole_flow(world: World) -> None:
    """No shortcut: the SDK's ``PrivateKeyJWTOAuthProvider`` meets the 401, finds the
    protected-resource metadata and Tether's, gets a token with ``resource`` by a signed
    assertion (RFC 7523), then lists and calls."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    spki_format = serialization.PublicFormat.SubjectPublicKeyInfo
    spki = key.public_key().public_bytes(serialization.Encoding.PEM, spki_format)
    public = ECKey.import_key(spki).as_dict()
    with admin_client(world.services) as http:
        body = {"name": "sdk-agent", "owner": "admin", "purpose": "mcp", "risk_tier": "minimal",
                "roles": ["payer"]}  # fmt: skip
        agent = http.post("/v1/agents", json=body).json()["id"]
        made = http.post(f"/v1/agents/{agent}/credentials", json={"type": "public_key",
                                                                  "jwk": public})  # fmt: skip
        assert made.status_code == 201, made.text
    signed = SignedJWTParameters(issuer=agent, subject=agent, signing_key=pem,
                                 signing_algorithm="ES256")  # fmt: skip
    assertion = signed.create_assertion_provider()
    provider = PrivateKeyJWTOAuthProvider(server_url=f"{world.url}/mcp", storage=_Memory(),
                                          client_id=agent, assertion_provider=assertion,
                                          issuer=world.url)  # fmt: skip

    async def run() -> tuple[list[str], Any]:
        async with (
            httpx.AsyncClient(auth=provider, timeout=30) as http,
            Client(streamable_http_client(f"{world.url}/mcp", http_client=http)) as c,
        ):
            names = [t.name for t in (await c.list_tools()).tools]
            return names, await c.call_tool("payments.get_balance", {"account": "sales"})

    names, result = asyncio.run(run())
    assert "payments.get_balance" in names
    assert not result.is_error
    assert json.loads(result.content[0].text)["balance"] == 25_000
    issued = [e for e in world.events("token.issued") if e["agent_id"] == agent]
    assert issued


def test_the_tools_call_fast_path_answers_exactly_as_the_sdk_would(world: World) -> None:
    """The gateway answers a plain ``tools/call`` itself; the SDK's stateless transport
    answers the same messages identically (results, tool errors, refusals, unknown tools,
    each protocol version), and what the fast path does not take still reaches the SDK."""
    _agent, token = world.token(["payer"])
    manager = world.services.gateway.manager
    fast = manager.call_tool
    base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream"}  # fmt: skip

    def call(n: int | str, name: str, arguments: Any = None, **extra: str) -> dict[str, Any]:
        params = {"name": name, **({"arguments": arguments} if arguments is not None else {})}
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
        got = httpx.post(f"{world.url}/mcp", json=body, headers={**base, **extra})
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("application/json")
        answer = dict(got.json())
        text = json.dumps(answer)
        for event_id in re.findall(r"evt_[0-9A-Za-z]+", text):  # refusals name their event
            text = text.replace(event_id, "evt_X")
        return dict(json.loads(text))

    deep: Any = []
    for _ in range(MAX_CEDAR_DEPTH + 2):
        deep = [deep]
    cases: list[tuple[Any, ...]] = [
        (1, "payments.get_balance", {"account": "ops"}),
        ("a-string-id", "payments.list_payments", {}),
        (3, "payments.refund", {"payment_id": "pay_1", "amount": 500}),  # denied: a refusal
        (4, "payments.create_ticket", {"title": "not a payer's"}),  # no policy
        (5, "payments.no_such_tool", {}),  # a JSON-RPC error
        (6, "nowhere.get_balance", None),
        (7, "payments.get_balance", {"account": "ops"}, {"MCP-Protocol-Version": "2025-06-18"}),
        (8, "payments.get_balance", {"account": "ops"}, {"MCP-Protocol-Version": "2025-03-26"}),
        (9, "payments.refund", {"payment_id": "pay_1", "amount": 1.5}),  # no Cedar value
        (10, "payments.refund", {"payment_id": "pay_1", "amount": deep}),  # too deep
    ]
    taken: list[str] = []

    async def counted(caller: Any, params: Any, relay: Any, logs: Any = None) -> Any:
        taken.append(params.name)
        return await fast(caller, params, relay, logs)

    answers = {}
    for on in (True, False):
        manager.call_tool = counted if on else None
        try:
            answers[on] = [call(*case[:3], **(case[3] if len(case) > 3 else {}))
                           for case in cases]  # fmt: skip
        finally:
            manager.call_tool = fast
    assert len(taken) == len(cases)  # every one of them answered by the fast path
    assert answers[True] == answers[False]
    fast_answers = answers[True]
    assert json.loads(fast_answers[0]["result"]["content"][0]["text"])["balance"] == 100_000
    assert fast_answers[1]["id"] == "a-string-id"
    assert fast_answers[2]["result"]["isError"] is True
    assert fast_answers[4]["error"]["code"] == -32602
    # arguments Cedar cannot hold: the caller's error, said what, nothing decided or recorded
    assert fast_answers[8]["error"] == {
        "code": -32602, "message": "context.args.amount is a float; Cedar values are strings, "
        "booleans, integers, lists and objects"}  # fmt: skip
    assert fast_answers[9]["error"]["code"] == -32602
    assert "nested too deeply" in fast_answers[9]["error"]["message"]
    # the SDK still answers what the fast path leaves: a batch, an unknown version, no JSON
    batch = httpx.post(f"{world.url}/mcp", headers=base, content=b"[" + json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode() + b"]")  # fmt: skip
    assert "error" in batch.text or batch.status_code >= 400
    plain = {**base, "Accept": "text/plain"}
    refused = httpx.post(f"{world.url}/mcp", headers=plain, json={
        "jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "payments.get_balance", "arguments": {"account": "ops"}}})  # fmt: skip
    assert refused.status_code == 406


def test_authzen_resource_search_finds_the_tools_tools_list_shows(world: World) -> None:
    """``tools/list`` is a resource search: any PEP asking ``/access/v1/search/resource`` for
    type ``Tool`` gets the same answer — plainly allowed tools as results, approval-gated
    ones apart; a tool allowed only for some arguments is listed by the gateway (it may be
    called) but is no search result (not allowed as asked, without arguments)."""
    payer, token = world.token(["payer"])
    listed = sorted(t.name for t in world.session(token, lambda c: c.list_tools()).tools
                    if t.name.startswith("payments."))  # fmt: skip
    body = {"subject": {"type": "agent", "id": payer}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool"}}  # fmt: skip
    with admin_client(world.services) as http:
        found = http.post("/access/v1/search/resource", json=body)
    assert found.status_code == 200, found.text
    page = found.json()
    results = sorted(r["id"] for r in page["results"] if r["id"].startswith("payments."))
    gated = sorted(r["id"] for r in page["context"]["approval_required"]
                   if r["id"].startswith("payments."))  # fmt: skip
    assert results == ["payments.get_balance", "payments.list_payments", "payments.slow"]
    assert gated == ["payments.transfer"]
    assert sorted({*results, *gated, "payments.refund"}) == listed
    servers = {r["id"]: r["properties"]["server"] for r in page["results"]}
    assert servers["payments.get_balance"] == "payments"
    assert servers["quick.get_balance"] == "quick"


def test_post_mcp_skips_the_framework_but_keeps_its_metrics_request_id_and_500(
    world: World,
) -> None:
    """``POST /mcp`` is answered by the hot paths (tether.api.fastpath) straight from the
    gateway's gate: still counted under its route in the metrics, still carrying the request
    id, and an error nobody expected is still the API's structured 500, not a traceback."""

    def counted(status: str) -> float:
        labels = {"method": "POST", "route": "/mcp", "status": status}
        return REGISTRY.get_sample_value("tether_http_request_duration_seconds_count", labels) or 0

    _agent, token = world.token(["payer"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}  # fmt: skip
    params = {"name": "payments.get_balance", "arguments": {"account": "ops"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    before_ok, before_401 = counted("200"), counted("401")
    got = httpx.post(f"{world.url}/mcp", json=body, headers=headers)
    assert got.status_code == 200, got.text
    assert '"balance' in got.text
    assert got.headers.get("x-request-id")
    refused = httpx.post(f"{world.url}/mcp", json=body, headers={**headers, "Authorization": ""})
    assert refused.status_code == 401
    assert counted("200") == before_ok + 1
    assert counted("401") == before_401 + 1

    manager = world.services.gateway.manager

    async def broken(*_: Any) -> Any:
        raise KeyError("a bug")

    manager.handle_request, original = broken, manager.handle_request
    try:
        failed = httpx.post(f"{world.url}/mcp", json=body, headers=headers)
    finally:
        manager.handle_request = original
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert "a bug" not in failed.text
    assert failed.headers.get("x-request-id")
