"""Which ledger events are alerts, how severe, and how each reads: one rule per event type.

An alert is raised from the ledger — the record of everything — so none is lost: a kill, a
freeze, an approval asked or decided, an approval flood, a fingerprint change, a rollback, an
account locked by failed sign-ins. Each rule names its alert's kind (the ``dedup`` window and
the rate limit are per kind and agent) and builds its summary from the event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.audit.chain import Event
from tether.audit.events import EventType


@dataclass(frozen=True, slots=True)
class Raised:
    """What a rule makes of an event."""

    kind: str
    severity: str  # "info" | "warning" | "critical"
    summary: str
    details: dict[str, Any]


Rule = Callable[[Event], Raised | None]


def _who(event: Event) -> str:
    return event.agent_id or (event.resource or {}).get("id") or "-"


def _killed(e: Event) -> Raised:
    d = e.details
    return Raised("agent.killed", "critical",
                  f"agent {_who(e)} killed by {e.actor}: {d.get('reason', '')}",
                  {"reason": d.get("reason"), "root": d.get("root"), "by": e.actor})  # fmt: skip


def _suspended(e: Event) -> Raised:
    return Raised("agent.suspended", "warning",
                  f"agent {_who(e)} suspended by {e.actor}: {e.details.get('reason', '')}",
                  {"reason": e.details.get("reason"), "by": e.actor})  # fmt: skip


def _updated(e: Event) -> Raised | None:
    changes = e.details.get("changes") or {}
    if "fingerprint" not in changes and "fingerprint_digest" not in changes:
        return None
    status = (changes.get("status") or {}).get("to")
    suspended = status == "suspended"
    return Raised("agent.fingerprint_changed", "critical" if suspended else "warning",
                  f"agent {_who(e)}'s fingerprint changed"
                  + (" — suspended until a human resumes it" if suspended else ""),
                  {"by": e.actor, "suspended": suspended})  # fmt: skip


def _freeze(e: Event) -> Raised:
    started = e.type == EventType.FREEZE_STARTED
    scope = e.details.get("scope") or {}
    what = ", ".join(f"{k}={v}" for k, v in scope.items()) or "every agent"
    return Raised("freeze.started" if started else "freeze.lifted",
                  "critical" if started else "info",
                  f"{'freeze' if started else 'freeze lifted'} ({what}) by {e.actor}: "
                  f"{e.details.get('reason') or ''}", {"scope": scope, "by": e.actor})  # fmt: skip


def _approval(e: Event) -> Raised:
    what = e.type.split(".", 1)[1]
    resource = e.resource or {}
    target = f"{e.action} on {resource.get('type')}::{resource.get('id')}"
    return Raised(f"approval.{what}", "warning" if what == "flood" else "info",
                  f"approval {what}: agent {e.agent_id} — {target}",
                  {"approval_id": e.details.get("approval_id"), "action": e.action,
                   "resource": resource, "by": e.actor})  # fmt: skip


def _rollback(e: Event) -> Raised:
    summary = e.details.get("summary") or {}
    return Raised("rollback.finished", "warning" if e.outcome != "done" else "info",
                  f"rollback of agent {e.agent_id} {e.outcome}: "
                  f"{summary.get('outcome_undone', 0)} undone, "
                  f"{summary.get('outcome_failed', 0)} failed", {"summary": summary})  # fmt: skip


def _sign_in_failed(e: Event) -> Raised | None:
    if "locked_until" not in e.details:
        return None
    return Raised("user.locked", "warning",
                  f"console account {e.details.get('username')} locked after failed sign-ins "
                  f"(from {e.details.get('address')})", dict(e.details))  # fmt: skip


def _verify_failed(e: Event) -> Raised:
    d = e.details
    return Raised("ledger.verification_failed", "critical",
                  f"ledger verification failed ({d.get('problem')}) from event "
                  f"{d.get('first_bad_seq')}: {d.get('message')}", dict(d))  # fmt: skip


def _risk(e: Event) -> Raised:
    d = e.details
    response = d.get("response")
    rules = "; ".join(f"{r.get('rule')}: {r.get('because')}" for r in d.get("rules") or [])
    what = {"suspend": "suspended", "require_approval": "stepped up (approval for every allow)",
            "alert": "alert"}.get(str(response), str(response))  # fmt: skip
    return Raised(f"risk.{d.get('level')}", "critical" if response == "suspend" else "warning",
                  f"agent {_who(e)} risk {d.get('score')} ({d.get('level')}), {what} — {rules}",
                  {"score": d.get("score"), "level": d.get("level"), "response": response,
                   "rules": d.get("rules"), "signals": d.get("signals")})  # fmt: skip


def _recertification(e: Event) -> Raised:
    d = e.details
    if e.type == EventType.AGENT_RECERTIFICATION_DUE:
        return Raised("agent.recertification_due", "info",
                      f"agent {_who(e)} ({d.get('risk_tier')} risk) is due for recertification "
                      f"by {d.get('recertify_by')} (then: {d.get('overdue_action')})",
                      dict(d))  # fmt: skip
    suspended = bool(d.get("suspended"))
    then = {"suspend": "suspended" if suspended else "not suspended (it was not active)",
            "require_approval": "every allow now needs an approval",
            "alert": "alert only"}.get(str(d.get("overdue_action")), "")  # fmt: skip
    return Raised("agent.recertification_overdue", "critical" if suspended else "warning",
                  f"agent {_who(e)} ({d.get('risk_tier')} risk) missed its recertification "
                  f"(due {d.get('recertify_by')}): {then}", dict(d))  # fmt: skip


RULES: dict[str, Rule] = {
    EventType.AGENT_RISK_RAISED: _risk,
    EventType.LEDGER_VERIFICATION_FAILED: _verify_failed,
    EventType.AGENT_KILLED: _killed,
    EventType.AGENT_SUSPENDED: _suspended,
    EventType.AGENT_UPDATED: _updated,
    EventType.AGENT_RECERTIFICATION_DUE: _recertification,
    EventType.AGENT_RECERTIFICATION_OVERDUE: _recertification,
    EventType.FREEZE_STARTED: _freeze,
    EventType.FREEZE_LIFTED: _freeze,
    EventType.APPROVAL_REQUESTED: _approval,
    EventType.APPROVAL_APPROVED: _approval,
    EventType.APPROVAL_DENIED: _approval,
    EventType.APPROVAL_EXPIRED: _approval,
    EventType.APPROVAL_FLOOD: _approval,
    EventType.ROLLBACK_FINISHED: _rollback,
    EventType.USER_SIGN_IN_FAILED: _sign_in_failed,
}


def raised(event: Event) -> Raised | None:
    rule = RULES.get(event.type)
    return rule(event) if rule is not None else None
