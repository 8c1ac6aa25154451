"""The recertification sweep: notice before an agent's ``recertify_by``, the tier's response
once it has passed — each once per agent and due date.

It runs in the server's maintenance loop on every node, under the deployment-wide write
lock, and reads only agents with something left to do: ``recertify_stage`` records what was
done for the current date (None, ``noticed``, ``overdue``; ``closed`` for a revoked or retired
agent) and any change of the date resets it. ``TETHER_RECERTIFY_NOTICE_DAYS`` before the date:
``agent.recertification_due``. Once past: ``agent.recertification_overdue`` with the tier's
response (:mod:`tether.agents.recertification`); ``suspend`` suspends the agent as the system
in the same transaction. An agent found already overdue gets the overdue event only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from tether.agents.models import AgentRow
from tether.agents.recertification import (
    CLOSED,
    NOTICED,
    OVERDUE,
    is_overdue,
    overdue_action,
)
from tether.agents.values import EXPIRABLE, TERMINAL, Status, has_expired
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.maintenance import Task
from tether.principals import SYSTEM

# Agents handled per write transaction: the lock is released between batches.
BATCH = 500
_SWEPT = [str(x) for x in (*EXPIRABLE, *TERMINAL)]  # an expired agent may come back: wait


class Suspender(Protocol):
    """What the sweep needs of :class:`tether.agents.service.AgentService`."""

    def suspend_within(self, s: Session, row: AgentRow, *, reason: str, now: datetime) -> None: ...


class RecertificationSweep:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, agents: Suspender, *,
        notice_days: int, overdue: Mapping[str, str],
    ) -> None:  # fmt: skip
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.notice = timedelta(days=notice_days)
        self.overdue = dict(overdue)

    def maintenance(self) -> list[Task]:
        return [Task("agents.recertify", self.sweep)]

    def sweep(self) -> int:
        """Maintenance: give every notice due and take every overdue response; returns how
        many agents it acted on (0 when another node got there first)."""
        now = self.clock.now()
        now_us = to_micros(now)
        total = 0
        while True:
            with self.db.write() as s:
                rows = list(s.scalars(
                    select(AgentRow)
                    .where(or_(
                        and_(AgentRow.recertify_stage.is_(None),
                             AgentRow.recertify_by <= to_micros(now + self.notice)),
                        and_(AgentRow.recertify_stage == NOTICED,
                             AgentRow.recertify_by <= now_us),
                    ), AgentRow.status.in_(_SWEPT))
                    .order_by(AgentRow.recertify_by, AgentRow.id).limit(BATCH)
                ))  # fmt: skip
                self._act(s, rows, now)
            total += len(rows)
            if len(rows) < BATCH:
                return total

    def _act(self, s: Session, rows: Sequence[AgentRow], now: datetime) -> None:
        now_us = to_micros(now)
        events: list[NewEvent] = []
        for row in rows:
            assert row.recertify_by is not None  # selected for it
            if Status(row.status) in TERMINAL:
                row.recertify_stage = CLOSED
                continue
            due = to_rfc3339(from_micros(row.recertify_by))
            action = overdue_action(row.risk_tier, self.overdue)
            details: dict[str, Any] = {"recertify_by": due, "risk_tier": row.risk_tier,
                                       "overdue_action": action}  # fmt: skip
            if not is_overdue(row.recertify_by, now_us):
                row.recertify_stage = NOTICED
                events.append(_event(EventType.AGENT_RECERTIFICATION_DUE, row.id, details))
                continue
            row.recertify_stage = OVERDUE
            suspend = (action == "suspend" and row.status == Status.ACTIVE
                       and not has_expired(row.expires_at, now_us))  # fmt: skip
            details["suspended"] = suspend
            events.append(_event(EventType.AGENT_RECERTIFICATION_OVERDUE, row.id, details))
            if suspend:  # its own event follows the overdue one
                self.ledger.append(s, events, now=now)
                events = []
                self.agents.suspend_within(
                    s, row, reason=f"recertification overdue since {due}", now=now
                )
        if events:
            self.ledger.append(s, events, now=now)


def _event(type_: EventType, agent_id: str, details: dict[str, Any]) -> NewEvent:
    return NewEvent(
        type_, SYSTEM.ref, agent_id=agent_id, action=str(type_),
        resource={"type": "Agent", "id": agent_id}, outcome="success", details=details,
    )  # fmt: skip
