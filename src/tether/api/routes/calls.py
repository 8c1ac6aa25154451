"""/v1/tool-calls — an in-process agent's tool calls on the record (the SDK's ``guard``): the
same ``tool.called`` event, redaction and link to the allowing decision as a call through the
MCP gateway."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from tether.api.deps import CallerDep, ServicesDep
from tether.api.errors import responses
from tether.errors import Forbidden
from tether.fields import NO_NUL, JsonData, JsonObject, StrictModel
from tether.gateway.calls import CallFacts, Journal

router = APIRouter(prefix="/v1/tool-calls", tags=["tool calls"])


class UndoIn(StrictModel):
    tool: Annotated[str, StringConstraints(max_length=200,
                                           pattern=r"^[A-Za-z0-9_-]+[.][A-Za-z0-9_./-]+$")] = Field(
        description="The undo's tool as policy names it: <server>.<tool>."
    )  # fmt: skip
    arguments: JsonObject = Field(default_factory=dict)


class ToolCallIn(StrictModel):
    decision_event: Annotated[str, StringConstraints(pattern=r"^evt_[A-Za-z0-9]{1,36}$")] = Field(
        description="The event_id of the decision that allowed this call."
    )
    tool: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] = Field(
        description="The decided resource's id (the tool)."
    )
    outcome: Literal["ok", "tool_error"]
    args: JsonObject = Field(default_factory=dict)
    result: JsonData = None
    duration_ms: Annotated[float, Field(ge=0, le=86_400_000)] = 0.0
    undo: UndoIn | Literal["irreversible"] | None = Field(
        default=None,
        description="How this call is undone (the SDK's guard(compensate=…)): a tool the MCP "
        "gateway serves and its arguments, which a rollback runs as the operator; or "
        '"irreversible": nothing undoes it. Only a call that completed (outcome ok) is '
        "journalled.",
    )


class ToolCallOut(BaseModel):
    event_id: str
    seq: int
    args_digest: str
    result_digest: str


@router.post("", status_code=201, response_model=ToolCallOut,
             responses=responses(400, 401, 403, 404, 409, 413, 422))  # fmt: skip
async def record_call(body: ToolCallIn, svc: ServicesDep, who: CallerDep) -> Any:
    """Put an agent's own tool call on the record, once, linked to the decision that allowed
    it (the agent's own ``allow`` for this tool). Arguments and result are kept as digests and
    redacted copies; the answer comes once the event is durable."""
    agent = who.principal
    if agent.kind != "agent":
        raise Forbidden("only an agent reports its own tool calls")
    facts = CallFacts(
        agent_id=agent.id, actor=agent.ref, tool=body.tool, decision_event=body.decision_event,
        decision="allow", reasons=(), policy_version=None, args=body.args, result=body.result,
        outcome=body.outcome, duration_ms=body.duration_ms, via="sdk",
        on_behalf_of=who.on_behalf_of, chain=who.chain, journal=_journal(body),
    )  # fmt: skip
    recorded = await svc.calls.record(facts, check=True)
    return dataclasses.asdict(recorded)


def _journal(body: ToolCallIn) -> Journal | None:
    """The agent's own compensation for its call: an undo it declared (marked so: a rollback
    shows it, and policy sees ``context.declared_by == "agent"``), or irreversible."""
    if body.undo is None or body.outcome != "ok":
        return None
    if body.undo == "irreversible":
        return Journal(reversible=False, error="the agent declared it irreversible")
    return Journal(reversible=True, undo={"tool": body.undo.tool,
                                          "arguments": body.undo.arguments,
                                          "declared_by": "agent"})  # fmt: skip
