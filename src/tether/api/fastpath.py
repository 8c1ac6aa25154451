"""The hot paths without FastAPI's per-request machinery: the AuthZEN endpoints (the PDP)
and the token endpoint (:class:`TokenFastPath`).

FastAPI spends more CPU on routing, dependency solving and body handling than Tether spends
deciding (bench/README.md). This ASGI middleware answers ``POST /access/v1/evaluation`` and
``/access/v1/evaluations`` directly: pydantic-core validates the body from JSON in one call,
the caller is authenticated from in-memory state, and the answer is orjson. It is the same
contract, not another one: the FastAPI routes in :mod:`tether.api.routes.decisions` stay the
documented definition (OpenAPI), share their models and request mapping with this module,
and errors render through :mod:`tether.api.errors`. Requests it does not recognise (another
path or method, a body that is not JSON) go on to FastAPI untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.api import errors, requestlog
from tether.api.routes.oauth import answer_token
from tether.container import Services
from tether.errors import TetherError
from tether.policy import authzen

_SINGLE = "/access/v1/evaluation"
_BATCH = "/access/v1/evaluations"
_TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path


@dataclass(frozen=True, slots=True)
class _Route:
    """What the metrics middleware reads (``scope["route"].path``)."""

    path: str


_ROUTES = {_SINGLE: _Route(_SINGLE), _BATCH: _Route(_BATCH)}


class DecisionFastPath:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        authorization, content_type, proofs = "", b"", []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
            elif name == b"dpop":
                proofs.append(value.decode("latin-1"))
        if not content_type.startswith(b"application/json"):
            await self.app(scope, receive, send)  # FastAPI's own answer for other bodies
            return
        scope["route"] = route
        body = await _body(receive)
        try:
            response = await self._answer(scope, route.path, authorization, proofs, body)
        except TetherError as exc:
            response = errors.tether_error(exc)
        except ValidationError as exc:
            response = errors.validation_error(
                {**e, "loc": ("body", *e["loc"])} for e in exc.errors()
            )
        await response(scope, receive, send)

    async def _answer(
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


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


class TokenFastPath:
    """``POST /oauth/token`` answered by the route's own function
    (:func:`tether.api.routes.oauth.answer_token`) without FastAPI's routing, dependency
    solving and thread hop: agents fetch tokens every few minutes, in bursts, and FastAPI's
    share of a token request was about as much as the issuance's own work (bench/README.md).
    The FastAPI route stays the documented definition (OpenAPI) and answers the same."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.route = _Route(_TOKEN_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != _TOKEN_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        content_type, proofs = "", []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"dpop":
                proofs.append(value.decode("latin-1"))
        scope["route"] = self.route
        body = await _body(receive)
        response: Response
        try:
            response = await answer_token(self.services, content_type, body, authorization, proofs)
        except TetherError as exc:  # not an OAuth refusal: the ledger unavailable, say
            response = errors.tether_error(exc)
        await response(scope, receive, send)
