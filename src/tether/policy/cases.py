"""Declarative policy tests: cases of requests and the decisions they must get.

A case names its subject (an agent id fetched from the server, or an agent described inline),
the action, the resource and context, and the expected effect (and, optionally, reasons).
What monitoring gives Cedar on the server a case states itself: the ``session``'s history
(``context.session``: ``{id?, labels, tools}``; none touched by default, the id the chain's
root) and an inline agent's ``risk`` (``principal.risk``: ``{score, level}``; 0 and ``"low"``
by default).
:func:`run_case` decides it as the server would — its runtime checks, then Cedar on the
compiled policies — without a database, so ``tether policy test`` runs in an operator's CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from tether.errors import TetherError
from tether.policy.decide import cedar_request, decision_from_outcome
from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView, agent_view, with_risk
from tether.policy.values import (
    INACTIVE_AGENT,
    UNKNOWN_ACTION,
    Ask,
    check_cedar_value,
    validate_ask,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseRisk(_Strict):
    """``principal.risk`` as monitoring would give it: a Cedar ``Long`` score and a level (the
    levels of ``[[monitor.thresholds]]``, or ``low`` below every threshold)."""

    score: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] = 0
    level: Annotated[StrictStr, Field(min_length=1, max_length=32,
                                      pattern=r"^[a-z][a-z0-9_-]*$")] = "low"  # fmt: skip


class CaseSession(_Strict):
    """``context.session``: what the session already touched — the data labels of resources it
    was allowed to act on, the tools it called; its id is the chain's root unless stated."""

    id: Annotated[StrictStr, Field(min_length=1)] | None = None
    labels: list[StrictStr] = Field(default_factory=list)
    tools: list[StrictStr] = Field(default_factory=list)


class InlineAgent(_Strict):
    """A subject described in the case file instead of fetched from the server."""

    id: str = "agt_policy_test"
    name: str | None = None
    roles: list[str] = Field(default_factory=list)
    risk_tier: str = "minimal"
    status: str = "active"
    owner: str = "usr_policy_test"
    purpose: str = "policy test"
    attributes: dict[str, Any] = Field(default_factory=dict)
    risk: CaseRisk | None = None

    @field_validator("attributes")
    @classmethod
    def _cedar_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:  # the server refuses the same (agents' attributes are flat there)
            check_cedar_value(value, "attributes")
        except TetherError as exc:
            raise ValueError(exc.message) from None
        return value


class CaseResource(_Strict):
    type: str
    id: str
    properties: dict[str, Any] = Field(default_factory=dict)


class Case(_Strict):
    name: str
    subject: str | InlineAgent
    action: str
    resource: CaseResource
    context: dict[str, Any] = Field(default_factory=dict)
    on_behalf_of: str | None = None
    session: CaseSession | None = None
    expect: Literal["allow", "deny", "approval_required"]
    reasons: list[str] | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _action_name(cls, value: Any) -> Any:
        return value.get("name") if isinstance(value, dict) else value  # AuthZEN's shape


def agent_view_of(agent: Mapping[str, Any]) -> AgentView:
    """The runtime's view of an agent (its Cedar entity), built by the server's own code."""
    return agent_view(
        id=agent["id"], name=agent.get("name") or agent["id"], owner_id=agent["owner"],
        purpose=agent["purpose"], risk_tier=agent["risk_tier"], status=agent["status"],
        attributes=agent.get("attributes") or {}, expires_at=None,
        roles=agent.get("roles") or (), supervisors=agent.get("supervisors") or (),
    )  # fmt: skip


def run_case(
    case: Case, compiled: CompiledPolicies, agents: Mapping[str, AgentView]
) -> dict[str, Any]:
    """One case's outcome, as the server would decide it (its runtime checks, then Cedar)."""
    subject = case.subject if isinstance(case.subject, str) else case.subject.id
    chain = (case.on_behalf_of, subject) if case.on_behalf_of else (subject,)
    ask = Ask(subject, case.action, case.resource.type, case.resource.id,
              case.resource.properties, case.context, chain, case.on_behalf_of)  # fmt: skip
    result: dict[str, Any] = {"name": case.name, "expect": case.expect,
                              "expected_reasons": case.reasons, "error": None}  # fmt: skip
    try:
        validate_ask(ask)
        if agents[subject].status != "active":
            actual, reasons = "deny", [INACTIVE_AGENT]
        elif not compiled.knows_action(case.action):
            actual, reasons = "deny", [UNKNOWN_ACTION]
        else:  # Cedar refuses a value it cannot read (a bad "__extn", say): an error too
            request = cedar_request(ask, agents, session=_session(case, chain),
                                    principal_entity=_principal(case, agents))  # fmt: skip
            outcome = compiled.decide(request)
            decided = decision_from_outcome(outcome, compiled.version)
            actual, reasons = decided.effect.value, list(decided.reasons)
    except TetherError as exc:
        message = exc.message
        if exc.details.get("field") == "context.session":
            message += " (a case states the session's history as its `session`)"
        return {**result, "actual": "error", "reasons": [], "error": message, "passed": False}
    passed = actual == case.expect and (
        case.reasons is None or sorted(set(case.reasons)) == sorted(set(reasons))
    )
    return {**result, "actual": actual, "reasons": reasons, "passed": passed}


def _session(case: Case, chain: tuple[str, ...]) -> dict[str, Any] | None:
    """The case's ``context.session`` (None: the default, nothing touched)."""
    if case.session is None:
        return None
    s = case.session
    return {"id": s.id or chain[0], "labels": list(s.labels), "tools": list(s.tools)}


def _principal(case: Case, agents: Mapping[str, AgentView]) -> str | None:
    """The inline subject's entity with the case's risk (None: the view's own, risk 0)."""
    if isinstance(case.subject, str) or case.subject.risk is None:
        return None
    risk = case.subject.risk
    return with_risk(agents[case.subject.id].entity, risk.score, risk.level)
