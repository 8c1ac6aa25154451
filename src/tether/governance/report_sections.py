"""What a compliance report says, section by section, and which ledger query each figure is.

The sections follow what a deployer must show (docs: /work/shared/design/STANDARDS.md,
"Governance"): the inventory of AI systems (NIST AI RMF GOVERN 1.6; EU AI Act Art. 26), human
oversight and its interventions (Art. 14; GOVERN 2.1/3.2, MANAGE 2.4), automatic logging
(Art. 12, kept per Art. 19/26(6)), incidents and automatic responses (MANAGE 4.1/4.3),
reviews and recertifications, and the policy versions in force. Pure: a range in, figure
definitions out; the service counts them (:class:`tether.governance.report_figures.Tally`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tether.audit.events import EventType as T
from tether.governance.report_figures import Source


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    title: str
    basis: str  # the articles and functions it answers


SECTIONS = (
    Section("inventory", "AI system inventory", "NIST AI RMF GOVERN 1.6; EU AI Act Art. 26"),
    Section(
        "oversight",
        "Human oversight and interventions",
        "EU AI Act Art. 14, Art. 26(2), 26(5); NIST AI RMF GOVERN 2.1, 3.2, MANAGE 2.4",
    ),
    Section("logging", "Automatic logging", "EU AI Act Art. 12, Art. 19, Art. 26(6)"),
    Section("incidents", "Incidents and automatic responses", "NIST AI RMF MANAGE 4.1, 4.3"),
    Section("reviews", "Reviews and recertifications", "NIST AI RMF GOVERN 1.5; EU AI Act Art. 26"),
    Section("policy", "Policy versions in force", "NIST AI RMF GOVERN 1.4, MANAGE 2.4"),
)

# (section, id, label, types, where, measure): the period's range is filled in by figures().
_Spec = tuple[str, str, str, tuple[str, ...], tuple[tuple[str, object], ...], str]
# Interventions whose propagation to every live worker is measured (runtime.propagated,
# tether.audit.propagated): what changed, the figures' name, their label.
_PROPAGATED = (
    (T.AGENT_KILLED, "kills", "Kill propagation"),
    (T.AGENT_SUSPENDED, "suspensions", "Suspension propagation"),
    (T.FREEZE_STARTED, "freezes", "Freeze propagation"),
)
_PROPAGATION_FIGURES: tuple[tuple[str, str, tuple[tuple[str, object], ...], str], ...] = (
    ("measured", "measured across other live workers (a cascade once)", (), "count"),
    ("median_seconds", "median seconds until every live worker applied it", (),
     "median:details.seconds"),
    ("max_seconds", "longest, in seconds", (), "max:details.seconds"),
    ("unconfirmed", "a live worker had not confirmed within the wait",
     (("details.confirmed", False),), "count"),
)  # fmt: skip
_FIXED: tuple[_Spec, ...] = (
    (
        "inventory",
        "inventory.registered",
        "Agents registered (created or cloned)",
        (T.AGENT_CREATED, T.AGENT_CLONED),
        (),
        "count",
    ),
    (
        "inventory",
        "inventory.changed",
        "Agent registrations changed",
        (T.AGENT_UPDATED,),
        (),
        "count",
    ),
    ("inventory", "inventory.retired", "Agents retired", (T.AGENT_RETIRED,), (), "count"),
    ("inventory", "inventory.exported", "Inventory exports", (T.INVENTORY_EXPORTED,), (), "count"),
    (
        "oversight",
        "oversight.approvals.requested",
        "Approvals asked",
        (T.APPROVAL_REQUESTED,),
        (),
        "count",
    ),
    (
        "oversight",
        "oversight.approvals.granted",
        "Approvals granted",
        (T.APPROVAL_APPROVED,),
        (),
        "count",
    ),
    (
        "oversight",
        "oversight.approvals.denied",
        "Approvals denied",
        (T.APPROVAL_DENIED,),
        (),
        "count",
    ),
    (
        "oversight",
        "oversight.approvals.expired",
        "Approvals expired unanswered",
        (T.APPROVAL_EXPIRED,),
        (),
        "count",
    ),
    (
        "oversight",
        "oversight.approvers",
        "Different humans who answered approvals",
        (T.APPROVAL_APPROVED, T.APPROVAL_DENIED),
        (),
        "distinct:actor",
    ),
    (
        "oversight",
        "oversight.kills",
        "Agents killed (kill switch, cascades included)",
        (T.AGENT_KILLED,),
        (),
        "count",
    ),
    (
        "oversight",
        "oversight.kill_switches",
        "Kill switches pulled (distinct root agents)",
        (T.AGENT_KILLED,),
        (),
        "distinct:details.root",
    ),
    ("oversight", "oversight.suspensions", "Suspensions", (T.AGENT_SUSPENDED,), (), "count"),
    ("oversight", "oversight.resumptions", "Resumptions", (T.AGENT_RESUMED,), (), "count"),
    ("oversight", "oversight.freezes", "Freezes started", (T.FREEZE_STARTED,), (), "count"),
    ("oversight", "oversight.freezes_lifted", "Freezes lifted", (T.FREEZE_LIFTED,), (), "count"),
    *(
        (
            "oversight",
            f"oversight.propagation.{name}.{part}",
            f"{label}: {what}",
            (T.RUNTIME_PROPAGATED,),
            (("details.change", str(change)), *where),
            measure,
        )
        for change, name, label in _PROPAGATED
        for part, what, where, measure in _PROPAGATION_FIGURES
    ),
    (
        "oversight",
        "oversight.rollbacks",
        "Rollbacks of agents' actions",
        (T.ROLLBACK_STARTED,),
        (),
        "count",
    ),
    ("logging", "logging.events", "Ledger events recorded in the period", (), (), "count"),
    ("logging", "logging.decisions", "Access decisions recorded", (T.DECISION,), (), "count"),
    (
        "logging",
        "logging.denied",
        "Access decisions denied",
        (T.DECISION,),
        (("decision", "deny"),),
        "count",
    ),
    (
        "logging",
        "logging.agents_acting",
        "Agents with recorded decisions",
        (T.DECISION,),
        (),
        "distinct:agent_id",
    ),
    (
        "logging",
        "logging.verification_failures",
        "Ledger verifications that failed",
        (T.LEDGER_VERIFICATION_FAILED,),
        (),
        "count",
    ),
    (
        "incidents",
        "incidents.risk_raised",
        "Risk raised by monitoring",
        (T.AGENT_RISK_RAISED,),
        (),
        "count",
    ),
    (
        "incidents",
        "incidents.risk_alert",
        "Risk raised, answered with an alert",
        (T.AGENT_RISK_RAISED,),
        (("details.response", "alert"),),
        "count",
    ),
    (
        "incidents",
        "incidents.risk_step_up",
        "Risk raised, answered by requiring approval",
        (T.AGENT_RISK_RAISED,),
        (("details.response", "require_approval"),),
        "count",
    ),
    (
        "incidents",
        "incidents.risk_suspend",
        "Risk raised, answered by suspending the agent",
        (T.AGENT_RISK_RAISED,),
        (("details.response", "suspend"),),
        "count",
    ),
    (
        "incidents",
        "incidents.risk_cleared",
        "Risk cleared by a human",
        (T.AGENT_RISK_CLEARED,),
        (),
        "count",
    ),
    (
        "incidents",
        "incidents.automatic_suspensions",
        "Suspensions made by Tether itself",
        (T.AGENT_SUSPENDED,),
        (("actor", "system"),),
        "count",
    ),
    (
        "incidents",
        "incidents.approval_floods",
        "Approval floods detected",
        (T.APPROVAL_FLOOD,),
        (),
        "count",
    ),
    (
        "incidents",
        "incidents.alerts_acknowledged",
        "Alerts acknowledged",
        (T.ALERT_ACKNOWLEDGED,),
        (),
        "count",
    ),
    (
        "incidents",
        "incidents.client_auth_failed",
        "Failed client authentications",
        (T.CLIENT_AUTH_FAILED,),
        (),
        "count",
    ),
    ("reviews", "reviews.started", "Access reviews started", (T.REVIEW_STARTED,), (), "count"),
    ("reviews", "reviews.done", "Access reviews done (closed)", (T.REVIEW_CLOSED,), (), "count"),
    (
        "reviews",
        "reviews.done_on_time",
        "Access reviews done by their due date",
        (T.REVIEW_CLOSED,),
        (("details.overdue", False),),
        "count",
    ),
    (
        "reviews",
        "reviews.done_late",
        "Access reviews done after their due date",
        (T.REVIEW_CLOSED,),
        (("details.overdue", True),),
        "count",
    ),
    ("reviews", "reviews.recertified", "Agents recertified", (T.AGENT_RECERTIFIED,), (), "count"),
    (
        "reviews",
        "reviews.recertification_due",
        "Recertification notices",
        (T.AGENT_RECERTIFICATION_DUE,),
        (),
        "count",
    ),
    (
        "reviews",
        "reviews.recertification_overdue",
        "Recertifications gone overdue",
        (T.AGENT_RECERTIFICATION_OVERDUE,),
        (),
        "count",
    ),
    ("policy", "policy.updates", "Policy versions pushed", (T.POLICY_UPDATED,), (), "count"),
    (
        "policy",
        "policy.versions_deciding",
        "Policy versions that decided requests",
        (T.DECISION,),
        (),
        "distinct:policy_version",
    ),
)
REVIEW_PREFIX = "review."  # access reviews' events (tether.governance.reviews), by type


@dataclass(frozen=True, slots=True)
class FigureSpec:
    section: str
    id: str
    label: str
    source: Source


def figures(
    seq_from: int, seq_to: int, types: Mapping[str, int], *, end: str, overdue_from: int
) -> Iterator[FigureSpec]:
    """Every figure of a report over ``seq_from..seq_to``; ``types``: the event types that
    occur in it (a figure per type for logging, and per access-review event type). ``end``:
    the period's end (RFC 3339); ``overdue_from``: the ``review.started`` seq of the oldest
    review overdue then (the overdue count reads from there: such a review may have started
    long before the period)."""
    for section, fid, label, kinds, where, measure in _FIXED:
        yield FigureSpec(
            section,
            fid,
            label,
            Source(seq_from, seq_to, tuple(map(str, kinds)), None, where, measure),
        )
    yield FigureSpec(
        "reviews",
        "reviews.overdue",
        "Access reviews overdue at the period's end (due by then, not closed by then)",
        Source(
            min(overdue_from, seq_from),
            seq_to,
            (str(T.REVIEW_STARTED), str(T.REVIEW_CLOSED)),
            measure="open:resource.id",
            due_by=("details.due", end),
        ),
    )
    yield FigureSpec(
        "reviews",
        "reviews.review_events",
        "Access review events (all kinds)",
        Source(seq_from, seq_to, type_prefix=REVIEW_PREFIX),
    )
    for kind in sorted(types):
        if kind.startswith(REVIEW_PREFIX):
            yield FigureSpec(
                "reviews",
                f"reviews.type.{kind}",
                f"{kind} events",
                Source(seq_from, seq_to, (kind,)),
            )
    for kind in sorted(types):
        yield FigureSpec(
            "logging", f"logging.type.{kind}", f"{kind} events", Source(seq_from, seq_to, (kind,))
        )
