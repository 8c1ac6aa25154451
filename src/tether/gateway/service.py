"""The MCP gateway at ``/mcp``: every agent tool call authenticated, decided, recorded and
forwarded to the upstream that owns the tool — through the one enforcement path.

- ``tools/list``: the tools of every connected upstream, as ``<server>.<tool>`` (or under
  their own names for the upstream configured with ``prefix = false``; see
  :mod:`tether.gateway.naming`), that policy may let this agent call (``tool.call`` on
  ``Tool::"<server>.<tool>"`` evaluated without the arguments: allowed, allowed after a
  human's approval, or — Cedar's partial evaluation with the context unknown — allowed for
  some arguments); nothing is recorded for a list.
- ``tools/call``: a decision (the arguments in ``context.args``, the server and tool as the
  resource's attributes, the token's delegation chain), durable before anything is forwarded;
  kill, suspension, freeze and expiry hold mid-session (each call is decided afresh). A deny
  or an approval checkpoint is a tool error saying why (with the approval's id and how to
  wait for it); an allowed call goes upstream within its timeout, and the call — digests and
  redacted copies of its arguments and result, outcome, duration — is one ledger event
  linked to the decision, durable before the answer leaves. The upstream's progress
  notifications are relayed to a caller that asked for progress.
- resources, prompts, completions and the rest: :mod:`tether.gateway.passthrough`.

Stateless streamable HTTP: any worker answers any request, in JSON (a tool call that asks
for progress: as an SSE stream). Hence no request from the gateway back to the agent
(sampling, elicitation: no session to answer on), and no notification but progress relayed on
the call's own stream. A request whose ``Origin`` is not the gateway's public origin is
refused (403; the MCP transport spec's DNS-rebinding defence — browsers send ``Origin``, other
clients none).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as mt
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import DEFAULT_NEGOTIATED_VERSION, methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from tether.audit.group import GroupCommitter
from tether.compensation import CompensationError
from tether.errors import LedgerUnavailable, ValidationFailed
from tether.gateway.calls import CallFacts, CallRecorder, Journal, Outcome
from tether.gateway.metadata import CALLER
from tether.gateway.naming import Names
from tether.gateway.passthrough import Passthrough, caller_of, why
from tether.gateway.redact import hide, shows_any
from tether.gateway.upstreams import UpstreamDown, UpstreamLink
from tether.gateway_config import SecretReader, Upstream
from tether.policy.decide import DecisionService
from tether.policy.search import Candidate, SearchService
from tether.policy.values import Ask, Decision, Effect

if TYPE_CHECKING:
    from tether.credentials.bearer import Caller

log = logging.getLogger("tether.gateway")
CallTool = Callable[
    ["Caller", mt.CallToolRequestParams, Any, "list[dict[str, Any]] | None"],
    Awaitable[mt.CallToolResult],
]
TOOL = "Tool"


class Gateway:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        decisions: DecisionService,
        committer: GroupCommitter,
        read_secret: SecretReader,
        *,
        calls: CallRecorder | None = None,
        search: SearchService | None = None,
        public_url: str | None = None,
    ) -> None:
        """``public_url``: the gateway's public base URL, whose origin alone a request with an
        ``Origin`` header may come from (None: not checked)."""
        self.decisions = decisions
        self.committer = committer
        self.read_secret = read_secret
        self.calls = calls or CallRecorder(committer, decisions.clock)
        self.search = search or SearchService(decisions)
        self.configs = list(upstreams)
        self.links: dict[str, UpstreamLink] = {}
        self.names = Names(self.links)
        self.origin = _origin(public_url) if public_url else None
        rest = Passthrough(lambda: self.names, decisions)
        self.server: Server[Any] = Server(
            "tether-gateway", version="1", on_list_tools=self._list_tools,
            on_call_tool=self._call_tool, get_tool_input_schema=self._input_schema,
            on_list_resources=rest.list_resources, on_read_resource=rest.read_resource,
            on_list_resource_templates=rest.list_templates,
            on_subscribe_resource=rest.subscribe, on_unsubscribe_resource=rest.unsubscribe,
            on_list_prompts=rest.list_prompts, on_get_prompt=rest.get_prompt,
            on_completion=rest.complete,
        )  # fmt: skip
        # Not the constructor's on_set_logging_level: that warns (deprecated in 2026-07-28).
        self.server.add_request_handler("logging/setLevel", mt.SetLevelRequestParams,
                                        rest.set_level)  # fmt: skip
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
        self.names = Names(self.links)
        self.manager = _Manager(self.server, self.origin, self.call_tool)
        self.search.sources[TOOL] = self._candidates  # /access/v1/search/resource finds them
        try:
            async with self.manager.run(), anyio.create_task_group() as tg:
                for link in self.links.values():
                    tg.start_soon(link.supervise)
                yield self.manager
                tg.cancel_scope.cancel()
        finally:
            self.search.sources.pop(TOOL, None)

    def status(self) -> list[dict[str, Any]]:
        return [link.status() for link in self.links.values()]

    # -- helpers ----------------------------------------------------------------------------
    def _input_schema(self, name: str) -> dict[str, Any] | None:
        try:
            link, local = self.names.split(name)
        except MCPError:
            return None
        tool = link.tools.get(local)
        return dict(tool.input_schema) if tool is not None else None

    # -- tools ------------------------------------------------------------------------------
    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListToolsResult:
        caller = caller_of(ctx)
        names = self.names
        named = {names.policy_id(link, tool.name): (link, tool)
                 for link in self.links.values() for tool in link.tools.values()
                 if names.shown(link, tool.name)}  # fmt: skip
        if not named:
            return mt.ListToolsResult(tools=[])
        # "Which tools may this agent call?" is an AuthZEN resource search over the tools,
        # decided without arguments (nothing recorded for a list).
        ask = Ask.of(caller, "tool.call", TOOL, "", properties={}, context={})
        page = await self.search.resources(ask, candidates=self._candidates(named), limit=None,
                                           record=False)  # fmt: skip
        if page.refused is not None:  # the agent itself is refused: no tool at all
            return mt.ListToolsResult(tools=[])
        shown = {f.id for f in page.results} | {f.id for f in page.approval_required}
        compiled = self.decisions.runtime.policies
        tools = []
        for policy_id, (link, tool) in named.items():
            if policy_id not in shown:
                # Denied without arguments: shown if some arguments could be allowed (a
                # permit bounding context.args; Cedar's partial evaluation).
                one = replace(ask, resource_id=policy_id,
                              properties=_tool_properties(link, tool))  # fmt: skip
                if compiled is None or not compiled.may_permit(self.decisions.cedar_request(one)):
                    continue
            tools.append(tool.model_copy(update={"name": names.wire(link, tool.name)}))
        return mt.ListToolsResult(tools=tools)

    def _candidates(
        self, named: dict[str, tuple[UpstreamLink, mt.Tool]] | None = None
    ) -> list[Candidate]:
        """The tools as search candidates: their policy ids and the properties a call is
        decided with (also what ``/access/v1/search/resource`` finds for type ``Tool``)."""
        if named is None:
            names = self.names
            named = {names.policy_id(link, tool.name): (link, tool)
                     for link in self.links.values() for tool in link.tools.values()}  # fmt: skip
        return [Candidate(policy_id, _tool_properties(link, tool))
                for policy_id, (link, tool) in named.items()]  # fmt: skip

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: mt.CallToolRequestParams
    ) -> mt.CallToolResult:
        # Progress only for a caller that asked for it (a token in _meta), back on its stream.
        wants = params.meta is not None and params.meta.get("progress_token") is not None
        relay = ctx.session.report_progress if wants else None
        return await self.call_tool(caller_of(ctx), params, relay)

    async def call_tool(
        self, caller: Caller, params: mt.CallToolRequestParams, relay: Any = None,
        logs: list[dict[str, Any]] | None = None,
    ) -> mt.CallToolResult:  # fmt: skip
        """One tool call: decided, forwarded, recorded (raises MCPError for an unknown
        tool); ``relay`` gets the upstream's progress notifications, ``logs`` the log
        notifications it sent on the call's own stream (the upstream's secrets cut out)."""
        link, local = self.names.split(params.name)
        tool = link.tools.get(local)
        if tool is None:
            raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        args = dict(params.arguments or {})
        properties = _tool_properties(link, tool)
        policy_id = self.names.policy_id(link, local)
        ask = Ask.of(caller, "tool.call", TOOL, policy_id, properties=properties,
                     context={"args": args})  # fmt: skip
        try:
            decision = await self.decisions.decide(ask)
        except ValidationFailed as exc:  # arguments Cedar cannot hold (a float, too deep)
            raise MCPError(code=mt.INVALID_PARAMS, message=exc.message) from None
        if not decision.allowed:
            if decision.event_id is not None:  # refused before any record (ledger down): none
                with contextlib.suppress(LedgerUnavailable):
                    await self._record(caller, policy_id, link, local=local, args=args,
                                       result=None, decision=decision, outcome="refused",
                                       duration_ms=0.0)  # fmt: skip
            return _refusal(params.name, decision)
        started = time.perf_counter()
        heard: list[dict[str, Any]] = []
        result, outcome = await _forward(link, local, args, relay, heard)
        if logs is not None:
            logs.extend(hide(heard, link.known) if link.known else heard)
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            journal = _journal(link, tool, args, result) if outcome == "ok" else None
            await self._record(caller, policy_id, link, local=local, args=args,
                               result=result, decision=decision, outcome=outcome,
                               duration_ms=duration_ms, journal=journal)  # fmt: skip
        except LedgerUnavailable:
            return _error("the call could not be recorded: its result is withheld")
        return _hidden(result, link.known)

    def tool(self, policy_id: str) -> tuple[UpstreamLink, mt.Tool, dict[str, Any]]:
        """The upstream and tool a policy id (``<server>.<tool>``) names, and the properties
        a call of it is decided with; :class:`LookupError` saying why when none is served."""
        server, _, local = policy_id.partition(".")
        link = self.links.get(server)
        if link is None:
            raise LookupError(f"no upstream {server!r} is configured")
        tool = link.tools.get(local)
        if tool is None:
            state = "" if link.up else f" (upstream {server} is not connected)"
            raise LookupError(f"upstream {server} serves no tool {local!r}{state}")
        return link, tool, _tool_properties(link, tool)

    async def forward(
        self, policy_id: str, args: dict[str, Any]
    ) -> tuple[mt.CallToolResult, Outcome, Sequence[str]]:
        """Run a tool already decided (a rollback's undo): its result, whether it ``ok``,
        was a ``tool_error`` or an ``upstream_failure`` (no answer: it may or may not have
        run), and the secret values this upstream was sent (to keep out of any record)."""
        link, tool, _ = self.tool(policy_id)
        result, outcome = await _forward(link, tool.name, args, None, None)
        return _hidden(result, link.known), outcome, link.known

    async def _record(
        self, caller: Caller, name: str, link: UpstreamLink, *, local: str,
        args: dict[str, Any], result: mt.CallToolResult | None, decision: Decision,
        outcome: Outcome, duration_ms: float, journal: Journal | None = None,
    ) -> None:  # fmt: skip
        shown = (result.model_dump(mode="json", by_alias=True, exclude_none=True)
                 if result is not None else None)  # fmt: skip
        agent = caller.principal
        facts = CallFacts(
            agent_id=agent.id, actor=agent.ref, tool=name, decision_event=decision.event_id or "",
            decision=decision.effect.value, reasons=decision.reasons,
            policy_version=decision.policy_version, args=args, result=shown, outcome=outcome,
            duration_ms=duration_ms, via="gateway", on_behalf_of=caller.on_behalf_of,
            chain=caller.chain, journal=journal,
            details={"server": link.name, "tool": local,
                     "brokered": [link.config.auth.kind] if link.known else [],
                     **({"approval_id": decision.approval_id} if decision.approval_id else {})},
        )  # fmt: skip
        await self.calls.record(facts, known=link.known)


async def _forward(
    link: UpstreamLink, local: str, args: dict[str, Any], relay: Any,
    heard: list[dict[str, Any]] | None,
) -> tuple[mt.CallToolResult, Outcome]:  # fmt: skip
    """``tools/call`` on the upstream: its result and outcome, a failure to reach it (or an
    answer that is no tool result) as an ``upstream_failure`` tool error."""
    try:
        result = await link.call_tool(local, args or None, relay, heard)
    except (UpstreamDown, MCPError, TimeoutError, OSError, ValidationError,
            httpx2.TransportError, anyio.ClosedResourceError,
            anyio.BrokenResourceError) as exc:  # fmt: skip
        if isinstance(exc, ValidationError):  # a result that is no CallToolResult
            why = "its answer was not a tool result"
        else:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)[:300] or repr(exc)
        return _error(f"upstream {link.name} failed: {why}"), "upstream_failure"
    return result, ("tool_error" if result.is_error else "ok")


def _tool_properties(link: UpstreamLink, tool: mt.Tool) -> dict[str, Any]:
    """``Tool::"<server>.<tool>"``'s attributes: its upstream and name, whether it changes
    anything and can be undone, and what configuration says it touches — the data labels of
    what it returns (an allowed call adds them to its session's: ``context.session.labels``)
    and whether it sends data outside the organisation (``egress``)."""
    hints = tool.annotations
    read_only = bool(hints and hints.read_only_hint)
    rule = link.config.tools.get(tool.name)
    return {"server": link.name, "tool": tool.name, "mutating": not read_only,
            "reversible": link.reversible(tool),
            "labels": list(rule.labels) if rule is not None else [],
            "egress": rule is not None and rule.egress}  # fmt: skip


def _journal(link: UpstreamLink, tool: mt.Tool, args: dict[str, Any],
             result: mt.CallToolResult) -> Journal | None:  # fmt: skip
    """How a completed call is undone: its compensation derived from its arguments and its
    result (the structured result, else the JSON of its text), or why it cannot be."""
    comp = link.compensations.get(tool.name)
    if comp is None:
        rule = link.config.tools.get(tool.name)
        if rule is not None and rule.irreversible:
            return Journal(reversible=False, error="declared irreversible in the configuration")
        read_only = bool(tool.annotations and tool.annotations.read_only_hint)
        return None if read_only else Journal(reversible=False)
    value: Any = result.structured_content
    if value is None:
        texts = [c.text for c in result.content if isinstance(c, mt.TextContent)]
        try:
            value = json.loads(texts[0]) if len(texts) == 1 else None
        except ValueError:
            value = None
    try:
        arguments = comp.derive(args, value)
    except CompensationError as exc:
        return Journal(reversible=False, error=str(exc))
    return Journal(reversible=True, undo={"tool": f"{link.name}.{comp.undo}",
                                         "arguments": arguments})  # fmt: skip


def _refusal(name: str, decision: Decision) -> mt.CallToolResult:
    body = {"error": "approval_required" if decision.effect is Effect.APPROVAL_REQUIRED
            else "access_denied", "message": why(name, decision),
            "approval_id": decision.approval_id, "reasons": list(decision.reasons),
            "event_id": decision.event_id}  # fmt: skip
    return mt.CallToolResult(is_error=True, content=[mt.TextContent(type="text",
                             text=json.dumps({k: v for k, v in body.items() if v}))])  # fmt: skip


def _hidden(result: mt.CallToolResult, known: Sequence[str]) -> mt.CallToolResult:
    """The result with every secret value the gateway sent this upstream cut out: an upstream
    that echoes its credential does not hand it to the agent."""
    if not known or not shows_any(result.model_dump_json(by_alias=True), known):
        return result
    shown = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return mt.CallToolResult.model_validate(hide(shown, known))


def _error(text: str) -> mt.CallToolResult:
    return mt.CallToolResult(is_error=True, content=[mt.TextContent(type="text", text=text)])


class _Manager(StreamableHTTPSessionManager):
    """Stateless. Answers are JSON, except a ``tools/call`` that asks for progress: that one
    is answered as an SSE stream, to carry the relayed progress notifications before the
    result. A stream costs every request (2026-12-06, this 2-core machine: ``ping`` 1.0 ms
    p50 as JSON, 1.6-2.0 ms as SSE; 8 concurrent clients' tool calls 90-118 calls/s as JSON,
    72-88 as SSE), so only the calls that need one get one.

    A request with a foreign ``Origin`` is refused before the MCP machinery sees it. ``GET``
    (a standalone SSE stream) and ``DELETE`` (ending a session) are 405, as the transport
    spec allows: without a session nothing would ever be sent on a standalone stream, which
    would hold a connection open for nothing, and there is no session to end."""

    def __init__(
        self, server: Server[Any], origin: str | None, call_tool: CallTool | None = None
    ) -> None:
        super().__init__(app=server, stateless=True, json_response=True)
        self.call_tool = call_tool  # the tools/call fast path (None: every request to mcp)
        self.streaming = StreamableHTTPSessionManager(app=server, stateless=True,
                                                      json_response=False)  # fmt: skip
        self.origin = origin

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with super().run(), self.streaming.run():
            yield

    async def handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        came_from = Headers(scope=scope).get("origin")
        if came_from is not None and self.origin is not None and _origin(came_from) != self.origin:
            why = f"requests from {came_from[:100]} are not accepted"
            await _refused(403, "invalid_origin", why)(scope, receive, send)
            return
        if scope["method"] != "POST":
            why = "a stateless gateway: POST each JSON-RPC message"
            await _refused(405, "method_not_allowed", why, {"Allow": "POST"})(scope, receive, send)
            return
        body, receive = await _buffered(receive)
        if _asks_progress(body):
            await self.streaming.handle_request(scope, receive, send)
        elif self.call_tool is None or not await self._fast_call(scope, body, send):
            await super().handle_request(scope, receive, send)

    async def _fast_call(self, scope: Scope, body: bytes, send: Send) -> bool:
        """A plain ``tools/call`` answered here, as the SDK's stateless JSON transport would
        answer it (the same checks, the same result shape for the negotiated version) but
        without a transport, a dispatcher and a server task per request (~1.5 ms here).
        False — nothing sent — for anything else, which the SDK then handles (and refuses
        with its own errors)."""
        call = _plain_tool_call(scope, body)
        if call is None:
            return False
        assert self.call_tool is not None
        request_id, params, version = call
        caller = scope.get("state", {}).get(CALLER)
        if caller is None:
            return False
        logs: list[dict[str, Any]] = []
        try:
            result = await self.call_tool(caller, params, None, logs)
            dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id,
                                      "result": methods.serialize_server_result(
                                          "tools/call", version, dumped)}  # fmt: skip
        except Exception as exc:  # as the SDK's runner: a JSON-RPC error, never a 500
            error = handler_exception_to_error_data(exc)
            if error is None:
                log.exception("tools/call %s failed", params.name)
                error = mt.ErrorData(code=mt.INTERNAL_ERROR, message="Internal error")
            answer = {"jsonrpc": "2.0", "id": request_id,
                      "error": error.model_dump(by_alias=True, exclude_none=True)}  # fmt: skip
        if logs and _accepts_sse(scope):
            # The upstream logged on this call's stream: its messages, then the answer, as
            # the SSE stream a streamable-HTTP server may answer with.
            notes = [{"jsonrpc": "2.0", "method": "notifications/message", "params": p}
                     for p in logs]  # fmt: skip
            raw = b"".join(b"event: message\ndata: " + orjson.dumps(m) + b"\n\n"
                           for m in [*notes, answer])  # fmt: skip
            kind = b"text/event-stream"
        else:
            raw, kind = orjson.dumps(answer), b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", kind), (b"content-length", str(len(raw)).encode()),
            (b"cache-control", b"no-cache, no-transform"),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": raw})
        return True


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The request's body, and a ``receive`` that gives it again (then what follows)."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, again


def _plain_tool_call(
    scope: Scope, body: bytes
) -> tuple[str | int, mt.CallToolRequestParams, str] | None:
    """``(id, params, protocol version)`` of a well-formed ``tools/call`` request the SDK's
    stateless JSON transport would take (JSON accepted, a JSON body, a handshake-era
    protocol version or none); None for anything else."""
    version = _json_era(Headers(scope=scope))
    if version is None or b'"tools/call"' not in body:
        return None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(message, dict)
        or message.keys() - {"jsonrpc", "id", "method", "params"}
        or message.get("jsonrpc") != "2.0"
        or message.get("method") != "tools/call"
        or isinstance(request_id := message.get("id"), bool)
        or not isinstance(request_id, str | int)
        or not isinstance(params := message.get("params"), dict)
    ):
        return None
    try:
        typed = mt.CallToolRequestParams.model_validate(params, by_name=False)
    except ValidationError:
        return None
    return request_id, typed, version


def _accepts_sse(scope: Scope) -> bool:
    accepts = {t.split(";")[0].strip().lower()
               for t in Headers(scope=scope).get("accept", "").split(",")}  # fmt: skip
    return bool({"text/event-stream", "text/*", "*/*"} & accepts)


def _json_era(headers: Headers) -> str | None:
    """The protocol version of a request that accepts JSON and sends it, in a handshake-era
    version (or none: the default); None otherwise."""
    version = headers.get("mcp-protocol-version")
    accepts = {t.split(";")[0].strip().lower() for t in headers.get("accept", "").split(",")}
    sends = headers.get("content-type", "").split(";")[0].strip().lower()
    if (
        (version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS)
        or not {"application/json", "application/*", "*/*"} & accepts
        or sends != "application/json"
    ):
        return None
    return version or DEFAULT_NEGOTIATED_VERSION


def _asks_progress(body: bytes) -> bool:
    """A ``tools/call`` with ``_meta.progressToken`` (the substring first: no parse for the
    rest)."""
    if b"progressToken" not in body:
        return False
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return False
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get("progressToken") is not None


def _refused(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers=headers)


def _origin(url: str) -> str:
    """RFC 6454 §6.2's serialization: scheme, host and a port other than the default."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:  # a malformed port: an origin nobody serves
        return "null"
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")
