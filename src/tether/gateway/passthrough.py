"""What the gateway passes through besides tool calls: resources, prompts, completions.

- ``resources/list`` and ``resources/templates/list``: every connected upstream's, unfiltered
  (a URI says little; reading is what is decided).
- ``resources/read``, ``resources/subscribe``, ``resources/unsubscribe``: ``resource.read``
  on ``Resource::"<uri>"`` (the upstream as its ``server`` attribute, its configured
  ``resource_labels`` as ``labels``: an allowed read adds them to the session's), then
  forwarded to the upstream that lists the URI or a template matching it (the only
  upstream, if just one).
  A subscription is held by the gateway's own session with the upstream: the stateless front
  has no stream to carry ``notifications/resources/updated`` to the agent, so none is
  delivered — an agent that subscribes polls with ``resources/read``.
- ``prompts/list``; ``prompts/get`` under ``prompt.get`` on ``Prompt::"<server>.<prompt>"``.
- ``completion/complete``: for a prompt's argument under ``prompt.get`` on that prompt, for a
  resource template's under ``resource.read`` on the template; an upstream without the
  completions capability completes nothing (an empty list).
- ``logging/setLevel`` is answered here (``{}``) and not forwarded: an upstream session is
  shared by every agent, so one agent's level would be everyone's; the gateway relays no
  upstream log message (it cannot tell which request one belongs to).
- ``ping`` is the gateway's own.

A denial is a JSON-RPC error saying why (an approval checkpoint: its id and how to wait).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import httpx2
import mcp_types as mt
from mcp.client.session import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate
from pydantic import BaseModel

from tether.errors import ValidationFailed
from tether.gateway.metadata import CALLER
from tether.gateway.naming import Names
from tether.gateway.redact import hide, shows_any
from tether.gateway.upstreams import UpstreamDown, UpstreamLink
from tether.policy.decide import DecisionService
from tether.policy.values import Ask, Decision, Effect

if TYPE_CHECKING:
    from tether.credentials.bearer import Caller

T = TypeVar("T")
_NONE = mt.CompleteResult(completion=mt.Completion(values=[], total=0, has_more=False))


def caller_of(ctx: ServerRequestContext[Any]) -> Caller:
    """The agent the gate authenticated (it puts it in the request's state)."""
    request = ctx.request
    caller = request.scope.get("state", {}).get(CALLER) if request is not None else None
    if caller is None:  # the gate puts it there for every request it lets through
        raise MCPError(code=mt.INVALID_REQUEST, message="not authenticated")
    return caller  # type: ignore[no-any-return]


def why(name: str, decision: Decision) -> str:
    if decision.effect is Effect.APPROVAL_REQUIRED:
        return (f"{name} needs a human's approval ({decision.approval_id}): wait for it with "
                f"GET /v1/approvals/{decision.approval_id}?wait=30, then call again")  # fmt: skip
    return f"policy does not permit {name} (reasons: {', '.join(decision.reasons) or 'none'})"


class Passthrough:
    def __init__(self, names: Callable[[], Names], decisions: DecisionService) -> None:
        self.names = names  # the running links' names (replaced on each start)
        self.decisions = decisions
        self._templates: dict[str, tuple[ClientSession, list[mt.ResourceTemplate]]] = {}

    # -- resources --------------------------------------------------------------------------
    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListResourcesResult:
        caller_of(ctx)
        links = self.names().links.values()
        return mt.ListResourcesResult(resources=[r for k in links for r in k.resources.values()])

    async def list_templates(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListResourceTemplatesResult:
        caller_of(ctx)
        found: list[mt.ResourceTemplate] = []
        for link in self.names().links.values():
            found.extend(await self._templates_of(link))
        return mt.ListResourceTemplatesResult(resource_templates=found)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: mt.ReadResourceRequestParams
    ) -> mt.ReadResourceResult:
        uri = str(params.uri)
        link = await self._allowed(ctx, await self._owner(uri), uri)
        return await _forward(link, lambda s: s.read_resource(uri))

    async def subscribe(
        self, ctx: ServerRequestContext[Any], params: mt.SubscribeRequestParams
    ) -> mt.EmptyResult:
        uri = str(params.uri)
        link = await self._allowed(ctx, await self._owner(uri), uri)
        request = mt.SubscribeRequest(params=mt.SubscribeRequestParams(uri=uri))
        return await _forward(link, lambda s: s.send_request(request, mt.EmptyResult))

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: mt.UnsubscribeRequestParams
    ) -> mt.EmptyResult:
        uri = str(params.uri)
        link = await self._allowed(ctx, await self._owner(uri), uri)
        request = mt.UnsubscribeRequest(params=mt.UnsubscribeRequestParams(uri=uri))
        return await _forward(link, lambda s: s.send_request(request, mt.EmptyResult))

    # -- prompts ----------------------------------------------------------------------------
    async def list_prompts(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListPromptsResult:
        caller_of(ctx)
        names = self.names()
        return mt.ListPromptsResult(prompts=[
            p.model_copy(update={"name": names.wire(link, p.name)})
            for link in names.links.values() for p in link.prompts.values()
            if names.shown(link, p.name)
        ])  # fmt: skip

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], params: mt.GetPromptRequestParams
    ) -> mt.GetPromptResult:
        names = self.names()
        link, local = names.split(params.name, "prompt")
        await self._decide(ctx, "prompt.get", "Prompt", names.policy_id(link, local), link,
                           shown=params.name)  # fmt: skip
        return await _forward(link, lambda s: s.get_prompt(local, params.arguments))

    # -- completion and logging -------------------------------------------------------------
    async def complete(
        self, ctx: ServerRequestContext[Any], params: mt.CompleteRequestParams
    ) -> mt.CompleteResult:
        ref = params.ref
        if isinstance(ref, mt.PromptReference):
            names = self.names()
            link, local = names.split(ref.name, "prompt")
            await self._decide(ctx, "prompt.get", "Prompt", names.policy_id(link, local), link,
                               shown=ref.name)  # fmt: skip
            ref = ref.model_copy(update={"name": local})
        else:
            link = await self._allowed(ctx, await self._owner(ref.uri, template=True), ref.uri)
        caps = link.session.server_capabilities if link.session is not None else None
        if caps is not None and caps.completions is None:
            return _NONE
        request = mt.CompleteRequest(params=params.model_copy(update={"ref": ref}))
        return await _forward(link, lambda s: s.send_request(request, mt.CompleteResult))

    async def set_level(
        self, ctx: ServerRequestContext[Any], params: mt.SetLevelRequestParams
    ) -> mt.EmptyResult:
        caller_of(ctx)
        return mt.EmptyResult()

    # -- helpers ----------------------------------------------------------------------------
    async def _allowed(
        self, ctx: ServerRequestContext[Any], link: UpstreamLink | None, uri: str
    ) -> UpstreamLink:
        if link is None:
            raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        await self._decide(ctx, "resource.read", "Resource", uri, link, shown=uri)
        return link

    async def _decide(
        self, ctx: ServerRequestContext[Any], action: str, kind: str, id_: str,
        link: UpstreamLink, *, shown: str,
    ) -> None:  # fmt: skip
        properties: dict[str, Any] = {"server": link.name}
        if kind == "Resource":  # the upstream's data labels: resource.labels, the session's
            properties["labels"] = list(link.config.resource_labels)
        try:
            ask = Ask.of(caller_of(ctx), action, kind, id_, properties=properties,
                         context={})  # fmt: skip
            decision = await self.decisions.decide(ask)
        except ValidationFailed as exc:  # a name policy cannot hold (too long, a NUL)
            raise MCPError(code=mt.INVALID_PARAMS, message=exc.message) from None
        if not decision.allowed:
            raise MCPError(code=mt.INVALID_REQUEST, message=why(shown, decision))

    async def _owner(self, uri: str, *, template: bool = False) -> UpstreamLink | None:
        """The upstream that lists ``uri`` (or, with ``template``, lists it as a template),
        then one whose template matches it; the only upstream if there is just one."""
        links = list(self.names().links.values())
        for link in links:
            if not template and uri in link.resources:
                return link
        for link in links:
            for t in await self._templates_of(link):
                if t.uri_template == uri or (not template and _matches(t.uri_template, uri)):
                    return link
        return links[0] if len(links) == 1 else None

    async def _templates_of(self, link: UpstreamLink) -> list[mt.ResourceTemplate]:
        """The upstream's resource templates, listed once per connection."""
        session = link.session
        caps = session.server_capabilities if session is not None else None
        if session is None or caps is None or caps.resources is None:
            return []
        held = self._templates.get(link.name)
        if held is not None and held[0] is session:
            return held[1]
        try:
            listed = await link.call(lambda s: s.list_resource_templates())
        except (UpstreamDown, MCPError, TimeoutError, OSError):
            return []  # an upstream that cannot list its templates offers none now
        self._templates[link.name] = (session, listed.resource_templates)
        return listed.resource_templates


def _matches(template: str, uri: str) -> bool:
    try:
        return UriTemplate.parse(template).match(uri) is not None
    except ValueError:  # an upstream's malformed template matches nothing
        return False


async def _forward(link: UpstreamLink, fn: Callable[[ClientSession], Awaitable[T]]) -> T:
    """``fn`` on the upstream's session; the upstream's own JSON-RPC errors pass as they are —
    both with every secret value the gateway sent this upstream cut out."""
    try:
        result = await link.call(fn)
    except MCPError as exc:
        if not link.known or not shows_any(f"{exc.error.message}{exc.error.data}", link.known):
            raise
        raise MCPError(code=exc.error.code, message=hide(exc.error.message, link.known),
                       data=hide(exc.error.data, link.known)) from None  # fmt: skip
    except (UpstreamDown, TimeoutError, OSError, httpx2.TransportError,
            anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:  # fmt: skip
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)[:300] or repr(exc)
        reason = hide(reason, link.known)
        raise MCPError(code=mt.INTERNAL_ERROR, message=f"upstream {link.name}: {reason}") from None
    if (
        isinstance(result, BaseModel)
        and link.known
        and shows_any(result.model_dump_json(by_alias=True), link.known)
    ):
        shown = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return cast(T, type(result).model_validate(hide(shown, link.known)))
    return result
