"""/v1/agents — the agent registry (API.md "Agents"). Every agent it returns carries its current
risk (``risk``: score, level, step-up), merged here from the monitor: the registry itself
knows nothing of monitoring (the monitor sits above it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from tether.agents.schemas import (
    AgentCreate,
    AgentUpdate,
    CloneRequest,
    KillRequest,
    RecertifyRequest,
    ResumeRequest,
    RetireRequest,
    SuspendRequest,
)
from tether.agents.values import Agent
from tether.api.deps import Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import AgentId
from tether.api.routes import rollback
from tether.api.schemas import AgentOut, AgentPage, KillOut
from tether.container import Services

router = APIRouter(prefix="/v1/agents", tags=["agents"])
_READ = responses(400, 401, 403, 404, 422)
_WRITE = responses(400, 401, 403, 404, 409, 413, 422)


def _out(svc: Services, agent: Agent) -> dict[str, Any]:
    """The agent as the API shows it: the registry's fields and its risk now."""
    return {**agent.to_json(), "risk": svc.monitor.risk_of(agent.id)}


@router.post("", status_code=201, response_model=AgentOut, responses=_WRITE)
def create_agent(body: AgentCreate, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return _out(svc, svc.agents.create(who, body))


@router.get("", response_model=AgentPage, responses=_READ)
def list_agents(
    *,
    svc: ServicesDep,
    who: PrincipalDep,
    status: Literal["active", "suspended", "expired", "revoked", "retired"] | None = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    role: Annotated[str | None, Query(max_length=100)] = None,
    risk_tier: Literal["minimal", "limited", "high"] | None = None,
    recertify_due_within: Annotated[int | None, Query(ge=0, le=3650)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """``recertify_due_within`` (days; 0: overdue now): only the active and suspended agents
    whose recertification is due by then."""
    page = svc.agents.list(
        who, cursor=cursor, limit=limit, status=status, owner=owner, role=role,
        risk_tier=risk_tier, recertify_due_within=recertify_due_within,
    )  # fmt: skip
    return {"items": [_out(svc, a) for a in page.items], "next_cursor": page.next_cursor}


@router.get("/{agent_id}", response_model=AgentOut, responses=_READ)
def get_agent(agent_id: AgentId, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return _out(svc, svc.agents.get(who, agent_id))


@router.patch("/{agent_id}", response_model=AgentOut, responses=_WRITE)
def update_agent(
    agent_id: AgentId, body: AgentUpdate, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return _out(svc, svc.agents.update(who, agent_id, body))


@router.post("/{agent_id}/suspend", response_model=AgentOut, responses=_WRITE)
def suspend_agent(
    agent_id: AgentId, body: SuspendRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return _out(svc, svc.agents.suspend(who, agent_id, reason=body.reason))


@router.post("/{agent_id}/resume", response_model=AgentOut, responses=_WRITE)
def resume_agent(
    agent_id: AgentId, svc: ServicesDep, who: PrincipalDep, body: ResumeRequest | None = None
) -> dict[str, Any]:
    agent = svc.agents.resume(who, agent_id, note=body.note if body else None)
    return _out(svc, agent)


@router.post("/{agent_id}/recertify", response_model=AgentOut, responses=_WRITE)
def recertify_agent(
    agent_id: AgentId, body: RecertifyRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return _out(svc, svc.agents.recertify(who, agent_id, note=body.note, until=body.until))


@router.post("/{agent_id}/retire", response_model=AgentOut, responses=_WRITE)
def retire_agent(
    agent_id: AgentId, body: RetireRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return _out(svc, svc.agents.retire(who, agent_id, reason=body.reason))


@router.post("/{agent_id}/kill", response_model=KillOut, responses=_WRITE)
def kill_agent(
    agent_id: AgentId, body: KillRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    killed = svc.agents.kill(who, agent_id, reason=body.reason, cascade=body.cascade)
    return {**killed, "rollback": rollback.offer(svc, agent_id)}


@router.post("/{agent_id}/clone", status_code=201, response_model=AgentOut, responses=_WRITE)
def clone_agent(
    agent_id: AgentId, body: CloneRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return _out(svc, svc.agents.clone(who, agent_id, name=body.name))
