"""The gateway's direct relay of ``tools/call`` to an HTTP upstream (no client session
streams): the same results the upstream gives an SDK client, for a stateless JSON upstream
and for a stateful one answering in SSE (its session id sent back); a session the upstream
forgets is reconnected, the call failing clearly meanwhile; answers that are no response
are upstream failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from examples.conformance_upstream.server import http_app as conformance_app
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.serverproc import free_port, served_in_thread
from tests.test_gateway import World, open_world, upstreams_at
from tether.container import Services
from tether.gateway.upstreams import _answer_to, _sse_data

POLICIES = """
@id("all-tools")
permit (principal in Role::"payer", action == Action::"tool.call", resource);
"""


@contextlib.contextmanager
def _relay_world(
    make_services: Callable[..., Services], tmp_path: Path, port: int
) -> Iterator[World]:
    def upstreams(up_port: int) -> list[dict[str, Any]]:
        conf = {"name": "conf", "url": f"http://127.0.0.1:{port}/mcp", "timeout_seconds": 5}
        return [*upstreams_at(up_port)[:1], conf]

    with open_world(make_services, tmp_path, upstreams=upstreams, ready=("payments", "conf"),
                    policies=POLICIES) as world:  # fmt: skip
        yield world


def _direct(url: str, name: str, args: dict[str, Any], headers: dict[str, str]) -> Any:
    async def run() -> Any:
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as c,
        ):
            return await c.call_tool(name, args)

    return asyncio.run(run())


def _plain(result: Any) -> dict[str, Any]:
    """A result without the answering server's own ``_meta`` stamp (the gateway stamps its
    own name on what it answers, as any 2026-era server does)."""
    return {k: v for k, v in result.model_dump().items() if k != "meta"}


def test_relayed_calls_give_what_the_upstream_gives_stateless_or_stateful(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    port = free_port()
    with served_in_thread(conformance_app(), port), \
            _relay_world(make_services, tmp_path, port) as world:  # fmt: skip
        links = world.services.gateway.links
        assert links["conf"]._session_id is not None  # a stateful upstream
        assert links["payments"]._session_id is None  # a stateless one
        _agent, token = world.token(["payer"])
        relayed_before = {n: next(links[n]._ids) for n in ("payments", "conf")}

        async def calls(c: Client) -> list[Any]:
            return [await c.call_tool("payments.get_balance", {"account": "ops"}),
                    await c.call_tool("conf.test_simple_text", {}),
                    await c.call_tool("conf.test_error_handling", {})]  # fmt: skip

        balance, text, failing = world.session(token, calls)
        key = {"X-Api-Key": "k-upstream-123"}
        up = world.services.gateway.links["payments"].config.url
        assert up is not None
        expected_balance = _direct(up, "get_balance", {"account": "ops"}, key)
        assert _plain(balance) == _plain(expected_balance)
        expected_text = _direct(f"http://127.0.0.1:{port}/mcp", "test_simple_text", {}, {})
        assert _plain(text) == _plain(expected_text)
        assert failing.is_error
        # each went by the relay (its request ids moved on), none through the session
        assert all(next(links[n]._ids) > relayed_before[n] + 1 for n in relayed_before)
        calls_made = [e for e in world.events("tool.called") if e["outcome"] != "refused"]
        assert [e["outcome"] for e in calls_made[-3:]] == ["ok", "ok", "tool_error"]


def test_a_session_the_upstream_forgot_is_reconnected(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    port = free_port()
    with contextlib.ExitStack() as first:
        first.enter_context(served_in_thread(conformance_app(), port))
        with _relay_world(make_services, tmp_path, port) as world:
            link = world.services.gateway.links["conf"]
            old = link._session_id
            _agent, token = world.token(["payer"])
            first.close()  # the upstream restarts: it knows no session any more
            with served_in_thread(conformance_app(), port):
                lost = world.session(token, lambda c: c.call_tool("conf.test_simple_text", {}))
                assert lost.is_error
                assert "upstream conf failed" in lost.content[0].text
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and (
                    not link.up or link._session_id in (None, old)
                ):
                    time.sleep(0.05)
                again = world.session(token, lambda c: c.call_tool("conf.test_simple_text", {}))
                assert not again.is_error, again
                assert link._session_id not in (None, old)


def _response(content_type: str, body: str) -> tuple[str, bytes]:
    return content_type, body.encode()


def test_answers_are_read_from_json_or_sse_and_must_answer_the_call() -> None:
    result = {"content": [{"type": "text", "text": "ok"}]}
    ok = json.dumps({"jsonrpc": "2.0", "id": 7, "result": result})
    assert _answer_to(7, *_response("application/json", ok))["result"] == result
    progress = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                           "params": {"progressToken": 1, "progress": 1}})  # fmt: skip
    stream = f"event: message\ndata: {progress}\n\nid: 2\nevent: message\ndata: {ok}\n\n"
    assert _answer_to(7, *_response("text/event-stream", stream))["result"] == result
    assert _sse_data("data: a\ndata: b\n\n: comment\ndata: c") == ["a\nb", "c"]
    for content_type, body in [
        ("application/json", ok.replace('"id": 7', '"id": 8')),  # another call's answer
        ("application/json", "not json"),
        ("text/html", ok),
        ("text/event-stream", f"data: {progress}\n\n"),  # no response at all
        ("application/json", json.dumps([json.loads(ok)])),  # a batch
    ]:
        with pytest.raises(MCPError):
            _answer_to(7, *_response(content_type, body))


def test_an_upstreams_logs_on_the_calls_own_stream_reach_that_caller(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    """Log notifications an upstream sends on a call's own stream are that call's: relayed
    to its caller before the answer (an SSE answer), when it accepts a stream; a caller that
    accepts only JSON gets the answer alone."""
    port = free_port()
    with served_in_thread(conformance_app(), port), \
            _relay_world(make_services, tmp_path, port) as world:  # fmt: skip
        _agent, token = world.token(["payer"])
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "conf.test_tool_with_logging", "arguments": {}}}  # fmt: skip
        base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        streamed = httpx.post(f"{world.url}/mcp", json=body, headers={
            **base, "Accept": "application/json, text/event-stream"})  # fmt: skip
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["content-type"].startswith("text/event-stream")
        messages = [json.loads(d) for d in _sse_data(streamed.text)]
        logs = [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]
        assert logs == ["Tool execution started", "Tool processing data",
                        "Tool execution completed"]  # fmt: skip
        assert messages[-1]["id"] == 5
        assert not messages[-1]["result"].get("isError")
        plain = httpx.post(f"{world.url}/mcp", json=body,
                           headers={**base, "Accept": "application/json"})  # fmt: skip
        assert plain.headers["content-type"].startswith("application/json")
        assert plain.json()["id"] == 5
