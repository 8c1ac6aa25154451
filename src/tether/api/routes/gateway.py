"""The MCP gateway's discovery (RFC 9728): where an MCP client learns that Tether issues the
tokens ``/mcp`` takes, and for which resource URI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from tether.api.deps import ServicesDep
from tether.gateway.metadata import METADATA_PATH, protected_resource_metadata

router = APIRouter(tags=["gateway"])


class ProtectedResourceOut(BaseModel):
    """RFC 9728 §2 (members may be added)."""

    model_config = ConfigDict(extra="allow")

    resource: str
    authorization_servers: list[str]
    bearer_methods_supported: list[str]
    scopes_supported: list[str]


@router.get(METADATA_PATH, response_model=ProtectedResourceOut)
def protected_resource(svc: ServicesDep) -> JSONResponse:
    """The gateway's protected-resource metadata: its resource URI (the audience its tokens
    must carry, RFC 8707), Tether as its authorization server and the scopes a token for it
    needs (``TETHER_GATEWAY_SCOPE``; none by default)."""
    meta: dict[str, Any] = svc.oauth.metadata()
    required = (svc.settings.gateway_scope or "").split()
    scopes = sorted({*meta.get("scopes_supported", []), *required})
    body = protected_resource_metadata(svc.settings.base_url, meta["issuer"], scopes)
    return JSONResponse(body, headers={"Cache-Control": "max-age=300"})
