"""How the gateway names its upstreams' tools and prompts to agents, and back.

An upstream's tool ``search`` is ``<server>.search`` on the wire, unless the upstream is
configured with ``prefix = false`` (at most one is): then it is ``search``. A name is
resolved prefix first — ``<server>.<local>`` for a prefixed upstream named ``<server>`` —
and otherwise belongs to the unprefixed upstream; an unprefixed tool whose name starts
with a prefixed upstream's ``<server>.`` is therefore shadowed, and not listed.

Policy and the ledger name a tool ``<server>.<tool>`` whatever the wire name
(``Tool::"<server>.<tool>"``, ``Prompt::"<server>.<prompt>"``): turning the prefix off
changes no policy and no record.
"""

from __future__ import annotations

from collections.abc import Mapping

import mcp_types as mt
from mcp.shared.exceptions import MCPError

from tether.gateway.upstreams import UpstreamLink


class Names:
    """Over the running links, keyed by upstream name (replaced as a whole on each start)."""

    def __init__(self, links: Mapping[str, UpstreamLink]) -> None:
        self.links = links
        self.bare = next((k for k in links.values() if not k.config.prefix), None)

    @staticmethod
    def policy_id(link: UpstreamLink, local: str) -> str:
        """The id policy and the ledger know it by: ``<server>.<local>``."""
        return f"{link.name}.{local}"

    @staticmethod
    def wire(link: UpstreamLink, local: str) -> str:
        """The name an agent sees and calls."""
        return f"{link.name}.{local}" if link.config.prefix else local

    def shown(self, link: UpstreamLink, local: str) -> bool:
        """False for an unprefixed name that a prefixed upstream's namespace shadows."""
        return link.config.prefix or self._prefixed(local) is None

    def split(self, name: str, kind: str = "tool") -> tuple[UpstreamLink, str]:
        """The link and local name ``name`` stands for; INVALID_PARAMS if none (the tool or
        prompt itself may still be unknown to that upstream)."""
        found = self._prefixed(name)
        if found is not None:
            return found
        if self.bare is not None and name:
            return self.bare, name
        raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown {kind}: {name}")

    def _prefixed(self, name: str) -> tuple[UpstreamLink, str] | None:
        server, dot, local = name.partition(".")
        link = self.links.get(server)
        if link is None or not link.config.prefix or not dot or not local:
            return None
        return link, local
