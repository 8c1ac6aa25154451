"""/v1/alerts — notable events raised from the ledger: read, acknowledge, follow live; the
webhook deliveries' dead-letter list and its replay (tether.alerts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from tether.api.deps import Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.fields import NO_NUL, SAFE_INT, StrictModel, integral
from tether.ids import IdPrefix, id_pattern

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])
AlertId = Annotated[str, StringConstraints(max_length=40, pattern=id_pattern(IdPrefix.ALERT))]


class AlertOut(BaseModel):
    id: str
    seq: int
    event_id: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    agent_id: str | None
    summary: str
    details: dict[str, Any]
    suppressed: int
    created_at: str
    last_at: str
    acked_by: str | None
    acked_by_name: str | None
    acked_at: str | None
    ack_note: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


class AckIn(StrictModel):
    note: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = None


class ReplayIn(StrictModel):
    ids: list[Annotated[int, Field(ge=1, le=SAFE_INT), BeforeValidator(integral)]] | None = Field(
        default=None, max_length=1000, description="Which dead deliveries; absent: all."
    )


class DeadLetterOut(BaseModel):
    id: int
    alert_id: str
    kind: str
    summary: str
    attempts: int
    last_error: str | None
    receiver: str


@router.get("", response_model=AlertPage, responses=responses(400, 401, 403, 422))
def list_alerts(
    *, svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50,
    status: Literal["open", "acked"] | None = None,
    agent: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
) -> dict[str, Any]:  # fmt: skip
    """Newest first: every alert for admins and auditors, their agents' for a supervisor."""
    page = svc.alerts.list(who, status=status, agent=agent, cursor=cursor, limit=limit)
    return {"items": [a.to_json() for a in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/stream", response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
               **responses(401, 403)},
)  # fmt: skip
async def stream_alerts(request: Request, svc: ServicesDep, who: PrincipalDep) -> Any:
    """New alerts as they are raised (server-sent events): first ``event: head`` (the newest
    alert's seq when the stream began), then an ``event: alert`` per alert."""
    start = await anyio.to_thread.run_sync(svc.alerts.head)
    await anyio.to_thread.run_sync(lambda: svc.alerts.after(who, start))  # may they read?

    async def events() -> AsyncIterator[bytes]:
        seen = start
        yield b"event: head\ndata: " + orjson.dumps({"seq": start}) + b"\n\n"
        while not await request.is_disconnected():
            found = await anyio.to_thread.run_sync(svc.alerts.after, who, seen)
            for alert in found:
                seen = max(seen, alert.seq)
                yield b"event: alert\ndata: " + orjson.dumps(alert.to_json()) + b"\n\n"
            await asyncio.sleep(0.5)

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post("/{alert_id}/ack", response_model=AlertOut,
             responses=responses(400, 401, 403, 404, 413, 422))  # fmt: skip
def ack_alert(alert_id: AlertId, body: AckIn, svc: ServicesDep, who: PrincipalDep) -> Any:
    """Acknowledge an alert (an admin, or a supervisor of its agent): recorded, and it stops
    folding later ones into itself."""
    return svc.alerts.ack(who, alert_id, note=body.note).to_json()


@router.get("/deliveries/dead", response_model=list[DeadLetterOut],
            responses=responses(401, 403))  # fmt: skip
def dead_letters(svc: ServicesDep, who: PrincipalDep) -> Any:
    """Deliveries given up on (their receiver was down past TETHER_ALERT_DEAD_AFTER_HOURS)."""
    return svc.alerts.dead_letters(who)


@router.post("/deliveries/replay", responses=responses(400, 401, 403, 413, 422))
def replay(body: ReplayIn, svc: ServicesDep, who: PrincipalDep) -> dict[str, int]:
    """Send dead-lettered deliveries again, in their order (an admin; recorded)."""
    return {"replayed": svc.alerts.replay(who, body.ids)}
