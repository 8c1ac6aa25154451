"""How the gateway authenticates to an upstream (issue 16, item 1): a static header from a
secret, or an OAuth client credential against a real (in-process) token endpoint — fetched
once, reused until shortly before it expires, fetched again when the upstream says 401 — and
never anything the agent sent."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tether.gateway.upstream_auth import ClientCredentials, StaticHeader, upstream_auth
from tether.gateway_config import ClientCredentialsAuth, HeaderAuth, NoAuth


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
