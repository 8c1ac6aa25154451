"""The console's governance pages (issue 20, item 7): recertifications overdue and due soon,
the signed-in human's access-review inbox (answered line by line, reduce and retire then
confirmed) and the campaigns, an agent's right-sizing with its simulation, and the compliance
report's download. Each page asks the same services as the API, as the signed-in human: the
services decide who may read and act (an auditor reads, a POST of theirs is refused; a
supervisor sees their agents' lines only)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tether.agents.values import Agent
from tether.api.console import session as cs
from tether.api.console.kit import FLASH, Signed, back, render, run, services_of
from tether.errors import TetherError, ValidationFailed
from tether.governance.report import require_reader
from tether.governance.report_render import Format, filename
from tether.governance.report_render import render as render_report
from tether.governance.review_schemas import ReviewCreate
from tether.governance.review_values import Line
from tether.governance.rightsizing import DEFAULT_DAYS
from tether.principals import Role

router = APIRouter(include_in_schema=False)
SOON_DAYS = 30  # "due soon": within this many days
LISTED = 200  # agents per list on the governance page
FLASH.update({
    "recertified": "Recertified: its next recertification date moved on; on the record.",
    "review-started": "Access review started: each owner finds its lines in their inbox.",
    "review-closed": "Access review closed: unanswered lines stay unanswered.",
    "answered": "Answer recorded. A reduce or retire acts only once confirmed.",
    "confirmed": "Confirmed and carried out: exactly what the line names.",
    "rightsized": "Right-sizing applied: the narrower policies and the agent's roles and scopes "
    "are in force.",
})  # fmt: skip


def _error(request: Request, visit: cs.Visit, exc: TetherError) -> Response:
    """The error page, its message led by the field it is about."""
    return render(request, "error.html", visit, http_status=exc.http_status,
                  message=exc.diagnostic(), code=exc.code)  # fmt: skip


def _note(fields: dict[str, str]) -> str | None:
    """The form's ``note``, None if blank; :class:`ValidationFailed` if too long or with NUL."""
    note = (fields.get("note") or "").strip()
    if len(note) > 2000 or "\x00" in note:
        raise ValidationFailed("note is at most 2000 characters, without NUL", field="note")
    return note or None


def _required_note(fields: dict[str, str]) -> str:
    note = _note(fields)
    if note is None:
        raise ValidationFailed("note is required: say why", field="note")
    return note


# -- recertification ------------------------------------------------------------------------------


@router.get("/console/governance")
def governance(request: Request, visit: Signed) -> Response:
    svc, me = services_of(request), visit.principal
    try:
        overdue = svc.agents.list(me, recertify_due_within=0, limit=LISTED)
        due = svc.agents.list(me, recertify_due_within=SOON_DAYS, limit=LISTED)
    except TetherError as exc:
        return _error(request, visit, exc)
    late = {a.id for a in overdue.items}
    soon = [a for a in due.items if a.id not in late]
    return render(request, "governance.html", visit, overdue=_by_due(overdue.items),
                  soon=_by_due(soon), more=bool(overdue.next_cursor or due.next_cursor),
                  soon_days=SOON_DAYS, listed=LISTED)  # fmt: skip


def _by_due(agents: list[Agent]) -> list[dict[str, Any]]:
    far = datetime.max.replace(tzinfo=UTC)
    return [a.to_json() for a in sorted(agents, key=lambda a: (a.recertify_by or far, a.id))]


@router.post("/console/governance/{agent_id}/recertify")
async def recertify(request: Request, visit: Signed, agent_id: str) -> Response:
    svc, fields = services_of(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        note = _required_note(fields)
        await run(lambda: svc.agents.recertify(visit.principal, agent_id, note=note))
    except TetherError as exc:
        return _error(request, visit, exc)
    return back("/console/governance", "recertified")


# -- access reviews -------------------------------------------------------------------------------


def _grants(line: Line) -> str:
    """What the line's subject grants the agent, in one line for its owner."""
    d = line.detail
    if line.kind == "permission":
        held = " (each use needs a human's approval)" if d.get("approval") else ""
        return f"{d.get('grants') or line.subject}{held}"
    if line.kind == "role":
        policies = ", ".join(d.get("policies") or []) or "no policy of the current version"
        return f"role {line.subject}: {policies}"
    if line.kind == "credential":
        scopes = " ".join(d.get("scopes") or []) or "its agent's scopes"
        return f"{d.get('type', 'a')} credential, for {scopes}"
    if line.kind == "delegation":
        return f"acts for {line.subject} ({d.get('grants', 0)} grants)"
    return line.subject


def _line_view(line: Line) -> dict[str, Any]:
    return {**line.to_json(), "grants": _grants(line)}


def _lines(lines: list[Line]) -> list[dict[str, Any]]:
    return [_line_view(x) for x in lines]


@router.get("/console/reviews")
def reviews(request: Request, visit: Signed) -> Response:
    svc, me = services_of(request), visit.principal
    try:
        inbox = svc.reviews.inbox(me, limit=200)
        campaigns = svc.reviews.list(me, limit=50)
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "reviews.html", visit, lines=_lines(inbox.items),
                  more=inbox.next_cursor is not None,
                  campaigns=[r.to_json() for r in campaigns.items],
                  operates=me.role in (Role.ADMIN, Role.SUPERVISOR))  # fmt: skip


@router.get("/console/reviews/{review_id}")
def review_page(request: Request, visit: Signed, review_id: str) -> Response:
    svc, me = services_of(request), visit.principal
    try:
        found = svc.reviews.get(me, review_id)
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "reviews_campaign.html", visit, review=found.to_json(),
                  lines=_lines(found.lines or []),
                  operates=me.role in (Role.ADMIN, Role.SUPERVISOR))  # fmt: skip


def _due(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    except ValueError:
        raise ValidationFailed("due is a date (2027-01-31)", field="due") from None


@router.post("/console/reviews")
async def start_review(request: Request, visit: Signed) -> Response:
    svc, fields = services_of(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        owner = (fields.get("owner") or "").strip()
        if fields.get("scope") == "owner" and not owner:
            raise ValidationFailed("owner is required for one owner's review", field="owner")
        spec: dict[str, Any] = {"note": _note(fields)}
        if fields.get("scope") == "owner":
            spec["owners"] = [owner]
        spec["due"] = _due(fields.get("due") or "")
        try:
            create = ReviewCreate.model_validate(spec)
        except ValidationError:
            raise ValidationFailed("owner is not a username or user id", field="owner") from None
        started = await run(lambda: svc.reviews.start(visit.principal, create))
    except TetherError as exc:
        return _error(request, visit, exc)
    return back(f"/console/reviews/{quote(started.id, safe='')}", "review-started")


@router.post("/console/reviews/{review_id}/close")
async def close_review(request: Request, visit: Signed, review_id: str) -> Response:
    svc, fields = services_of(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        note = _note(fields)
        await run(lambda: svc.reviews.close(visit.principal, review_id, note=note))
    except TetherError as exc:
        return _error(request, visit, exc)
    return back(f"/console/reviews/{quote(review_id, safe='')}", "review-closed")


def _return_to(fields: dict[str, str], review_id: str) -> str:
    """The inbox, or the campaign's page when the form was there: never anywhere else."""
    campaign = f"/console/reviews/{quote(review_id, safe='')}"
    return campaign if fields.get("from") == "campaign" else "/console/reviews"


@router.post("/console/reviews/{review_id}/lines/{line_id}/{op}")
async def line_action(request: Request, visit: Signed, review_id: str, line_id: str,
                      op: str) -> Response:  # fmt: skip
    svc, me, fields = services_of(request), visit.principal, await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        if op == "answer":
            note = _required_note(fields)
            answer = fields.get("answer", "")
            await run(lambda: svc.reviews.answer(me, review_id, line_id, answer, note=note))
        elif op == "confirm":
            said = _note(fields)
            await run(lambda: svc.reviews.confirm(me, review_id, line_id, note=said))
        else:
            raise ValidationFailed(f"no action {op!r} on a line", field="op")
    except TetherError as exc:
        return _error(request, visit, exc)
    return back(_return_to(fields, review_id), "answered" if op == "answer" else "confirmed")


# -- right-sizing ---------------------------------------------------------------------------------


def _days(value: str | None) -> int:
    if not value:
        return DEFAULT_DAYS
    if not (value.isdigit() and len(value) <= 5):
        raise ValidationFailed("days is a whole number of days", field="days")
    return int(value)


@router.get("/console/agents/{agent_id}/rightsizing")
def rightsizing(request: Request, visit: Signed, agent_id: str) -> Response:
    svc, me = services_of(request), visit.principal
    try:
        days = _days(request.query_params.get("days"))
        found = svc.rightsizing.report(me, agent_id, days=days)
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "rightsizing.html", visit, r=found.to_json(),
                  agent=found.agent.to_json())  # fmt: skip


@router.post("/console/agents/{agent_id}/rightsizing/apply")
async def apply_rightsizing(request: Request, visit: Signed, agent_id: str) -> Response:
    svc, fields = services_of(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        days = _days(fields.get("days"))
        await run(lambda: svc.rightsizing.apply(visit.principal, agent_id, days=days))
    except TetherError as exc:
        return _error(request, visit, exc)
    here = f"/console/agents/{quote(agent_id, safe='')}/rightsizing"
    return back(here, "rightsized")


# -- compliance reports ---------------------------------------------------------------------------


@router.get("/console/reports")
def reports(request: Request, visit: Signed) -> Response:
    svc = services_of(request)
    try:
        require_reader(visit.principal)
    except TetherError as exc:
        return _error(request, visit, exc)
    today = svc.clock.now().date()
    return render(request, "reports.html", visit, start=(today - timedelta(days=30)).isoformat(),
                  end=today.isoformat())  # fmt: skip


@router.post("/console/reports")
async def report_download(request: Request, visit: Signed) -> Response:
    """Builds the report (a ``report.built`` event: a POST, CSRF-checked) and answers it as an
    attachment in the format asked."""
    svc, fields = services_of(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        try:
            fmt = Format(fields.get("format") or "pdf")
        except ValueError:
            raise ValidationFailed("format is json, html or pdf", field="format") from None

        def built() -> tuple[bytes, str]:  # the PDF's rendering too: off the event loop
            envelope = svc.reports.build(visit.principal, start=fields.get("from") or None,
                                         end=fields.get("to") or None)  # fmt: skip
            return render_report(envelope, fmt), filename(envelope, fmt)

        body, name = await run(built)
    except TetherError as exc:
        return _error(request, visit, exc)
    return Response(body, media_type=fmt.media_type,
                    headers={"content-disposition": f'attachment; filename="{name}"'})  # fmt: skip
