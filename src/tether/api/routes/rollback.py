"""/v1/agents/{id}/rollback and /v1/rollbacks — undoing what an agent did, from the
compensation journal: the plan first (``dry_run``), then each undo decided as the operator,
run through the MCP gateway and recorded (tether.rollback)."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, Field

from tether.api.deps import PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import AgentId, RollbackId
from tether.clock import to_micros, to_rfc3339
from tether.container import Services
from tether.fields import AwareDatetime, StrictModel
from tether.rollback.values import Window

router = APIRouter(tags=["rollback"])


class RollbackRequest(StrictModel):
    since: AwareDatetime | None = Field(
        default=None, description="Undo calls recorded at or after this time (default: all)."
    )
    until: AwareDatetime | None = Field(
        default=None, description="Undo calls recorded at or before this time (default: now)."
    )
    dry_run: bool = Field(default=False, description="Only the plan: nothing runs.")
    delegates: bool = Field(
        default=False, description="Also the calls of agents acting on this agent's behalf."
    )
    on_failure: Literal["stop", "continue"] = Field(
        default="stop", description="After a step that fails: stop, or go on with the rest."
    )
    retry_uncertain: bool = Field(
        default=False,
        description="Run again the undos an interrupted rollback started without seeing "
        "them finish (check the upstream first: they may have run).",
    )


class RollbackStep(BaseModel):
    call: str
    event_id: str
    agent_id: str
    tool: str
    at: str
    plan: Literal["undo", "undone", "uncertain", "irreversible"]
    undo: dict[str, Any] | None
    note: str | None = None
    outcome: Literal["undone", "failed", "uncertain", "refused", "skipped", "not_run"] | None = None
    error: str | None = None
    step_event: str | None = None


class RollbackOut(BaseModel):
    rollback_id: str | None
    dry_run: bool
    status: Literal["planned", "done", "stopped"]
    agent_id: str
    since: str | None
    until: str | None
    delegates: bool
    summary: dict[str, int]
    interrupted: list[str]
    steps: list[RollbackStep]


class RollbackRecordOut(BaseModel):
    id: str
    requested_by: str
    status: Literal["running", "done", "stopped", "interrupted"]
    on_failure: Literal["stop", "continue"]
    agent_id: str
    since: str | None
    until: str | None
    delegates: bool
    started_at: str | None
    finished_at: str | None
    summary: dict[str, int] | None


@router.post("/v1/agents/{agent_id}/rollback", response_model=RollbackOut,
             responses=responses(400, 401, 403, 404, 409, 413, 422))  # fmt: skip
async def rollback_agent(
    agent_id: AgentId, body: RollbackRequest, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """The plan (``dry_run``: what will be undone, newest first, and what cannot be), or the
    rollback itself, answered with its report once every step is on the record. Admins and
    the agent's owner or supervisors; each undo is also a decision (``tool.undo``)."""
    window = Window(
        agent_id,
        since=to_micros(body.since) if body.since else None,
        until=to_micros(body.until) if body.until else None,
        delegates=body.delegates,
    )
    if body.dry_run:  # a database read: off the event loop
        plan = await anyio.to_thread.run_sync(partial(
            svc.rollback.plan, who, window, retry_uncertain=body.retry_uncertain))  # fmt: skip
        return plan.to_json()
    report = await svc.rollback.run(who, window, on_failure=body.on_failure,
                                    retry_uncertain=body.retry_uncertain)  # fmt: skip
    return report.to_json()


@router.get("/v1/rollbacks/{rollback_id}", response_model=RollbackRecordOut,
            responses=responses(400, 401, 403, 404, 422))  # fmt: skip
def get_rollback(rollback_id: RollbackId, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """A rollback's record: who ran it over which window, its status and final counts."""
    return svc.rollback.get(who, rollback_id)


def offer(svc: Services, agent_id: str) -> dict[str, Any]:
    """What a kill's answer offers: the agent's reversible calls of the last
    ``TETHER_ROLLBACK_OFFER_HOURS`` hours not undone yet, and how to undo them."""
    hours = svc.settings.rollback_offer_hours
    since = svc.clock.now() - timedelta(hours=hours)
    text = to_rfc3339(since)
    return {
        "reversible_actions": svc.rollback.reversible_since([agent_id], since),
        "hours": hours, "since": text,
        "command": f"tether rollback {agent_id} --since {text} --dry-run",
        "request": {"method": "POST", "path": f"/v1/agents/{agent_id}/rollback",
                    "body": {"since": text, "dry_run": True}},
    }  # fmt: skip
