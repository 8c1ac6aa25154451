"""The example upstream (``examples/payments_tickets``), as the gateway's tests will use it: a
real MCP client over streamable HTTP lists its tools (annotated read / write /
irreversible), calls one, reads a resource and gets a prompt; with an API key set, a request
without it is refused, and the header log shows what arrived."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from examples.payments_tickets.server import http_app
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.serverproc import free_port, served_in_thread


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "headers.jsonl"
    port = free_port()
    with served_in_thread(http_app(api_key="k-123", header_log=str(log)), port):
        yield f"http://127.0.0.1:{port}/mcp", log


def test_a_real_client_lists_calls_reads_and_prompts(upstream: tuple[str, Path]) -> None:
    url, log = upstream

    async def run() -> None:
        http = httpx.AsyncClient(headers={"X-Api-Key": "k-123"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"get_balance", "refund", "cancel_refund", "transfer"} <= set(tools)
            assert tools["get_balance"].annotations.read_only_hint is True
            assert tools["transfer"].annotations.destructive_hint is True
            made = await client.call_tool("refund", {"payment_id": "pay_1", "amount": 100})
            assert not made.is_error
            assert json.loads(made.content[0].text)["status"] == "pending"
            bad = await client.call_tool("fail", {"message": "nope"})
            assert bad.is_error
            ticket = await client.call_tool("create_ticket", {"title": "printer"})
            ticket_id = json.loads(ticket.content[0].text)["id"]
            read = await client.read_resource(f"tickets://{ticket_id}")
            assert json.loads(read.contents[0].text)["title"] == "printer"
            prompt = await client.get_prompt("triage", {"ticket_id": ticket_id})
            assert ticket_id in prompt.messages[0].content.text

    asyncio.run(run())
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen
    assert all(s["x-api-key"] == "k-123" and s["authorization"] is None for s in seen)


def test_without_the_api_key_the_upstream_refuses(upstream: tuple[str, Path]) -> None:
    url, _log = upstream
    got = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                     headers={"Accept": "application/json, text/event-stream"})  # fmt: skip
    assert got.status_code == 401
