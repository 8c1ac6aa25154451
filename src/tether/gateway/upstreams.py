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
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx2
import mcp_types as mt
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tether.errors import TetherError
from tether.gateway.upstream_auth import upstream_auth
from tether.gateway_config import SecretReader, Upstream

log = logging.getLogger("tether.gateway")
T = TypeVar("T")
_CONNECT_SECONDS = 5.0


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
        self.last_error: str | None = "not connected yet"
        self._broken = anyio.Event()

    @property
    def up(self) -> bool:
        return self.session is not None

    async def supervise(self) -> None:
        """Connect, list, hold; on any failure wait (0.1 s doubling to 5 s) and connect
        again. Runs until cancelled (the app's lifespan)."""
        backoff = 0.1
        while True:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    session = await stack.enter_async_context(await self._connect(stack))
                    with anyio.fail_after(_CONNECT_SECONDS + self.config.timeout_seconds):
                        await session.initialize()
                        await self._list(session)
                    self.session, self.last_error, backoff = session, None, 0.1
                    log.info("upstream %s connected: %d tools", self.name, len(self.tools))
                    await self._broken.wait()
            except UpstreamUnconfigured as exc:
                self.last_error = str(exc)[:300]
                log.warning("upstream %s not configured: %s", self.name, self.last_error)
            except Exception as exc:  # an upstream's failure is its own: log it, retry
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("upstream %s unavailable: %s", self.name, self.last_error)
            finally:
                self.session, self._broken = None, anyio.Event()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

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
            http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth, timeout=timeout))
            read, write = await stack.enter_async_context(
                streamable_http_client(cfg.url, http_client=http)
            )
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

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "tools": len(self.tools),
                "error": self.last_error}  # fmt: skip
