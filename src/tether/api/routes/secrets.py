"""/v1/secrets — the secrets broker (API.md "Secrets"): admins keep secrets, admins and
auditors see their metadata and leases, agents read values that policy lets them read."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BeforeValidator, Field, StringConstraints
from starlette.convertors import Convertor, register_url_convertor

from tether.api.deps import CallerDep, Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import LeaseId
from tether.api.requestlog import request_id
from tether.clock import to_micros
from tether.fields import NO_NUL, StrictModel, integral
from tether.secrets.databases import CREATION_PATTERN, REVOCATION_PATTERN
from tether.secrets.service import SecretInput
from tether.secrets.values import (
    LABEL_PATTERN,
    MAX_DESCRIPTION,
    MAX_LABELS,
    NAME_PATTERN,
    RESERVED,
)

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


class _NameConvertor(Convertor[str]):
    """A secret's name in a path: never one of the API's own segments under /v1/secrets/
    (``leases``…), so ``/v1/secrets/leases`` routes only to the leases and a 405 there lists
    only their methods."""

    regex = "(?!(?:" + "|".join(re.escape(r) for r in sorted(RESERVED)) + ")(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("secret", _NameConvertor())

_NAME_PATH = Path(
    min_length=1,
    max_length=128,
    description="The secret's name",
    json_schema_extra={"pattern": NAME_PATTERN},
)
SecretName = Annotated[str, _NAME_PATH]
_IDENT_PATTERN = "^[a-z][a-z0-9_-]{0,63}$"
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]


class SecretIn(StrictModel):
    """A new version. Omitted fields keep what the secret has (defaults for a new one)."""

    value: str = Field(
        min_length=1, pattern=NO_NUL, description="The value (UTF-8 text, no NUL); never shown"
    )
    description: Annotated[str | None, Field(max_length=MAX_DESCRIPTION, pattern=NO_NUL)] = None
    labels: Annotated[list[Label] | None, Field(max_length=MAX_LABELS)] = None
    broker_only: bool | None = None
    lease_seconds: Annotated[int | None, Field(ge=1, le=30 * 86_400), BeforeValidator(integral)] = (
        None
    )


class RevokeIn(StrictModel):
    reason: Annotated[str | None, Field(max_length=200, pattern=NO_NUL)] = None


@router.get("", responses=responses(400, 401, 403, 422))
def list_secrets(
    svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    page = svc.secrets.page(who, cursor=cursor, limit=limit)
    return {"items": [i.to_json() for i in page.items], "next_cursor": page.next_cursor}


@router.post("/rotate-master-key", responses=responses(401, 403))
def rotate_master_key(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Re-wrap every data key under a new secrets master key (admin); reads go on."""
    return svc.secrets.rotate_master_key(who)


@router.get("/leases", responses=responses(400, 401, 403, 422))
def list_leases(  # noqa: PLR0917 - FastAPI parameters
    svc: ServicesDep,
    who: CallerDep,
    agent: Annotated[str | None, Query(max_length=40)] = None,
    secret: Annotated[str | None, Query(max_length=128)] = None,
    active: bool = False,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    page, now_us = svc.secrets.leases(who.principal, agent=agent, name=secret, active=active,
                                      cursor=cursor, limit=limit)  # fmt: skip
    return {"items": [x.to_json(now_us) for x in page.items], "next_cursor": page.next_cursor}


@router.get("/leases/{lease_id}", responses=responses(401, 403, 404, 422))
def show_lease(lease_id: LeaseId, svc: ServicesDep, who: CallerDep) -> dict[str, Any]:
    lease, now_us = svc.secrets.lease(who.principal, lease_id)
    return lease.to_json(now_us)


@router.post("/leases/{lease_id}/renew", responses=responses(401, 403, 404, 409, 422, 429))
async def renew_lease(
    lease_id: LeaseId, svc: ServicesDep, who: CallerDep, request: Request
) -> dict[str, Any]:
    """Another lease period, asked of policy again, for the agent holding the lease."""
    lease = await svc.secrets.renew(who, lease_id, request_id=request_id(request.scope))
    return lease.to_json(to_micros(svc.clock.now()))


@router.post("/leases/{lease_id}/revoke", responses=responses(400, 401, 403, 404, 422))
def revoke_lease(
    lease_id: LeaseId, svc: ServicesDep, who: CallerDep, body: RevokeIn | None = None
) -> dict[str, Any]:
    """End a lease (an admin, or the agent giving its own back); the revocation feed names it."""
    lease = svc.secrets.revoke_lease(who.principal, lease_id, reason=body.reason if body else None)
    return lease.to_json(to_micros(svc.clock.now()))


class ConnectionIn(StrictModel):
    dsn_secret: Annotated[str, StringConstraints(pattern=NAME_PATTERN)] = Field(
        description="The secret holding the admin DSN (best broker-only)"
    )


class RoleIn(StrictModel):
    connection: Annotated[str, StringConstraints(pattern=_IDENT_PATTERN)]
    creation: Annotated[str, Field(max_length=20_000, pattern=CREATION_PATTERN)]
    revocation: Annotated[str | None, Field(max_length=20_000, pattern=REVOCATION_PATTERN)] = None
    ttl_seconds: Annotated[int, Field(ge=10, le=30 * 86_400), BeforeValidator(integral)] = 3600


Ident = Annotated[
    str, Path(min_length=1, max_length=64, json_schema_extra={"pattern": _IDENT_PATTERN})
]


@router.put("/db/connections/{name}", responses=responses(400, 401, 403, 422))
def put_connection(
    name: Ident, body: ConnectionIn, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """Register a database the broker mints logins on (admin)."""
    return svc.db_logins.put_connection(who, name, dsn_secret=body.dsn_secret)


@router.put("/db/roles/{name}", responses=responses(400, 401, 403, 422))
def put_role(name: Ident, body: RoleIn, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """A kind of login agents may lease: SQL templates to create and drop it (admin)."""
    return svc.db_logins.put_role(
        who, name, connection=body.connection, creation=body.creation,
        revocation=body.revocation, ttl_seconds=body.ttl_seconds,
    )  # fmt: skip


@router.get("/db/roles", responses=responses(401, 403))
def list_roles(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return {"items": svc.db_logins.roles(who), "next_cursor": None}


@router.post(
    "/db/{role}/lease", status_code=201, responses=responses(401, 403, 404, 422, 429, 500, 502)
)
async def lease_login(role: Ident, svc: ServicesDep, who: CallerDep, request: Request) -> Response:
    """A fresh database login for the agent, existing only for its lease (``secret.lease`` on
    ``DatabaseRole::"<role>"``): ``{lease_id, username, password, host, port, database,
    expires_in}``. The password is shown here once and kept nowhere."""
    login = await svc.db_logins.lease(who, role, request_id=request_id(request.scope))
    response = _no_store(login.to_json())
    response.status_code = 201
    return response


@router.put(
    "/{name:secret}", status_code=201,
    responses={200: {"description": "A new version of an existing secret"},
               **responses(400, 401, 403, 413, 422)},
)  # fmt: skip
def put_secret(
    name: SecretName, body: SecretIn, response: Response, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    given = SecretInput(body.value.encode(), body.description, body.labels, body.broker_only,
                        body.lease_seconds)  # fmt: skip
    info, created = svc.secrets.put(who, name, given)
    if not created:
        response.status_code = 200
    return info.to_json()


@router.get("/{name:secret}", responses=responses(401, 403, 404, 422))
def show_secret(name: SecretName, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.secrets.get(who, name).to_json()


@router.get("/{name:secret}/versions", responses=responses(401, 403, 404, 422))
def secret_versions(name: SecretName, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    versions = svc.secrets.versions(who, name)
    return {"items": [v.to_json() for v in versions], "next_cursor": None}


@router.get("/{name:secret}/value", responses=responses(401, 403, 404, 422, 429, 500))
async def read_value(
    name: SecretName,
    svc: ServicesDep,
    who: CallerDep,
    request: Request,
    version: Annotated[int | None, Query(ge=1, le=2_000_000_000)] = None,
) -> Response:
    """The value, for an agent that policy lets read it (``secret.read`` on
    ``Secret::"<name>"``), under a new lease: ``{value, version, lease_id, expires_in}``."""
    got = await svc.secrets.read(who, name, version=version, request_id=request_id(request.scope))
    # Not cached anywhere on the way back (RFC 9111 section 5.2.2.5).
    return _no_store(got.to_json())


@router.delete("/{name:secret}", responses=responses(401, 403, 404, 422))
def delete_secret(name: SecretName, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Every version dropped for good and its leases revoked; the name may be put again."""
    return svc.secrets.delete(who, name).to_json()


def _no_store(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})  # fmt: skip
