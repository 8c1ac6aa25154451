"""Approval checkpoints: the state machine and who may move it.

``pending`` → ``approved`` → ``used`` (the identical request, allowed exactly once), or
``pending`` → ``denied`` / ``expired``; a killed or expired agent's open approvals are
``cancelled``.
An approval is bound to the request's digest (subject, chain, action, resource, context):
a different request never consumes it. Only a human with authority over the agent — its
owner, a listed supervisor, an admin — decides; never an agent, never an auditor, and not the
human the agent acts for, unless ``approval_allow_self_approval`` says so.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy.orm import Session

from tether.agents import authority, directory
from tether.agents.authority import Act
from tether.agents.cutoff import FOR_GOOD, Why
from tether.approvals.models import ApprovalRow
from tether.approvals.notify import WebhookNotifier
from tether.approvals.store import OPEN, DatabaseApprovalStore
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.group import Chain
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros
from tether.db import Database
from tether.errors import ApprovalNotFound, ApprovalNotPending, Forbidden, ValidationFailed
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text as dumps
from tether.jsonutil import loads
from tether.maintenance import Task
from tether.pagination import Page, decode_cursor, page_of
from tether.policy.values import Effect
from tether.principals import Principal, Role

if TYPE_CHECKING:
    from tether.policy.decide import DecisionService
    from tether.policy.values import Ask, Decision

APPROVALS = Counter("tether_approvals", "Approval state changes", ["to"])
FLOOD = "tether.approval-flood"
STATUSES = ("pending", "approved", "denied", "expired", "used", "cancelled")


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    agent_id: str
    on_behalf_of: str | None
    status: str
    action: str
    resource: dict[str, Any]
    request: dict[str, Any]
    request_digest: str
    reasons: list[str]
    policy_version: str
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str | None
    used_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "agent_id": self.agent_id, "on_behalf_of": self.on_behalf_of,
            "status": self.status, "action": self.action, "resource": self.resource,
            "request": self.request, "request_digest": self.request_digest,
            "reasons": self.reasons, "policy_version": self.policy_version,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "decided_by": self.decided_by, "decided_at": self.decided_at, "note": self.note,
            "used_at": self.used_at,
        }  # fmt: skip


def _approval(row: ApprovalRow, now_us: int | None = None) -> Approval:
    status = row.status
    if now_us is not None and status in OPEN and row.expires_at <= now_us:
        status = "expired"
    return Approval(
        row.id, row.agent_id, row.on_behalf_of, status, row.action, loads(row.resource),
        loads(row.request), row.request_digest, loads(row.reasons), row.policy_version,
        from_micros(row.created_at), from_micros(row.expires_at), row.decided_by,
        from_micros(row.decided_at) if row.decided_at else None, row.note,
        from_micros(row.used_at) if row.used_at else None,
    )  # fmt: skip


def _allows(s: Session, actor: Principal, act: Act, agent_id: str) -> bool:
    """The agents domain's authority rule; over an agent that is gone, only admins."""
    stewards = directory.stewards(s, agent_id)
    return actor.is_admin if stewards is None else authority.allows(actor, act, stewards)


class ApprovalService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        notifier: WebhookNotifier,
        *,
        ttl_seconds: int = 900,
        max_pending_per_agent: int = 20,
        allow_self_approval: bool = False,
        public_url: str = "",
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.notifier = notifier
        self.ttl = timedelta(seconds=ttl_seconds)
        self.max_pending = max_pending_per_agent
        self.allow_self_approval = allow_self_approval
        self.public_url = public_url
        self.store = DatabaseApprovalStore()

    # -- the checkpoint on the decision path -----------------------------------------------
    def announce(self, final: Decision, opened: ApprovalRow | None) -> None:
        """After the checkpoint's transaction committed: count a used approval, count and
        notify a new one."""
        if final.approval_status == "used":
            APPROVALS.labels("used").inc()
        if opened is not None:
            APPROVALS.labels("pending").inc()
            self.notifier.notify("approval.requested", self._notice(opened))

    def checkpoint(
        self, s: Session, ask: Ask, decision: Decision, decisions: DecisionService,
        watch: Any = None,
    ) -> Chain:  # fmt: skip
        """Consume a granted approval for exactly this request, or reuse / open a pending
        one, in the caller's write transaction (the decision path runs it as a job of the
        group commit), and hand back the decision event (and any approval event) for that
        transaction's append. Once chained it gives the decision and the approval it opened,
        if any, for :meth:`announce` once the transaction committed."""
        now = self.clock.now()
        now_us = to_micros(now)
        digest = ask.digest()
        opened: ApprovalRow | None = None
        # One read of the agent's live approvals (at most max_pending of them pending): the
        # one for this request, if any, and how many are pending.
        live = self.store.live(s, ask.subject, now_us=now_us)
        mine = [r for r in live if r.request_digest == digest]
        granted = next((r.id for r in mine if r.status == "approved"), None)
        waiting = next((r.id for r in mine if r.status == "pending"), None)
        events: list[NewEvent] = []
        if granted is not None:
            # used now, inside the write lock: a second identical request — even in the same
            # group commit — finds it used
            self.store.use(s, granted, now_us=now_us)
            final = replace(decision, effect=Effect.ALLOW, approval_id=granted,
                            approval_status="used")  # fmt: skip
        elif waiting is not None:
            final = replace(decision, approval_id=waiting, approval_status="pending")
        elif sum(r.status == "pending" for r in live) >= self.max_pending:
            final = replace(
                decision,
                effect=Effect.DENY,
                reasons=(*decision.reasons, FLOOD),
                error={
                    "code": "approval_flood",
                    "message": f"agent {ask.subject} has {self.max_pending} pending "
                    "approvals; no more are opened until some are decided",
                },
            )
            events.append(NewEvent(
                EventType.APPROVAL_FLOOD, f"agent:{ask.subject}", agent_id=ask.subject,
                action=ask.action, resource={"type": ask.resource_type, "id": ask.resource_id},
                outcome="refused", details={"pending": self.max_pending, "alert": True},
            ))  # fmt: skip
        else:
            opened = self._open(s, ask, decision, digest, now)
            final = replace(decision, approval_id=opened.id, approval_status="pending")
            events.append(NewEvent(
                EventType.APPROVAL_REQUESTED, f"agent:{ask.subject}", agent_id=ask.subject,
                on_behalf_of=ask.on_behalf_of, chain=ask.full_chain, action=ask.action,
                resource={"type": ask.resource_type, "id": ask.resource_id},
                reasons=decision.reasons, policy_version=decision.policy_version,
                details={"approval_id": opened.id, "request_digest": digest,
                         "expires_at": opened.expires_at},
            ))  # fmt: skip
        decided = final

        def finish(chained: list[Event]) -> tuple[Decision, ApprovalRow | None]:
            if granted is not None:
                self.store.set_used_event(s, granted, chained[0].id)
            return replace(decided, event_id=chained[0].id), opened

        attachment = decisions.attachment(ask, watch)
        return Chain([decisions.event(ask, final), *events], finish, attachment)

    def _open(
        self, s: Session, ask: Ask, decision: Decision, digest: str, now: datetime
    ) -> ApprovalRow:
        row = ApprovalRow(
            id=new_id(IdPrefix.APPROVAL), agent_id=ask.subject, on_behalf_of=ask.on_behalf_of,
            request_digest=digest,
            request=dumps({"subject": ask.subject, "chain": list(ask.full_chain),
                           "action": ask.action,
                           "resource": {"type": ask.resource_type, "id": ask.resource_id,
                                        "properties": ask.properties},
                           "context": ask.context}),
            action=ask.action, resource=dumps({"type": ask.resource_type, "id": ask.resource_id}),
            reasons=dumps(list(decision.reasons)), policy_version=decision.policy_version,
            status="pending", created_at=to_micros(now), expires_at=to_micros(now + self.ttl),
        )  # fmt: skip
        self.store.add(s, row)
        return row

    def _notice(self, row: ApprovalRow) -> dict[str, Any]:
        approval = _approval(row)
        body = approval.to_json()
        for key in ("created_at", "expires_at"):
            body[key] = body[key].isoformat().replace("+00:00", "Z")
        body.pop("decided_at")
        body.pop("used_at")
        body["url"] = f"{self.public_url}/v1/approvals/{row.id}"
        return body

    # -- reading ---------------------------------------------------------------------------
    def get(self, actor: Principal, approval_id: str) -> Approval:
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            row = self.store.get(s, approval_id)
            if row is None or not self._may_see(s, actor, row):
                raise ApprovalNotFound(f"no approval {approval_id!r}", approval=approval_id)
            return _approval(row, now_us)

    def list(
        self, actor: Principal, *, status: str | None, agent: str | None, cursor: str | None,
        limit: int,
    ) -> Page[Approval]:  # fmt: skip
        if status is not None and status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
        now_us = to_micros(self.clock.now())
        after = decode_cursor(cursor)
        # What they may read: an agent its own approvals, a supervisor its agents' own.
        reader = actor.kind == "agent"
        supervisor = not reader and actor.role is Role.SUPERVISOR
        with self.db.read() as s:
            found = self.store.page(
                s,
                before=after or None,
                limit=limit + 1,
                now_us=now_us,
                status=status or None,
                agent_id=agent or None,
                own_agent=actor.id if reader else None,
                steward=actor.id if supervisor else None,
            )
            rows = [_approval(r, now_us) for r in found]
        return page_of(rows, limit, key=lambda a: a.id)

    @staticmethod
    def _may_see(s: Session, actor: Principal, row: ApprovalRow) -> bool:
        if actor.kind == "agent":
            return actor.id == row.agent_id
        return _allows(s, actor, Act.READ, row.agent_id)

    @staticmethod
    def _has_authority(s: Session, actor: Principal, agent_id: str) -> bool:
        return _allows(s, actor, Act.OPERATE, agent_id)

    # -- deciding --------------------------------------------------------------------------
    def approve(self, actor: Principal, approval_id: str, *, note: str | None) -> Approval:
        return self._decide(actor, approval_id, "approved", EventType.APPROVAL_APPROVED, note)

    def deny(self, actor: Principal, approval_id: str, *, note: str | None) -> Approval:
        return self._decide(actor, approval_id, "denied", EventType.APPROVAL_DENIED, note)

    def _decide(
        self, actor: Principal, approval_id: str, to: str, event: EventType, note: str | None
    ) -> Approval:
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            row = self.store.get(s, approval_id)
            if row is None or not self._may_see(s, actor, row):
                raise ApprovalNotFound(f"no approval {approval_id!r}", approval=approval_id)
            if actor.kind != "user":
                raise Forbidden("only a human approves; an agent never decides an approval")
            if not self._has_authority(s, actor, row.agent_id):
                raise Forbidden(
                    f"you have no authority over agent {row.agent_id}: only its "
                    "owner, its supervisors and admins decide its approvals"
                )
            if row.on_behalf_of == actor.id and not self.allow_self_approval:
                raise Forbidden("the agent acts on your behalf; someone else must approve its "
                                "request (approval_allow_self_approval is off)")  # fmt: skip
            if row.status == "pending" and row.expires_at <= now_us:
                self._expire(s, [row], now)  # recorded (this transaction commits), then refused
                expired = True
            elif row.status != "pending":
                raise ApprovalNotPending(f"approval {row.id} is {row.status}", status=row.status)
            else:
                expired = False
                self._record_verdict(s, row, actor, to=to, event=event, note=note, now=now)
            approval = _approval(row, now_us)
        if expired:
            raise ApprovalNotPending(f"approval {approval.id} is expired", status="expired")
        APPROVALS.labels(to).inc()
        self.notifier.notify(f"approval.{to}", {"id": approval.id, "agent_id": approval.agent_id,
                                                "status": to, "decided_by": actor.ref})  # fmt: skip
        return approval

    def _record_verdict(
        self, s: Session, row: ApprovalRow, actor: Principal, *, to: str, event: EventType,
        note: str | None, now: datetime,
    ) -> None:  # fmt: skip
        row.status, row.decided_by, row.decided_at, row.note = to, actor.ref, to_micros(now), note
        self.ledger.append(s, [NewEvent(
            event, actor.ref, agent_id=row.agent_id, on_behalf_of=row.on_behalf_of,
            action=row.action, resource=loads(row.resource), decision=to,
            reasons=tuple(loads(row.reasons)), policy_version=row.policy_version,
            outcome="success", details={"approval_id": row.id, "note": note,
                                        "request_digest": row.request_digest},
        )], now=now)  # fmt: skip

    def _expire(self, s: Session, rows: builtins.list[ApprovalRow], now: datetime) -> None:
        for row in rows:
            row.status = "expired"
            APPROVALS.labels("expired").inc()
        if rows:
            self.ledger.append(s, [NewEvent(
                EventType.APPROVAL_EXPIRED, "system", agent_id=r.agent_id, action=r.action,
                resource=loads(r.resource), details={"approval_id": r.id},
            ) for r in rows], now=now)  # fmt: skip

    def maintenance(self) -> builtins.list[Task]:
        return [Task("approvals.expire", self.expire_due)]

    def expire_due(self) -> int:
        """Maintenance: mark every open approval past its expiry as expired (with events)."""
        now = self.clock.now()
        with self.db.write() as s:
            rows = self.store.due(s, now_us=to_micros(now))
            self._expire(s, rows, now)
        return len(rows)

    def cancel_for_agents(
        self, s: Session, agent_ids: builtins.list[str], now: datetime, *, why: Why
    ) -> dict[str, int]:
        """Cut-off hook (a kill or an expiry): the agent's open approvals can never be used
        (one event each) — not even after an expired agent is extended and resumed."""
        if not agent_ids or why not in FOR_GOOD:  # a suspended agent's asks are refused
            return {"approvals": 0}
        rows = self.store.open_of(s, agent_ids)
        for row in rows:
            row.status, row.decided_at, row.decided_by = "cancelled", to_micros(now), "system"
            APPROVALS.labels("cancelled").inc()
        if rows:
            self.ledger.append(s, [NewEvent(
                EventType.APPROVAL_CANCELLED, "system", agent_id=r.agent_id, action=r.action,
                resource=loads(r.resource), details={"approval_id": r.id, "why": f"agent {why}"},
            ) for r in rows], now=now)  # fmt: skip
        return {"approvals": len(rows)}
