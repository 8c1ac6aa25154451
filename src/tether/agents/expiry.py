"""Agents whose ``expires_at`` has passed become ``expired``: stored by a sweep, audited once.

Readers never wait for the sweep: :func:`tether.agents.values.effective_status` shows an
agent ``expired`` from the moment its ``expires_at`` passes, and the runtime snapshot denies
it from then on (``AgentView.active_at``). The sweep (the server's maintenance loop, every few
seconds on every node) makes that durable: the status and ``status_reason``, one
``agent.expired`` event per agent, and the agent's outstanding access tokens revoked through
the expiry hooks. A change to an agent the sweep has not reached yet stores its expiry first
(:meth:`AgentExpiry.catch_up`), so the change starts from what readers saw and every expiry
is in the ledger exactly once.

It runs under the deployment-wide write lock and selects only agents not yet expired, so
nodes sweeping together expire each agent once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.agents.cutoff import CutOff, Why, cut_off
from tether.agents.models import AgentRow
from tether.agents.values import EXPIRABLE, Status, expiry_reason, has_expired
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.maintenance import Task
from tether.principals import SYSTEM
from tether.runtime import changes

# Agents expired per write transaction: the lock is released between batches.
BATCH = 500


class AgentExpiry:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, cut_offs: Sequence[CutOff]
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.cut_offs = cut_offs  # the agents domain's one list (tether.agents.cutoff)

    def maintenance(self) -> list[Task]:
        return [Task("agents.expire", self.expire_due)]

    def expire_due(self) -> int:
        """Maintenance: store the expiry of every agent whose ``expires_at`` has passed;
        returns how many agents expired (0 when another node got there first)."""
        now = self.clock.now()
        total = 0
        while True:
            with self.db.write() as s:
                rows = list(s.scalars(
                    select(AgentRow)
                    .where(AgentRow.status.in_([str(x) for x in EXPIRABLE]),
                           AgentRow.expires_at <= to_micros(now))
                    .order_by(AgentRow.expires_at, AgentRow.id).limit(BATCH)
                ))  # fmt: skip
                self._expire(s, rows, now)
            total += len(rows)
            if len(rows) < BATCH:
                return total

    def catch_up(self, s: Session, rows: Sequence[AgentRow], now: datetime) -> None:
        """Inside a caller's write transaction: store the expiry of those of ``rows`` that have
        expired but that the sweep has not reached yet."""
        now_us = to_micros(now)
        self._expire(
            s,
            [r for r in rows if r.status in EXPIRABLE and has_expired(r.expires_at, now_us)],
            now,
        )

    def _expire(self, s: Session, rows: Sequence[AgentRow], now: datetime) -> None:
        if not rows:
            return
        now_us = to_micros(now)
        events: list[NewEvent] = []
        for row in rows:
            assert row.expires_at is not None  # selected for having passed it
            details: dict[str, Any] = {
                "from": row.status,
                "to": Status.EXPIRED.value,
                "expires_at": to_rfc3339(from_micros(row.expires_at)),
            }
            if row.status_reason is not None:
                details["previous_reason"] = row.status_reason
            row.status = Status.EXPIRED.value
            row.status_reason = expiry_reason(row.expires_at)
            row.updated_at = now_us
            details["cut_off"] = cut_off(
                self.cut_offs, s, [row.id], now, why=Why.EXPIRED, counts={}
            )
            events.append(NewEvent(
                EventType.AGENT_EXPIRED, SYSTEM.ref, agent_id=row.id,
                action=str(EventType.AGENT_EXPIRED), resource={"type": "Agent", "id": row.id},
                outcome="success", details=details,
            ))  # fmt: skip
        changes.record(s, changes.Kind.AGENT, [r.id for r in rows], now_us=now_us)
        self.ledger.append(s, events, now=now)
