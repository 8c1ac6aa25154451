"""/v1/audit — the ledger: events, verification, checkpoints, export, retention."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from tether.api.deps import PrincipalDep, SeqCursor, ServicesDep
from tether.api.errors import responses
from tether.api.schemas import CheckpointOut, EventPage, VerifyOut
from tether.audit.retention_rule import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, retention_problem
from tether.fields import AwareDatetime, StrictModel
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


class PruneRequest(StrictModel):
    dry_run: bool = Field(default=False, description="Only say what would be pruned.")
    retention_days: Annotated[int, Field(ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS)] | None = (
        Field(
            default=None,
            description="Prune events older than this many days (default: the configured "
            f"TETHER_LEDGER_RETENTION_DAYS); never under {MIN_RETENTION_DAYS} (six months: EU "
            "AI Act Art. 19, 26(6)).",
        )
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _at_least_six_months(cls, value: object) -> object:
        # Before the bounds: the 422 says why six months, not only "greater than or equal".
        if type(value) is int and (problem := retention_problem(value)):
            raise PydanticCustomError("retention_period", problem)
        return value


class PruneOut(BaseModel):
    """What was (or, with ``dry_run``, would be) pruned: events ``first_seq..last_seq``
    (none: both null), ``head_hash`` the last one's, ``checkpoint`` the one signed at that
    cut, which the first kept event follows; ``held_by`` the hold that kept older events."""

    dry_run: bool
    retention_days: int
    cutoff: str
    pruned: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str | None
    held_by: str | None
    held_from_seq: int | None
    checkpoint: CheckpointOut | None
    event_id: str | None


@router.post("/prune", response_model=PruneOut, responses=responses(400, 401, 403, 409, 422))
def prune(svc: ServicesDep, who: PrincipalDep, body: PruneRequest | None = None) -> dict[str, Any]:
    """Delete the events older than the retention period, keeping a signed checkpoint at the
    cut where verification starts (admin); the server also does it daily when configured."""
    body = body or PruneRequest()
    report = svc.retention.prune(who, retention_days=body.retention_days, dry_run=body.dry_run)
    return report.to_json()
