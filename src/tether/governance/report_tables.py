"""A compliance report's tables: the interventions, incidents and reviews listed event by event
(each row names its ledger ``seq``), and the register of agents as the registry had it.

Tables are evidence to read, not figures: the figures are what verification recounts. Each
table keeps at most :data:`MAX_ROWS` rows and says how many more there were.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.agents.inventory import Entry
from tether.audit.chain import Event
from tether.audit.events import EventType as T
from tether.clock import to_rfc3339

MAX_ROWS = 500
_TEXT = 200  # a reason or note, cut to this many characters

_INTERVENTIONS = {
    T.AGENT_KILLED,
    T.AGENT_SUSPENDED,
    T.AGENT_RESUMED,
    T.FREEZE_STARTED,
    T.FREEZE_LIFTED,
}


def _table(title: str, columns: list[str], rows: list[list[Any]], more: int) -> dict[str, Any]:
    return {"title": title, "columns": columns, "rows": rows, "more": more}


def _cut(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= _TEXT else text[: _TEXT - 1] + "…"


@dataclass(slots=True)
class _Rows:
    rows: list[list[Any]] = field(default_factory=list)
    more: int = 0

    def add(self, row: list[Any]) -> None:
        if len(self.rows) < MAX_ROWS:
            self.rows.append(row)
        else:
            self.more += 1


@dataclass(slots=True)
class Tables:
    """Fed the period's events in order (:meth:`feed`), lists what a reader looks for."""

    _interventions: _Rows = field(default_factory=_Rows)
    _risk: _Rows = field(default_factory=_Rows)
    _recertified: _Rows = field(default_factory=_Rows)
    _policy: _Rows = field(default_factory=_Rows)

    def feed(self, ev: Event) -> None:
        d, when = ev.details, to_rfc3339(ev.time)
        if ev.type in _INTERVENTIONS:
            subject = ev.agent_id or _scope(d.get("scope"))
            reason = d.get("reason") or d.get("note")
            self._interventions.add([ev.seq, when, ev.type, subject, ev.actor, _cut(reason)])
        elif ev.type == T.AGENT_RISK_RAISED:
            self._risk.add(
                [ev.seq, when, ev.agent_id, d.get("score"), d.get("level"), d.get("response")]
            )
        elif ev.type in (T.AGENT_RECERTIFIED, T.AGENT_RECERTIFICATION_OVERDUE):
            self._recertified.add(
                [
                    ev.seq,
                    when,
                    ev.type,
                    ev.agent_id,
                    ev.actor,
                    _cut(d.get("note") or d.get("response")),
                ]
            )
        elif ev.type == T.POLICY_UPDATED:
            self._policy.add([ev.seq, when, ev.policy_version, ev.actor, d.get("previous")])

    def interventions(self) -> dict[str, Any]:
        return _table(
            "Interventions: kills, suspensions, resumptions, freezes",
            ["seq", "time", "event", "agent or scope", "by", "reason"],
            self._interventions.rows,
            self._interventions.more,
        )

    def risk(self) -> dict[str, Any]:
        return _table(
            "Risk raised by monitoring",
            ["seq", "time", "agent", "score", "level", "response"],
            self._risk.rows,
            self._risk.more,
        )

    def recertifications(self) -> dict[str, Any]:
        return _table(
            "Recertifications",
            ["seq", "time", "event", "agent", "by", "note"],
            self._recertified.rows,
            self._recertified.more,
        )

    def policy_updates(self) -> dict[str, Any]:
        return _table(
            "Policy versions pushed in the period",
            ["seq", "time", "version", "by", "previous"],
            self._policy.rows,
            self._policy.more,
        )


def _scope(scope: Any) -> str:
    if not isinstance(scope, dict) or not any(scope.values()):
        return "everything"
    return ", ".join(f"{k}={v}" for k, v in sorted(scope.items()) if v)


@dataclass(slots=True)
class Register:
    """The agents as the registry had them at ``at``: the AI system inventory."""

    at: datetime
    rows: list[list[Any]]
    more: int
    by_tier: Counter[str]
    by_status: Counter[str]
    by_owner: Counter[str]
    overdue_rows: list[list[Any]]
    overdue_count: int = 0

    @classmethod
    def of(cls, entries: Iterable[Entry], *, now: datetime) -> Register:
        reg = cls(now, [], 0, Counter(), Counter(), Counter(), [])
        for entry in entries:
            a = entry.agent
            reg.by_tier[a.risk_tier.value] += 1
            reg.by_status[a.status.value] += 1
            reg.by_owner[a.owner_username or a.owner] += 1
            due = a.recertify_by
            live = a.status.value in ("active", "suspended")
            if live and due is not None and due < now:
                reg.overdue_count += 1
            if live and due is not None and due < now and len(reg.overdue_rows) < MAX_ROWS:
                reg.overdue_rows.append(
                    [a.id, a.name, a.owner_username or a.owner, a.risk_tier.value, to_rfc3339(due)]
                )
            if len(reg.rows) < MAX_ROWS:
                reg.rows.append(
                    [
                        a.id,
                        a.name,
                        a.owner_username or a.owner,
                        _cut(a.purpose),
                        a.risk_tier.value,
                        a.status.value,
                    ]
                )
            else:
                reg.more += 1
        return reg

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": to_rfc3339(self.at),
            "agents": sum(self.by_tier.values()),
            "by_risk_tier": dict(sorted(self.by_tier.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "table": _table(
                "Agents in the register",
                ["id", "name", "owner", "purpose", "risk tier", "status"],
                self.rows,
                self.more,
            ),
        }

    def overseers(self) -> dict[str, Any]:
        rows = [[owner, n] for owner, n in sorted(self.by_owner.items())]
        return _table(
            "Accountable owners (register)",
            ["owner", "agents"],
            rows[:MAX_ROWS],
            max(0, len(rows) - MAX_ROWS),
        )

    def overdue(self) -> dict[str, Any]:
        return _table(
            "Recertification overdue at build time (register)",
            ["id", "name", "owner", "risk tier", "recertify by"],
            self.overdue_rows,
            self.overdue_count - len(self.overdue_rows),
        )
