"""``/mcp``: the MCP gateway's front door (the MCP authorization spec).

A request needs an agent's access token addressed to the gateway (``aud`` = its resource URI,
RFC 8707; DPoP-bound tokens with their proof, RFC 9449); otherwise 401 with
``WWW-Authenticate: Bearer resource_metadata="…"`` (RFC 9728 §5.1), so an MCP client finds
where to get one. The authenticated caller rides in the request's state to the gateway's
handlers; the token itself goes no further (upstream clients are the gateway's own).
"""

from __future__ import annotations

import orjson
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from tether.container import Services
from tether.errors import Unauthenticated
from tether.gateway.metadata import CALLER, challenge, resource_uri

METHODS = ["GET", "POST", "DELETE"]


class McpGate:
    """An ASGI endpoint (a Starlette ``Route`` at ``/mcp``, not a mount: a mount answers
    ``/mcp`` with a redirect to ``/mcp/``)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.services
        base = svc.settings.base_url
        resource = resource_uri(base)
        headers = Headers(scope=scope)
        try:
            caller = await svc.bearers.authenticate_request(
                headers.get("authorization", ""), method=scope["method"], url=resource,
                proofs=headers.getlist("dpop"), audience=resource,
            )  # fmt: skip
        except Unauthenticated as exc:
            await _unauthorized(send, base, exc)
            return
        if (
            caller.principal.kind == "agent"
            and (why := svc.decisions.caller_refused(caller.principal.id, caller.jti, caller.chain))
            is not None
        ):  # revoked, killed, suspended, expired: no session at all
            await _unauthorized(send, base, Unauthenticated(why))
            return
        manager = svc.gateway.manager
        if manager is None:  # no upstream configured, or the lifespan has not started it
            why = ("no upstream MCP servers are configured (TETHER_GATEWAY_UPSTREAMS)"
                   if not svc.gateway.upstreams else "the gateway is starting")  # fmt: skip
            await _answer(send, 503, {"error": "unavailable", "error_description": why}, {})
            return
        scope.setdefault("state", {})[CALLER] = caller
        await manager.handle_request(scope, receive, send)


async def _unauthorized(send: Send, base: str, exc: Unauthenticated) -> None:
    extra = exc.response_headers()
    value = challenge(base, error="invalid_token", description=exc.message)
    if "WWW-Authenticate" in extra:  # a DPoP challenge too (RFC 9449 §7.1)
        value = f"{value}, {extra.pop('WWW-Authenticate')}"
    body = {"error": "invalid_token", "error_description": exc.message}
    await _answer(send, 401, body, {"WWW-Authenticate": value, **extra})


async def _answer(send: Send, status: int, body: dict[str, str], headers: dict[str, str]) -> None:
    raw = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
        (b"cache-control", b"no-store"),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": raw})
