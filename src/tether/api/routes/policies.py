"""/v1/policies — the Cedar policy set: read, validate, push (a new version), simulate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field

from tether.api.deps import Limit, PrincipalDep, SeqCursor, ServicesDep
from tether.api.errors import responses
from tether.api.params import PolicyVersion
from tether.fields import NO_NUL, AwareDatetime, StrictModel
from tether.policy import service as policy_service
from tether.policy.service import MAX_DOCUMENT, MAX_SCHEMA
from tether.policy.simulate import simulate

router = APIRouter(prefix="/v1/policies", tags=["policies"])

_DOC = Field(
    max_length=MAX_DOCUMENT, description="Cedar policies (each with a unique @id)", pattern=NO_NUL
)
_SCHEMA = Field(
    default=None, max_length=MAX_SCHEMA, description="Cedar schema (human syntax)", pattern=NO_NUL
)


class PolicyDocument(StrictModel):
    policies: Annotated[str, _DOC]
    schema_: Annotated[str | None, _SCHEMA] = Field(default=None, alias="schema")
    note: Annotated[str | None, Field(max_length=1000, pattern=NO_NUL)] = None


class SimulateIn(StrictModel):
    policies: Annotated[str, _DOC]
    schema_: Annotated[str | None, _SCHEMA] = Field(default=None, alias="schema")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


@router.get("", responses=responses(401))
def current(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.policies.current(who).to_json()


@router.put("", responses=responses(400, 401, 403, 413, 422))
def push(body: PolicyDocument, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """A new immutable version, or 422 ``policy_invalid`` listing every problem (policy id,
    line, message) with nothing changed."""
    version = svc.policies.push(who, policies=body.policies, schema=body.schema_, note=body.note)
    return version.to_json()


@router.post("/validate", responses=responses(400, 401, 413, 422))
def validate(body: PolicyDocument, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Check a document as ``PUT`` would, changing nothing."""
    del who
    schema = body.schema_ if body.schema_ is not None else svc.policies.current().schema
    checked = policy_service.check(body.policies, schema)
    return {"valid": True, "digest": checked.digest, "policies": [p.id for p in checked.policies]}


@router.get("/versions", responses=responses(400, 401, 422))
def versions(
    svc: ServicesDep,
    who: PrincipalDep,
    cursor: SeqCursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    page = svc.policies.versions(who, cursor=cursor, limit=limit)
    return {"items": [v.to_json(full=False) for v in page.items], "next_cursor": page.next_cursor}


@router.get("/versions/{version}", responses=responses(401, 404))
def version(version: PolicyVersion, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.policies.get(who, version).to_json()


@router.post("/simulate", responses=responses(400, 401, 403, 413, 422))
def simulate_route(body: SimulateIn, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Replay the recorded decisions in ``[since, until]`` under the candidate; report each
    that would change, grouped by agent and by policy."""
    schema = body.schema_ if body.schema_ is not None else svc.policies.current().schema
    checked = policy_service.check(body.policies, schema)
    candidate = policy_service.compile_checked("candidate", checked)
    svc.runtime.ensure_current()
    result = simulate(svc.db, svc.decisions, candidate, who, digest=checked.digest,
                      since=body.since, until=body.until)  # fmt: skip
    return result.to_json()
