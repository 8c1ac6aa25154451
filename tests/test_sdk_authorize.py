"""``AgentClient.authorize`` and ``guard`` against a real server process, on both backends:
allow, deny and approval_required as values; the guard on sync and async tool functions; an
approval granted by a human lets the identical call through exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS, backend_for, bearer
from tests.serverproc import running_server
from tether import (
    AccessDenied,
    AgentClient,
    ApiError,
    ApprovalRequired,
    Decision,
    TokenError,
    guard,
)

pytestmark = pytest.mark.slow

POLICIES = """
@id("worker-tools")
permit (principal in Role::"worker", action in [Action::"tool.call", Action::"tool.write"],
        resource is Tool);

@id("no-prod")
forbid (principal, action, resource is Tool)
when { resource has server && resource.server == "prod" };
"""


@dataclass
class Deployment:
    url: str
    admin: httpx.Client

    def agent(
        self,
        name: str,
        *,
        risk_tier: str = "minimal",
        roles: tuple[str, ...] = ("worker",),
        dpop: bool = False,
    ) -> AgentClient:
        made = self.admin.post(
            "/v1/agents",
            json={
                "name": name,
                "owner": "admin",
                "purpose": "sdk tests",
                "risk_tier": risk_tier,
                "roles": list(roles),
            },
        )
        assert made.status_code == 201, made.text
        agent_id = made.json()["id"]
        cred = self.admin.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
        assert cred.status_code == 201, cred.text
        secret = cred.json()["client_secret"]
        return AgentClient(self.url, agent_id, client_secret=secret, dpop_key=dpop or None)

    def pending(self, agent_id: str) -> list[dict[str, Any]]:
        page = self.admin.get("/v1/approvals", params={"status": "pending", "agent": agent_id})
        assert page.status_code == 200, page.text
        return list(page.json()["items"])

    def decide(self, approval_id: str, verdict: str = "approve") -> dict[str, Any]:
        done = self.admin.post(f"/v1/approvals/{approval_id}/{verdict}", json={"note": "test"})
        assert done.status_code == 200, done.text
        return dict(done.json())

    def last_decision(self, agent_id: str) -> dict[str, Any]:
        page = self.admin.get(
            "/v1/audit/events", params={"agent": agent_id, "type": "decision", "limit": 500}
        )
        assert page.status_code == 200, page.text
        return dict(page.json()["items"][-1])


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp: Path = tmp_path_factory.mktemp(f"sdk-authorize-{request.param}")
    with backend_for(request.param, tmp) as backend, running_server(backend, tmp) as (url, _):
        token = (tmp / ".tether" / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as admin:
            pushed = admin.put("/v1/policies", json={"policies": POLICIES})
            assert pushed.status_code == 200, pushed.text
            yield Deployment(url, admin)


# -- authorize -------------------------------------------------------------------------------


def test_authorize_answers_allow_deny_and_approval_required(deployment: Deployment) -> None:
    with deployment.agent("low") as low, deployment.agent("high", risk_tier="high") as high:
        allowed = low.authorize("tool.call", resource="search")
        assert isinstance(allowed, Decision)
        assert allowed.allowed
        assert allowed
        assert allowed.decision == "allow"
        assert allowed.reasons == ("worker-tools",)
        assert allowed.policy_version == "v1"
        assert allowed.event_id is not None
        assert allowed.event_id.startswith("evt_")
        assert allowed.approval_id is None

        denied = low.authorize("tool.call", resource="db", properties={"server": "prod"})
        assert not denied
        assert (denied.decision, denied.reasons) == ("deny", ("no-prod",))

        nothing = low.authorize("secret.read", resource="db-password", resource_type="Secret")
        assert (nothing.decision, nothing.reasons) == ("deny", ())

        unknown = low.authorize("tool.fly", resource="x")
        assert unknown.decision == "deny"
        assert unknown.error is not None
        assert unknown.error["code"] == "unknown_action"

        held = high.authorize("tool.write", resource="crm", context={})
        assert not held
        assert held.decision == "approval_required"
        assert held.approval_required
        assert held.approval_status == "pending"
        assert held.approval_id is not None
        assert held.approval_id.startswith("apr_")
        assert "tether.high-risk-mutating-needs-approval" in held.reasons
        # The same request again reuses the open approval instead of opening another.
        assert high.authorize("tool.write", resource="crm").approval_id == held.approval_id


def test_authorize_with_dpop_bound_tokens(deployment: Deployment) -> None:
    with deployment.agent("bound", dpop=True) as agent:
        assert agent.dpop_jkt is not None
        assert agent.authorize("tool.call", resource="search").allowed


def test_authorize_reports_a_refused_question_as_api_error(deployment: Deployment) -> None:
    with deployment.agent("careless") as agent:
        with pytest.raises(ApiError) as bad:
            agent.authorize("tool.call", resource="search", context={"n": None})
        assert bad.value.status == 422
        assert bad.value.code == "validation_error"
        with pytest.raises(ApiError) as reserved:
            agent.authorize("tool.call", resource="search", context={"chain": ["x"]})
        assert reserved.value.status == 422
    nowhere = AgentClient("http://127.0.0.1:9", "agt_x", client_secret="s")
    with pytest.raises(TokenError, match="failed"):
        nowhere.authorize("tool.call", resource="search")


def test_wait_for_approval_returns_the_decided_approval(deployment: Deployment) -> None:
    with deployment.agent("patient", risk_tier="high") as agent:
        held = agent.authorize("tool.write", resource="wiki")
        assert held.approval_id is not None
        started = time.monotonic()
        still = agent.wait_for_approval(held.approval_id, timeout=0.5)
        assert still["status"] == "pending"
        assert time.monotonic() - started >= 0.4

        threading.Timer(0.5, deployment.decide, (held.approval_id, "deny")).start()
        decided = agent.wait_for_approval(held.approval_id, timeout=20)
        assert decided["status"] == "denied"
        assert time.monotonic() - started < 15

    with deployment.agent("nosy") as other, pytest.raises(ApiError) as hidden:
        other.wait_for_approval(held.approval_id, timeout=0)
    assert hidden.value.code == "approval_not_found"


def test_decision_parsing_fails_closed() -> None:
    ok = Decision.from_authzen({"decision": True, "context": {"decision": "allow"}})
    assert ok.allowed
    for body in (
        {"decision": "true", "context": {}},
        {"decision": True},
        {"decision": True, "context": {"decision": "deny"}},
        {"decision": False, "context": {"decision": "allow"}},
        {"decision": False, "context": {"decision": "maybe"}},
        ["decision"],
    ):
        with pytest.raises(ApiError) as bad:
            Decision.from_authzen(body)
        assert bad.value.code == "invalid_response"


# -- guard -----------------------------------------------------------------------------------


def test_guard_runs_allowed_sync_calls_and_refuses_denied_ones(deployment: Deployment) -> None:
    calls: list[str] = []
    with deployment.agent("guarded") as agent:

        @guard(
            "tool.call",
            resource=lambda name, server="dev": name,
            client=agent,
            properties=lambda name, server="dev": {"server": server},
        )
        def use(name: str, server: str = "dev") -> str:
            calls.append(name)
            return f"used {name}"

        assert use.__name__ == "use"
        assert use("search") == "used search"
        assert deployment.last_decision(agent.client_id)["resource"] == {
            "type": "Tool",
            "id": "search",
        }
        with pytest.raises(AccessDenied) as denied:
            use("shell", server="prod")
        assert denied.value.decision.reasons == ("no-prod",)
        assert deployment.last_decision(agent.client_id)["resource"]["id"] == "shell"

        @guard("secret.read", resource="db-password", resource_type="Secret", client=agent)
        def read() -> str:
            calls.append("read")
            return "hunter2"

        with pytest.raises(AccessDenied):
            read()
    assert calls == ["search"]


def test_guard_on_async_functions(deployment: Deployment) -> None:
    calls: list[int] = []
    with deployment.agent("async") as agent:

        @guard("tool.call", resource="search", client=agent, context={})
        async def search(n: int) -> int:
            calls.append(n)
            await asyncio.sleep(0)
            return n * 2

        @guard("tool.call", resource="db", properties={"server": "prod"}, client=agent)
        async def prod() -> None:
            calls.append(-1)

        async def main() -> list[int]:
            results = await asyncio.gather(search(1), search(2), search(3))
            with pytest.raises(AccessDenied):
                await prod()
            return list(results)

        assert asyncio.run(main()) == [2, 4, 6]
    assert sorted(calls) == [1, 2, 3]


def test_guard_approval_then_the_call_goes_through_once(deployment: Deployment) -> None:
    calls: list[str] = []
    with deployment.agent("needs-a-human", risk_tier="high") as agent:

        @guard("tool.write", resource="crm", client=agent)
        def write(record: str) -> str:
            calls.append(record)
            return "written"

        with pytest.raises(ApprovalRequired) as held:
            write("r1")
        approval_id = held.value.approval_id
        assert approval_id is not None
        assert held.value.decision.approval_required
        assert [a["id"] for a in deployment.pending(agent.client_id)] == [approval_id]
        assert calls == []

        assert deployment.decide(approval_id)["status"] == "approved"
        assert write("r1") == "written"  # the approved request, once
        assert calls == ["r1"]
        with pytest.raises(ApprovalRequired) as again:  # and only once
            write("r1")
        assert again.value.approval_id != approval_id
        approvals = deployment.admin.get(f"/v1/approvals/{approval_id}").json()
        assert approvals["status"] == "used"


def test_guard_with_wait_blocks_until_a_human_decides(deployment: Deployment) -> None:
    calls: list[str] = []
    with deployment.agent("waiter", risk_tier="high") as agent:

        def approve_when_asked(verdict: str) -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending = deployment.pending(agent.client_id)
                if pending:
                    deployment.decide(pending[0]["id"], verdict)
                    return
                time.sleep(0.1)

        @guard("tool.write", resource="ledger", client=agent, wait=20)
        async def post(entry: str) -> str:
            calls.append(entry)
            return "posted"

        human = threading.Thread(target=approve_when_asked, args=("approve",))
        human.start()
        assert asyncio.run(post("e1")) == "posted"
        human.join()

        human = threading.Thread(target=approve_when_asked, args=("deny",))
        human.start()
        with pytest.raises(AccessDenied) as refused:
            asyncio.run(post("e2"))
        human.join()
        assert refused.value.approval is not None
        assert refused.value.approval["status"] == "denied"
    assert calls == ["e1"]
