"""OpenID AuthZEN Authorization API 1.0: ``/access/v1/evaluation(s)`` — parse, decide,
answer. The shapes and the mapping to Tether's ask are :mod:`tether.policy.authzen`'s."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from tether.api.deps import CallerDep, ServicesDep
from tether.api.errors import responses
from tether.api.requestlog import request_id
from tether.policy.authzen import (
    DecisionOut,
    Evaluation,
    Evaluations,
    EvaluationsOut,
    ask_of,
    batch_asks,
)

router = APIRouter(tags=["decisions"])


@router.post(
    "/access/v1/evaluation", response_model=DecisionOut,
    responses=responses(400, 401, 403, 413, 422),
)  # fmt: skip
async def evaluation(
    body: Evaluation, svc: ServicesDep, who: CallerDep, request: Request
) -> Response:
    ask = ask_of(body, who, svc.decisions, request_id(request.scope))
    decision = await svc.decisions.decide(ask)
    return _json(decision.to_authzen())


@router.post(
    "/access/v1/evaluations", response_model=EvaluationsOut,
    responses=responses(400, 401, 403, 413, 422),
)  # fmt: skip
async def evaluations(
    body: Evaluations, svc: ServicesDep, who: CallerDep, request: Request
) -> Response:
    """AuthZEN's batch: top-level subject/action/resource/context are defaults that each item
    may override; ``options.evaluations_semantic`` may stop at the first deny or permit."""
    asks, stop = batch_asks(body, who, svc.decisions, request_id(request.scope))
    decisions = await svc.decisions.decide_many(asks, stop_on=stop)
    return _json({"evaluations": [d.to_authzen() for d in decisions]})


def _json(body: dict[str, Any]) -> Response:
    # A Response skips FastAPI's re-validation and jsonable_encoder of the return value: the
    # shape is the response_model's (the OpenAPI conformance test checks every answer).
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/.well-known/authzen-configuration", responses=responses())
def configuration(svc: ServicesDep) -> dict[str, Any]:
    base = svc.settings.base_url
    return {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
    }
