"""Request ids and the access log (issue 13, item 8).

The server logged no requests at all: no line per request, no request id, nothing to match a
ledger decision to the HTTP call that asked for it. Now every response carries
``X-Request-ID`` (the client's when plausible, else a new one), a decision's ledger event
keeps it, and ``tether serve`` writes an access line per request — text by default, one JSON
object a line with ``TETHER_LOG_FORMAT=json`` — that never holds a token or secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, Backend, backend_for, bearer
from tests.pdp import credential, env_of, push_policies, token
from tests.serverproc import running_server
from tether.api.app import create_app
from tether.container import Services

EVAL = "/access/v1/evaluation"
EVALS = "/access/v1/evaluations"
POLICIES = '@id("p_tools")\npermit (principal, action == Action::"tool.call", resource);'
HEADER = "X-Request-ID"


def _ask(subject: str) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": subject},
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "search"},
    }


def _is_generated(value: str) -> bool:
    """An id the server made: 128 random bits as 32 hex digits."""
    return re.fullmatch(r"[0-9a-f]{32}", value) is not None


# -- X-Request-ID on every response ----------------------------------------------------------


def test_a_request_without_an_id_gets_a_new_one_on_every_kind_of_response(
    client: TestClient,
) -> None:
    answers = [
        client.get("/healthz"),
        client.get("/v1/agents/agt_nope"),  # 404 from a route
        client.get("/no/such/path"),  # 404 from the router
        client.post(EVAL, json={}),  # the decision fast path's 422
        client.post(EVAL, content=b"x" * 2_000_000),  # the body limit's 413
        client.get("/docs"),
    ]
    ids = [a.headers.get(HEADER, "") for a in answers]
    assert [a.status_code for a in answers] == [200, 404, 404, 422, 413, 200]
    assert all(_is_generated(i) for i in ids), ids
    assert len(set(ids)) == len(ids)  # one per request


@pytest.mark.parametrize(
    "sent", ["abc-123", "7d0b1c9e-0bd4-4a4e-9f0b-6f8e6c3a2a11", "trace:01HZY/span=4@gw", "a" * 128]
)
def test_a_plausible_client_id_is_echoed(client: TestClient, sent: str) -> None:
    assert client.get("/healthz", headers={HEADER: sent}).headers[HEADER] == sent


@pytest.mark.parametrize(
    "sent",
    ["a" * 129, "two words", 'quote"d', "semi;colon", "new\\nline", "é", ""],
    ids=["too-long", "space", "quote", "semicolon", "backslash", "non-ascii", "empty"],
)
def test_an_implausible_client_id_is_replaced(client: TestClient, sent: str) -> None:
    got = client.get("/healthz", headers={HEADER: sent.encode()})  # type: ignore[dict-item]
    assert got.status_code == 200
    assert _is_generated(got.headers[HEADER]), got.headers[HEADER]


def test_an_unhandled_error_still_answers_with_the_request_id(services: Services) -> None:
    app = create_app(services)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-only/boom", boom, include_in_schema=False)
    with TestClient(app, raise_server_exceptions=False) as http:
        got = http.get("/test-only/boom", headers={HEADER: "req-500"})
    assert got.status_code == 500
    assert got.json()["error"]["code"] == "internal_error"
    assert got.headers[HEADER] == "req-500"


# -- the ledger keeps a decision's request id ------------------------------------------------


def test_a_decisions_ledger_event_keeps_the_request_id_and_the_ledger_verifies(
    client: TestClient, api: Api, services: Services
) -> None:
    push_policies(client, POLICIES)
    with env_of(services, client) as e:
        agent_id = api.agent(scopes=["read"])["id"]
        access = token(e, credential(e, agent_id))
        single = e.anon.post(EVAL, json=_ask(agent_id), headers={**bearer(access), HEADER: "one"})
        batch = e.anon.post(EVALS, headers={**bearer(access), HEADER: "two"},
                            json={"evaluations": [_ask(agent_id), _ask(agent_id)]})  # fmt: skip
        unnamed = e.anon.post(EVAL, json=_ask(agent_id), headers=bearer(access))
    assert [r.status_code for r in (single, batch, unnamed)] == [200, 200, 200]
    assert single.json()["decision"] is True
    assert (single.headers[HEADER], batch.headers[HEADER]) == ("one", "two")
    decisions = api.events(type="decision")
    assert [ev["details"].get("request_id") for ev in decisions[-4:]] == [
        "one", "two", "two", unnamed.headers[HEADER],
    ]  # fmt: skip
    verified = client.get("/v1/audit/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is True, verified.json()


# -- the access log of a real server -----------------------------------------------------------


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Backend]:
    """Logging touches no storage: one backend is enough for the server-process tests."""
    with backend_for("sqlite", tmp_path) as backend:
        yield backend


def _exercise(url: str, admin: str) -> dict[str, str]:
    """Requests carrying every kind of credential; returns the secrets that must not leak."""
    with httpx.Client(base_url=url, timeout=30, headers=bearer(admin)) as http:
        push = http.put("/v1/policies", json={"policies": POLICIES})
        assert push.status_code == 200, push.text
        body = {"name": "logged", "owner": "admin", "purpose": "logs", "risk_tier": "minimal"}
        agent = http.post("/v1/agents", json=body)
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["id"]
        assert http.get(f"/v1/agents/{agent_id}").status_code == 200
        cred = http.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
        assert cred.status_code == 201, cred.text
        secret = cred.json()["client_secret"]
    with httpx.Client(base_url=url, timeout=30) as anon:
        form = {"grant_type": "client_credentials", "client_id": agent_id, "client_secret": secret}
        got = anon.post("/oauth/token", data=form)
        assert got.status_code == 200, got.text
        access = got.json()["access_token"]
        decided = anon.post(EVAL, json=_ask(agent_id),
                            headers={**bearer(access), HEADER: "pep-42"})  # fmt: skip
        assert decided.status_code == 200, decided.text
        assert anon.get("/v1/whoami", headers=bearer("tth_wrong")).status_code == 401
    return {"agent_id": agent_id, "admin": admin, "secret": secret, "access": access}


def _run(backend: Backend, workdir: Path, log_format: str | None) -> tuple[str, dict[str, str]]:
    extra = {"TETHER_LOG_LEVEL": "info"}
    if log_format:
        extra["TETHER_LOG_FORMAT"] = log_format
    with running_server(backend, workdir, extra_env=extra) as (url, _env):
        admin = (workdir / ".tether" / "admin.token").read_text().strip()
        used = _exercise(url, admin)
    return (workdir / "server.log").read_text(), used


def _assert_no_secret(log: str, used: dict[str, str]) -> None:
    for name in ("admin", "secret", "access"):
        assert used[name] not in log, f"the {name} credential is in the log"
        assert used[name][:16] not in log, f"a prefix of the {name} credential is in the log"
    assert "tth_wrong" not in log
    assert not re.search(r"(?i)authorization|bearer |client_secret", log)


def test_json_access_lines_name_route_status_caller_and_id_and_hold_no_secret(
    sqlite: Backend, tmp_path: Path
) -> None:
    log, used = _run(sqlite, tmp_path, "json")
    _assert_no_secret(log, used)
    # `tether serve` prints its start-up summary for a person first; from the server's start
    # on, every line is one JSON object (uvicorn's own lines too).
    lines = [line for line in log.splitlines() if line.strip()]
    started = next(i for i, line in enumerate(lines) if line.startswith("Tether serving on"))
    records = [json.loads(line) for line in lines[started + 1 :]]
    assert any(r["logger"].startswith("uvicorn") for r in records)
    access = [r for r in records if r["logger"] == "tether.access"]
    by_route = {(r["method"], r["route"], r["status"]): r for r in access}
    for r in access:
        assert set(r) >= {"time", "level", "method", "route", "status", "duration_ms",
                          "caller", "request_id"}, r  # fmt: skip
        assert r["duration_ms"] >= 0
    shown = by_route[("GET", "/v1/agents/{agent_id}", 200)]  # the template, not the id
    assert shown["caller"].startswith("user:usr_")
    assert _is_generated(shown["request_id"])
    decision = by_route[("POST", EVAL, 200)]
    assert (decision["caller"], decision["request_id"]) == (f"agent:{used['agent_id']}", "pep-42")
    assert by_route[("POST", "/oauth/token", 200)]["caller"] is None  # no bearer caller
    assert by_route[("GET", "/v1/whoami", 401)]["caller"] is None
    assert used["agent_id"] not in json.dumps([r["route"] for r in access])


def test_text_access_lines_by_default(sqlite: Backend, tmp_path: Path) -> None:
    log, used = _run(sqlite, tmp_path, None)
    _assert_no_secret(log, used)
    line = next(ln for ln in log.splitlines() if " POST /access/v1/evaluation 200 " in ln)
    assert re.search(
        rf"tether\.access: POST /access/v1/evaluation 200 \d+\.\d\dms "
        rf"caller=agent:{used['agent_id']} request_id=pep-42$", line
    ), line  # fmt: skip
    assert re.search(r" GET /v1/agents/\{agent_id\} 200 .* caller=user:usr_\S+ request_id=\S+$",
                     log, re.MULTILINE)  # fmt: skip
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_bad_log_format_is_a_clear_configuration_error() -> None:
    from tether.config import load_settings
    from tether.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="log_format"):
        load_settings(log_format="xml")


def _generated_here() -> str:
    from tether.api import requestlog

    return requestlog._IDS.next()


def test_generated_ids_differ_across_processes_even_forked_ones() -> None:
    """A generated id is a per-process random prefix and a counter: a forked worker draws its
    own prefix, so two processes never hand out the same id."""
    import multiprocessing

    here = [_generated_here() for _ in range(3)]
    assert len(set(here)) == 3
    assert all(_is_generated(i) for i in here)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.apply(_generated_here)
    assert _is_generated(there)
    assert there[:16] != here[0][:16]  # another prefix


def test_requests_in_flight_are_counted_and_alone_only_with_one() -> None:
    """``alone()`` (what lets the group commit write a lone request's event on the event loop)
    holds with one request in flight and not with two; the count falls back as each ends,
    an answer that failed included."""
    import asyncio

    from tether.api.requestlog import RequestLogMiddleware

    seen: list[bool] = []
    gates = [asyncio.Event(), asyncio.Event()]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(middleware.alone())
        await gates[int(scope["path"][-1])].wait()
        if scope["path"].endswith("1"):
            raise RuntimeError("an answer that failed")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = RequestLogMiddleware(app)

    async def request(path: str) -> None:
        scope = {"type": "http", "method": "GET", "path": path, "headers": []}

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(_message: Any) -> None:
            return None

        await middleware(scope, receive, send)

    async def main() -> None:
        first = asyncio.create_task(request("/r0"))
        await asyncio.sleep(0.01)
        assert middleware.alone()
        second = asyncio.create_task(request("/r1"))
        await asyncio.sleep(0.01)
        assert middleware.in_flight == 2
        assert not middleware.alone()
        gates[1].set()
        with pytest.raises(RuntimeError):
            await second
        assert middleware.alone()
        gates[0].set()
        await first
        assert middleware.in_flight == 0

    asyncio.run(main())
    assert seen == [True, False]
