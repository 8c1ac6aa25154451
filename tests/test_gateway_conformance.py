"""The MCP conformance suite (npm ``@modelcontextprotocol/conformance`` 0.1.12, its active
server scenarios) through the gateway, the gateway's authorization on.

Tether's app, the conformance upstream (``examples/conformance_upstream``, registered with
``prefix = false``: the suite calls fixed names) and a proxy that adds an agent's token
(the suite has no header option; ``tests/bearer_proxy.py``) each served on a port of their
own; the agent may call every tool, read every resource and get every prompt. Tether's public
URL is the proxy's, as behind any reverse proxy: the token is asked for that resource, and
the suite's DNS-rebinding scenario meets the gateway's Origin check.

The suite must exit 0 with ``conformance_expected_failures.yml`` as its baseline (it also
fails on a listed scenario that passes), and every other scenario must pass.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from examples.conformance_upstream.server import http_app

from tests.bearer_proxy import BearerProxy
from tests.conftest import admin_client
from tests.npm import installed
from tests.pdp import credential, env_of
from tests.serverproc import free_port, served_in_thread
from tether.api.app import create_app
from tether.container import Services

SUITE = "@modelcontextprotocol/conformance@0.1.12"
BASELINE = Path(__file__).with_name("conformance_expected_failures.yml")
ACTIVE_SCENARIOS = 30  # `conformance list --server`, less the two pending ones

POLICIES = """
@id("conformance-suite")
permit (principal in Role::"conformance", action in
        [Action::"tool.call", Action::"resource.read", Action::"prompt.get"], resource);
"""


def _suite() -> Path:
    return installed(SUITE, "npm-conformance", "@modelcontextprotocol/conformance/dist/index.js")


def _baseline() -> list[str]:
    """The scenarios listed in the baseline (``- name  # why`` lines under ``server:``)."""
    lines = BASELINE.read_text().splitlines()
    return [line.split("#")[0].strip()[2:].strip() for line in lines
            if line.strip().startswith("- ")]  # fmt: skip


def _outcomes(results: Path) -> dict[str, bool]:
    """Each scenario's outcome from its ``checks.json`` (``server-<name>-<timestamp>/``): it
    passed if no check failed or warned (the suite's own rule for a baseline)."""
    outcomes = {}
    for checks in results.glob("server-*/checks.json"):
        name = checks.parent.name.removeprefix("server-").rsplit("-", 6)[0]
        statuses = {c["status"] for c in json.loads(checks.read_text())}
        outcomes[name] = not statuses & {"FAILURE", "WARNING"}
    return outcomes


def _agent_token(services: Services, resource: str) -> tuple[str, str]:
    with admin_client(services) as http, env_of(services, http) as e:
        pushed = http.put("/v1/policies", json={"policies": POLICIES})
        assert pushed.status_code == 200, pushed.text
        body = {"name": "conformance", "owner": "admin", "purpose": "the MCP conformance suite",
                "risk_tier": "minimal", "roles": ["conformance"]}  # fmt: skip
        agent = http.post("/v1/agents", json=body).json()["id"]
        form = {"grant_type": "client_credentials", "resource": resource,
                **credential(e, agent).form}  # fmt: skip
        got = e.anon.post("/oauth/token", data=form)
        assert got.status_code == 200, got.text
        return agent, str(got.json()["access_token"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the gateway, not storage
def test_the_conformance_suite_passes_through_the_gateway(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    cli = _suite()
    up_port, port, proxy_port = free_port(), free_port(), free_port()
    public = f"http://127.0.0.1:{proxy_port}"
    upstream = {"name": "conformance", "url": f"http://127.0.0.1:{up_port}/mcp",
                "prefix": False, "timeout_seconds": 10}  # fmt: skip
    services = make_services(public_url=public, gateway_upstreams=[upstream])
    results = tmp_path / "results"
    with served_in_thread(http_app(), up_port):  # up before any app starts the gateway
        agent, token = _agent_token(services, f"{public}/mcp")
        with (
            served_in_thread(create_app(services), port),
            served_in_thread(BearerProxy(f"http://127.0.0.1:{port}", token), proxy_port),
        ):
            deadline = time.monotonic() + 10
            while not services.gateway.links["conformance"].up and time.monotonic() < deadline:
                time.sleep(0.02)
            assert services.gateway.links["conformance"].up, services.gateway.status()
            ran = subprocess.run(
                ["node", str(cli), "server", "--url", f"{public}/mcp",
                 "--expected-failures", str(BASELINE), "-o", str(results)],
                capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
                check=False,
            )  # fmt: skip
            with admin_client(services) as http:
                query = {"type": "tool.called", "limit": 500}
                called = http.get("/v1/audit/events", params=query).json()["items"]
    summary = ran.stdout[ran.stdout.rfind("=== SUMMARY ===") :]
    assert ran.returncode == 0, summary + ran.stderr[-2000:]
    outcomes = _outcomes(results)
    assert len(outcomes) == ACTIVE_SCENARIOS, sorted(outcomes)
    expected = _baseline()
    assert not any(outcomes[name] for name in expected)
    passed = [name for name, ok in outcomes.items() if ok]
    assert len(passed) >= ACTIVE_SCENARIOS - len(expected), summary
    # Called as test_simple_text, recorded (and decided) as conformance.test_simple_text.
    ids = {e["resource"]["id"] for e in called if e["agent_id"] == agent}
    assert {"conformance.test_simple_text", "conformance.test_tool_with_progress"} <= ids
