"""How the gateway authenticates to an upstream (issue 16, item 1): a static header from a
secret, or an OAuth client credential against a real (in-process) token endpoint — fetched
once, reused until shortly before it expires, fetched again when the upstream says 401 — and
never anything the agent sent."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.serverproc import free_port, served_in_thread
from tether.gateway.upstream_auth import ClientCredentials, StaticHeader, upstream_auth
from tether.gateway.upstreams import UpstreamLink
from tether.gateway_config import ClientCredentialsAuth, HeaderAuth, NoAuth, Upstream


class World:
    """A token endpoint and an upstream that takes only the newest token it issued."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.token_requests: list[dict[str, Any]] = []
        self.seen: list[dict[str, str]] = []
        self.revoke_next = False

    def app(self) -> Starlette:
        async def token(request: Request) -> JSONResponse:
            form = dict(await request.form())
            self.token_requests.append({"auth": request.headers.get("authorization"), **form})
            self.issued.append(f"tok-{len(self.issued) + 1}")
            return JSONResponse({"access_token": self.issued[-1], "token_type": "Bearer",
                                 "expires_in": 120})  # fmt: skip

        async def mcp(request: Request) -> JSONResponse:
            self.seen.append(dict(request.headers))
            auth = request.headers.get("authorization", "")
            if self.revoke_next or auth != f"Bearer {self.issued[-1] if self.issued else ''}":
                self.revoke_next = False
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/token", token, methods=["POST"]),
                                 Route("/mcp", mcp, methods=["POST"])])  # fmt: skip


CFG = ClientCredentialsAuth(
    kind="client_credentials", token_url="http://idp.test/token", client_id="tether gw",
    client_secret="cc-secret", scope="tools",
)  # fmt: skip


def test_a_client_credential_is_fetched_once_reused_and_renewed() -> None:
    world, now = World(), [1000.0]
    auth = ClientCredentials(CFG, "s3cr:et", clock=lambda: now[0])

    async def run() -> list[int]:
        transport = httpx2.ASGITransport(app=world.app())
        async with httpx2.AsyncClient(transport=transport, auth=auth) as http:
            codes = []
            for step in range(5):
                if step == 2:
                    now[0] += 100  # within 30 s of expiry: fetched again before sending
                if step == 3:
                    world.revoke_next = True  # the upstream revokes it: one retry, new token
                got = await http.post("http://up.test/mcp", json={},
                                      headers={"Authorization": "Bearer agent-token"})  # fmt: skip
                codes.append(got.status_code)
            return codes

    assert asyncio.run(run()) == [200] * 5
    assert world.issued == ["tok-1", "tok-2", "tok-3"]
    basic = base64.b64encode(b"tether%20gw:s3cr%3Aet").decode()  # RFC 6749 §2.3.1
    first = {"auth": f"Basic {basic}", "grant_type": "client_credentials", "scope": "tools"}
    assert world.token_requests[0] == first
    # what the caller put in Authorization never reached the upstream
    assert all(h["authorization"].startswith("Bearer tok-") for h in world.seen)
    assert "s3cr" not in repr(auth)


def test_a_static_header_carries_the_secret_and_only_it() -> None:
    seen: list[dict[str, str]] = []

    async def mcp(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({})

    flow = upstream_auth(HeaderAuth(kind="header", header="X-Api-Key", secret="payments-key"),
                         {"payments-key": "k-123"}.__getitem__)  # fmt: skip
    assert isinstance(flow, StaticHeader)
    assert "k-123" not in repr(flow)

    async def run() -> None:
        app = Starlette(routes=[Route("/mcp", mcp, methods=["POST"])])
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, auth=flow) as http:
            await http.post("http://up.test/mcp", json={})

    asyncio.run(run())
    assert seen[0]["x-api-key"] == "k-123"
    assert "authorization" not in seen[0]
    assert upstream_auth(NoAuth(), {}.__getitem__) is None


def test_the_relay_sends_the_same_credentials_over_its_own_client() -> None:
    """tools/call's relay (aiohttp, over real HTTP): a client credential fetched once,
    reused, fetched again before it expires and once more when the upstream says 401; a
    static header with the secret and nothing else; a token endpoint out of reach is the
    client's connection error (which ``call_tool`` makes this call's failure)."""
    world, now, port = World(), [1000.0], free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = CFG.model_copy(update={"token_url": f"{base}/token"})
    credential = ClientCredentials(cfg, "s3cr:et", clock=lambda: now[0])
    link = UpstreamLink(Upstream(name="up", url=f"{base}/mcp", auth=cfg), {}.__getitem__)
    link._credential = credential
    headers = {"content-type": "application/json"}

    async def calls() -> list[int]:
        codes = []
        async with aiohttp.ClientSession() as relay:
            for step in range(5):
                if step == 2:
                    now[0] += 100  # within 30 s of expiry: fetched again before sending
                if step == 3:
                    world.revoke_next = True  # the upstream revokes it: one retry, new token
                codes.append((await link._post(relay, b"{}", headers))[0])
        return codes

    with served_in_thread(world.app(), port):
        assert asyncio.run(calls()) == [200] * 5
        assert world.issued == ["tok-1", "tok-2", "tok-3"]
        basic = base64.b64encode(b"tether%20gw:s3cr%3Aet").decode()
        first = {"auth": f"Basic {basic}", "grant_type": "client_credentials", "scope": "tools"}
        assert world.token_requests[0] == first
        assert [h["authorization"] for h in world.seen] == [
            "Bearer tok-1", "Bearer tok-1", "Bearer tok-2", "Bearer tok-2", "Bearer tok-3",
            "Bearer tok-3",
        ]  # fmt: skip

        link._credential = upstream_auth(
            HeaderAuth(kind="header", header="X-Api-Key", secret="k"), {"k": "k-123"}.__getitem__
        )  # fmt: skip
        world.seen.clear()

        async def keyed() -> int:
            async with aiohttp.ClientSession() as relay:
                return (await link._post(relay, b"{}", headers))[0]

        assert asyncio.run(keyed()) == 401  # the upstream wants a token: said, not retried
        assert len(world.seen) == 1
        assert world.seen[0]["x-api-key"] == "k-123"
        assert "authorization" not in world.seen[0]

    # The token endpoint gone (the token kept has expired): no request leaves.
    now[0] += 1000
    link._credential = credential
    link._relay, link._version = None, None

    async def unreachable() -> None:
        async with aiohttp.ClientSession() as relay:
            await link._post(relay, b"{}", headers)

    with pytest.raises(aiohttp.ClientConnectorError):
        asyncio.run(unreachable())
