"""The gateway as an OAuth protected resource (the MCP authorization spec; RFC 9728, RFC 8707).

``/mcp`` is a resource: its URI is the audience an agent's token must carry (a token asked
for with ``resource=<that URI>``); a request without a valid token gets 401 with
``WWW-Authenticate: Bearer resource_metadata="<metadata URL>"``, and the metadata names
Tether as the authorization server, so an MCP client finds where to get a token.
"""

from __future__ import annotations

from typing import Any

PATH = "/mcp"
CALLER = "tether.caller"  # scope["state"] key the gate puts the authenticated caller under
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"  # RFC 9728 §3.1: suffix = path


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


def challenge(base_url: str, *, error: str | None = None, description: str | None = None) -> str:
    """The ``WWW-Authenticate`` value of a 401 (RFC 9728 §5.1, RFC 6750 §3)."""
    parts = [f'resource_metadata="{metadata_url(base_url)}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace('"', "'") + '"')
    return "Bearer " + ", ".join(parts)
