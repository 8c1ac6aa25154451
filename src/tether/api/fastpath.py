"""The hot paths without FastAPI's per-request machinery: the AuthZEN endpoints (the PDP), the
token endpoint and the MCP gateway's ``POST /mcp``.

FastAPI spends more CPU on routing, dependency solving, body handling and its middleware
stack than Tether spends deciding (bench/README.md). :class:`HotPaths` sits right inside the
request log (:mod:`tether.api.requestlog`: the request id and the access line), outside
everything else, and answers ``POST /access/v1/evaluation``, ``/access/v1/evaluations`` and
``/oauth/token`` itself: the body read under the same cap as every other request
(:func:`tether.api.limits.reject_too_large`), pydantic-core validating it from JSON in one
call, the caller authenticated from in-memory state, the answer orjson, the request counted
in the same metrics (:func:`tether.api.metrics.observe`), an unexpected error the same 500
(:func:`tether.api.errors.unexpected`). It is the same contract, not another one: the
FastAPI routes in :mod:`tether.api.routes.decisions` and :mod:`tether.api.routes.oauth` stay
the documented definition (OpenAPI), share their models, request mapping and token answer
with this module, and errors render through :mod:`tether.api.errors`. Requests it does not
recognise (another path or method, a decision body that is not JSON) go on to the
application's full stack untouched.

``POST /mcp`` goes straight to the gateway's gate (:class:`tether.api.mcp.McpGate`, which caps
the body, authenticates and answers every error itself), counted in the same metrics; the
FastAPI stack would add nothing to it but ~0.1 ms of middleware per tool call (bench/README.md,
issue 16). Its other methods go on to its route.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.api import errors, metrics, requestlog
from tether.api.limits import reject_too_large
from tether.api.routes.oauth import answer_token
from tether.container import Services
from tether.errors import TetherError
from tether.policy import authzen

_SINGLE = "/access/v1/evaluation"
_BATCH = "/access/v1/evaluations"
_TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path
_GATEWAY = "/mcp"


@dataclass(frozen=True, slots=True)
class _Route:
    """What the metrics read (``scope["route"].path``), as for a FastAPI route."""

    path: str


_ROUTES = {p: _Route(p) for p in (_SINGLE, _BATCH, _TOKEN_PATH, _GATEWAY)}


class _TooLarge(Exception):
    pass


class HotPaths:
    def __init__(self, app: ASGIApp, services: Services, gateway: ASGIApp) -> None:
        self.app = app
        self.services = services
        self.gateway = gateway  # POST /mcp's endpoint, as its route has it
        self.max_bytes = services.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if route.path == _GATEWAY:
            await self._gateway(scope, receive, send)
            return
        authorization: str | None = None
        content_type, proofs, length = b"", [], None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"dpop":
                proofs.append(value.decode("latin-1"))
        path = route.path
        if path != _TOKEN_PATH and not content_type.startswith(b"application/json"):
            await self.app(scope, receive, send)  # FastAPI's own answer for other bodies
            return
        scope["route"] = route
        start = time.perf_counter()
        try:
            body = await _body(receive, self.max_bytes, length)
            response = await self._answer(scope, path, authorization=authorization,
                                          content_type=content_type, proofs=proofs,
                                          body=body)  # fmt: skip
        except _TooLarge:
            metrics.observe("POST", path, 413, time.perf_counter() - start)
            await reject_too_large(send, self.max_bytes)
            return
        except Exception as exc:
            response = errors.unexpected(exc)
        try:
            await response(scope, receive, send)
        finally:
            metrics.observe("POST", path, response.status_code, time.perf_counter() - start)

    async def _gateway(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = _ROUTES[_GATEWAY]
        start = time.perf_counter()
        status, started = 500, False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.gateway(scope, receive, sending)
        except Exception as exc:
            if started:  # the answer has begun: the server ends the connection
                raise
            await errors.unexpected(exc)(scope, receive, send)
        finally:
            metrics.observe("POST", _GATEWAY, status, time.perf_counter() - start)

    async def _answer(
        self, scope: Scope, path: str, *, authorization: str | None, content_type: bytes,
        proofs: list[str], body: bytes,
    ) -> Response:  # fmt: skip
        svc = self.services
        if path == _TOKEN_PATH:
            try:
                return await answer_token(svc, content_type.decode("latin-1"), body,
                                          authorization, proofs)  # fmt: skip
            except TetherError as exc:  # not an OAuth refusal: the ledger unavailable, say
                return errors.tether_error(exc)
        try:
            return await self._decide(scope, path, authorization or "", proofs, body)
        except TetherError as exc:
            return errors.tether_error(exc)
        except ValidationError as exc:
            return errors.validation_error({**e, "loc": ("body", *e["loc"])} for e in exc.errors())

    async def _decide(
        self, scope: Scope, path: str, authorization: str, proofs: list[str], body: bytes
    ) -> Response:
        svc = self.services
        who = await svc.bearers.authenticate_request(
            authorization, method="POST", url=f"{svc.settings.base_url}{path}", proofs=proofs
        )
        ctx = requestlog.context(scope)
        rid = None
        if ctx is not None:
            ctx.caller, rid = who.principal.ref, ctx.request_id
        if path == _SINGLE:
            ev = authzen.Evaluation.model_validate_json(body)
            decision = await svc.decisions.decide(authzen.ask_of(ev, who, svc.decisions, rid))
            return _json(decision.to_authzen())
        batch = authzen.Evaluations.model_validate_json(body)
        asks, stop = authzen.batch_asks(batch, who, svc.decisions, rid)
        answers = await svc.decisions.decide_many(asks, stop_on=stop)
        return _json({"evaluations": [d.to_authzen() for d in answers]})


async def _body(receive: Receive, max_bytes: int, length: bytes | None) -> bytes:
    """The whole body, refused (:class:`_TooLarge`) by its ``Content-Length`` or, chunked,
    as soon as it passes ``max_bytes``."""
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
