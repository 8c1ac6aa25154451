"""``guard`` records in-process tool calls as the MCP gateway records its own (issue 16 item
7), against the real app on both backends: one ``tool.called`` event linked to the decision,
digests and redacted copies (a secret the agent read never leaves it; credential-named keys
dropped by the server), outcome ``ok`` / ``tool_error``, duration.

An agent cannot put a call on the record that Tether did not allow it: another agent's
decision, a deny, a decision for another tool, or a decision already used are refused, and
concurrent reports of one decision record it once without hurting anyone else's batch."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.test_sdk_secrets import Server, deployed
from tether.container import Services
from tether.jsonutil import canonical
from tether.sdk import AccessDenied, AgentClient, ApiError, CallNotRecorded, guard

POLICIES = """
@id("tools")
permit (principal, action == Action::"tool.call", resource)
unless { resource == Tool::"wire" };

@id("read-team-secrets")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("team") };
"""


@pytest.fixture
def server(make_services: Callable[..., Services]) -> Iterator[Server]:
    with deployed(make_services) as server:
        server.policies(POLICIES)
        server.put("crm-key", "crm-9f8e7d6c5b", labels=["team"])
        yield server


def _calls(server: Server, agent: AgentClient) -> list[dict[str, Any]]:
    return [e for e in server.events("tool.called") if e["agent_id"] == agent.client_id]


def test_a_guarded_call_is_one_event_linked_to_its_decision_with_secrets_cut_out(
    server: Server,
) -> None:
    agent = server.agent()
    key = agent.secret("crm-key")

    @guard("tool.call", resource="crm.lookup", client=agent)
    def lookup(customer: str, api_key: str, note: str = "none") -> dict[str, Any]:
        return {"customer": customer, "echo": f"used {api_key}", "password": "hunter22"}

    result = lookup("cus_42", key)
    assert result["echo"] == f"used {key}"  # the function's own result is untouched

    (call,) = _calls(server, agent)
    decisions = {e["id"]: e for e in server.events("decision")}
    decision = decisions[call["details"]["decision_event"]]
    assert decision["agent_id"] == agent.client_id
    assert decision["resource"] == {"type": "Tool", "id": "crm.lookup"}
    assert call["resource"] == {"type": "Tool", "id": "crm.lookup"}
    assert call["action"] == "tool.call"
    assert (call["decision"], call["outcome"]) == ("allow", "ok")
    assert call["reasons"] == ["tools"]
    details = call["details"]
    assert details["via"] == "sdk"
    assert details["args"]["customer"] == "cus_42"
    assert details["args"]["note"] == "none"  # defaults bound too
    assert details["duration_ms"] >= 0
    # the secret is cut out by the client before anything leaves; the server drops keys
    # that name credentials
    sent = {"customer": "cus_42", "api_key": "[redacted]", "note": "none"}
    assert details["args_digest"] == hashlib.sha256(canonical(sent)).hexdigest()
    assert details["result"]["echo"] == "used [redacted]"
    assert details["result"]["password"] == "[redacted]"
    assert key not in str(server.events("tool.called"))


def test_a_failing_call_is_a_tool_error_on_the_record_and_still_raises(server: Server) -> None:
    agent = server.agent()

    @guard("tool.call", resource="crm.update", client=agent)
    def update(customer: str) -> None:
        raise ValueError(f"no such customer {customer}")

    with pytest.raises(ValueError, match="no such customer"):
        update("cus_0")
    (call,) = _calls(server, agent)
    assert call["outcome"] == "tool_error"
    assert call["details"]["result"] == {"error": "ValueError",
                                         "message": "no such customer cus_0"}  # fmt: skip


def test_async_guarded_calls_are_recorded(server: Server) -> None:
    agent = server.agent()

    @guard("tool.call", resource="search", client=agent)
    async def search(q: str) -> list[str]:
        await asyncio.sleep(0)
        return [q.upper()]

    assert asyncio.run(search("mcp")) == ["MCP"]
    (call,) = _calls(server, agent)
    assert call["details"]["result"] == ["MCP"]


def test_a_denied_call_runs_nothing_and_records_no_call(server: Server) -> None:
    agent = server.agent()
    ran: list[int] = []

    @guard("tool.call", resource="wire", client=agent)
    def wire(amount: int) -> None:
        ran.append(amount)

    with pytest.raises(AccessDenied):
        wire(10)
    assert ran == []
    assert _calls(server, agent) == []


def test_record_false_records_nothing(server: Server) -> None:
    agent = server.agent()

    @guard("tool.call", resource="search", client=agent, record=False)
    def search(q: str) -> str:
        return q

    assert search("x") == "x"
    assert _calls(server, agent) == []


def test_an_agent_cannot_record_a_call_tether_did_not_allow(server: Server) -> None:
    agent, other = server.agent(), server.agent()
    allowed = agent.authorize("tool.call", resource="crm.lookup")
    denied = agent.authorize("tool.call", resource="wire")
    theirs = other.authorize("tool.call", resource="crm.lookup")
    assert allowed.allowed
    assert not denied.allowed
    assert theirs.allowed

    def report(decision: Any, tool: str = "crm.lookup") -> Any:
        return agent.record_call(decision, tool=tool, args={}, result=None, outcome="ok",
                                 duration_ms=1.0)  # fmt: skip

    cases = [
        (theirs, "crm.lookup", "decision_not_found"),  # another agent's decision
        (denied, "wire", "call_not_allowed"),  # a deny
        (allowed, "crm.delete", "call_not_allowed"),  # a decision for another tool
    ]
    for decision, tool, code in cases:
        with pytest.raises(ApiError) as caught:
            report(decision, tool)
        assert caught.value.code == code, (tool, caught.value)
    first = report(allowed)
    assert first["event_id"].startswith("evt_")
    with pytest.raises(ApiError) as again:  # a decision allows one call
        report(allowed)
    assert again.value.code == "call_already_recorded"
    assert len(_calls(server, agent)) == 1
    # a user is no agent: only agents report their own calls
    got = server.app.post("/v1/tool-calls", headers=server.admin, json={
        "decision_event": allowed.event_id, "tool": "crm.lookup", "outcome": "ok"})  # fmt: skip
    assert got.status_code == 403


def test_bad_reports_are_422_and_record_nothing(server: Server) -> None:
    agent = server.agent()
    decision = agent.authorize("tool.call", resource="crm.lookup")
    token = agent.access_token()
    headers = {"Authorization": f"Bearer {token}"}
    base = {"decision_event": decision.event_id, "tool": "crm.lookup", "outcome": "ok"}
    for bad in ({**base, "outcome": "refused"}, {**base, "decision_event": "x"},
                {**base, "duration_ms": -1}, {**base, "extra": 1}, {**base, "tool": ""},
                {k: v for k, v in base.items() if k != "tool"}):  # fmt: skip
        got = server.app.post("/v1/tool-calls", headers=headers, json=bad)
        assert got.status_code == 422, (bad, got.text)
    assert _calls(server, agent) == []


def test_concurrent_reports_of_one_decision_record_it_once_and_hurt_no_one(
    server: Server,
) -> None:
    agent, bystander = server.agent(), server.agent()
    decision = agent.authorize("tool.call", resource="crm.lookup")
    outcomes: list[str] = []
    others: list[bool] = []
    lock = threading.Lock()

    def report() -> None:
        try:
            agent.record_call(decision, tool="crm.lookup", args={}, result=None, outcome="ok",
                              duration_ms=0.5)  # fmt: skip
            said = "recorded"
        except ApiError as exc:
            said = exc.code
        with lock:
            outcomes.append(said)

    def ask() -> None:
        allowed = bystander.authorize("tool.call", resource="search").allowed
        with lock:
            others.append(allowed)

    threads = [threading.Thread(target=report) for _ in range(8)]
    threads += [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["call_already_recorded"] * 7 + ["recorded"]
    assert others == [True] * 8
    assert len(_calls(server, agent)) == 1


def test_a_call_that_cannot_be_recorded_says_so_with_its_result(server: Server) -> None:
    agent = server.agent()

    @guard("tool.call", resource="search", client=agent)
    def search(q: str) -> str:
        return q * 2

    server.transport.unreachable.add("/v1/tool-calls")
    with pytest.raises(CallNotRecorded) as caught:
        search("ab")
    assert caught.value.result == "abab"
