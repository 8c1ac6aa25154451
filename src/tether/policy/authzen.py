"""OpenID AuthZEN Authorization API 1.0, the request and response shapes: evaluation and
batch requests as the standard writes them, mapped to Tether's :class:`Ask`.

Framework-free (the FastAPI route and the decision fast path both parse with these models and
call :func:`ask_of` / :func:`batch_asks`, then the decision service): who may ask about which
subject is decided here, through :meth:`DecisionService.may_ask`, not by a transport. An agent
caller (access token) may only ask about itself — its token's delegation chain is used; a
human caller (user token) may ask about the agents they answer for, an admin about any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
)
from typing_extensions import TypeAliasType

from tether.credentials.bearer import Caller
from tether.errors import ValidationFailed
from tether.fields import NO_NUL, SAFE_INT, integral
from tether.policy.decide import DecisionService
from tether.policy.values import RESERVED_CONTEXT, Ask, Effect, validate_ask


class StrictModel(BaseModel):
    """Unknown fields and coercions refused. Every string here has the NO_NUL pattern (the
    shared StrictModel's per-field NUL walk would cost the hot path a tenth of a decision)."""

    model_config = ConfigDict(extra="forbid", strict=True)


_ID = Field(min_length=1, max_length=200, pattern=NO_NUL)
_Key = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]
# ``additionalProperties: false``: with ``patternProperties`` alone the document would admit
# keys the model refuses (a NUL in a key).
_NO_OTHER_KEYS = Field(json_schema_extra={"additionalProperties": False})
# What Cedar can hold: strings, booleans, integers (JSON-safe), sets (lists) and records.
# (mypy cannot follow a recursive TypeAliasType inside Annotated; pydantic reads the real one.)
if TYPE_CHECKING:
    CedarValue = Any
else:
    CedarValue = TypeAliasType(
        "CedarValue",
        Union[  # noqa: UP007 - a recursive alias needs the explicit Union
            StrictBool,
            Annotated[int, Field(ge=-SAFE_INT, le=SAFE_INT), BeforeValidator(integral)],
            Annotated[StrictStr, StringConstraints(pattern=NO_NUL)],
            list["CedarValue"],
            Annotated[dict[_Key, "CedarValue"], _NO_OTHER_KEYS],
        ],
    )
Record = Annotated[dict[_Key, CedarValue], _NO_OTHER_KEYS]


def _context_schema(schema: dict[str, Any]) -> None:
    # Tether sets these context keys itself (the delegation chain); a caller's are refused.
    schema["additionalProperties"] = False
    schema.setdefault("propertyNames", {})["not"] = {"enum": sorted(RESERVED_CONTEXT)}


Context = Annotated[dict[_Key, CedarValue], Field(json_schema_extra=_context_schema)]
# Actions, roles and users are entities Tether keeps; a request acts on anything else.
_NOT_ACTED_ON = {"not": {"anyOf": [{"enum": ["Role", "User"]}, {"pattern": "Action$"}]}}


AgentType = Annotated[Literal["agent"], Field(description="Tether decides for agents")]
AgentId = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class Subject(StrictModel):
    type: AgentType
    id: AgentId
    properties: Record = Field(default_factory=dict)


class Action(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
    properties: Record = Field(default_factory=dict)


ResourceType = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_:]*$",
          json_schema_extra=_NOT_ACTED_ON),
]  # fmt: skip


ResourceId = Annotated[str, _ID]


class Resource(StrictModel):
    type: ResourceType
    id: ResourceId
    properties: Record = Field(default_factory=dict)


class Evaluation(StrictModel):
    subject: Subject
    action: Action
    resource: Resource
    context: Context = Field(default_factory=dict)


class PartialEvaluation(StrictModel):
    subject: Subject | None = None
    action: Action | None = None
    resource: Resource | None = None
    context: Context | None = None


class Options(StrictModel):
    evaluations_semantic: Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"] = (
        "execute_all"
    )


def _batch_schema(schema: dict[str, Any]) -> None:
    """Each of subject, action and resource is given as a default or by every item (an empty
    ``evaluations`` is one item with the defaults): what :func:`batch_asks` requires."""

    def given(part: str) -> dict[str, Any]:
        return {"required": [part], "properties": {part: {"not": {"type": "null"}}}}

    schema["allOf"] = [
        {"anyOf": [given(part), {"required": ["evaluations"], "properties": {
            "evaluations": {"minItems": 1, "items": given(part)}}}]}
        for part in ("subject", "action", "resource")
    ]  # fmt: skip
    schema["examples"] = [{
        "subject": {"type": "agent", "id": "agt_01EXAMPLE"},
        "action": {"name": "tool.call"},
        "evaluations": [{"resource": {"type": "Tool", "id": "search"}},
                        {"resource": {"type": "Tool", "id": "refund"}}],
    }]  # fmt: skip


class Evaluations(PartialEvaluation):
    model_config = ConfigDict(**PartialEvaluation.model_config, json_schema_extra=_batch_schema)

    evaluations: Annotated[list[PartialEvaluation], Field(max_length=1000)] = Field(
        default_factory=list
    )
    options: Options = Field(default_factory=Options)


class DecisionOut(StrictModel):
    decision: bool
    context: dict[str, Any]


class EvaluationsOut(StrictModel):
    evaluations: list[DecisionOut]


def ask_of(
    ev: Evaluation, who: Caller, decisions: DecisionService, request_id: str | None = None
) -> Ask:
    decisions.may_ask(who.principal, ev.subject.id)
    return caller_ask(who, ev.subject.id, ev.action.name, ev.resource.type, ev.resource.id,
                      properties=ev.resource.properties, context=ev.context,
                      request_id=request_id)  # fmt: skip


def caller_ask(
    who: Caller, subject: str, action: str, resource_type: str, resource_id: str, *,
    properties: dict[str, Any], context: dict[str, Any], request_id: str | None,
) -> Ask:  # fmt: skip
    """The request as Tether asks it: an agent caller's with its token's chain."""
    if who.principal.kind == "agent":
        return Ask(subject, action, resource_type, resource_id, properties, context, who.chain,
                   who.on_behalf_of, who.jti, who.principal.ref, request_id)  # fmt: skip
    return Ask(subject, action, resource_type, resource_id, properties, context,
               caller=who.principal.ref, request_id=request_id)  # fmt: skip


def batch_asks(
    body: Evaluations, who: Caller, decisions: DecisionService, request_id: str | None = None
) -> tuple[list[Ask], Effect | None]:
    _check_defaults(body)
    items = body.evaluations or [PartialEvaluation()]
    asks: list[Ask] = []
    for i, item in enumerate(items):
        merged: dict[str, Any] = {}
        for part in ("subject", "action", "resource", "context"):
            value = getattr(item, part) if getattr(item, part) is not None else getattr(body, part)
            if value is None and part != "context":
                raise ValidationFailed(f"evaluations[{i}] has no {part} and there is no default",
                                       field=f"evaluations[{i}].{part}")  # fmt: skip
            merged[part] = value if value is not None else {}
        ask = ask_of(Evaluation.model_validate(merged), who, decisions, request_id)
        try:
            validate_ask(ask)  # here, to name the item; decide() checks again
        except ValidationFailed as exc:
            field = exc.details.get("field")
            raise ValidationFailed(
                f"evaluations[{i}]: {exc.message}",
                field=f"evaluations[{i}].{field}" if field else f"evaluations[{i}]",
            ) from exc
        asks.append(ask)
    semantic = body.options.evaluations_semantic
    stop = {"deny_on_first_deny": Effect.DENY, "permit_on_first_permit": Effect.ALLOW}.get(semantic)
    return asks, stop


def _check_defaults(body: Evaluations) -> None:
    """A default resource or context is refused as the document states it (a resource type that
    cannot be acted on, a context key Tether sets), whether or not an item uses it."""
    resource, context = body.resource, body.context
    if resource is not None or context is not None:
        validate_ask(Ask("", "", resource.type if resource else "Resource",
                         resource.id if resource else "", resource.properties if resource else {},
                         context or {}))  # fmt: skip
