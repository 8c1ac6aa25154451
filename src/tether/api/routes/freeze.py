"""/v1/freeze — the incident switch (API.md "Agents": freeze)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, StringConstraints

from tether.api.deps import PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.fields import NO_NUL, StrictModel
from tether.freeze.service import ScopeRequest

router = APIRouter(prefix="/v1/freeze", tags=["freeze"])

Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]
Owner = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
Role = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_NUL)]
Tier = Literal["minimal", "limited", "high"]


class ScopeIn(StrictModel):
    """Which agents: every named part must match (none named: every agent)."""

    owner: Owner | None = None  # a username or user id
    role: Role | None = None  # a role some agent holds
    risk_tier: Tier | None = None


class FreezeIn(StrictModel):
    reason: Reason
    scope: ScopeIn | None = None


class ScopeOut(BaseModel):
    owner: str | None = None
    role: str | None = None
    risk_tier: str | None = None


class FreezeOut(BaseModel):
    id: str
    scope: ScopeOut
    reason: str
    by: str
    since: str
    lifted_by: str | None = None
    lifted_at: str | None = None
    lift_reason: str | None = None


class FreezeStateOut(BaseModel):
    frozen: bool
    everything: bool
    freezes: list[FreezeOut]
    recent: list[FreezeOut]


class LiftedOut(BaseModel):
    lifted: list[FreezeOut]


def _scope(scope: ScopeIn | None) -> ScopeRequest | None:
    return ScopeRequest(scope.owner, scope.role, scope.risk_tier) if scope else None


@router.post(
    "",
    status_code=201,
    response_model=FreezeOut,
    response_model_exclude_none=True,
    responses={200: {"description": "That scope was already frozen: the freeze in force",
                     "model": FreezeOut}, **responses(400, 401, 403, 413, 422)},
)  # fmt: skip
def freeze(
    body: FreezeIn, response: Response, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    frozen, new = svc.freezes.freeze(who, reason=body.reason, scope=_scope(body.scope))
    if not new:
        response.status_code = 200
    return frozen.to_json()


@router.get(
    "",
    response_model=FreezeStateOut,
    response_model_exclude_none=True,
    responses=responses(401, 403),
)
def freeze_state(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.freezes.state(who).to_json()


@router.delete(
    "",
    response_model=LiftedOut,
    response_model_exclude_none=True,
    responses=responses(400, 401, 403, 404, 422),
)
def unfreeze(
    *,
    svc: ServicesDep,
    who: PrincipalDep,
    id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    owner: Annotated[Owner | None, Query()] = None,
    role: Annotated[Role | None, Query()] = None,
    risk_tier: Tier | None = None,
    reason: Annotated[Reason | None, Query()] = None,
) -> dict[str, Any]:
    """Lift the freeze ``id``, those of exactly the scope named by ``owner``/``role``/
    ``risk_tier``, or (naming nothing) every freeze in force."""
    scope = (
        ScopeRequest(owner, role, risk_tier)
        if id is None and (owner or role or risk_tier)
        else None
    )
    lifted = svc.freezes.lift(who, freeze_id=id, scope=scope, reason=reason)
    return {"lifted": [f.to_json() for f in lifted]}
