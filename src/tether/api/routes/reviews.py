"""/v1/reviews — access review campaigns (tether.governance.reviews): start one, read them and
their progress, an owner's inbox, answer a line, confirm a reduce or retire, close."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel

from tether.api.deps import Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.governance.review_schemas import AnswerIn, CloseIn, ConfirmIn, ReviewCreate
from tether.ids import IdPrefix, id_pattern

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
_READ = responses(400, 401, 403, 404, 422)
_WRITE = responses(400, 401, 403, 404, 409, 413, 422)


def _id(prefix: IdPrefix, what: str) -> Any:
    return Path(
        min_length=1,
        max_length=40,
        description=f"{prefix}_… id of {what}",
        json_schema_extra={"pattern": id_pattern(prefix)},
    )


ReviewId = Annotated[str, _id(IdPrefix.REVIEW, "an access review")]
LineId = Annotated[str, _id(IdPrefix.REVIEW_LINE, "a line of an access review")]


class ProgressOut(BaseModel):
    lines: int
    open: int
    awaiting_confirmation: int
    settled: int


class LineOut(BaseModel):
    id: str
    review_id: str
    agent_id: str
    agent_name: str | None
    owner: str
    kind: Literal["permission", "role", "credential", "delegation"]
    subject: str
    detail: dict[str, Any]
    last_used_at: str | None
    last_used_seq: int | None
    state: Literal["open", "answered", "settled"]
    answer: Literal["keep", "reduce", "retire"] | None
    note: str | None
    answered_by: str | None
    answered_at: str | None
    answer_seq: int | None
    outcome: str | None
    applied_by: str | None
    applied_at: str | None
    applied_seq: int | None


class ReviewOut(BaseModel):
    id: str
    status: Literal["open", "closed"]
    scope: dict[str, Any]
    note: str | None
    policy_version: str
    created_by: str
    created_at: str
    due: str
    overdue: bool
    started_seq: int
    closed_by: str | None
    closed_at: str | None
    closed_seq: int | None
    progress: ProgressOut
    lines: list[LineOut] | None = None


class ReviewPage(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None


class LinePage(BaseModel):
    items: list[LineOut]
    next_cursor: str | None


@router.post("", status_code=201, response_model=ReviewOut, responses=_WRITE)
def start_review(body: ReviewCreate, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Start a campaign (an admin): a line per permission, role, credential and delegation of
    each agent in scope, snapshotted now with its last use."""
    return svc.reviews.start(who, body).to_json()


@router.get("", response_model=ReviewPage, responses=_READ)
def list_reviews(
    *,
    svc: ServicesDep,
    who: PrincipalDep,
    cursor: Cursor = None,
    limit: Limit = 50,
    status: Literal["open", "closed", "overdue"] | None = None,
) -> dict[str, Any]:
    """Newest first (a supervisor: the reviews holding lines of their agents, counted so)."""
    page = svc.reviews.list(who, status=status, cursor=cursor, limit=limit)
    return {"items": [r.to_json() for r in page.items], "next_cursor": page.next_cursor}


@router.get("/inbox", response_model=LinePage, responses=_READ)
def review_inbox(
    svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    """The caller's open lines: unanswered or awaiting confirmation, in open reviews, of the
    agents they own or supervise."""
    page = svc.reviews.inbox(who, cursor=cursor, limit=limit)
    return {"items": [line.to_json() for line in page.items], "next_cursor": page.next_cursor}


@router.get("/{review_id}", response_model=ReviewOut, responses=_READ)
def get_review(review_id: ReviewId, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """The review, its progress and its lines with their answers (a supervisor: theirs)."""
    return svc.reviews.get(who, review_id).to_json()


@router.post("/{review_id}/lines/{line_id}/answer", response_model=LineOut, responses=_WRITE)
def answer_line(
    review_id: ReviewId, line_id: LineId, body: AnswerIn, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """Answer a line keep, reduce or retire, with a note (the agent's owner or a supervisor
    of it, or an admin); reduce and retire act only once confirmed."""
    return svc.reviews.answer(who, review_id, line_id, body.answer, note=body.note).to_json()


@router.post("/{review_id}/lines/{line_id}/confirm", response_model=LineOut, responses=_WRITE)
def confirm_line(
    review_id: ReviewId,
    line_id: LineId,
    svc: ServicesDep,
    who: PrincipalDep,
    body: ConfirmIn | None = None,
) -> dict[str, Any]:
    """Carry out a reduce (exactly what the line names) or a retire; 409 for a line with no
    such answer awaiting confirmation."""
    note = body.note if body else None
    return svc.reviews.confirm(who, review_id, line_id, note=note).to_json()


@router.post("/{review_id}/close", response_model=ReviewOut, responses=_WRITE)
def close_review(
    review_id: ReviewId, svc: ServicesDep, who: PrincipalDep, body: CloseIn | None = None
) -> dict[str, Any]:
    """Close a review by hand (an admin); it closes by itself once every line is settled."""
    return svc.reviews.close(who, review_id, note=body.note if body else None).to_json()
