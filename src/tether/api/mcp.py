"""``/mcp``: the MCP gateway's front door (the MCP authorization spec).

A request needs an agent's access token addressed to the gateway (``aud`` = its resource URI,
RFC 8707; DPoP-bound tokens with their proof, RFC 9449), in the one ``Authorization`` header;
otherwise 401 with ``WWW-Authenticate: Bearer resource_metadata="…"`` (RFC 9728 §5.1), so an
MCP client finds where to get one. A valid token without the scopes the gateway requires
(``TETHER_GATEWAY_SCOPE``) gets 403 ``insufficient_scope`` naming all of them (RFC 6750 §3.1).
A body over ``TETHER_GATEWAY_MAX_MESSAGE_BYTES`` gets 413 with a JSON-RPC error before any of
it reaches the MCP machinery. The authenticated caller rides in the request's state to the
gateway's handlers; the token itself goes no further (upstream clients are the gateway's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from tether.container import Services
from tether.credentials.bearer import Caller
from tether.credentials.errors import InvalidDPoPProof
from tether.credentials.exchange import scopes_of
from tether.errors import Unauthenticated
from tether.gateway.metadata import CALLER, challenge, resource_uri

METHODS = ["GET", "POST", "DELETE"]
NO_TOKEN = "send 'Authorization: Bearer <token>' with an agent's access token for this resource"  # noqa: S105 - a message


@dataclass(frozen=True, slots=True)
class _Answer:
    """A refusal, answered in JSON without touching the MCP machinery."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send) -> None:
        raw = orjson.dumps(self.body)
        await send({"type": "http.response.start", "status": self.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
            (b"cache-control", b"no-store"),
            *((k.lower().encode(), v.encode()) for k, v in self.headers.items()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": raw})


class McpGate:
    """An ASGI endpoint (a Starlette ``Route`` at ``/mcp``, not a mount: a mount answers
    ``/mcp`` with a redirect to ``/mcp/``)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.scopes = frozenset((settings.gateway_scope or "").split())
        self.required = " ".join(sorted(self.scopes)) or None  # as challenges name them
        self.max_bytes = settings.gateway_max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.services
        headers = Headers(scope=scope)
        caller = await self._caller(scope, headers)
        if isinstance(caller, _Answer):
            await caller.send(send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(self.max_bytes).send(send)
            return
        manager = svc.gateway.manager
        if manager is None:  # no upstream configured, or the lifespan has not started it
            why = ("no upstream MCP servers are configured (TETHER_GATEWAY_UPSTREAMS)"
                   if not svc.gateway.upstreams else "the gateway is starting")  # fmt: skip
            await _Answer(503, {"error": "unavailable", "error_description": why}).send(send)
            return
        if scope["method"] == "POST":
            body = await _read_capped(receive, self.max_bytes)
            if body is None:
                await _too_large(self.max_bytes).send(send)
                return
            receive = _replaying(body, receive)
        scope.setdefault("state", {})[CALLER] = caller
        await manager.handle_request(scope, receive, send)

    async def _caller(self, scope: Scope, headers: Headers) -> Caller | _Answer:
        """The authenticated agent, allowed in (its token, its standing, its scopes), or the
        refusal to answer with."""
        svc = self.services
        base = svc.settings.base_url
        resource = resource_uri(base)
        authorization = headers.getlist("authorization")
        if len(authorization) > 1:  # RFC 6750 §3.1: which one would be meant is unknowable
            twice = "more than one Authorization header"
            return _Answer(400, {"error": "invalid_request", "error_description": twice})
        if not authorization:  # RFC 6750 §3.1: no error code when no credentials were sent
            return _Answer(401, {"error": "invalid_token", "error_description": NO_TOKEN},
                           {"WWW-Authenticate": challenge(base, scope=self.required)})  # fmt: skip
        try:
            caller = await svc.bearers.authenticate_request(
                authorization[0], method=scope["method"], url=resource,
                proofs=headers.getlist("dpop"), audience=resource,
            )  # fmt: skip
        except (Unauthenticated, InvalidDPoPProof) as exc:
            return self._unauthorized(base, exc)
        runtime = svc.decisions.runtime
        if caller.principal.kind == "agent" and not runtime.fresh():
            # As a decision does: catch up (one query) before judging the token by it.
            await anyio.to_thread.run_sync(runtime.ensure_current)
        if (
            caller.principal.kind == "agent"
            and (why := svc.decisions.caller_refused(caller.principal.id, caller.jti, caller.chain))
            is not None
        ):  # revoked, killed, suspended, expired: no session at all
            return self._unauthorized(base, Unauthenticated(why))
        if missing := self.scopes - scopes_of(caller.claims or {}):
            return self._insufficient_scope(base, missing)
        return caller

    def _unauthorized(self, base: str, exc: Unauthenticated | InvalidDPoPProof) -> _Answer:
        """401 with the RFC 9728 challenge; a DPoP proof's failure adds its ``DPoP`` challenge
        (RFC 9449 §7.1), which then carries the error (and ``DPoP-Nonce`` comes along)."""
        extra = exc.response_headers()
        dpop = extra.pop("WWW-Authenticate", None)
        error = exc.code if isinstance(exc, InvalidDPoPProof) else "invalid_token"
        if dpop is None:
            value = challenge(base, error=error, description=exc.message, scope=self.required)
        else:
            value = f"{challenge(base, scope=self.required)}, {dpop}"
        return _Answer(401, {"error": error, "error_description": exc.message},
                       {"WWW-Authenticate": value, **extra})  # fmt: skip

    def _insufficient_scope(self, base: str, missing: frozenset[str]) -> _Answer:
        """403 (RFC 6750 §3.1); the MCP spec: the challenge names every scope required."""
        required = self.required or ""
        why = (f"the access token lacks the scope(s) {' '.join(sorted(missing))}; ask the "
               f"token endpoint for a token with scope={required}")  # fmt: skip
        value = challenge(base, error="insufficient_scope", description=why, scope=required)
        return _Answer(403, {"error": "insufficient_scope", "error_description": why,
                             "scope": required}, {"WWW-Authenticate": value})  # fmt: skip


def _too_large(limit: int) -> _Answer:
    """413 with a JSON-RPC error (``id`` null: the message was never read)."""
    error = {"code": -32600, "message": f"Invalid Request: the message exceeds {limit} bytes"}
    return _Answer(413, {"jsonrpc": "2.0", "id": None, "error": error}, {"Connection": "close"})


async def _read_capped(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (the rest is
    never read: a client streaming without end costs ``limit`` bytes of memory at most)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for what comes after: the body already read, then the client's later
    messages (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
