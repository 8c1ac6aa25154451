"""/v1/approvals — human-in-the-loop checkpoints: list, show (long-poll), approve, deny."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from tether.api.deps import CallerDep, Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import ApprovalId
from tether.fields import NO_NUL, StrictModel

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])
_POLL_SECONDS = 0.25

Status = Literal["pending", "approved", "denied", "expired", "used", "cancelled"]


class Verdict(StrictModel):
    note: Annotated[str | None, Field(max_length=2000, pattern=NO_NUL)] = None


@router.get("", responses=responses(400, 401, 422))
def list_approvals(  # noqa: PLR0917 - FastAPI parameters
    svc: ServicesDep,
    who: CallerDep,
    status: Status | None = None,
    agent: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    page = svc.approvals.list(who.principal, status=status, agent=agent, cursor=cursor,
                              limit=limit)  # fmt: skip
    return {"items": [a.to_json() for a in page.items], "next_cursor": page.next_cursor}


@router.get("/{approval_id}", responses=responses(401, 404, 422))
async def show(
    approval_id: ApprovalId,
    svc: ServicesDep,
    who: CallerDep,
    wait: Annotated[
        float, Query(ge=0, le=60, description="Long-poll up to N seconds while pending")
    ] = 0,
) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        approval = await asyncio.to_thread(svc.approvals.get, who.principal, approval_id)
        if approval.status != "pending" or time.monotonic() >= deadline:
            return approval.to_json()
        await asyncio.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


@router.post("/{approval_id}/approve", responses=responses(400, 401, 403, 404, 409, 422))
def approve(
    approval_id: ApprovalId, body: Verdict, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return svc.approvals.approve(who, approval_id, note=body.note).to_json()


@router.post("/{approval_id}/deny", responses=responses(400, 401, 403, 404, 409, 422))
def deny(
    approval_id: ApprovalId, body: Verdict, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    return svc.approvals.deny(who, approval_id, note=body.note).to_json()
