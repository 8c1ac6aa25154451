"""/v1/agents/{id}/credentials and /v1/keys (API.md "Agent credentials")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BeforeValidator, Field

from tether.agents.schemas import ScopeToken
from tether.api.deps import PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.errors import ValidationFailed
from tether.fields import StrictModel, integral

router = APIRouter(tags=["credentials"])
AgentId = Annotated[str, Path(min_length=1, max_length=40, description="agt_… id")]
ExpiresIn = Annotated[int, Field(ge=60, le=366 * 86_400), BeforeValidator(integral)]


class CredentialCreate(StrictModel):
    type: Literal["api_key", "public_key"]
    jwk: dict[str, Any] | None = Field(default=None, description="public JWK (public_key)")
    expires_in: ExpiresIn | None = None
    scopes: Annotated[list[ScopeToken], Field(max_length=100)] | None = None


@router.post("/v1/agents/{agent_id}/credentials", status_code=201,
             responses=responses(400, 401, 403, 404, 409, 413, 422))  # fmt: skip
def create_credential(
    agent_id: AgentId, body: CredentialCreate, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """An API key (its ``client_secret`` is shown only here) or a public key for
    ``private_key_jwt``. The ``client_id`` is the agent id."""
    if body.type == "api_key":
        if body.jwk is not None:
            raise ValidationFailed("jwk is only for type public_key", field="jwk")
        cred, secret = svc.credentials.create_api_key(
            who, agent_id, expires_in=body.expires_in, scopes=body.scopes
        )
        return {**cred.to_json(), "client_secret": secret}
    if body.jwk is None:
        raise ValidationFailed("jwk is required for type public_key", field="jwk")
    cred = svc.credentials.create_public_key(
        who, agent_id, jwk=body.jwk, expires_in=body.expires_in, scopes=body.scopes
    )
    return cred.to_json()


@router.get("/v1/agents/{agent_id}/credentials", responses=responses(401, 403, 404, 422))
def list_credentials(agent_id: AgentId, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    items = [c.to_json() for c in svc.credentials.list(who, agent_id)]
    return {"items": items, "next_cursor": None}


@router.delete("/v1/agents/{agent_id}/credentials/{credential_id}",
               responses=responses(401, 403, 404, 422))  # fmt: skip
def delete_credential(
    agent_id: AgentId,
    credential_id: Annotated[str, Path(min_length=1, max_length=40)],
    svc: ServicesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    return svc.credentials.delete(who, agent_id, credential_id).to_json()


@router.get("/v1/keys", responses=responses(401, 403))
def list_keys(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return {"items": [k.to_json() for k in svc.signing_keys.list(who)], "next_cursor": None}


@router.post("/v1/keys/rotate", responses=responses(401, 403))
def rotate_keys(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Promote the published next key, retire the active one (kept in the JWKS until its
    last token expires), publish a new next key."""
    return svc.signing_keys.rotate(who)
