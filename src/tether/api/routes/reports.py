"""/v1/reports — compliance reports for a period (tether.governance.report): built as JSON,
HTML or PDF, and verified against the live ledger (admins and auditors); the reports on
record, each holding its ledger range from retention, and an admin's forgetting one."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import Response
from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from tether.api.deps import PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.fields import NO_NUL, StrictModel
from tether.governance.report_render import Format, filename, render

router = APIRouter(prefix="/v1/reports", tags=["reports"])

_WHEN = "a date (2026-12-01, midnight UTC) or an RFC 3339 time with an offset"
_FORMATS: dict[str, dict[str, Any]] = {
    "application/json": {},
    "text/html": {},
    "application/pdf": {},
}
_INSTANT: TypeAdapter[AwareDatetime | date] = TypeAdapter(AwareDatetime | date)


def _instant(value: Any) -> str:
    """A date or a time with its offset (pydantic reads both as JSON Schema's ``date`` and
    ``date-time`` define them), passed on as ISO text — the form the report service also
    reads from the CLI. One error naming the field, not one per form."""
    if not isinstance(value, str):  # not a number of seconds, as lax pydantic would take
        raise ValueError(f"must be {_WHEN}")  # noqa: TRY004 - pydantic wants a ValueError
    try:
        return _INSTANT.validate_python(value).isoformat()
    except ValidationError:
        raise ValueError(f"must be {_WHEN}") from None


# The document states both forms; the service checks the period (to not in the future, from
# before to).
When = Annotated[
    str,
    BeforeValidator(_instant),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date"},
                              {"type": "string", "format": "date-time"}]}),
]  # fmt: skip
FormatName = Literal["json", "html", "pdf"]


class PeriodIn(StrictModel):
    from_: When = Field(alias="from", description=f"Start, included: {_WHEN}")
    to: When = Field(description=f"End, excluded, not in the future: {_WHEN}")


class ReportIn(StrictModel):
    period: PeriodIn
    format: FormatName = "json"


def _report(svc: ServicesDep, who: PrincipalDep, start: str, end: str, fmt: str) -> Response:
    envelope = svc.reports.build(who, start=start, end=end)
    chosen = Format(fmt)
    return Response(
        render(envelope, chosen),
        media_type=chosen.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename(envelope, chosen)}"'},
    )


_BUILT = {
    **responses(401, 403, 404, 422),
    200: {
        "content": _FORMATS,
        "description": "The report, as an attachment; its digest is in "
        "a report.built ledger event and the signed checkpoint it embeds covers it",
    },
}


@router.get("/compliance", response_class=Response, responses=_BUILT)
def compliance(
    svc: ServicesDep,
    who: PrincipalDep,
    start: Annotated[When, Query(alias="from", description=f"Start, included: {_WHEN}")],
    to: Annotated[When, Query(description=f"End, excluded, not in the future: {_WHEN}")],
    format: Annotated[FormatName, Query(description="json, html or pdf")] = "json",
) -> Response:
    return _report(svc, who, start, to, format)


@router.post("", response_class=Response, responses={**_BUILT, **responses(400, 413)})
def build(svc: ServicesDep, who: PrincipalDep, body: ReportIn) -> Response:
    """API.md's form of the same: ``{period: {from, to}, format}``."""
    return _report(svc, who, body.period.from_, body.period.to, body.format)


@router.post("/compliance/verify", responses=responses(400, 401, 403, 413, 422))
def verify(
    svc: ServicesDep,
    who: PrincipalDep,
    envelope: Annotated[dict[str, Any], Body(description="The report's JSON (its envelope)")],
) -> dict[str, Any]:
    """Recount every figure from its source range on the live ledger and check the report's
    binding and checkpoint: ``{ok, figures_checked, problems: [{about, message}]}`` — a body
    that is no compliance report at all is a verdict too (``ok`` false, about ``report``)."""
    return svc.reports.verify(who, envelope)


@router.get("", responses=responses(401, 403))
def records(svc: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    """The reports on record, newest first: ``{id, built_at, built_by, period, held_from_seq,
    seq_to, built_seq, sha256, held, held_until}`` — ``held``: its range is kept from
    retention (until the report is older than the retention period, ``held_until``)."""
    return svc.reports.records(who)


@router.delete("/{report_id}", responses=responses(401, 403, 404))
def forget(
    svc: ServicesDep,
    who: PrincipalDep,
    report_id: Annotated[
        str, Path(max_length=40, pattern=NO_NUL, description="The report's id (its binding)")
    ],
) -> dict[str, Any]:
    """Forget a report's record (admins): its retention hold is released, a report.forgotten
    event says what it held. The report still verifies offline against an earlier export."""
    return svc.reports.forget(who, report_id)
