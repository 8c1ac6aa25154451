"""The MCP gateway at ``/mcp``: every agent tool call authenticated, decided, recorded and
forwarded to the upstream that owns the tool — through the one enforcement path.

- ``tools/list``: the tools of every connected upstream, as ``<server>.<tool>``, that policy
  may let this agent call (``tool.call`` on ``Tool::"<server>.<tool>"`` evaluated without the
  arguments: allowed, allowed after a human's approval, or — Cedar's partial evaluation with
  the context unknown — allowed for some arguments); nothing is recorded for a list.
- ``tools/call``: a decision (the arguments in ``context.args``, the server and tool as the
  resource's attributes, the token's delegation chain), durable before anything is forwarded;
  kill, suspension, freeze and expiry hold mid-session (each call is decided afresh). A deny
  or an approval checkpoint is a tool error saying why (with the approval's id and how to
  wait for it); an allowed call goes upstream within its timeout, and the call — digests and
  redacted copies of its arguments and result, outcome, duration — is one ledger event
  linked to the decision, durable before the answer leaves.
- resources and prompts pass through under ``resource.read`` / ``prompt.get``.

Stateless streamable HTTP (JSON answers): any worker answers any request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as mt
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from tether.audit.events import EventType, NewEvent
from tether.audit.group import GroupCommitter
from tether.errors import LedgerUnavailable
from tether.gateway.metadata import CALLER
from tether.gateway.redact import Redactor
from tether.gateway.upstreams import UpstreamDown, UpstreamLink
from tether.gateway_config import SecretReader, Upstream
from tether.policy.decide import DecisionService
from tether.policy.values import Ask, Decision, Effect

if TYPE_CHECKING:
    from tether.credentials.bearer import Caller

log = logging.getLogger("tether.gateway")
TOOL = "Tool"


class Gateway:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        decisions: DecisionService,
        committer: GroupCommitter,
        read_secret: SecretReader,
        *,
        redactor: Redactor | None = None,
        public_hosts: Sequence[str] = (),
    ) -> None:
        self.decisions = decisions
        self.committer = committer
        self.read_secret = read_secret
        self.redactor = redactor or Redactor()
        self.configs = list(upstreams)
        self.links: dict[str, UpstreamLink] = {}
        self.public_hosts = list(public_hosts)
        self.server: Server[Any] = Server(
            "tether-gateway", version="1", on_list_tools=self._list_tools,
            on_call_tool=self._call_tool, on_list_resources=self._list_resources,
            on_read_resource=self._read_resource, on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt, get_tool_input_schema=self._input_schema,
        )  # fmt: skip
        self.server.middleware.clear()  # no OpenTelemetry spans per message here
        self.manager: StreamableHTTPSessionManager | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[StreamableHTTPSessionManager]:
        """Inside the app's lifespan: the session manager and one supervisor per upstream.
        Another app over the same services (tests; a server has one) started meanwhile
        shares what the first one runs."""
        if self.manager is not None:
            yield self.manager
            return
        try:
            async with self._run() as manager:
                yield manager
        finally:
            self.manager = None

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[StreamableHTTPSessionManager]:
        self.links = {cfg.name: UpstreamLink(cfg, self.read_secret) for cfg in self.configs}
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True,
                                                    json_response=True)  # fmt: skip
        async with self.manager.run(), anyio.create_task_group() as tg:
            for link in self.links.values():
                tg.start_soon(link.supervise)
            yield self.manager
            tg.cancel_scope.cancel()

    def status(self) -> list[dict[str, Any]]:
        return [link.status() for link in self.links.values()]

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _caller(ctx: ServerRequestContext[Any]) -> Caller:
        request = ctx.request
        caller = request.scope.get("state", {}).get(CALLER) if request is not None else None
        if caller is None:  # the gate puts it there for every request it lets through
            raise MCPError(code=mt.INVALID_REQUEST, message="not authenticated")
        return caller  # type: ignore[no-any-return]

    def _split(self, name: str) -> tuple[UpstreamLink, str]:
        server, _, local = name.partition(".")
        link = self.links.get(server)
        if link is None or not local:
            raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown tool: {name}")
        return link, local

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        server, _, local = name.partition(".")
        link = self.links.get(server)
        tool = link.tools.get(local) if link else None
        return dict(tool.input_schema) if tool is not None else None

    # -- tools ------------------------------------------------------------------------------
    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListToolsResult:
        caller = self._caller(ctx)
        named = [(link, tool) for link in self.links.values() for tool in link.tools.values()]
        asks = [
            Ask.of(caller, "tool.call", TOOL, f"{link.name}.{tool.name}",
                      properties=_tool_properties(link.name, tool), context={})
            for link, tool in named
        ]  # fmt: skip
        if not asks:
            return mt.ListToolsResult(tools=[])
        if not self.decisions.runtime.fresh():
            await anyio.to_thread.run_sync(self.decisions.runtime.ensure_current)
        decided = self.decisions.evaluate_many(asks)
        compiled = self.decisions.runtime.policies
        tools = []
        for (link, tool), ask, decision in zip(named, asks, decided, strict=True):
            if decision.effect is Effect.DENY:
                # Denied without arguments: shown if some arguments could be allowed (a
                # permit bounding context.args), unless the agent itself is refused.
                refused = decision.error is not None or any(
                    r.startswith("tether.") for r in decision.reasons
                )
                if (
                    refused
                    or compiled is None
                    or not compiled.may_permit(self.decisions.cedar_request(ask))
                ):
                    continue
            tools.append(tool.model_copy(update={"name": f"{link.name}.{tool.name}"}))
        return mt.ListToolsResult(tools=tools)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: mt.CallToolRequestParams
    ) -> mt.CallToolResult:
        caller = self._caller(ctx)
        link, local = self._split(params.name)
        tool = link.tools.get(local)
        if tool is None:
            raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        args = dict(params.arguments or {})
        properties = _tool_properties(link.name, tool)
        ask = Ask.of(caller, "tool.call", TOOL, params.name, properties=properties,
                        context={"args": args})  # fmt: skip
        decision = await self.decisions.decide(ask)
        if not decision.allowed:
            return _refusal(params.name, decision)
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await link.call(lambda s: s.call_tool(local, args or None))
            if result.is_error:
                outcome = "tool_error"
        except (UpstreamDown, MCPError, TimeoutError, OSError) as exc:
            outcome = "upstream_failure"
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)[:300]
            result = _error(f"upstream {link.name} failed: {why}")
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            await self._record(caller, params.name, link, local=local, args=args,
                               result=result, decision=decision, outcome=outcome,
                               duration_ms=duration_ms)  # fmt: skip
        except LedgerUnavailable:
            return _error("the call could not be recorded: its result is withheld")
        return result

    async def _record(
        self, caller: Caller, name: str, link: UpstreamLink, *, local: str,
        args: dict[str, Any], result: mt.CallToolResult, decision: Decision, outcome: str,
        duration_ms: float,
    ) -> None:  # fmt: skip
        known = list(link.known)
        args_digest, args_copy = self.redactor.record(args, known)
        shown = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        result_digest, result_copy = self.redactor.record(shown, known)
        agent = caller.principal
        await self.committer.submit_async(NewEvent(
            EventType.TOOL_CALLED, agent.ref, agent_id=agent.id,
            on_behalf_of=caller.on_behalf_of, chain=caller.chain, action="tool.call",
            resource={"type": TOOL, "id": name}, decision=decision.effect.value,
            reasons=decision.reasons, policy_version=decision.policy_version, outcome=outcome,
            details={"server": link.name, "tool": local, "decision_event": decision.event_id,
                     "args_digest": args_digest, "args": args_copy,
                     "result_digest": result_digest, "result": result_copy,
                     "duration_ms": duration_ms,
                     "brokered": [link.config.auth.kind] if link.known else []},
        ))  # fmt: skip

    # -- resources and prompts --------------------------------------------------------------
    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListResourcesResult:
        self._caller(ctx)
        return mt.ListResourcesResult(
            resources=[r for link in self.links.values() for r in link.resources.values()]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: mt.ReadResourceRequestParams
    ) -> mt.ReadResourceResult:
        caller = self._caller(ctx)
        uri = str(params.uri)
        link = next((k for k in self.links.values() if uri in k.resources), None)
        link = link or (next(iter(self.links.values())) if len(self.links) == 1 else None)
        if link is None:
            raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        ask = Ask.of(caller, "resource.read", "Resource", uri,
                        properties={"server": link.name}, context={})  # fmt: skip
        decision = await self.decisions.decide(ask)
        if not decision.allowed:
            raise MCPError(code=mt.INVALID_REQUEST, message=_why(uri, decision))
        try:
            return await link.call(lambda s: s.read_resource(uri))
        except (UpstreamDown, TimeoutError, OSError) as exc:
            raise MCPError(code=mt.INTERNAL_ERROR, message=f"upstream {link.name}: {exc}") from None

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListPromptsResult:
        self._caller(ctx)
        return mt.ListPromptsResult(prompts=[
            p.model_copy(update={"name": f"{link.name}.{p.name}"})
            for link in self.links.values() for p in link.prompts.values()
        ])  # fmt: skip

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any], params: mt.GetPromptRequestParams
    ) -> mt.GetPromptResult:
        caller = self._caller(ctx)
        link, local = self._split(params.name)
        ask = Ask.of(caller, "prompt.get", "Prompt", params.name,
                        properties={"server": link.name}, context={})  # fmt: skip
        decision = await self.decisions.decide(ask)
        if not decision.allowed:
            raise MCPError(code=mt.INVALID_REQUEST, message=_why(params.name, decision))
        try:
            return await link.call(lambda s: s.get_prompt(local, params.arguments))
        except (UpstreamDown, TimeoutError, OSError) as exc:
            raise MCPError(code=mt.INTERNAL_ERROR, message=f"upstream {link.name}: {exc}") from None


def _tool_properties(server: str, tool: mt.Tool) -> dict[str, Any]:
    hints = tool.annotations
    read_only = bool(hints and hints.read_only_hint)
    return {"server": server, "tool": tool.name, "mutating": not read_only}


def _why(name: str, decision: Decision) -> str:
    if decision.effect is Effect.APPROVAL_REQUIRED:
        return (f"{name} needs a human's approval ({decision.approval_id}): wait for it with "
                f"GET /v1/approvals/{decision.approval_id}?wait=30, then call again")  # fmt: skip
    return f"policy does not permit {name} (reasons: {', '.join(decision.reasons) or 'none'})"


def _refusal(name: str, decision: Decision) -> mt.CallToolResult:
    body = {"error": "approval_required" if decision.effect is Effect.APPROVAL_REQUIRED
            else "access_denied", "message": _why(name, decision),
            "approval_id": decision.approval_id, "reasons": list(decision.reasons),
            "event_id": decision.event_id}  # fmt: skip
    return mt.CallToolResult(is_error=True, content=[mt.TextContent(type="text",
                             text=json.dumps({k: v for k, v in body.items() if v}))])  # fmt: skip


def _error(text: str) -> mt.CallToolResult:
    return mt.CallToolResult(is_error=True, content=[mt.TextContent(type="text", text=text)])
