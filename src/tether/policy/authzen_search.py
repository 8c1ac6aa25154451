"""OpenID AuthZEN Authorization API 1.0 §8, the search APIs: the request and response shapes
as the standard writes them, mapped to :class:`tether.policy.search.SearchService` (what is
searched, how pages and approvals work and what is recorded: that module's docstring).

Who may search about whom is who may evaluate (:meth:`DecisionService.may_ask`): a resource or
action search about an agent is refused or allowed as an evaluation about it would be; a
subject search finds only agents the caller may ask about (an agent: itself).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from tether.credentials.bearer import Caller
from tether.fields import integral
from tether.policy.authzen import (
    Action,
    AgentId,
    AgentType,
    Context,
    Record,
    Resource,
    ResourceId,
    ResourceType,
    StrictModel,
    Subject,
    caller_ask,
)
from tether.policy.decide import DecisionService
from tether.policy.search import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    TOKEN_MAX_LENGTH,
    TOKEN_PATTERN,
    Found,
    SearchKind,
    SearchPage,
)
from tether.policy.values import Ask


class SearchSubject(StrictModel):
    """The subjects searched: their type; an ``id``, if sent, is ignored (§8.4.1)."""

    type: AgentType
    id: AgentId | None = None
    properties: Record = Field(default_factory=dict)


class SearchResource(StrictModel):
    """The resources searched: their type; an ``id``, if sent, is ignored (§8.5.1). The
    ``properties`` are those of every candidate Tether holds no properties of."""

    type: ResourceType
    id: ResourceId | None = None
    properties: Record = Field(default_factory=dict)


class PageRequest(StrictModel):
    """§8.2.1. ``token``: a previous page's ``next_token`` (empty or absent: the first page).
    Tether defines no page ``properties``: any sent are ignored."""

    token: Annotated[str, Field(max_length=TOKEN_MAX_LENGTH, pattern=TOKEN_PATTERN)] = ""
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(integral)] = DEFAULT_LIMIT
    properties: Record = Field(default_factory=dict)


class SubjectSearch(StrictModel):
    subject: SearchSubject
    action: Action
    resource: Resource
    context: Context = Field(default_factory=dict)
    page: PageRequest = Field(default_factory=PageRequest)


class ResourceSearch(StrictModel):
    subject: Subject
    action: Action
    resource: SearchResource
    context: Context = Field(default_factory=dict)
    page: PageRequest = Field(default_factory=PageRequest)


class ActionSearch(StrictModel):
    subject: Subject
    resource: Resource
    context: Context = Field(default_factory=dict)
    page: PageRequest = Field(default_factory=PageRequest)


class PageOut(StrictModel):
    """``next_token`` is empty on the last page; ``count`` is the results in this one."""

    next_token: str
    count: int


class AgentOut(StrictModel):
    type: Literal["agent"]
    id: str


class ResourceOut(StrictModel):
    type: str
    id: str
    properties: dict[str, Any] = Field(default_factory=dict)


class ActionOut(StrictModel):
    name: str


_CONTEXT = Field(
    description="policy_version; event_id (the search's ledger event); approval_required "
    "(entities that need a human's approval first, shaped as results); reasons and error when "
    "Tether refused the whole search before Cedar (the subject not active, say)"
)


class SubjectSearchOut(StrictModel):
    page: PageOut
    context: Annotated[dict[str, Any], _CONTEXT]
    results: list[AgentOut]


class ResourceSearchOut(StrictModel):
    page: PageOut
    context: Annotated[dict[str, Any], _CONTEXT]
    results: list[ResourceOut]


class ActionSearchOut(StrictModel):
    page: PageOut
    context: Annotated[dict[str, Any], _CONTEXT]
    results: list[ActionOut]


def subject_search_ask(body: SubjectSearch, who: Caller, request_id: str | None = None) -> Ask:
    """The search's request; the subject is the caller itself for an agent (the only agent
    it may ask about), and ignored otherwise."""
    me = who.principal.id if who.principal.kind == "agent" else ""
    res = body.resource
    return caller_ask(who, me, body.action.name, res.type, res.id, properties=res.properties,
                      context=body.context, request_id=request_id)  # fmt: skip


def resource_search_ask(
    body: ResourceSearch, who: Caller, decisions: DecisionService, request_id: str | None = None
) -> Ask:
    decisions.may_ask(who.principal, body.subject.id)
    res = body.resource
    return caller_ask(who, body.subject.id, body.action.name, res.type, "",
                      properties=res.properties, context=body.context,
                      request_id=request_id)  # fmt: skip


def action_search_ask(
    body: ActionSearch, who: Caller, decisions: DecisionService, request_id: str | None = None
) -> Ask:
    decisions.may_ask(who.principal, body.subject.id)
    res = body.resource
    return caller_ask(who, body.subject.id, "", res.type, res.id, properties=res.properties,
                      context=body.context, request_id=request_id)  # fmt: skip


def search_answer(page: SearchPage) -> dict[str, Any]:
    """§8.3: ``page`` first (a reader may show progress from ``count``), then ``context``,
    then ``results``."""
    context: dict[str, Any] = {
        "policy_version": page.policy_version,
        "event_id": page.event_id,
        "approval_required": [_entity(page.kind, found) for found in page.approval_required],
    }
    if page.refused is not None:
        context["reasons"] = list(page.refused.reasons)
        if page.refused.error:
            context["error"] = page.refused.error
    return {
        "page": {"next_token": page.next_token, "count": len(page.results)},
        "context": context,
        "results": [_entity(page.kind, found) for found in page.results],
    }


def _entity(kind: SearchKind, found: Found) -> dict[str, Any]:
    """A result as the information model writes it (§5), with the properties it was
    decided with, if any."""
    if kind is SearchKind.SUBJECT:
        return {"type": "agent", "id": found.id}
    if kind is SearchKind.ACTION:
        return {"name": found.id}
    out: dict[str, Any] = {"type": found.ask.resource_type, "id": found.id}
    if found.ask.properties:
        out["properties"] = found.ask.properties
    return out
