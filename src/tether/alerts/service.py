"""Alerts where security teams look: raised from the ledger, deduplicated, delivered.

* **Raised from the ledger** (:meth:`AlertService.project`, a maintenance task on every node,
  under the write lock so nodes do it once): the events after the projector's cursor that a
  rule in :mod:`tether.alerts.rules` names become alerts, the cursor moving in the same
  commit — so every notable event raises its alert exactly once, whichever node wrote it.
* **No storms**: an alert of the same kind about the same agent within the dedup window, while
  the first is unacknowledged, folds into it (``suppressed`` counts them); no new delivery.
* **Delivered in order** (:meth:`AlertService.deliver`, one node at a time under a lease):
  each alert is queued for every ``TETHER_ALERT_WEBHOOKS`` receiver in the commit that raises
  it (an outbox), sent as a Standard Webhook (``webhook-id`` the alert's id, the same on
  every retry; signed by the ``standardwebhooks`` package), one receiver's queue strictly in
  order: a receiver that is down holds its queue, retried with backoff, and gets everything
  once it is back; an alert not delivered within ``TETHER_ALERT_DEAD_AFTER_HOURS`` goes to
  the dead-letter list, which an admin can replay.
* **Also**: one JSON log line per alert (logger ``tether.alerts``, stable field names after
  OCSF's detection finding), Prometheus counters, and a feed (:meth:`after`) for the
  server-sent events of the API and the console.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tether.agents.authority import Act
from tether.agents.service import AgentService
from tether.alerts.models import AlertDeliveryRow, AlertRow, AlertStateRow
from tether.alerts.rules import RULES, raised
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.db.text import unstorable
from tether.errors import Forbidden, NotFound, ValidationFailed
from tether.ids import IdPrefix, new_id
from tether.maintenance import Task
from tether.pagination import Page, decode_cursor, page_of
from tether.principals import Principal, Role

log = logging.getLogger("tether.alerts")
RAISED = Counter("tether_alerts_raised", "Alerts raised", ["kind", "severity"])
SUPPRESSED = Counter("tether_alerts_suppressed", "Alerts folded into an open one", ["kind"])
DELIVERIES = Counter("tether_alert_deliveries", "Alert webhook attempts", ["result"])
for _result in ("delivered", "failed", "dead"):
    DELIVERIES.labels(result=_result)

BATCH = 500  # events projected per transaction
_READ = frozenset(str(t) for t in RULES)  # the event types some alert rule reads
LEASE_US = 30_000_000
_PROCESS = f"{os.getpid()}-{secrets.token_hex(4)}"


class AlertNotFound(NotFound):
    code = "alert_not_found"


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    seq: int
    event_id: str
    kind: str
    severity: str
    agent_id: str | None
    summary: str
    details: dict[str, Any]
    suppressed: int
    created_at: int
    last_at: int
    acked_by: str | None
    acked_by_name: str | None
    acked_at: int | None
    ack_note: str | None

    @classmethod
    def of(cls, row: AlertRow) -> Alert:
        return cls(row.id, row.seq, row.event_id, row.kind, row.severity, row.agent_id,
                   row.summary, orjson.loads(row.details), row.suppressed, row.created_at,
                   row.last_at, row.acked_by, row.acked_by_name, row.acked_at,
                   row.ack_note)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "seq": self.seq, "event_id": self.event_id, "kind": self.kind,
            "severity": self.severity, "agent_id": self.agent_id, "summary": self.summary,
            "details": self.details, "suppressed": self.suppressed,
            "created_at": to_rfc3339(from_micros(self.created_at)),
            "last_at": to_rfc3339(from_micros(self.last_at)),
            "acked_by": self.acked_by, "acked_by_name": self.acked_by_name,
            "acked_at": to_rfc3339(from_micros(self.acked_at)) if self.acked_at else None,
            "ack_note": self.ack_note,
        }  # fmt: skip


def endpoint_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def derived_secret(master_key: bytes) -> str:
    """The default signing secret, ``whsec_<base64>``: the same on every node."""
    raw = hmac.new(master_key, b"tether alert webhooks v1", hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


class AlertService:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, *, agents: AgentService,
        webhooks: Sequence[str] = (), secret: str, dedup_seconds: int = 300,
        retry_max_seconds: int = 300, dead_after_hours: int = 24,
    ) -> None:  # fmt: skip
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.webhooks = list(webhooks)
        self.secret = secret
        self.dedup_us = dedup_seconds * 1_000_000
        self.retry_max = retry_max_seconds
        self.dead_after_us = dead_after_hours * 3_600_000_000

    def maintenance(self) -> builtins.list[Task]:
        return [Task("alerts.project", self.project), Task("alerts.deliver", self.deliver)]

    # -- raising --------------------------------------------------------------------------------
    def project(self) -> int:
        """Raise the alerts of the ledger's events since the cursor; returns how many. Only
        events of a type some rule reads are read (decisions, most of the ledger, are not:
        reading and parsing each of them here, under the write lock, cost the decision path
        — bench/README.md, "The decision hot path"); the cursor then moves to the head."""
        now_us = to_micros(self.clock.now())
        made: builtins.list[Alert] = []
        self._ensure("cursor", 0)
        with self.db.write() as s:
            state = s.get(AlertStateRow, "cursor")
            assert state is not None  # made above (or by the migration), never deleted
            events = self.ledger.store.page(s, after_seq=state.value, limit=BATCH,
                                            types=_READ)  # fmt: skip
            for event in events:
                alert = self._raise(s, event, now_us)
                if alert is not None:
                    made.append(alert)
            if len(events) == BATCH:
                state.value = events[-1].seq
            elif (head := self.ledger.store.head(s)) is not None and head[0] > state.value:
                state.value = head[0]  # under the write lock: nothing below it is to come
        for alert in made:  # committed: now it may be told
            RAISED.labels(alert.kind, alert.severity).inc()
            log.warning(json.dumps(_log_line(alert), sort_keys=True))
        return len(made)

    def _raise(self, s: Session, event: Event, now_us: int) -> Alert | None:
        found = raised(event)
        if found is None:
            return None
        key = f"{found.kind}:{event.agent_id or '-'}"
        if self.dedup_us:
            open_one = s.scalars(
                select(AlertRow).where(AlertRow.dedup_key == key,
                                       AlertRow.last_at >= event.time_us - self.dedup_us,
                                       AlertRow.acked_at.is_(None))
                .order_by(AlertRow.last_at.desc()).limit(1)
            ).first()  # fmt: skip
            if open_one is not None:
                open_one.suppressed += 1
                open_one.last_at = max(open_one.last_at, event.time_us)
                SUPPRESSED.labels(found.kind).inc()
                return None
        row = AlertRow(
            id=new_id(IdPrefix.ALERT), seq=event.seq, event_id=event.id, kind=found.kind,
            severity=found.severity, agent_id=event.agent_id, summary=found.summary[:500],
            details=orjson.dumps(found.details, default=str).decode(), dedup_key=key,
            suppressed=0, created_at=event.time_us, last_at=event.time_us,
        )  # fmt: skip
        s.add(row)
        for url in self.webhooks:
            s.add(AlertDeliveryRow(endpoint=endpoint_key(url), alert_id=row.id, seq=row.seq,
                                   status="pending", attempts=0, queued_at=now_us,
                                   next_at=now_us))  # fmt: skip
        s.flush()
        return Alert.of(row)

    # -- delivering -----------------------------------------------------------------------------
    def deliver(self) -> int:
        """Send what is due, each receiver's queue in order, while this node holds the lease;
        returns how many were delivered."""
        if not self.webhooks or not self._lease():
            return 0
        delivered = 0
        for url in self.webhooks:
            for _ in range(100):  # a bounded turn per receiver
                job = self._next(endpoint_key(url))
                if job is None:
                    break
                ok = self._send(url, job)
                delivered += ok
                if not ok:
                    break  # this receiver's queue waits for its head
        return delivered

    def _ensure(self, name: str, value: int) -> None:
        """The state row ``name``, made once whoever gets there first (a deployment's schema
        made without the migration — tests — has none yet)."""
        with self.db.read() as s:
            if s.get(AlertStateRow, name) is not None:
                return
        with contextlib.suppress(IntegrityError), self.db.write() as s:
            if s.get(AlertStateRow, name) is None:
                s.add(AlertStateRow(name=name, value=value, holder=None))

    def _lease(self) -> bool:
        now_us = to_micros(self.clock.now())
        self._ensure("deliverer", 0)
        with self.db.write() as s:
            lease = s.get(AlertStateRow, "deliverer")
            assert lease is not None
            if lease.holder not in (None, _PROCESS) and lease.value > now_us:
                return False
            lease.holder, lease.value = _PROCESS, now_us + LEASE_US
            return True

    def _next(self, endpoint: str) -> tuple[AlertDeliveryRow, AlertRow] | None:
        """The head of the receiver's queue if it is due; one past saving (queued longer than
        the dead-letter age) goes to the dead-letter list and the next one is looked at."""
        now_us = to_micros(self.clock.now())
        with self.db.write() as s:
            while True:
                head = s.scalars(select(AlertDeliveryRow).where(
                    AlertDeliveryRow.endpoint == endpoint, AlertDeliveryRow.status == "pending",
                ).order_by(AlertDeliveryRow.seq).limit(1)).first()  # fmt: skip
                if head is None:
                    return None
                alert = s.get(AlertRow, head.alert_id)
                if alert is None or head.queued_at + self.dead_after_us <= now_us:
                    head.status = "dead"
                    head.last_error = head.last_error or "not delivered in time"
                    DELIVERIES.labels("dead").inc()
                    s.flush()
                    continue
                if head.next_at > now_us:
                    return None
                s.expunge(head)
                s.expunge(alert)
                return head, alert

    def _send(self, url: str, job: tuple[AlertDeliveryRow, AlertRow]) -> bool:
        import httpx2
        from standardwebhooks import Webhook

        head, alert = job
        now = datetime.now(UTC)
        body = orjson.dumps({"type": f"alert.{alert.kind}", "timestamp": to_rfc3339(now),
                             "data": Alert.of(alert).to_json()})  # fmt: skip
        headers = {
            "content-type": "application/json", "user-agent": "tether-alerts/1",
            "webhook-id": alert.id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(self.secret).sign(alert.id, now, body.decode()),
        }  # fmt: skip
        error: str | None = None
        try:
            timeout = httpx2.Timeout(5.0, connect=2.0)
            with httpx2.Client(timeout=timeout, follow_redirects=False) as http:
                answer = http.post(url, content=body, headers=headers)
            if not 200 <= answer.status_code < 300:
                error = f"HTTP {answer.status_code}"
        except httpx2.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        now_us = to_micros(self.clock.now())
        with self.db.write() as s:
            row = s.get(AlertDeliveryRow, head.id)
            if row is None:
                return False
            if error is None:
                row.status, row.delivered_at, row.last_error = "delivered", now_us, None
                DELIVERIES.labels("delivered").inc()
                return True
            row.attempts += 1
            row.last_error = error
            row.next_at = now_us + min(2 ** min(row.attempts, 12), self.retry_max) * 1_000_000
            DELIVERIES.labels("failed").inc()
            return False

    # -- reading and acting ---------------------------------------------------------------------
    def list(
        self, actor: Principal, *, status: str | None = None, agent: str | None = None,
        cursor: str | None = None, limit: int = 50,
    ) -> Page[Alert]:  # fmt: skip
        """Newest first: every alert for admins and auditors, their agents' for a supervisor."""
        if status not in (None, "open", "acked"):
            raise ValidationFailed("status is open or acked", field="status")
        _reader(actor)
        before = decode_cursor(cursor)
        upper = int(before) if before is not None and before.isdigit() else None
        rows: builtins.list[Alert] = []
        with self.db.read() as s:
            # A supervisor's alerts among everyone's: read on in batches until a page is full.
            for _ in range(50):
                q = select(AlertRow).order_by(AlertRow.seq.desc())
                if upper is not None:
                    q = q.where(AlertRow.seq < upper)
                if status == "open":
                    q = q.where(AlertRow.acked_at.is_(None))
                elif status == "acked":
                    q = q.where(AlertRow.acked_at.is_not(None))
                if agent is not None:
                    q = q.where(AlertRow.agent_id == agent)
                batch = [Alert.of(r) for r in s.scalars(q.limit(max(limit * 4, 200)))]
                if not batch:
                    break
                upper = batch[-1].seq
                if actor.role is Role.SUPERVISOR:
                    batch = [a for a in batch
                             if a.agent_id and self._steward(s, actor, a.agent_id)]  # fmt: skip
                rows.extend(batch)
                if len(rows) > limit:
                    break
        return page_of(rows[: limit + 1], limit, key=lambda a: str(a.seq))

    def after(self, actor: Principal, seq: int) -> builtins.list[Alert]:
        """Alerts raised after ``seq`` the actor may read (oldest first): the live feeds."""
        _reader(actor)
        with self.db.read() as s:
            newer = select(AlertRow).where(AlertRow.seq > seq).order_by(AlertRow.seq).limit(200)
            rows = [Alert.of(r) for r in s.scalars(newer)]
            if actor.role is Role.SUPERVISOR:
                rows = [a for a in rows if a.agent_id and self._steward(s, actor, a.agent_id)]
        return rows

    def head(self) -> int:
        with self.db.read() as s:
            return int(s.scalar(select(func.max(AlertRow.seq))) or 0)

    def ack(self, actor: Principal, alert_id: str, *, note: str | None = None) -> Alert:
        """Acknowledge: an admin, or a supervisor of the alert's agent (an auditor reads)."""
        now = self.clock.now()
        with self.db.write() as s:
            row = None if unstorable(alert_id) else s.get(AlertRow, alert_id)
            if row is None:
                raise AlertNotFound(f"no alert {alert_id!r}", alert=alert_id)
            steward = (actor.role is Role.SUPERVISOR and row.agent_id is not None
                       and self._steward(s, actor, row.agent_id, Act.OPERATE))  # fmt: skip
            if not actor.is_admin and not steward:
                raise Forbidden("only an admin, or a supervisor of its agent, acknowledges "
                                    "an alert")  # fmt: skip
            if row.acked_at is None:
                row.acked_by, row.acked_at = actor.ref, to_micros(now)
                row.acked_by_name = actor.name[:64]
                row.ack_note = (note or "")[:500] or None
                self.ledger.append(s, [NewEvent(
                    EventType.ALERT_ACKNOWLEDGED, actor.ref, agent_id=row.agent_id,
                    resource={"type": "Alert", "id": row.id},
                    details={"kind": row.kind, "note": row.ack_note},
                )], now=now)  # fmt: skip
            return Alert.of(row)

    def dead_letters(self, actor: Principal) -> builtins.list[dict[str, Any]]:
        """The deliveries given up on: for admins and auditors (every agent's alerts)."""
        if not actor.is_admin and actor.role is not Role.AUDITOR:
            raise Forbidden("the delivery list is for admins and auditors")
        with self.db.read() as s:
            rows = s.execute(select(AlertDeliveryRow, AlertRow.kind, AlertRow.summary)
                             .join(AlertRow, AlertRow.id == AlertDeliveryRow.alert_id)
                             .where(AlertDeliveryRow.status == "dead")
                             .order_by(AlertDeliveryRow.seq).limit(1000)).all()  # fmt: skip
        return [{"id": d.id, "alert_id": d.alert_id, "kind": kind, "summary": summary,
                 "attempts": d.attempts, "last_error": d.last_error,
                 "receiver": _origin(next((u for u in self.webhooks
                                           if endpoint_key(u) == d.endpoint), d.endpoint))}
                for d, kind, summary in rows]  # fmt: skip

    def replay(self, actor: Principal, ids: Sequence[int] | None = None) -> int:
        """Send dead-lettered deliveries again (all, or ``ids``), in their order; recorded."""
        _admin(actor)
        now = self.clock.now()
        with self.db.write() as s:
            q = update(AlertDeliveryRow).where(AlertDeliveryRow.status == "dead")
            if ids is not None:
                q = q.where(AlertDeliveryRow.id.in_(list(ids)))
            now_us = to_micros(now)
            again = q.values(status="pending", attempts=0, queued_at=now_us, next_at=now_us)
            count = int(s.execute(again).rowcount)  # type: ignore[attr-defined]
            self.ledger.append(s, [NewEvent(
                EventType.ALERTS_REPLAYED, actor.ref, details={"deliveries": count},
            )], now=now)  # fmt: skip
        return count

    def _steward(self, s: Session, actor: Principal, agent_id: str, act: Act = Act.READ) -> bool:
        try:
            self.agents.authorized_row(s, actor, agent_id, act.value)
        except (Forbidden, NotFound):
            return False
        return True


def _origin(url: str) -> str:
    """A receiver as it may be shown: scheme and host (its path often holds a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url[:16]


def _reader(actor: Principal) -> None:
    if actor.kind != "user" and not actor.is_admin:
        raise Forbidden("alerts are for humans")


def _admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin manages alert deliveries", required_role="admin")


def _log_line(alert: Alert) -> dict[str, Any]:
    """One alert as a SIEM reads it: stable names after OCSF's Detection Finding (2004)."""
    return {
        "class_uid": 2004, "class_name": "Detection Finding", "category_name": "Findings",
        "time": alert.created_at // 1000, "severity": alert.severity,
        "finding_info": {"uid": alert.id, "title": alert.kind, "desc": alert.summary,
                         "src_event_uid": alert.event_id},
        "actor": {"agent_id": alert.agent_id}, "metadata": {"product": "tether", "version": "1"},
        "unmapped": alert.details,
    }  # fmt: skip
