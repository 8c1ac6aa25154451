"""Rollback (issue 17), as deployed: ``tether serve`` killed (SIGKILL) in the middle of a
rollback, while one undo is in flight on the upstream, and started again on the same database;
the next rollback resumes it without undoing anything twice.

The example upstream (a process of its own, its state in memory) is configured with a
compensation per write tool; ``close_ticket``'s undo is ``slow`` (30 s), so that the kill lands
while it runs. The agent, through the gateway: refund, create ticket A, close A, create ticket
B. The rollback (newest first): delete B, slow (close A's undo), delete A, cancel the refund —
killed once slow's decision (and claim) is on the record. After the restart and the lease:

- the next rollback names the first as interrupted, leaves B's deletion alone (undone by the
  first: no second delete, which the upstream would refuse with "no ticket"), plans close A's
  undo ``uncertain`` (it was claimed and never seen to finish: not run again), and undoes A and
  the refund;
- every undo the upstream got is on the record once: one ``tool.undo`` decision per undo that
  ran (the claim is committed with it), one ``rollback.step`` per call, none failed;
- the upstream is as before the agent's calls (both tickets gone, the refund cancelled, ops'
  balance back);
- ``retry_uncertain`` would run close A's undo again; the ledger verifies.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx2 as httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import forkserver
from tests.conftest import Backend
from tests.forkserver import Child
from tests.serverproc import free_port, http_client, server_env, stop, wait_ready
from tests.test_gateway import _schema_with_args
from tests.test_rollback import POLICIES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KEY = "k-rollback-served-51c9"
LEASE_SECONDS = 2
SLOW_UNDO_SECONDS = 30  # far longer than the test waits: the kill always lands in it
RULES = {
    "refund": {"undo": "cancel_refund", "args": {"refund_id": "{result.id}"}},
    "create_ticket": {"undo": "delete_ticket", "args": {"ticket_id": "{result.id}"}},
    "close_ticket": {"undo": "slow", "args": {"seconds": SLOW_UNDO_SECONDS}},
}


class Tether(NamedTuple):
    proc: Child
    url: str


def _upstreams(up_port: int) -> list[dict[str, Any]]:
    return [{
        "name": "payments", "url": f"http://127.0.0.1:{up_port}/mcp", "timeout_seconds": 60,
        "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"},
        "tools": RULES,
    }]  # fmt: skip


def _start(backend: Backend, workdir: Path, log_name: str, extra: dict[str, str]) -> Tether:
    """``tether serve`` (one worker: one process) on ``backend`` with the data dir
    ``workdir/.tether``, on a free port (another if that one was taken meanwhile), once it
    answers ready with this deployment's admin token."""
    for _attempt in range(5):
        port = free_port()
        env = {**server_env(backend, workdir / ".tether", port), **extra}
        log_path = workdir / log_name
        with log_path.open("wb") as log:
            proc = forkserver.spawn("serve", env=env, cwd=workdir, stdout=log)
        url = f"http://127.0.0.1:{port}"
        try:
            ready = wait_ready(proc, url, workdir / ".tether" / "admin.token", log_path)
        except BaseException:
            stop(proc)
            raise
        if ready:
            return Tether(proc, url)
        stop(proc)
    raise RuntimeError("no free port in 5 attempts")


def _wait_for_upstream(url: str) -> None:
    """Until the gateway (one worker) says the upstream is connected."""
    deadline = time.monotonic() + 30
    ready: dict[str, Any] = {}
    with http_client(timeout=5) as http:
        while time.monotonic() < deadline:
            ready = http.get(f"{url}/readyz").json()
            if any(u["name"] == "payments" and u["up"] for u in ready.get("upstreams", [])):
                return
            time.sleep(0.05)
    raise AssertionError(f"the upstream never came up: {ready}")


def _until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _mcp(url: str, headers: dict[str, str], calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each of ``calls`` made in one MCP session at ``url`` with ``headers``; the results."""

    async def run() -> list[Any]:
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as c,
        ):
            return [await c.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def _structured(result: Any) -> Any:
    assert not result.is_error, result
    return result.structured_content


class Upstream(NamedTuple):
    port: int

    def state(self) -> dict[str, Any]:
        """What the agent's calls change, read directly from the upstream (with its key)."""
        tickets, refunds, ops = _mcp(f"http://127.0.0.1:{self.port}/mcp", {"X-Api-Key": KEY}, [
            ("list_tickets", {}), ("list_refunds", {}), ("get_balance", {"account": "ops"}),
        ])  # fmt: skip
        return {
            "tickets": {t["id"]: t["status"] for t in _structured(tickets)["result"]},
            "refunds": {r["id"]: r["status"] for r in _structured(refunds)["result"]},
            "ops": _structured(ops)["balance"],
        }


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    port = free_port()
    with (tmp_path / "upstream.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "examples.payments_tickets.server", "--port", str(port),
             "--api-key", KEY],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield Upstream(port)
    finally:
        proc.kill()  # its state is the test's only; slow's sleep need not end
        proc.wait()


@contextmanager
def _servers() -> Iterator[list[Child]]:
    """Every server process started in the block, stopped at its end (a killed one too)."""
    procs: list[Child] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def _agent_token(admin: httpx.Client, url: str) -> tuple[str, str]:
    body = {"name": "refunds-bot", "owner": "admin", "purpose": "mcp",
            "risk_tier": "minimal", "roles": ["payer"]}  # fmt: skip
    made = admin.post("/v1/agents", json=body)
    assert made.status_code == 201, made.text
    agent = made.json()["id"]
    secret = admin.post(f"/v1/agents/{agent}/credentials", json={"type": "api_key"})
    assert secret.status_code == 201, secret.text
    with http_client(base_url=url, timeout=30) as anon:
        got = anon.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_id": agent,
            "client_secret": secret.json()["client_secret"], "resource": f"{url}/mcp"})  # fmt: skip
    assert got.status_code == 200, got.text
    return agent, str(got.json()["access_token"])


def _events(admin: httpx.Client, type_: str) -> list[dict[str, Any]]:
    got = admin.get("/v1/audit/events", params={"type": type_, "limit": 1000})
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


def _undo_decisions(admin: httpx.Client) -> list[dict[str, Any]]:
    return [e for e in _events(admin, "decision") if e["action"] == "tool.undo"]


def _admin(url: str, token: str) -> httpx.Client:
    return http_client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})


def test_a_server_killed_mid_rollback_resumes_without_undoing_anything_twice(
    backend: Backend, upstream: Upstream, tmp_path: Path
) -> None:
    extra = {"TETHER_GATEWAY_UPSTREAMS": json.dumps(_upstreams(upstream.port)),
             "TETHER_ROLLBACK_LEASE_SECONDS": str(LEASE_SECONDS)}  # fmt: skip
    with _servers() as procs, ExitStack() as stack:
        first = _start(backend, tmp_path, "server-1.log", extra)
        procs.append(first.proc)
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        admin = stack.enter_context(_admin(first.url, token))
        stored = admin.put("/v1/secrets/payments-key", json={"value": KEY, "broker_only": True})
        assert stored.status_code == 201, stored.text
        schema = _schema_with_args(admin.get("/v1/policies").json()["schema"])
        pushed = admin.put("/v1/policies", json={"policies": POLICIES, "schema": schema})
        assert pushed.status_code == 200, pushed.text
        _wait_for_upstream(first.url)
        before = upstream.state()

        # the agent's calls, through the gateway
        agent, agent_token = _agent_token(admin, first.url)
        gateway = (f"{first.url}/mcp", {"Authorization": f"Bearer {agent_token}"})
        (refund, ticket_a) = _mcp(*gateway, [
            ("payments.refund", {"payment_id": "pay_1", "amount": 100}),
            ("payments.create_ticket", {"title": "A"}),
        ])  # fmt: skip
        refund_id, a = _structured(refund)["id"], _structured(ticket_a)["id"]
        closed, ticket_b = _mcp(*gateway, [
            ("payments.close_ticket", {"ticket_id": a}),
            ("payments.create_ticket", {"title": "B"}),
        ])  # fmt: skip
        assert _structured(closed)["status"] == "closed"
        b = _structured(ticket_b)["id"]
        acted = upstream.state()
        assert acted == {
            "tickets": {**before["tickets"], a: "closed", b: "open"},
            "refunds": {**before["refunds"], refund_id: "pending"},
            "ops": before["ops"] - 100,
        }

        # the rollback, killed while slow (close A's undo) runs on the upstream
        answers: list[httpx.Response | Exception] = []

        def roll_back() -> None:
            with _admin(first.url, token) as http:
                try:
                    answers.append(http.post(f"/v1/agents/{agent}/rollback", json={}))
                except httpx.TransportError as exc:
                    answers.append(exc)

        thread = threading.Thread(target=roll_back, daemon=True)
        thread.start()
        slow_decision = _until("the decision to run slow", lambda: [
            e for e in _undo_decisions(admin) if e["resource"]["id"] == "payments.slow"
        ])[0]  # fmt: skip
        time.sleep(0.3)  # its call on the upstream under way (ran or not, its outcome unknown)
        first.proc.kill()
        killed_at = time.monotonic()
        first.proc.wait(10)
        thread.join(30)
        assert not thread.is_alive()
        (answer,) = answers  # the connection went with the server
        assert isinstance(answer, httpx.TransportError), answer
        first_id = slow_decision["details"]["rollback_id"]
        assert slow_decision["decision"] == "allow"
        # what the killed rollback had done: B deleted (its step recorded), A's undo in flight
        assert upstream.state()["tickets"] == {**before["tickets"], a: "closed"}

        # the same deployment again, once the killed rollback's lease has run out
        again = _start(backend, tmp_path, "server-2.log", extra)
        procs.append(again.proc)
        admin = stack.enter_context(_admin(again.url, token))
        _wait_for_upstream(again.url)
        time.sleep(max(0.0, killed_at + LEASE_SECONDS + 0.5 - time.monotonic()))

        resumed = admin.post(f"/v1/agents/{agent}/rollback", json={})
        assert resumed.status_code == 200, resumed.text
        report = resumed.json()
        second_id = report["rollback_id"]
        assert report["status"] == "done"
        assert report["interrupted"] == [first_id]
        steps = report["steps"]
        assert [(s["tool"], s["plan"], s.get("outcome")) for s in steps] == [
            ("payments.create_ticket", "undone", None),  # B: deleted by the first rollback
            ("payments.close_ticket", "uncertain", None),  # slow was in flight: not run again
            ("payments.create_ticket", "undo", "undone"),  # A
            ("payments.refund", "undo", "undone"),
        ]
        step_b, step_close, step_a, step_refund = steps
        assert step_b["undo"] == {"tool": "payments.delete_ticket", "arguments": {"ticket_id": b}}
        assert first_id in step_b["note"]
        assert "retry_uncertain" in step_close["note"]
        assert first_id in step_close["note"]
        assert step_a["undo"] == {"tool": "payments.delete_ticket", "arguments": {"ticket_id": a}}
        assert step_refund["undo"] == {"tool": "payments.cancel_refund",
                                       "arguments": {"refund_id": refund_id}}  # fmt: skip
        assert report["summary"]["outcome_undone"] == 2
        assert report["summary"]["outcome_failed"] == 0
        assert admin.get(f"/v1/rollbacks/{first_id}").json()["status"] == "interrupted"
        assert admin.get(f"/v1/rollbacks/{second_id}").json()["status"] == "done"

        # the upstream is as before the agent's calls
        assert upstream.state() == {
            "tickets": before["tickets"],
            "refunds": {**before["refunds"], refund_id: "cancelled"},
            "ops": before["ops"],
        }

        # on the record: each undo that reached the upstream decided once, each step once
        decisions = _undo_decisions(admin)
        assert Counter(e["resource"]["id"] for e in decisions) == {
            "payments.delete_ticket": 2, "payments.slow": 1, "payments.cancel_refund": 1,
        }  # fmt: skip
        assert {e["decision"] for e in decisions} == {"allow"}
        by_call = {e["details"]["undoes"]: e for e in decisions}
        assert set(by_call) == {s["call"] for s in steps}
        assert by_call[step_b["call"]]["details"]["rollback_id"] == first_id
        assert by_call[step_close["call"]]["details"]["rollback_id"] == first_id
        assert by_call[step_a["call"]]["details"]["rollback_id"] == second_id
        assert by_call[step_refund["call"]]["details"]["rollback_id"] == second_id
        recorded = _events(admin, "rollback.step")
        assert {e["outcome"] for e in recorded} == {"undone"}  # none failed: no second delete
        assert Counter(e["details"]["call"] for e in recorded) == {
            step_b["call"]: 1, step_a["call"]: 1, step_refund["call"]: 1,
        }  # fmt: skip
        ran = {e["details"]["call"]: e for e in recorded}
        assert ran[step_b["call"]]["details"]["rollback_id"] == first_id
        assert ran[step_b["call"]]["resource"]["id"] == "payments.delete_ticket"
        assert ran[step_a["call"]]["details"]["rollback_id"] == second_id
        assert ran[step_refund["call"]]["details"]["rollback_id"] == second_id
        started = _events(admin, "rollback.started")
        assert [e["details"]["rollback_id"] for e in started] == [first_id, second_id]
        assert started[1]["details"]["interrupted"] == [first_id]
        finished = _events(admin, "rollback.finished")
        assert [e["details"]["rollback_id"] for e in finished] == [second_id]

        # once more: nothing runs; with retry_uncertain close A's undo would run again
        third = admin.post(f"/v1/agents/{agent}/rollback", json={})
        assert third.status_code == 200, third.text
        assert [s["plan"] for s in third.json()["steps"]] == [
            "undone", "uncertain", "undone", "undone"]  # fmt: skip
        assert third.json()["interrupted"] == []
        assert third.json()["summary"]["outcome_undone"] == 0
        assert len(_events(admin, "rollback.step")) == 3
        assert len(_undo_decisions(admin)) == 4
        retry = admin.post(f"/v1/agents/{agent}/rollback",
                           json={"dry_run": True, "retry_uncertain": True})  # fmt: skip
        assert retry.status_code == 200, retry.text
        assert [s["plan"] for s in retry.json()["steps"]] == ["undone", "undo", "undone", "undone"]
        assert retry.json()["steps"][1]["undo"] == {
            "tool": "payments.slow", "arguments": {"seconds": SLOW_UNDO_SECONDS}}  # fmt: skip

        verified = admin.get("/v1/audit/verify")
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] is True
