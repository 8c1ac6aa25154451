"""What-if: replay recorded decisions under a candidate policy set and report the flips.

Each ``decision`` event Cedar answered (stage ``cedar``) in the window is rebuilt from the
ledger (subject, action, resource) and its recorded inputs (``decision_inputs``: resource
properties, context, chain), re-decided with the candidate, and compared with Cedar's
recorded answer. Agents are taken as they are *now* (roles, tier, status attribute); events
of agents that no longer exist are counted as skipped. Runtime refusals (inactive agent,
unknown action…) are not policy decisions and are not replayed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from tether.audit.models import EventRow
from tether.clock import from_micros, to_micros
from tether.db import Database
from tether.errors import Forbidden, ValidationFailed
from tether.jsonutil import loads
from tether.policy.decide import DecisionService, cedar_request, decision_from_outcome
from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView, with_risk
from tether.policy.models import DecisionInputRow
from tether.policy.values import Ask
from tether.principals import Principal, Role

MAX_REPLAY = 100_000


@dataclass
class Simulation:
    candidate_digest: str
    checked: int = 0
    skipped: int = 0
    truncated: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)
    by_agent: Counter[str] = field(default_factory=Counter)
    by_policy: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate_digest": self.candidate_digest, "checked": self.checked,
            "skipped": self.skipped, "changed": len(self.changes), "truncated": self.truncated,
            "changes": self.changes,
            "by_agent": [{"agent": a, "changed": n} for a, n in self.by_agent.most_common()],
            "by_policy": [{"policy": p, "changed": n} for p, n in self.by_policy.most_common()],
        }  # fmt: skip


def simulate(
    db: Database,
    decisions: DecisionService,
    candidate: CompiledPolicies,
    actor: Principal,
    *,
    digest: str,
    since: datetime | None,
    until: datetime | None,
    limit: int = MAX_REPLAY,
) -> Simulation:
    if not (actor.is_admin or actor.role is Role.AUDITOR):
        raise Forbidden("only admins and auditors may simulate over the ledger")
    return replay(db, decisions.runtime.agents, candidate, digest=digest, since=since,
                  until=until, limit=limit)  # fmt: skip


def replay(
    db: Database,
    agents: Mapping[str, AgentView],
    candidate: CompiledPolicies,
    *,
    digest: str,
    since: datetime | None,
    until: datetime | None,
    limit: int = MAX_REPLAY,
    subject: str | None = None,
) -> Simulation:
    """:func:`simulate` once the caller may: the agents are taken from ``agents`` (the
    runtime's, or some of them as a proposal would make them). With ``subject``, only the
    decisions that agent asked for itself (its own requests, not an operator's on its record)."""
    if since and until and since > until:
        raise ValidationFailed("since is after until", field="since")
    result = Simulation(digest)
    q = (
        select(EventRow.seq, EventRow.time, EventRow.agent_id, EventRow.action,
               EventRow.resource, EventRow.decision, EventRow.reasons, EventRow.details,
               EventRow.id, DecisionInputRow.request)
        .join(DecisionInputRow, DecisionInputRow.seq == EventRow.seq)
        .where(EventRow.type == "decision")
        .order_by(EventRow.seq)
        .limit(limit + 1)
    )  # fmt: skip
    if since is not None:
        q = q.where(EventRow.time >= to_micros(since))
    if until is not None:
        q = q.where(EventRow.time <= to_micros(until))
    if subject is not None:
        q = q.where(EventRow.agent_id == subject, EventRow.actor == f"agent:{subject}")
    with db.read() as s:
        rows = s.execute(q).all()
    if len(rows) > limit:
        rows, result.truncated = rows[:limit], True
    for seq, time_us, agent_id, action, resource, decision, reasons, details, ev_id, inputs in rows:
        info = loads(details)
        if info.get("stage") != "cedar":
            continue
        if agent_id is None or agent_id not in agents or action is None or resource is None:
            result.skipped += 1
            continue
        res, given = loads(resource), loads(inputs)
        ask = Ask(agent_id, action, res["type"], res["id"], given.get("properties", {}),
                  given.get("context", {}), tuple(given.get("chain", ())),
                  given.get("on_behalf_of"))  # fmt: skip
        before = info.get("policy_decision", decision)
        before_reasons = [r for r in loads(reasons)
                          if not r.startswith(("tether.approval-", "tether.risk-"))]  # fmt: skip
        # As it was decided: the session's history and the agent's risk then, when recorded.
        risk = given.get("risk")
        try:
            request = cedar_request(
                ask, agents, session=given.get("session"),
                principal_entity=with_risk(agents[agent_id].entity, risk["score"], risk["level"])
                if isinstance(risk, dict) else None,
            )  # fmt: skip
            outcome = decision_from_outcome(candidate.decide(request), candidate.version)
        except ValidationFailed:  # recorded before Tether refused values Cedar cannot read
            result.skipped += 1
            continue
        result.checked += 1
        if outcome.effect.value == before:
            continue
        result.changes.append({
            "event_id": ev_id, "seq": seq, "time": from_micros(time_us), "agent": agent_id,
            "action": action, "resource": res,
            "before": {"decision": before, "reasons": before_reasons},
            "after": {"decision": outcome.effect.value, "reasons": list(outcome.reasons)},
        })  # fmt: skip
        result.by_agent[agent_id] += 1
        changed = set(before_reasons).symmetric_difference(outcome.reasons)
        for policy in changed or set(before_reasons) | set(outcome.reasons) or {"(default deny)"}:
            result.by_policy[policy] += 1
    return result
