"""The gateway as the wiring holds it: cheap to build, and the MCP machinery (``mcp``: ~0.8 s
to import) loaded only when upstreams are configured, in the app's lifespan — a deployment
without upstream MCP servers never loads it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from tether.audit.group import GroupCommitter
from tether.gateway.calls import CallRecorder
from tether.gateway_config import SecretReader, Upstream
from tether.policy.decide import DecisionService
from tether.policy.search import SearchService

if TYPE_CHECKING:
    from tether.gateway.service import Gateway


class GatewayHandle:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        decisions: DecisionService,
        committer: GroupCommitter,
        read_secret: SecretReader,
        public_url: str | None = None,
        *,
        calls: CallRecorder | None = None,
        search: SearchService | None = None,
    ) -> None:
        self.upstreams = list(upstreams)
        self.calls = calls
        self.search = search
        self.decisions = decisions
        self.committer = committer
        self.read_secret = read_secret
        self.public_url = public_url  # where agents reach it: the only Origin it accepts
        self.gateway: Gateway | None = None

    @property
    def manager(self) -> Any:
        """The running session manager (None: not running, or no upstreams)."""
        return self.gateway.manager if self.gateway is not None else None

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        if not self.upstreams:
            yield
            return
        if self.gateway is None:
            from tether.gateway.service import Gateway

            self.gateway = Gateway(self.upstreams, self.decisions, self.committer,
                                   self.read_secret, public_url=self.public_url,
                                   calls=self.calls, search=self.search)  # fmt: skip
        async with self.gateway.run():
            yield

    @property
    def links(self) -> dict[str, Any]:
        """The running gateway's upstream links by name (empty when not running)."""
        return self.gateway.links if self.gateway is not None else {}

    def status(self) -> list[dict[str, Any]]:
        return self.gateway.status() if self.gateway is not None else []
