"""/v1/agents/{id}/rightsizing and /v1/rightsizing — least-privilege right-sizing (issue 20,
item 3): what an agent holds against what it used in the last ``days`` days, and a narrower
policy set simulated over its recorded traffic (:mod:`tether.governance.rightsizing`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, Field

from tether.api.deps import Cursor, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import AgentId
from tether.fields import StrictModel, integral
from tether.governance.rightsizing import DEFAULT_DAYS, MAX_DAYS, PAGE_MAX

router = APIRouter(tags=["governance"])
# The schema states the widest window; a ledger retention period narrows it (422 naming days).
_DAYS_TEXT = "The window: the last this many days, at most the ledger's retention."
Days = Annotated[int, Query(ge=1, le=MAX_DAYS, description=_DAYS_TEXT)]


class PermissionOut(BaseModel):
    """One permitted (action, resource scope) pair, and the policy that grants it."""

    policy: str
    action: str
    resource: str
    via: str  # agent, role or everyone
    role: str | None
    conditional: bool
    approval: bool


class UsedOut(PermissionOut):
    count: int
    last_used: datetime
    resources: list[str]  # up to 10 of them
    distinct_resources: int


class UnusedOut(PermissionOut):
    removed: bool  # whether the proposal takes it away


class ScopeOut(BaseModel):
    scope: str
    credentials: int  # live credentials that may carry it
    tokens: int  # tokens issued in the window that did
    used: bool


class PolicyChangeOut(BaseModel):
    policy: str
    op: str  # remove or narrow
    actions: list[str]
    removed_actions: list[str]


class RoleChangeOut(BaseModel):
    op: str
    role: str


class ScopeChangeOut(BaseModel):
    op: str
    scope: str


class SimulationOut(BaseModel):
    checked: int
    flips: int
    changes: list[dict[str, Any]]
    skipped: int
    truncated: bool
    already_differing: int
    candidate_digest: str


class ProposalOut(BaseModel):
    safe: bool
    empty: bool
    removes: int
    diff: str
    policies: str
    policy_changes: list[PolicyChangeOut]
    role_changes: list[RoleChangeOut]
    scope_changes: list[ScopeChangeOut]
    simulation: SimulationOut


class RightsizingOut(BaseModel):
    agent_id: str
    days: int
    since: datetime
    until: datetime
    policy_version: str
    roles: list[str]
    scopes: list[ScopeOut]
    used: list[UsedOut]
    unused: list[UnusedOut]
    roles_unused: list[str]
    scopes_unused: list[str]
    proposal: ProposalOut


class RightsizingPage(BaseModel):
    items: list[RightsizingOut]
    next_cursor: str | None


class ApplyIn(StrictModel):
    days: Annotated[int, Field(ge=1, le=MAX_DAYS), BeforeValidator(integral)] = DEFAULT_DAYS


class AppliedOut(BaseModel):
    policy_version: str | None  # the new version pushed, if the policies changed
    rightsizing: RightsizingOut  # what was applied


@router.get("/v1/agents/{agent_id}/rightsizing", response_model=RightsizingOut,
            responses=responses(400, 401, 403, 404, 422))  # fmt: skip
def agent_rightsizing(
    agent_id: AgentId, svc: ServicesDep, who: PrincipalDep, days: Days = DEFAULT_DAYS
) -> Any:
    """Admins, auditors, and the agent's owner and supervisors."""
    return svc.rightsizing.report(who, agent_id, days=days).to_json()


@router.get("/v1/rightsizing", response_model=RightsizingPage,
            responses=responses(400, 401, 403, 422))  # fmt: skip
def all_rightsizing(
    svc: ServicesDep, who: PrincipalDep, days: Days = DEFAULT_DAYS, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 20,
) -> Any:  # fmt: skip
    """Every agent the caller may see, a page at a time."""
    page = svc.rightsizing.page(who, days=days, cursor=cursor, limit=limit)
    return {"items": [r.to_json() for r in page.items], "next_cursor": page.next_cursor}


@router.post("/v1/agents/{agent_id}/rightsizing/apply", response_model=AppliedOut,
             responses=responses(400, 401, 403, 404, 409, 413, 422))  # fmt: skip
def apply_rightsizing(
    agent_id: AgentId, svc: ServicesDep, who: PrincipalDep, body: ApplyIn | None = None
) -> Any:
    """An admin applies the agent's proposal when it is safe (409 otherwise)."""
    done, version = svc.rightsizing.apply(who, agent_id, days=(body or ApplyIn()).days)
    return {"policy_version": version, "rightsizing": done.to_json()}
