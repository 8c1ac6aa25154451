"""The gateway's connections to its upstream MCP servers: one long-lived MCP session per
upstream per worker, owned by a supervisor task that connects, lists what the upstream
offers, and reconnects with back-off when the connection breaks.

A request never opens a connection (the MCP client's cancel scopes belong to the task that
opened them): it uses the session the supervisor holds, or fails at once with
:class:`UpstreamDown` while there is none. An upstream that is down does not stop the
gateway from starting, and never touches another upstream.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import anyio
import httpx2
import mcp_types as mt
import orjson
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tether.compensation import Compensation, check_schemas
from tether.errors import TetherError
from tether.gateway.upstream_auth import (
    ClientCredentials,
    StaticHeader,
    UpstreamAuthError,
    upstream_auth,
)
from tether.gateway_config import SecretReader, Upstream

log = logging.getLogger("tether.gateway")
T = TypeVar("T")
_CONNECT_SECONDS = 5.0
_KEEPALIVE_SECONDS = 2.0


class UpstreamDown(Exception):
    """The upstream is not connected (down, or reconnecting)."""


class UpstreamUnconfigured(Exception):
    """The upstream's credential cannot be built (its secret is missing)."""

    def __str__(self) -> str:
        return str(self.args[0])


class _RelaySession(ClientSession):
    """Results go back as the upstream gave them: the agent's client checks them against the
    tool's output schema, the gateway does not (and does not list tools to do so)."""

    async def validate_tool_result(self, name: str, result: Any) -> None:
        return None


class UpstreamLink:
    """One upstream's connection. Its credential (a broker-only secret) is read on every
    connection attempt: a secret put after the gateway started, or rotated, is used from the
    next connection on; a missing one keeps the upstream down, saying why, and retrying."""

    def __init__(self, config: Upstream, read_secret: SecretReader) -> None:
        self.config = config
        self.name = config.name
        self.read_secret = read_secret
        self.known: list[str] = []  # secret values this link sends (hidden from every record)
        self.session: ClientSession | None = None
        self.tools: dict[str, mt.Tool] = {}
        self.resources: dict[str, mt.Resource] = {}
        self.prompts: dict[str, mt.Prompt] = {}
        self.compensations: dict[str, Compensation] = {}  # by tool: what undoes it
        self.last_error: str | None = "not connected yet"
        self._broken = anyio.Event()
        # The raw relay (HTTP upstreams of a handshake-era protocol): the supervisor's relay
        # client and credential, the negotiated version and the session id the upstream gave.
        self._relay: aiohttp.ClientSession | None = None
        self._credential: httpx2.Auth | None = None
        self._version: str | None = None
        self._session_id: str | None = None
        self._ids = itertools.count(1)

    @property
    def up(self) -> bool:
        return self.session is not None

    async def supervise(self) -> None:
        """Connect, list, hold; on any failure wait (0.1 s doubling to 5 s) and connect
        again. Runs until cancelled (the app's lifespan)."""
        backoff = 0.1
        while True:
            try:
                refused: str | None = None
                async with contextlib.AsyncExitStack() as stack:
                    session = await stack.enter_async_context(await self._connect(stack))
                    with anyio.fail_after(_CONNECT_SECONDS + self.config.timeout_seconds):
                        started = await session.initialize()
                        await self._list(session)
                    self.compensations, refused = self._compensations()
                    if refused is None:
                        version = started.protocol_version
                        known = version in HANDSHAKE_PROTOCOL_VERSIONS
                        self._version = version if known else None
                        self.session, self.last_error, backoff = session, None, 0.1
                        log.info("upstream %s connected: %d tools", self.name, len(self.tools))
                        await self._broken.wait()
                if refused is not None:  # out here: not wrapped by the client's tasks
                    self._unconfigured(refused)
            except UpstreamUnconfigured as exc:
                self._unconfigured(str(exc))
            except Exception as exc:  # an upstream's failure is its own: log it, retry
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("upstream %s unavailable: %s", self.name, self.last_error)
            finally:
                self.session, self._broken = None, anyio.Event()
                self._relay = self._credential = self._version = self._session_id = None
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _unconfigured(self, why: str) -> None:
        self.last_error = why[:2000]
        log.warning("upstream %s not configured: %s", self.name, self.last_error)

    async def _connect(self, stack: contextlib.AsyncExitStack) -> ClientSession:
        cfg = self.config
        if cfg.command is not None:
            params = StdioServerParameters(command=cfg.command[0], args=cfg.command[1:],
                                           env=dict(cfg.env) or None)  # fmt: skip
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            assert cfg.url is not None
            # A client of its own: no header of any inbound request can reach it.
            timeout = httpx2.Timeout(cfg.timeout_seconds, connect=_CONNECT_SECONDS)
            auth = await anyio.to_thread.run_sync(self._auth)  # a database read
            # Idle connections dropped before a typical server's keep-alive timeout (uvicorn's
            # and Node's are 5 s): a request on one the upstream has just closed fails.
            limits = httpx2.Limits(keepalive_expiry=_KEEPALIVE_SECONDS)
            http = await stack.enter_async_context(httpx2.AsyncClient(
                auth=auth, timeout=timeout, limits=limits,
                event_hooks={"response": [self._session_of]}))  # fmt: skip
            read, write = await stack.enter_async_context(
                streamable_http_client(cfg.url, http_client=http)
            )
            # tools/call's relay: a client of its own too, aiohttp's (a third of httpx2's CPU
            # a call, bench/README.md), idle connections dropped as above, no redirects.
            self._relay = await stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=_KEEPALIVE_SECONDS),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_SECONDS),
                cookie_jar=aiohttp.DummyCookieJar()))  # fmt: skip
            self._credential = auth
        return _RelaySession(read, write, read_timeout_seconds=cfg.timeout_seconds)

    def _auth(self) -> httpx2.Auth | None:
        """The configured credential, its secret read now (remembered, so no record shows
        it: values read before stay hidden too)."""

        def reading(name: str) -> str:
            value = self.read_secret(name)
            if value not in self.known:
                self.known.append(value)
            return value

        try:
            return upstream_auth(self.config.auth, reading)
        except TetherError as exc:  # a missing secret: down, said why, tried again
            raise UpstreamUnconfigured(exc.message) from None

    async def _list(self, session: ClientSession) -> None:
        caps = session.server_capabilities
        self.tools = {t.name: t for t in (await session.list_tools()).tools}
        if caps is not None and caps.resources is not None:
            self.resources = {str(r.uri): r for r in (await session.list_resources()).resources}
        if caps is not None and caps.prompts is not None:
            self.prompts = {p.name: p for p in (await session.list_prompts()).prompts}

    async def call(self, fn: Callable[[ClientSession], Awaitable[T]]) -> T:
        """``fn(session)`` within the upstream's timeout; :class:`UpstreamDown` when there is
        no session; a broken connection is handed back to the supervisor."""
        session = self.session
        if session is None:
            raise UpstreamDown(f"upstream {self.name} is unavailable ({self.last_error})")
        try:
            with anyio.fail_after(self.config.timeout_seconds):
                return await fn(session)
        except MCPError as exc:
            if exc.error.code == mt.CONNECTION_CLOSED:
                self._broken.set()
            raise
        except (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._broken.set()
            raise

    def _compensations(self) -> tuple[dict[str, Compensation], str | None]:
        """The configured compensations, checked against the tools the upstream lists; and
        why the upstream must not be served (every problem named), if one names a tool it
        does not have, an argument a tool does not take or a result field a tool's output
        schema does not declare."""
        found: dict[str, Compensation] = {}
        problems: list[str] = []
        for name, rule in self.config.tools.items():
            tool = self.tools.get(name)
            if tool is None:
                problems.append(f"tools.{name}: {self.name} has no tool {name!r}")
                continue
            comp = rule.compensation(name)
            if comp is None:
                continue
            undo = self.tools.get(comp.undo)
            output = dict(tool.output_schema) if tool.output_schema else None
            problems += check_schemas(comp, dict(tool.input_schema), output,
                                      dict(undo.input_schema) if undo else None)  # fmt: skip
            found[name] = comp
        if problems:
            return {}, f"upstream {self.name}: " + "; ".join(problems)
        return found, None

    def reversible(self, tool: mt.Tool) -> bool:
        """Whether a call of ``tool`` can be undone: it has a compensation, or it changes
        nothing (read-only) — unless configuration says it is irreversible."""
        rule = self.config.tools.get(tool.name)
        if rule is not None and (rule.irreversible or rule.undo is not None):
            return not rule.irreversible
        return bool(tool.annotations and tool.annotations.read_only_hint)

    async def _session_of(self, response: httpx2.Response) -> None:
        if (sid := response.headers.get("mcp-session-id")) is not None:
            self._session_id = sid

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None, progress: Any = None,
        logs: list[dict[str, Any]] | None = None,
    ) -> mt.CallToolResult:  # fmt: skip
        """``tools/call`` on the upstream. An HTTP upstream speaking a handshake-era protocol
        gets the JSON-RPC message straight on the supervisor's relay client (its credential,
        its session id, the negotiated version: what the SDK's client transport sends),
        without the client session's streams and tasks (~1 ms less per call here); progress
        relays and other transports go through the session. ``logs`` gets the parameters of
        the log notifications the upstream sent on this call's own stream (an SSE answer:
        request-scoped, so they are this call's and no other agent's)."""
        relay, version = self._relay, self._version
        if relay is None or version is None or progress is not None or self.session is None:
            return await self.call(lambda s: s.call_tool(name, arguments,
                                                         progress_callback=progress))  # fmt: skip
        request_id = next(self._ids)
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                             "params": params})  # fmt: skip
        headers = {"accept": "application/json, text/event-stream",
                   "content-type": "application/json", "mcp-protocol-version": version}  # fmt: skip
        if self._session_id is not None:
            headers["mcp-session-id"] = self._session_id
        try:
            with anyio.fail_after(self.config.timeout_seconds):
                status, kind, content = await self._post(relay, body, headers)
        except aiohttp.ClientConnectorError as exc:
            self._broken.set()  # the upstream is gone: the supervisor reconnects
            raise UpstreamDown(f"upstream {self.name} is unreachable ({exc})") from None
        except (aiohttp.ClientError, UpstreamAuthError) as exc:
            # This request's failure (a connection reset under it, a token refused): the
            # call fails, the link and the other calls go on.
            raise MCPError(code=mt.INTERNAL_ERROR,
                           message=f"{type(exc).__name__}: {exc}"[:300]) from None  # fmt: skip
        if status == 404 and self._session_id is not None:
            self._broken.set()  # the upstream forgot the session: connect again
            raise UpstreamDown(f"upstream {self.name} ended its session")
        if status != 200:
            raise MCPError(code=mt.INTERNAL_ERROR, message=f"HTTP {status} from the upstream")
        answer = _answer_to(request_id, kind, content, logs)
        if "error" in answer:
            error = mt.ErrorData.model_validate(answer["error"])
            raise MCPError(code=error.code, message=error.message, data=error.data)
        return mt.CallToolResult.model_validate(answer.get("result"), by_name=False)

    async def _post(
        self, relay: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        """POST ``body`` with the upstream's credential: its status, content type and body. A
        client credential's token is fetched when none is kept, and again once on a 401."""
        assert self.config.url is not None
        credential = self._credential
        for attempt in (1, 2):
            sent = dict(headers)
            if isinstance(credential, StaticHeader):
                sent |= credential.headers()
            elif isinstance(credential, ClientCredentials):
                sent["Authorization"] = f"Bearer {await _token(relay, credential)}"
            async with relay.post(self.config.url, data=body, headers=sent,
                                  allow_redirects=False) as response:  # fmt: skip
                content = await response.read()
                if (sid := response.headers.get("mcp-session-id")) is not None:
                    self._session_id = sid
                if (
                    response.status == 401
                    and attempt == 1
                    and (isinstance(credential, ClientCredentials))
                ):
                    credential.forget()  # revoked upstream: once more with a new token
                    continue
                return response.status, response.headers.get("content-type", ""), content
        raise AssertionError("unreachable: the second attempt returns")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "tools": len(self.tools),
                "error": self.last_error}  # fmt: skip


async def _token(relay: aiohttp.ClientSession, credential: ClientCredentials) -> str:
    """The client credential's token: the one kept, or a new one from its token endpoint."""
    token = credential.fresh()
    if token is not None:
        return token
    url, headers, form = credential.token_request()
    async with relay.post(url, data=form, headers=headers, allow_redirects=False) as got:
        return credential.keep(got.status, await got.read())


def _answer_to(
    request_id: int, content_type: str, content: bytes, logs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON-RPC response to ``request_id`` in a JSON or SSE body (the parameters of the
    log notifications before it into ``logs``, other notifications passed over); MCPError
    when there is none."""
    kind = content_type.split(";", 1)[0].strip().lower()
    try:
        if kind == "application/json":
            messages = [orjson.loads(content)]
        elif kind == "text/event-stream":
            messages = [orjson.loads(data) for data in _sse_data(content.decode())]
        else:
            messages = []
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        messages = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("id") == request_id and ("result" in message or "error" in message):
            return message
        if (
            logs is not None
            and message.get("method") == "notifications/message"
            and isinstance(message.get("params"), dict)
        ):
            logs.append(message["params"])
    raise MCPError(code=mt.INTERNAL_ERROR, message="the upstream's answer was not a response to "
                   "the call")  # fmt: skip


def _sse_data(text: str) -> list[str]:
    """Each SSE event's data (its ``data:`` lines joined)."""
    events: list[str] = []
    lines: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line:
            if lines:
                events.append("\n".join(lines))
            lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    return events
