"""Request body cap, enforced before a handler reads the body (also for chunked bodies).

With a ``Content-Length`` the decision is made from the header. Without one (chunked
transfer), the body is read here, up to the cap, and replayed to the application: raising
from inside ``receive`` would reach FastAPI's body parser, which turns any error into a 400.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.jsonutil import canonical


class BodyLimitMiddleware:
    """``exempt``: paths whose endpoint enforces a limit of its own, answered in its own
    protocol's shape (``/mcp``: a JSON-RPC error, ``TETHER_GATEWAY_MAX_MESSAGE_BYTES``)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None:
            if length > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await reject_too_large(send, self.max_bytes)


async def reject_too_large(send: Send, max_bytes: int) -> None:
    """The 413 answer: the body is over ``max_bytes`` (the connection is closed after it)."""
    body = canonical(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"request body exceeds {max_bytes} bytes",
                "details": {"field": "body", "max_bytes": max_bytes},
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
