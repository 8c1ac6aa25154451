"""The MCP gateway as a user runs it: ``tether serve`` (two workers) and the example upstream,
each a process of its own; real MCP clients from outside, no test-only shortcut.

- The ``mcp`` SDK's client with its ``PrivateKeyJWTOAuthProvider`` meets the 401, reads the
  RFC 9728 metadata it names, then Tether's RFC 8414 metadata, gets a token with ``resource``
  by a signed assertion (RFC 7523), lists the tools this agent may call and calls one; a
  second agent with other roles sees and may call other tools.
- The MCP Inspector's CLI (npm ``@modelcontextprotocol/inspector-cli``, the version that runs
  on Node 20) lists and calls a tool through the gateway with a token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from mcp import Client
from mcp.client.auth.extensions.client_credentials import (
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import BACKENDS, backend_for
from tests.npm import installed
from tests.serverproc import free_port, http_client, run_cli, running_server, stop
from tests.test_gateway import POLICIES, _Memory, _schema_with_args

ROOT = Path(__file__).resolve().parents[1]
INSPECTOR = "@modelcontextprotocol/inspector-cli@0.16.8"  # the last CLI that runs on Node 20
KEY = "k-served-upstream-7f3a"


class Deployment(NamedTuple):
    url: str
    admin: httpx.Client
    env: dict[str, str]


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"gateway-served-{request.param}")
    up_port = free_port()
    with (tmp / "upstream.log").open("wb") as log:
        upstream = subprocess.Popen(
            [sys.executable, "-m", "examples.payments_tickets.server", "--port", str(up_port),
             "--api-key", KEY],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    upstreams = [
        {
            "name": "payments",
            "url": f"http://127.0.0.1:{up_port}/mcp",
            "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"},
        }
    ]
    extra = {"TETHER_GATEWAY_UPSTREAMS": json.dumps(upstreams)}
    try:
        with (
            backend_for(request.param, tmp) as backend,
            running_server(backend, tmp, workers=2, extra_env=extra) as (url, env),
        ):
            token = (tmp / ".tether" / "admin.token").read_text().strip()
            with http_client(base_url=url, timeout=30,
                             headers={"Authorization": f"Bearer {token}"}) as admin:  # fmt: skip
                stored = admin.put("/v1/secrets/payments-key",
                                   json={"value": KEY, "broker_only": True})  # fmt: skip
                assert stored.status_code == 201, stored.text
                schema = _schema_with_args(admin.get("/v1/policies").json()["schema"])
                pushed = admin.put("/v1/policies", json={"policies": POLICIES, "schema": schema})
                assert pushed.status_code == 200, pushed.text
                _wait_for_upstream(url)
                yield Deployment(url, admin, {**env, "TETHER_TOKEN": token})
    finally:
        stop(upstream)


def _wait_for_upstream(url: str) -> None:
    """Each worker connects to the upstream on its own, reading the secret put after it
    started (at its next attempt): wait until twenty answers in a row, each on a connection of
    its own (so from either worker), say the upstream is up."""
    deadline = time.monotonic() + 30
    in_a_row, ready = 0, {}
    while time.monotonic() < deadline and in_a_row < 20:
        with http_client(timeout=5) as fresh:
            ready = fresh.get(f"{url}/readyz").json()
        up = any(u["name"] == "payments" and u["up"] for u in ready.get("upstreams", []))
        in_a_row = in_a_row + 1 if up else 0
        if not up:
            time.sleep(0.1)
    assert in_a_row >= 20, f"the upstream never came up on both workers: {ready}"


def _agent_with_key(admin: httpx.Client, name: str, roles: list[str]) -> tuple[str, str]:
    """An agent and the PEM of a key pair whose public half is its credential."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    spki_format = serialization.PublicFormat.SubjectPublicKeyInfo
    spki = key.public_key().public_bytes(serialization.Encoding.PEM, spki_format)
    body = {"name": name, "owner": "admin", "purpose": "mcp", "risk_tier": "minimal",
            "roles": roles}  # fmt: skip
    agent = admin.post("/v1/agents", json=body).json()["id"]
    jwk = ECKey.import_key(spki).as_dict()
    made = admin.post(f"/v1/agents/{agent}/credentials", json={"type": "public_key", "jwk": jwk})
    assert made.status_code == 201, made.text
    return agent, pem


def _as_agent(url: str, agent: str, pem: str, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """The SDK's own OAuth client from nothing but the gateway's URL: its tool names and the
    results of ``calls``."""
    signed = SignedJWTParameters(issuer=agent, subject=agent, signing_key=pem,
                                 signing_algorithm="ES256")  # fmt: skip
    provider = PrivateKeyJWTOAuthProvider(
        server_url=f"{url}/mcp", storage=_Memory(), client_id=agent,
        assertion_provider=signed.create_assertion_provider(), issuer=url,
    )  # fmt: skip

    async def run() -> tuple[list[str], list[Any]]:
        async with (
            httpx.AsyncClient(auth=provider, timeout=30) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as c,
        ):
            names = sorted(t.name for t in (await c.list_tools()).tools)
            return names, [await c.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def test_two_agents_complete_the_mcp_authorization_flow_and_see_different_tools(
    deployment: Deployment,
) -> None:
    url, admin, _env = deployment
    payer, payer_pem = _agent_with_key(admin, "refunds-bot", ["payer"])
    support, support_pem = _agent_with_key(admin, "triage-bot", ["support"])

    names, (balance, ticket) = _as_agent(url, payer, payer_pem, [
        ("payments.get_balance", {"account": "sales"}),
        ("payments.create_ticket", {"title": "not mine"}),
    ])  # fmt: skip
    assert names == ["payments.get_balance", "payments.list_payments", "payments.refund",
                     "payments.slow", "payments.transfer"]  # fmt: skip
    assert not balance.is_error
    assert json.loads(balance.content[0].text)["balance"] == 25_000
    assert ticket.is_error
    assert json.loads(ticket.content[0].text)["error"] == "access_denied"

    names, (created, refund) = _as_agent(url, support, support_pem, [
        ("payments.create_ticket", {"title": "card declined"}),
        ("payments.refund", {"payment_id": "pay_1", "amount": 5}),
    ])  # fmt: skip
    assert names == ["payments.create_ticket", "payments.list_tickets"]
    assert not created.is_error
    assert json.loads(created.content[0].text)["title"] == "card declined"
    assert refund.is_error

    # each agent got its token from Tether for the gateway's resource URI, by its key
    issued = admin.get("/v1/audit/events", params={"type": "token.issued", "limit": 500})
    for agent in (payer, support):
        mine = [e["details"] for e in issued.json()["items"] if e["agent_id"] == agent]
        assert mine
        assert all(d["aud"] == f"{url}/mcp" or d["aud"] == [f"{url}/mcp"] for d in mine), mine
        assert all(d["auth_method"] == "private_key_jwt" for d in mine), mine
    calls = admin.get("/v1/audit/events", params={"type": "tool.called", "limit": 500})
    recorded = {(e["agent_id"], e["resource"]["id"], e["outcome"]) for e in calls.json()["items"]}
    assert (payer, "payments.get_balance", "ok") in recorded
    assert (support, "payments.create_ticket", "ok") in recorded
    assert KEY not in json.dumps(calls.json())


def _inspector() -> Path:
    return installed(INSPECTOR, "npm-inspector", ".bin/mcp-inspector-cli")


def test_the_mcp_inspector_cli_lists_and_calls_through_the_gateway(
    deployment: Deployment,
) -> None:
    cli = _inspector()
    url, admin, _env = deployment
    agent = admin.post("/v1/agents", json={"name": "inspected", "owner": "admin",
                                           "purpose": "mcp", "risk_tier": "minimal",
                                           "roles": ["payer"]}).json()["id"]  # fmt: skip
    secret = admin.post(f"/v1/agents/{agent}/credentials", json={"type": "api_key"}).json()
    with http_client(base_url=url, timeout=30) as anon:
        got = anon.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_id": agent,
            "client_secret": secret["client_secret"], "resource": f"{url}/mcp"})  # fmt: skip
    assert got.status_code == 200, got.text
    token = got.json()["access_token"]
    env = {**os.environ, "NO_COLOR": "1"}

    def inspector(*args: str, token: str | None = token) -> subprocess.CompletedProcess[str]:
        auth = ["--header", f"Authorization: Bearer {token}"] if token else []
        return subprocess.run([str(cli), "--cli", f"{url}/mcp", "--transport", "http",
                               *args, *auth],
                              capture_output=True, text=True, timeout=120, env=env,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    listed = inspector("--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    names = sorted(t["name"] for t in json.loads(listed.stdout)["tools"])
    assert names == ["payments.get_balance", "payments.list_payments", "payments.refund",
                     "payments.slow", "payments.transfer"]  # fmt: skip
    called = inspector("--method", "tools/call", "--tool-name", "payments.get_balance",
                       "--tool-arg", "account=ops")  # fmt: skip
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)
    assert not result.get("isError")
    assert json.loads(result["content"][0]["text"])["balance"] == 100_000
    refused = inspector("--method", "tools/list", token=None)
    assert refused.returncode != 0
    assert "invalid_token" in refused.stdout + refused.stderr


def test_tether_gateway_list_shows_each_upstream_connected(deployment: Deployment) -> None:
    listed = run_cli("gateway", "list", "--json", env=deployment.env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "payments"
    assert row["auth"] == "header X-Api-Key ← secret payments-key"
    assert row["up"] is True
    assert row["tools"] == 15  # every tool of the example upstream
    assert row["error"] is None
