"""/v1/audit — the ledger: events, verification, checkpoints, export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from tether.api.deps import PrincipalDep, SeqCursor, ServicesDep
from tether.api.errors import responses
from tether.api.schemas import CheckpointOut, EventPage, VerifyOut
from tether.fields import AwareDatetime
from tether.jsonutil import canonical

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/events", response_model=EventPage, responses=responses(400, 401, 403, 404, 422))
def list_events(
    *,
    svc: ServicesDep,
    who: PrincipalDep,
    agent: Annotated[str | None, Query(max_length=40)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,  # API.md's name
    # RFC 3339 with an offset, as the document's ``date-time`` says (not unix seconds).
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    cursor: SeqCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Annotated[
        Literal["asc", "desc"], Query(description="asc: oldest first (default); desc: newest first")
    ] = "asc",
) -> dict[str, Any]:
    page = svc.audit.events(
        who,
        cursor=cursor,
        limit=limit,
        agent=agent,
        type_=type,
        since=since,
        until=until,
        newest_first=order == "desc",
    )
    return {"items": [e.to_json() for e in page.items], "next_cursor": page.next_cursor}


@router.get("/verify", response_model=VerifyOut, responses=responses(401, 403))
def verify(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.audit.verify(who).to_json()


@router.get("/checkpoints/latest", response_model=CheckpointOut, responses=responses(401, 403, 404))
def latest_checkpoint(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.audit.latest_checkpoint(who).to_json()


@router.post("/checkpoints", response_model=CheckpointOut, responses=responses(401, 403, 404))
def sign_checkpoint(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Sign the current head now (admin); the server also does it every N events / T seconds."""
    cp = svc.audit.checkpoint_now(who)
    if cp is None:
        from tether.errors import NotFound

        raise NotFound("the ledger is empty")
    return cp.to_json()


@router.get(
    "/export",
    responses={
        **responses(401, 403, 422),
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "One event per line, in seq order",
        },
    },
    response_class=StreamingResponse,
)
def export(
    svc: ServicesDep, who: PrincipalDep, format: Literal["jsonl"] = "jsonl"
) -> StreamingResponse:
    events = svc.audit.export(who)
    first = next(events, None)  # authorization errors surface before the stream starts

    def lines() -> Iterator[bytes]:
        if first is not None:
            yield canonical(first.to_json()) + b"\n"
        for ev in events:
            yield canonical(ev.to_json()) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
