"""/v1/revocations — the revocation feed for resource servers (API.md "Revocation feed")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, WithJsonSchema

from tether.api.deps import CallerDep, ServicesDep
from tether.api.errors import responses
from tether.revocations.feed import FeedPage, may_follow, parse_cursor

router = APIRouter(prefix="/v1/revocations", tags=["revocations"])
# The pattern is the document's; the feed applies it (400 invalid_cursor), as every list does.
_CURSOR = Annotated[str, WithJsonSchema({"type": "string", "pattern": "^[0-9]{0,18}$"})]
Since = Annotated[
    _CURSOR | None,
    Query(description="next_cursor of the previous read; absent: the whole current state"),
]
_POLL_SECONDS = 0.05  # how often a stream looks at this worker's change-feed position
HEARTBEAT_SECONDS = 2.0  # a stream proves it is current at least this often


class ItemOut(BaseModel):
    type: Literal["agent", "token", "all", "lease"]
    id: str
    state: str
    time: str
    exp: int | None = None
    reason: str | None = None


class FeedOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str
    reset: bool
    more: bool


@router.get(
    "",
    response_model=FeedOut,
    response_model_exclude_none=True,
    responses=responses(400, 401, 403, 422),
)
async def revocations(
    svc: ServicesDep,
    who: CallerDep,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """What to stop honouring since ``since`` — revoked token ids, agents not active or frozen,
    and whether everything is frozen — each with its time; ``reset`` when this is the whole
    state (no cursor, or one older than the feed keeps). Ids only, never tokens."""
    may_follow(who.principal, who.claims)
    cursor = parse_cursor(since)
    page = await asyncio.to_thread(svc.revocations.read, cursor, limit=limit)
    return page.to_json()


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def _page_events(page: FeedPage) -> list[bytes]:
    """A reset (if any), then each item; only the last event carries the cursor, so a reader
    cut off mid-page resumes from before it (items are states: applying one twice is fine)."""
    out = [_sse("reset", {})] if page.reset else []
    items = [i.to_json() for i in page.items]
    for n, item in enumerate(items):
        out.append(_sse("revocation", item, str(page.cursor) if n == len(items) - 1 else None))
    return out


@router.get(
    "/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
               **responses(400, 401, 403, 422)},
)  # fmt: skip
async def revocation_stream(
    request: Request,
    svc: ServicesDep,
    who: CallerDep,
    since: Since = None,
    last_event_id: Annotated[
        _CURSOR, Header(description="the id of the last event received (a cursor)")
    ] = "",
) -> StreamingResponse:
    """The feed as server-sent events: ``revocation`` events (the items), ``reset`` before a
    whole state, and ``current`` at least every two seconds while this worker is current (a
    follower that hears none for its bound must not trust what it holds). Reconnect with
    ``Last-Event-ID`` (or ``since``) to resume."""
    may_follow(who.principal, who.claims)
    cursor = parse_cursor(since)
    if last_event_id:  # an EventSource reconnecting: it wins over the query
        cursor = parse_cursor(last_event_id, field="Last-Event-ID")
    feed, runtime = svc.revocations, svc.runtime

    async def events() -> AsyncIterator[bytes]:
        page = await asyncio.to_thread(feed.read, cursor)
        position = page.cursor
        for chunk in _page_events(page):
            yield chunk
        beat = 0.0
        while not await request.is_disconnected():
            if runtime.last_seq > position:
                page = await asyncio.to_thread(feed.read, position)
                position = page.cursor
                for chunk in _page_events(page):
                    yield chunk
                if page.more:
                    continue
            now = time.monotonic()
            if now - beat >= HEARTBEAT_SECONDS:
                beat = now
                if runtime.current():
                    yield _sse("current", {"cursor": str(position)}, str(position))
                else:
                    yield b": this worker is not current\n\n"
            await asyncio.sleep(_POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
