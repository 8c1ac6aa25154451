"""The compliance report for a period: JSON (the source of truth), HTML and PDF.

A report is an **envelope** (:data:`KIND`)::

    {"kind": "tether.compliance_report/1",
     "report": {period, built_at, built_by, ledger: {seq_from, seq_to, head}, sections: [...]},
     "binding": {"sha256": <SHA-256 of the canonical JSON of "report">,
                 "event": {"seq", "id", "hash"}},       # its report.built ledger event
     "checkpoint": {size, head_hash, time, key_id, signature}}

Every figure of a section is a count over a ledger sequence range with its query
(:mod:`tether.governance.report_figures`). The period ``[from, to)`` is the range of events
stamped in it, fixed at build time (``seq_to`` never past the head then); ledger time never
runs back, so the range is contiguous. Once counted, the report's digest goes into a
``report.built`` event and the ledger's head, that event included, is signed at once: the
embedded checkpoint, signed with the ledger's key (Ed25519), covers the range and the digest.
An edited figure then contradicts the recount from its range, and an edited anything contradicts
the digest the signed chain holds (:mod:`tether.governance.report_verify`).

The register (who owns what, purposes, risk tiers, overdue recertifications) is the registry's
as it was at ``built_at`` — the ledger's events do not carry every field (an agent's purpose) —
and is bound by the digest, not recounted; so are the access reviews' table (from the reviews
service), whose counts are figures recounted from ``review.started``/``review.closed``.

Each built report is kept on record (``governance_reports``) with the lowest seq its figures
read: a retention hold (:meth:`ComplianceReports.held_from`) keeps those events so the report
verifies against the live ledger — until the report itself is older than the retention period
being pruned to (evidence while the law asks for the logs; after that its range goes like the
rest), or an admin forgets it (:meth:`ComplianceReports.forget`, a ``report.forgotten`` event).
Either way the report still verifies offline against an export taken before the prune.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.agents.inventory import AgentInventory
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.models import EventRow
from tether.audit.service import AuditService
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import Forbidden, NotFound, ValidationFailed
from tether.governance import report_sections as sections
from tether.governance.report_figures import KIND, Figure, Tally, digest_of
from tether.governance.report_models import ReportRow
from tether.governance.report_tables import Register, Tables
from tether.governance.review_values import ReviewPeriod
from tether.governance.reviews import ReviewService
from tether.policy.service import PolicyService
from tether.principals import Principal, Role

_BATCH = 5000


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime

    def to_json(self) -> dict[str, str]:
        return {"from": to_rfc3339(self.start), "to": to_rfc3339(self.end)}


def parse_period(start: str | None, end: str | None, *, now: datetime) -> Period:
    """``from`` and ``to`` as RFC 3339 times with an offset, or dates (midnight UTC). Raises
    :class:`ValidationFailed` naming the field: missing, unreadable, ``to`` in the future,
    ``from`` not before ``to``."""
    begin, until = _when(start, "from"), _when(end, "to")
    if until > now:
        raise ValidationFailed(
            f"to ({to_rfc3339(until)}) is in the future: a report covers what has happened "
            f"(now is {to_rfc3339(now)})",
            field="to",
        )
    if begin >= until:
        raise ValidationFailed("from must be before to", field="from")
    return Period(begin, until)


def _when(value: str | None, field: str) -> datetime:
    if not value:
        raise ValidationFailed(f"{field} is required (a date or an RFC 3339 time)", field=field)
    try:
        if len(value) == 10:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValidationFailed(f"{field} needs a UTC offset (use Z for UTC)", field=field)
    except ValueError as exc:
        raise ValidationFailed(
            f"{field} must be a date (2026-12-01) or an RFC 3339 time (2026-12-01T00:00:00Z)",
            field=field,
        ) from exc
    try:
        utc = parsed.astimezone(UTC)
        to_micros(utc)
    except (ValueError, OverflowError) as exc:
        raise ValidationFailed(f"{field} is out of range (years 1 to 9999 UTC)",
                               field=field) from exc  # fmt: skip
    return utc


class ReportNotFound(NotFound):
    code = "report_not_found"


def require_reader(actor: Principal) -> None:
    if not (actor.is_admin or actor.role is Role.AUDITOR):
        raise Forbidden(
            "only admins and auditors may build or verify compliance reports",
            required_role="auditor",
        )


class ComplianceReports:
    """Builds reports (:meth:`build`) and checks them against the live ledger (:meth:`verify`)."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        audit: AuditService,
        inventory: AgentInventory,
        policies: PolicyService,
        reviews: ReviewService,
        retention: dict[str, Any],
        retention_days: int | None = None,
    ) -> None:
        """``retention``: what the deployment keeps and for how long (the report's logging
        section states it); ``retention_days``: the configured period, after which a report
        on record no longer holds its range (None: never pruned unless asked)."""
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.audit = audit
        self.inventory = inventory
        self.policies = policies
        self.reviews = reviews
        self.retention = retention
        self.retention_days = retention_days

    def build(self, actor: Principal, *, start: str | None, end: str | None) -> dict[str, Any]:
        """The envelope for ``[start, end)``. Raises :class:`Forbidden` unless an admin or
        auditor, :class:`ValidationFailed` naming ``from`` or ``to``, :class:`NotFound` if the
        ledger is empty."""
        require_reader(actor)
        now = self.clock.now()
        period = parse_period(start, end, now=now)
        with self.db.read() as s:
            head = self.ledger.store.head(s)
            if head is None:
                raise NotFound("the ledger is empty")
            seq_from, seq_to = _range(s, period, head[0])
            types = _types(s, seq_from, seq_to)
        reviewed = self.reviews.period(period.start, period.end, now=now)
        oldest = min((r.started_seq for r in reviewed.overdue), default=seq_from)
        specs = list(sections.figures(seq_from, seq_to, types, end=to_rfc3339(period.end),
                                      overdue_from=oldest))  # fmt: skip
        tally = Tally({f.id: f.source for f in specs})
        tables = Tables()
        held = min(f.source.seq_from for f in specs)  # the overdue reviews' count reads earlier
        for ev in self._events(held, seq_to):
            tally.feed(ev)
            if ev.seq >= seq_from:
                tables.feed(ev)
        verified = self.audit.verify(actor).to_json()
        register = Register.of(self.inventory.entries(None, now=now), now=now)
        report: dict[str, Any] = {
            "title": "Compliance report",
            "period": period.to_json(),
            "built_at": to_rfc3339(now),
            "built_by": actor.ref,
            "ledger": {
                "seq_from": seq_from,
                "seq_to": seq_to,
                "head": head[0],
                "events": max(0, seq_to - seq_from + 1),
            },
            "sections": [],
        }
        extra: dict[str, dict[str, Any]] = {
            "inventory": {"register": register.to_json()},
            "oversight": {"tables": [tables.interventions(), register.overseers()]},
            "logging": {
                "recorded": _RECORDED,
                "retention": self.retention,
                "verification": verified,
            },
            "incidents": {"tables": [tables.risk()]},
            "reviews": {
                "overdue": register.overdue(),
                "tables": [_reviews_table(reviewed), tables.recertifications()],
            },
            "policy": {"tables": [self._versions(actor, period), tables.policy_updates()]},
        }
        for sec in sections.SECTIONS:
            figures = [
                Figure(f.id, f.label, tally.value(f.id), f.source).to_json()
                for f in specs
                if f.section == sec.id
            ]
            report["sections"].append(
                {
                    "id": sec.id,
                    "title": sec.title,
                    "basis": sec.basis,
                    "figures": figures,
                    **extra[sec.id],
                }
            )
        return self._bind(actor, report, period, held=held)

    def _bind(
        self, actor: Principal, report: dict[str, Any], period: Period, *, held: int
    ) -> dict[str, Any]:
        """Record ``report.built`` with the digest and sign the head that holds it; keep the
        report on record with ``held``, the lowest seq any of its figures reads."""
        digest = digest_of(report)
        event = NewEvent(
            EventType.REPORT_BUILT,
            actor.ref,
            action=str(EventType.REPORT_BUILT),
            resource={"type": "Report", "id": "compliance"},
            outcome="success",
            details={
                "period": period.to_json(),
                "sha256": digest,
                "seq_from": report["ledger"]["seq_from"],
                "seq_to": report["ledger"]["seq_to"],
            },
        )
        ledger = report["ledger"]
        with self.db.write() as s:
            (built,) = self.ledger.append(s, [event], now=self.clock.now())
            cp = self.ledger.force_checkpoint(s, now=self.clock.now())
            s.add(
                ReportRow(
                    id=built.id,
                    built_at=built.time_us,
                    built_by=actor.ref,
                    period_from=to_micros(period.start),
                    period_to=to_micros(period.end),
                    seq_from=held,
                    seq_to=ledger["seq_to"],
                    built_seq=built.seq,
                    sha256=digest,
                )
            )
        assert cp is not None  # the head holds the event just written
        assert cp.size >= built.seq
        return {
            "kind": KIND,
            "report": report,
            "binding": {
                "sha256": digest,
                "event": {"seq": built.seq, "id": built.id, "hash": built.hash},
            },
            "checkpoint": cp.to_json(),
        }

    def verify(self, actor: Principal, envelope: Any) -> dict[str, Any]:
        """Recount every figure of ``envelope`` from the live ledger and check its binding and
        checkpoint with the ledger's key (:func:`tether.governance.report_verify.check`)."""
        from tether.governance.report_verify import check

        require_reader(actor)
        store = self.ledger.store
        with self.db.read() as s:
            try:
                verdict = check(
                    envelope,
                    store.stream(s),
                    check_signature=self.ledger.signer.check,
                    cut_at=lambda size: store.cut_at(s, size),
                )
            except ValidationFailed as exc:  # not a report at all: that is the verdict
                return {"ok": False, "figures_checked": 0, "checkpoint": {},
                        "problems": [{"about": str(exc.details.get("field", "report")),
                                      "message": exc.message}]}  # fmt: skip
        return verdict.to_json()

    @staticmethod
    def held_from(session: Session, cutoff_us: int) -> int | None:
        """The retention hold (tether.audit.retention.RetentionHold): the lowest seq a report
        on record counted from, of those built at or after ``cutoff_us`` (the prune's
        ``now - retention``) — a report older than the retention period holds nothing: its
        events are as old as the law asks to keep logs."""
        first: int | None = session.scalar(
            select(func.min(ReportRow.seq_from)).where(ReportRow.built_at >= cutoff_us)
        )
        return first

    def records(self, actor: Principal) -> list[dict[str, Any]]:
        """The reports on record, newest first: what each holds from retention (its figures'
        lowest seq) and until when it is built recently enough to hold it (``held`` is
        false once the configured retention period passed). Admins and auditors."""
        require_reader(actor)
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            rows = list(s.scalars(select(ReportRow).order_by(ReportRow.built_at.desc())))
        return [_record(row, self.retention_days, now_us) for row in rows]

    def forget(self, actor: Principal, report_id: str) -> dict[str, Any]:
        """Delete a report's record, releasing its retention hold; the ``report.forgotten``
        event says what it held. The report itself still verifies offline against an export
        taken before a prune. Raises :class:`Forbidden` unless an admin,
        :class:`ReportNotFound` if no report on record has this id."""
        if not actor.is_admin:
            raise Forbidden("only an admin may forget a compliance report", required_role="admin")
        with self.db.write() as s:
            row = s.get(ReportRow, report_id) if len(report_id) <= 40 else None
            if row is None:
                raise ReportNotFound(f"no report {report_id!r} on record", report=report_id[:80])
            record = _record(row, None, 0)
            del record["held"], record["held_until"]
            (event,) = self.ledger.append(s, [NewEvent(
                EventType.REPORT_FORGOTTEN, actor.ref, action=str(EventType.REPORT_FORGOTTEN),
                resource={"type": "Report", "id": row.id}, outcome="success", details=record,
            )], now=self.clock.now())  # fmt: skip
            s.delete(row)
        return {**record, "event_id": event.id}

    def _events(self, seq_from: int, seq_to: int) -> Iterator[Event]:
        """The range's events in ``seq`` order, a read transaction per batch."""
        after = seq_from - 1
        while after < seq_to:
            with self.db.read() as s:
                batch = self.ledger.store.page(s, after_seq=after, limit=_BATCH)
            for ev in batch:
                if ev.seq > seq_to:
                    return
                yield ev
            if len(batch) < _BATCH:
                return
            after = batch[-1].seq

    def _history(self, actor: Principal) -> Iterator[tuple[str, datetime | None, str | None]]:
        """Every policy version, newest first."""
        cursor: str | None = None
        while True:
            page = self.policies.versions(actor, cursor=cursor, limit=100)
            for v in page.items:
                yield v.version, v.created_at, v.created_by
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _versions(self, actor: Principal, period: Period) -> dict[str, Any]:
        """The policy versions in force at some moment of the period: created before its end,
        and not replaced before its start."""
        rows: list[list[Any]] = []
        replaced_at: datetime | None = None  # the next newer version's creation
        for version, created, by in self._history(actor):
            if (created is None or created < period.end) and (
                replaced_at is None or replaced_at > period.start
            ):
                rows.append([version, to_rfc3339(created) if created else "", by or ""])
            if created is not None and created <= period.start:
                break
            replaced_at = created
        return {
            "title": "Policy versions in force during the period",
            "columns": ["version", "created", "by"],
            "rows": rows,
            "more": 0,
        }


_RECORDED = [
    "who: the agent, its delegation chain, the human it acts for, the client id",
    "what: the action, the resource, a digest of the arguments",
    "the decision: allow, deny or approval required, the policy ids and the policy version",
    "approvals: who asked, who answered, the verdict and the times",
    "kill switch, suspensions and freezes: who, the scope, the reason, the times",
    "monitoring: risk scores, the rules that held, the automatic response",
    "every change to agents, credentials, policies, secrets and users",
    "hash-chained (SHA-256) and signed (Ed25519 checkpoints), kept outside the database too",
]


def _record(row: ReportRow, days: int | None, now_us: int) -> dict[str, Any]:
    until = row.built_at + days * 86_400 * 1_000_000 if days is not None else None
    return {
        "id": row.id,
        "built_at": to_rfc3339(from_micros(row.built_at)),
        "built_by": row.built_by,
        "period": {
            "from": to_rfc3339(from_micros(row.period_from)),
            "to": to_rfc3339(from_micros(row.period_to)),
        },
        "held_from_seq": row.seq_from,
        "seq_to": row.seq_to,
        "built_seq": row.built_seq,
        "sha256": row.sha256,
        "held": until is None or until > now_us,
        "held_until": to_rfc3339(from_micros(until)) if until is not None else None,
    }


def _reviews_table(reviewed: ReviewPeriod) -> dict[str, Any]:
    """The access reviews done in the period and those overdue at its end, each with the
    ledger seqs of its ``review.started`` and ``review.closed`` events."""
    rows: list[list[Any]] = []
    for state, reviews in (("overdue", reviewed.overdue), ("done", reviewed.done)):
        for r in reviews:
            done = state
            if state == "done":
                done = "done on time" if r.on_time else "done late"
            closed = to_rfc3339(r.closed_at) if r.closed_at else ""
            rows.append([r.id, done, to_rfc3339(r.due), closed, r.lines, r.started_seq,
                         r.closed_seq if r.closed_seq is not None else ""])  # fmt: skip
    return {
        "title": "Access reviews done in the period and overdue at its end",
        "columns": ["review", "state", "due", "closed", "lines", "started seq", "closed seq"],
        "rows": rows,
        "more": 0,
    }


def _range(s: Session, period: Period, head: int) -> tuple[int, int]:
    """``(seq_from, seq_to)`` of the events stamped in ``period`` (empty: ``from > to``)."""
    ev = EventRow.__table__.c
    start, end = to_micros(period.start), to_micros(period.end)
    first = s.execute(select(func.min(ev.seq)).where(ev.time >= start)).scalar()
    last = s.execute(select(func.max(ev.seq)).where(ev.time < end, ev.seq <= head)).scalar()
    if first is None or last is None or first > last:
        at = int(last) + 1 if last is not None else (int(first) if first is not None else 1)
        return at, at - 1
    return int(first), int(last)


def _types(s: Session, seq_from: int, seq_to: int) -> dict[str, int]:
    ev = EventRow.__table__.c
    rows = s.execute(
        select(ev.type, func.count()).where(ev.seq.between(seq_from, seq_to)).group_by(ev.type)
    ).all()
    return {str(t): int(n) for t, n in rows}
