"""A header-injecting HTTP proxy for tests: a client that cannot send a token (the MCP
conformance suite has no header option) reaches the gateway through it with one.

Every request is forwarded as it came — method, path, query, body and headers, ``Host`` and
``Origin`` included — with ``Authorization: Bearer <token>`` set; the answer comes back as
the gateway gave it, its body streamed chunk by chunk (an SSE stream stays a stream).
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx2 as httpx
from starlette.types import Message, Receive, Scope, Send

from tests.serverproc import TLS

# RFC 9110 §7.6.1: a proxy does not forward these; content-length is set again by each side.
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"content-length", b"authorization"}  # fmt: skip
_OWN = {b"date", b"server"}  # the proxy's server sends its own


class BearerProxy:
    """An ASGI app forwarding to ``target`` (an origin: ``http://127.0.0.1:8000``)."""

    def __init__(self, target: str, token: str) -> None:
        self.target, self.token = target.rstrip("/"), token
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(verify=TLS, timeout=60)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None
        body = bytearray()
        while True:
            message: Message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        query = scope.get("query_string", b"").decode()
        url = self.target + scope["raw_path"].decode() + (f"?{query}" if query else "")
        request = self.client.build_request(scope["method"], url, headers=headers,
                                            content=bytes(body))  # fmt: skip
        answer = await self.client.send(request, stream=True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_disconnect, receive, tg.cancel_scope)
                raw = answer.headers.raw
                out: list[Any] = [(k, v) for k, v in raw if k.lower() not in _HOP | _OWN]
                await send({"type": "http.response.start", "status": answer.status_code,
                            "headers": out})  # fmt: skip
                async for chunk in answer.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await answer.aclose()


async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """The client went away: stop streaming to it (and close the stream from the gateway)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
