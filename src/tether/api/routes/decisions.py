"""OpenID AuthZEN Authorization API 1.0: ``/access/v1/evaluation(s)`` and the searches
``/access/v1/search/{subject,resource,action}`` — parse, decide, answer. The shapes and the
mapping to Tether's ask are :mod:`tether.policy.authzen`'s and
:mod:`tether.policy.authzen_search`'s."""

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
from tether.policy.authzen_search import (
    ActionSearch,
    ActionSearchOut,
    ResourceSearch,
    ResourceSearchOut,
    SubjectSearch,
    SubjectSearchOut,
    action_search_ask,
    resource_search_ask,
    search_answer,
    subject_search_ask,
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


@router.post(
    "/access/v1/search/subject", response_model=SubjectSearchOut,
    responses=responses(400, 401, 403, 413, 422),
)  # fmt: skip
async def search_subjects(
    body: SubjectSearch, svc: ServicesDep, who: CallerDep, request: Request
) -> Response:
    """AuthZEN §8.4: the agents that may take the action on the resource, among those the
    caller may ask about."""
    ask = subject_search_ask(body, who, request_id(request.scope))
    page = await svc.search.subjects(who.principal, ask, token=body.page.token,
                                     limit=body.page.limit)  # fmt: skip
    return _json(search_answer(page))


@router.post(
    "/access/v1/search/resource", response_model=ResourceSearchOut,
    responses=responses(400, 401, 403, 413, 422),
)  # fmt: skip
async def search_resources(
    body: ResourceSearch, svc: ServicesDep, who: CallerDep, request: Request
) -> Response:
    """AuthZEN §8.5: the resources of a type the subject may take the action on."""
    ask = resource_search_ask(body, who, svc.decisions, request_id(request.scope))
    page = await svc.search.resources(ask, token=body.page.token, limit=body.page.limit)
    return _json(search_answer(page))


@router.post(
    "/access/v1/search/action", response_model=ActionSearchOut,
    responses=responses(400, 401, 403, 413, 422),
)  # fmt: skip
async def search_actions(
    body: ActionSearch, svc: ServicesDep, who: CallerDep, request: Request
) -> Response:
    """AuthZEN §8.6: the actions the subject may take on the resource."""
    ask = action_search_ask(body, who, svc.decisions, request_id(request.scope))
    page = await svc.search.actions(ask, token=body.page.token, limit=body.page.limit)
    return _json(search_answer(page))


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
        "search_subject_endpoint": f"{base}/access/v1/search/subject",
        "search_resource_endpoint": f"{base}/access/v1/search/resource",
        "search_action_endpoint": f"{base}/access/v1/search/action",
    }
