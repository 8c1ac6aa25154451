"""/v1/agents/{id}/risk — an agent's risk as monitoring scores it (issue 19): the score and
level, the rules that hold with their explanation and evidence, what was last raised and
whether every allowed request now asks a human (step-up); a human clears it
(tether.monitor)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, StringConstraints

from tether.api.deps import PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import AgentId
from tether.fields import NO_NUL, StrictModel

router = APIRouter(prefix="/v1/agents", tags=["agents"])


class RuleHitOut(BaseModel):
    """A rule that holds: what it adds to the score, why, and the signals it read."""

    rule: str
    score: int
    because: str
    evidence: dict[str, Any]


class TriggerOut(BaseModel):
    """The request whose decision crossed the threshold."""

    action: str
    resource: dict[str, str]
    decision: str


class RaisedOut(BaseModel):
    """What monitoring last acted on (until a human clears it)."""

    level: str
    score: int
    at: str
    rules: list[RuleHitOut]
    trigger: TriggerOut | None


class BaselineOut(BaseModel):
    """The agent's own request rate, as learned from its active periods."""

    baseline_per_bucket: float
    baseline_deviation: float
    active_buckets: int
    pairs_known: int


class RiskOut(BaseModel):
    agent_id: str
    score: int
    level: str
    rules: list[RuleHitOut]
    signals: dict[str, Any]  # what the score is computed from (tether.monitor.rules.SIGNALS)
    step_up: bool
    raised: RaisedOut | None
    cleared_at: str | None
    baseline: BaselineOut | None


class ClearIn(StrictModel):
    note: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = None


@router.get("/{agent_id}/risk", response_model=RiskOut,
            responses=responses(400, 401, 403, 404, 422))  # fmt: skip
def agent_risk(agent_id: AgentId, svc: ServicesDep, who: PrincipalDep) -> Any:
    """The agent's risk now, explained: anyone who may read the agent."""
    svc.agents.get(who, agent_id)  # may they read it? (404 / 403)
    return svc.monitor.describe(agent_id)


@router.post("/{agent_id}/risk/clear", response_model=RiskOut,
             responses=responses(400, 401, 403, 404, 413, 422))  # fmt: skip
def clear_risk(
    agent_id: AgentId, svc: ServicesDep, who: PrincipalDep, body: ClearIn | None = None
) -> Any:
    """A human who may operate the agent (an admin, its owner or a supervisor) clears its
    risk: no more step-up, its counts start again; recorded as ``agent.risk_cleared``."""
    return svc.monitor.clear(who, agent_id, note=body.note if body else None)
