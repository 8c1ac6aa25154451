"""The gateway as an OAuth protected resource (the MCP authorization spec; RFC 9728, RFC 8707).

``/mcp`` is a resource: its URI is the audience an agent's token must carry (a token asked
for with ``resource=<that URI>``); a request without a valid token gets 401 with
``WWW-Authenticate: Bearer resource_metadata="<metadata URL>"``, and the metadata names
Tether as the authorization server, so an MCP client finds where to get a token.
"""

from __future__ import annotations

import re
from typing import Any

PATH = "/mcp"
CALLER = "tether.caller"  # scope["state"] key the gate puts the authenticated caller under
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"  # RFC 9728 §3.1: suffix = path
_NOT_QUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def resource_uri(base_url: str) -> str:
    return f"{base_url.rstrip('/')}{PATH}"


def metadata_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}{METADATA_PATH}"


def protected_resource_metadata(base_url: str, issuer: str, scopes: list[str]) -> dict[str, Any]:
    """RFC 9728 §2: what a client needs to get a token for the gateway."""
    return {
        "resource": resource_uri(base_url),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "resource_name": "Tether MCP gateway",
    }


def challenge(
    base_url: str, *, error: str | None = None, description: str | None = None,
    scope: str | None = None,
) -> str:  # fmt: skip
    """The ``WWW-Authenticate`` value of a 401 or 403 (RFC 9728 §5.1, RFC 6750 §3): where the
    metadata is and, when the gateway requires scopes, which (the MCP spec: all of them)."""
    parts = [f'resource_metadata="{metadata_url(base_url)}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + _quotable(description) + '"')
    if scope:
        parts.append(f'scope="{_quotable(scope)}"')
    return "Bearer " + ", ".join(parts)


def _quotable(value: str) -> str:
    """RFC 6750 §3: a quoted value holds %x20-21 / %x23-5B / %x5D-7E only."""
    return _NOT_QUOTABLE.sub("?", value.replace('"', "'"))
