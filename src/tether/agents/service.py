"""The agent registry: every rule about agents lives here, and every change is audited.

Authority (API.md "Humans"): an admin may do anything; an auditor may only read; a
supervisor may read, suspend, resume and kill the agents they own or supervise, and may
also update, clone and retire the agents they own. A supervisor creates agents only for
themselves.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from tether.agents import authority, edits, read_model
from tether.agents.cutoff import CutOff, Why, cut_off
from tether.agents.expiry import AgentExpiry
from tether.agents.fingerprint import normalize
from tether.agents.models import AgentRow
from tether.agents.recertification import (
    DEFAULT_OVERDUE,
    RECERTIFY_DAYS,
    is_overdue,
    overdue_action,
    period,
)
from tether.agents.recertify_sweep import RecertificationSweep
from tether.agents.schemas import AgentCreate, AgentUpdate
from tether.agents.store import DatabaseAgentStore, Descendant
from tether.agents.values import (
    EXPIRABLE,
    TERMINAL,
    Agent,
    RiskTier,
    Status,
    has_expired,
    next_status,
    spiffe_id,
)
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.propagated import record_propagation
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import (
    AgentNotFound,
    AgentRevoked,
    Forbidden,
    InvalidTransition,
    RiskTierProhibited,
    ValidationFailed,
)
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text, loads
from tether.pagination import Page, decode_cursor, encode_cursor
from tether.principals import SYSTEM, Principal, Role
from tether.runtime import changes, propagation
from tether.users.models import UserRow
from tether.users.store import DatabaseUserStore

__all__ = ["MAX_CASCADE", "RECERTIFY_DAYS", "AgentService"]

MAX_CASCADE = 10_000


class AgentService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        trust_domain: str,
        recertify_notice_days: int = 14,
        recertify_overdue: Mapping[str, str] = DEFAULT_OVERDUE,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.trust_domain = trust_domain
        self.store = DatabaseAgentStore()
        self.users = DatabaseUserStore()
        # Every domain that grants agents something takes it back here (tether.agents.cutoff).
        self.cut_offs: list[CutOff] = []
        self.expiry = AgentExpiry(db, ledger, clock, self.cut_offs)
        self.recertification = RecertificationSweep(
            db, ledger, clock, self, notice_days=recertify_notice_days, overdue=recertify_overdue
        )

    # -- reading ---------------------------------------------------------------------------
    def get(self, actor: Principal, agent_id: str) -> Agent:
        """The agent with this id; raises :class:`AgentNotFound` or :class:`Forbidden`."""
        with self.db.read() as s:
            row = self._row(s, agent_id)
            self._require(s, actor, row, "read")
            return read_model.to_agents(self.store, s, [row], now=self.clock.now())[0]

    def list(
        self,
        actor: Principal,
        *,
        cursor: str | None = None,
        limit: int = 50,
        status: str | None = None,
        owner: str | None = None,
        role: str | None = None,
        risk_tier: str | None = None,
        recertify_due_within: int | None = None,
    ) -> Page[Agent]:
        """Agents the actor may see, in creation order; supervisors see only their own.
        ``status`` matches the status readers see (an agent past ``expires_at`` is
        ``expired`` before the sweep stores it); ``recertify_due_within`` (days; 0: overdue
        now) keeps the active and suspended agents whose recertification is due by then."""
        if actor.kind != "system" and actor.role is None:
            raise Forbidden("only users may list agents")
        after = decode_cursor(cursor)
        now = self.clock.now()
        with self.db.read() as s:
            owner_id: str | None = None
            if owner is not None:
                user = self.users.resolve(s, owner)
                if user is None:
                    return Page([], None)
                owner_id = user.id
            visible_to = actor.id if actor.role is Role.SUPERVISOR else None
            due_by = (
                None
                if recertify_due_within is None
                else to_micros(now + timedelta(days=recertify_due_within))
            )
            rows = self.store.page(
                s,
                after=after,
                limit=limit + 1,
                status=status,
                owner_id=owner_id,
                role=role,
                risk_tier=risk_tier,
                visible_to=visible_to,
                now_us=to_micros(now),
                due_by=due_by,
            )
            more = len(rows) > limit
            agents = read_model.to_agents(self.store, s, rows[:limit], now=now)
        return Page(agents, encode_cursor(agents[-1].id) if more else None)

    def below(self, actor: Principal, agent_id: str, *, limit: int = 100) -> builtins.list[str]:
        """The ids of the agents below ``agent_id`` (what its kill would take with it), nearest
        generation first; the actor must be able to read it."""
        with self.db.read() as s:
            self.authorized_row(s, actor, agent_id, "read")
            return [d.id for d in self.store.descendants(s, agent_id, limit=limit)]

    def counts(self, actor: Principal) -> dict[tuple[str, str], int]:
        """Agents the actor may see, counted per (status, risk tier)."""
        if actor.kind != "system" and actor.role is None:
            raise Forbidden("only users may list agents")
        visible_to = actor.id if actor.role is Role.SUPERVISOR else None
        with self.db.read() as s:
            return self.store.counts(s, now_us=to_micros(self.clock.now()), visible_to=visible_to)

    # -- creating --------------------------------------------------------------------------
    def create(self, actor: Principal, spec: AgentCreate) -> Agent:
        now = self.clock.now()
        # Who may ask comes first: an auditor is refused (403) whatever the body says.
        if not (actor.is_admin or actor.role is Role.SUPERVISOR):
            raise Forbidden("only admins and supervisors may create agents")
        tier = self._tier(spec.risk_tier)
        self._check_future(spec.expires_at, now, "expires_at")
        self._check_future(spec.recertify_by, now, "recertify_by")
        with self.db.write() as s:
            owner = self._human(s, spec.owner, "owner")
            if actor.role is Role.SUPERVISOR and owner.id != actor.id:
                raise Forbidden("a supervisor may only create agents they own", field="owner")
            supervisors = [self._human(s, ref, "supervisors").id for ref in spec.supervisors]
            lineage: list[str] = []
            if spec.parent is not None:
                parent = self.store.get(s, spec.parent)
                if parent is None:
                    raise ValidationFailed(
                        f"parent agent {spec.parent!r} does not exist", field="parent"
                    )
                self._require(s, actor, parent, "operate")
                parent_status = read_model.status_at(parent, now)
                if parent_status is not Status.ACTIVE:
                    raise InvalidTransition(
                        f"parent agent {parent.id} is {parent_status}; only an active agent "
                        "may spawn another",
                        field="parent",
                    )
                lineage = [parent.id, *loads(parent.lineage)]
            edits.check_schedule(spec.attributes)
            row = self._new_row(
                now,
                name=spec.name,
                owner_id=owner.id,
                purpose=spec.purpose,
                tier=tier,
                attributes=spec.attributes,
                scopes=sorted(set(spec.scopes)),
                parent=spec.parent,
                lineage=lineage,
                lineage_kind="spawned" if spec.parent else None,
                fingerprint=normalize(spec.fingerprint.model_dump() if spec.fingerprint else None),
                expires_at=spec.expires_at,
                recertify_by=spec.recertify_by,
            )
            self.store.add(s, row)
            self.store.set_roles(s, row.id, sorted(set(spec.roles)))
            self.store.set_supervisors(s, row.id, sorted(set(supervisors)))
            self._audit(
                s,
                actor,
                EventType.AGENT_CREATED,
                row=row,
                now=now,
                details={
                    "name": row.name,
                    "owner": owner.id,
                    "risk_tier": tier.value,
                    "roles": sorted(set(spec.roles)),
                    "scopes": sorted(set(spec.scopes)),
                    "parent": spec.parent,
                    "fingerprint_digest": row.fingerprint_digest,
                },
            )
            return read_model.to_agents(self.store, s, [row], now=now)[0]

    def clone(self, actor: Principal, agent_id: str, *, name: str) -> Agent:
        """A new agent with the source's roles and attributes; credentials are never copied."""
        now = self.clock.now()
        with self.db.write() as s:
            src = self._row(s, agent_id)
            self._require(s, actor, src, "manage")
            if src.status == Status.REVOKED:
                raise AgentRevoked(f"agent {src.id} is revoked and cannot be cloned")
            if has_expired(src.expires_at, to_micros(now)):  # the clone would be born expired
                raise InvalidTransition(
                    f"cannot clone agent {src.id}: its expires_at has passed; move expires_at "
                    "into the future first (PATCH)",
                    status=Status.EXPIRED.value,
                )
            row = self._new_row(
                now,
                name=name,
                owner_id=src.owner_id,
                purpose=src.purpose,
                tier=RiskTier(src.risk_tier),
                attributes=loads(src.attributes),
                scopes=loads(src.scopes),
                parent=src.id,
                lineage=[src.id, *loads(src.lineage)],
                lineage_kind="cloned",
                fingerprint=loads(src.fingerprint) if src.fingerprint else None,
                expires_at=from_micros(src.expires_at) if src.expires_at else None,
                recertify_by=None,
            )
            self.store.add(s, row)
            self.store.set_roles(s, row.id, self.store.roles_of(s, [src.id])[src.id])
            self.store.set_supervisors(s, row.id, self.store.supervisors_of(s, [src.id])[src.id])
            self._audit(
                s,
                actor,
                EventType.AGENT_CLONED,
                row=row,
                now=now,
                details={"source": src.id, "name": name},
            )
            return read_model.to_agents(self.store, s, [row], now=now)[0]

    # -- changing --------------------------------------------------------------------------
    def update(self, actor: Principal, agent_id: str, patch: AgentUpdate) -> Agent:
        """Apply ``patch``, a JSON Merge Patch (RFC 7396; :class:`AgentUpdate` says what
        merges and what is replaced).

        A changed fingerprint on a ``high``-risk agent suspends it until a human resumes it.
        A patch that changes nothing writes nothing. An expired agent may be patched (a later
        ``expires_at`` is what lets it be resumed); it stays expired until resumed.
        """
        now = self.clock.now()
        fields = patch.model_fields_set
        edits.refuse_nulls(patch)
        tier = self._tier(patch.risk_tier) if patch.risk_tier is not None else None
        with self.db.write() as s:
            row = self._row(s, agent_id)
            self._require(s, actor, row, "manage")
            # After the 404 and the 403: the clock is no reason to answer anyone else 422.
            if "expires_at" in fields:
                self._check_future(patch.expires_at, now, "expires_at")
            if "recertify_by" in fields:
                self._check_future(patch.recertify_by, now, "recertify_by")
            if Status(row.status) in TERMINAL:
                raise self._terminal(row)
            self.expiry.catch_up(s, [row], now)
            changes: dict[str, Any] = {}
            edits.apply_columns(row, patch, tier, changes)
            self._patch_people(s, actor, row, patch, changes)
            if "fingerprint" in fields:
                edits.apply_fingerprint(row, patch, changes)
            if changes:
                row.updated_at = to_micros(now)
                if "recertify_by" in changes:  # a new due date: notice and response anew
                    row.recertify_stage = None
                self._audit(
                    s,
                    actor,
                    EventType.AGENT_UPDATED,
                    row=row,
                    now=now,
                    details={"changes": changes},
                )
            return read_model.to_agents(self.store, s, [row], now=now)[0]

    def _patch_people(
        self,
        s: Session,
        actor: Principal,
        row: AgentRow,
        patch: AgentUpdate,
        changes: dict[str, Any],
    ) -> None:
        if patch.owner is not None:
            if not actor.is_admin:
                raise Forbidden("only an admin may change an agent's owner", field="owner")
            owner = self._human(s, patch.owner, "owner")
            if edits.record(changes, "owner", row.owner_id, owner.id):
                row.owner_id = owner.id
        if patch.roles is not None:
            roles = sorted(set(patch.roles))
            if edits.record(changes, "roles", self.store.roles_of(s, [row.id])[row.id], roles):
                self.store.set_roles(s, row.id, roles)
        if patch.supervisors is not None:
            ids = sorted({self._human(s, r, "supervisors").id for r in patch.supervisors})
            if edits.record(
                changes, "supervisors", self.store.supervisors_of(s, [row.id])[row.id], ids
            ):
                self.store.set_supervisors(s, row.id, ids)

    def recertify(
        self, actor: Principal, agent_id: str, *, note: str, until: datetime | None = None
    ) -> Agent:
        """Confirm the agent still needs what it has: its ``recertify_by`` moves to ``until``
        (in the future, at most its tier's period from now; default: that period from now),
        lifting an overdue response (a suspended agent stays suspended until resumed), and
        ``agent.recertified`` records the note, both dates and who. Raises
        :class:`AgentNotFound`, :class:`Forbidden` (the ``operate`` authority),
        :class:`ValidationFailed` (``until``), :class:`InvalidTransition` if revoked or
        retired."""
        now = self.clock.now()
        with self.db.write() as s:
            row = self._row(s, agent_id)
            self._require(s, actor, row, "operate")
            longest = now + period(row.risk_tier)
            if until is not None:
                self._check_future(until, now, "until")
                if until > longest:
                    raise ValidationFailed(
                        f"until is more than a {row.risk_tier}-risk agent's recertification "
                        f"period ({period(row.risk_tier).days} days) from now: at most "
                        f"{to_rfc3339(longest)}",
                        field="until",
                    )
            if Status(row.status) in TERMINAL:
                raise self._terminal(row)
            new = until or longest
            previous = from_micros(row.recertify_by) if row.recertify_by is not None else None
            row.recertify_by = to_micros(new)
            row.recertify_stage = None
            row.updated_at = to_micros(now)
            self._audit(s, actor, EventType.AGENT_RECERTIFIED, row=row, now=now, details={
                "note": note, "previous": to_rfc3339(previous) if previous else None,
                "recertify_by": to_rfc3339(new), "by": actor.ref,
            })  # fmt: skip
            return read_model.to_agents(self.store, s, [row], now=now)[0]

    def suspend(self, actor: Principal, agent_id: str, *, reason: str) -> Agent:
        """Suspend the agent; its propagation to every live worker is then recorded
        (``runtime.propagated``, :func:`tether.audit.propagated.record_propagation`)."""
        with propagation.watch() as seen:
            agent, event = self._transition(
                actor, agent_id, "suspend", EventType.AGENT_SUSPENDED, reason
            )
        record_propagation(self.db, self.ledger, self.clock, actor.ref, change=event, seen=seen)
        return agent

    def resume(self, actor: Principal, agent_id: str, *, note: str | None = None) -> Agent:
        return self._transition(actor, agent_id, "resume", EventType.AGENT_RESUMED, note)[0]

    def retire(self, actor: Principal, agent_id: str, *, reason: str) -> Agent:
        return self._transition(actor, agent_id, "retire", EventType.AGENT_RETIRED, reason)[0]

    def kill(
        self, actor: Principal, agent_id: str, *, reason: str, cascade: bool = True
    ) -> dict[str, Any]:
        """Revoke the agent and, with ``cascade``, every descendant. Irreversible.

        Returns the revoked ids and what each kill hook cut off. Raises
        :class:`AgentRevoked` if the agent already is, :class:`InvalidTransition` if retired,
        :class:`ValidationFailed` if the cascade is larger than ``MAX_CASCADE`` agents.

        Every write waits for this transaction (the deployment-wide write lock), decisions'
        ledger events too, so it is a fixed handful of statements whatever the size of the
        cascade: one query for the descendants, one UPDATE for their status, one ledger
        append, a statement or two per cut-off hook (bench/README.md, "Kill"). Past a batch of
        tokens, their rows are marked revoked after the commit, a batch per write
        transaction, in the background once this returned (:func:`tether.agents.cutoff.defer`);
        they are refused meanwhile, their agents being revoked.

        Once it returned, how long it took every live worker to apply it is recorded
        (``runtime.propagated``, naming the root's ``agent.killed`` event), best effort.
        """
        now = self.clock.now()
        now_us = to_micros(now)
        with propagation.watch() as seen, self.db.write() as s:
            root = self._row(s, agent_id)
            self._require(s, actor, root, "operate")
            if next_status("kill", Status(root.status)) is None:
                raise self._terminal(root)
            below = self._descendants(s, root.id) if cascade else []
            # Expiries the sweep has not stored yet come first, as for any other change.
            due = [root] if self._unswept(root.status, root.expires_at, now_us) else []
            due += [
                self._row(s, d.id) for d in below if self._unswept(d.status, d.expires_at, now_us)
            ]
            self.expiry.catch_up(s, due, now)
            expired = {row.id for row in due}
            victims = [(root.id, root.status)]
            victims += [(d.id, Status.EXPIRED if d.id in expired else d.status) for d in below]
            # Already revoked or retired: nothing left to cut off.
            killed = [(i, st) for i, st in victims if next_status("kill", Status(st)) is not None]
            revoked = [i for i, _ in killed]
            root_id = root.id  # the UPDATE expires the row: reading it after would reload it
            self.store.revoke(s, revoked, reason=reason, now_us=now_us)
            changes.record(s, changes.Kind.AGENT, revoked, now_us=now_us)
            events = self.ledger.append(s, [
                self._event(actor, EventType.AGENT_KILLED, agent_id=i, details={
                    "reason": reason, "previous_status": str(st), "cascade": cascade,
                    "root": root_id,
                })
                for i, st in killed
            ], now=now)  # fmt: skip
            counts = {"tokens": 0, "keys": 0, "approvals": 0, "leases": 0}
            cut = cut_off(self.cut_offs, s, revoked, now, why=Why.KILLED, counts=counts)
        if events:
            record_propagation(self.db, self.ledger, self.clock, actor.ref, change=events[0],
                               seen=seen, extra={"agents": len(events)})  # fmt: skip
        return {"revoked": revoked, "cut_off": cut}

    # -- internals -------------------------------------------------------------------------
    def _transition(
        self, actor: Principal, agent_id: str, op: str, event: EventType, reason: str | None
    ) -> tuple[Agent, Event]:
        now = self.clock.now()
        with self.db.write() as s:
            row = self._row(s, agent_id)
            self._require(s, actor, row, "manage" if op == "retire" else "operate")
            if op == "resume":
                self._require_recertified(row, now)
            written = self._move(s, actor, row, op, event, reason=reason, now=now)
            return read_model.to_agents(self.store, s, [row], now=now)[0], written

    def _require_recertified(self, row: AgentRow, now: datetime) -> None:
        """An agent whose tier suspends it once its recertification is overdue is not resumed
        until it is recertified (else a resume would lift the response for good: the sweep
        acts once per due date)."""
        if (
            is_overdue(row.recertify_by, to_micros(now))
            and overdue_action(row.risk_tier, self.recertification.overdue) == "suspend"
        ):
            raise InvalidTransition(
                f"agent {row.id}'s recertification is overdue (its tier's response is to "
                f"suspend it): recertify it first — tether agents recertify {row.id} --note "
                "'…' — then resume it",
                field="recertify_by", agent_id=row.id,
            )  # fmt: skip

    def retire_within(
        self, s: Session, actor: Principal, agent_id: str, *, reason: str, now: datetime
    ) -> AgentRow:
        """For other domains inside their write transaction (an access review's confirmed
        ``retire``): :meth:`retire`'s rules (``manage`` authority, a retirable status) and
        record, the change committing or rolling back with the caller's."""
        row = self.authorized_row(s, actor, agent_id, "manage")
        self._move(s, actor, row, "retire", EventType.AGENT_RETIRED, reason=reason, now=now)
        return row

    def drop_role_within(
        self, s: Session, actor: Principal, agent_id: str, role: str, *, now: datetime,
        reason: str | None = None,
    ) -> bool:  # fmt: skip
        """For other domains inside their write transaction: take exactly ``role`` from the
        agent, every other role kept (``manage`` authority; recorded as ``agent.updated``,
        as :meth:`update` would). False if it does not hold the role (nothing written);
        raises :class:`InvalidTransition` if the agent is revoked or retired."""
        row = self.authorized_row(s, actor, agent_id, "manage")
        if Status(row.status) in TERMINAL:
            raise self._terminal(row)
        held = self.store.roles_of(s, [row.id])[row.id]
        if role not in held:
            return False
        kept = sorted(r for r in held if r != role)
        self.store.set_roles(s, row.id, kept)
        row.updated_at = to_micros(now)
        details: dict[str, Any] = {"changes": {"roles": {"from": sorted(held), "to": kept}}}
        if reason is not None:
            details["reason"] = reason
        self._audit(s, actor, EventType.AGENT_UPDATED, row=row, now=now, details=details)
        return True

    def suspend_within(self, s: Session, row: AgentRow, *, reason: str, now: datetime) -> None:
        """For the agents domain's own sweeps, inside their write transaction: suspend
        ``row`` as the system (the rules and record of :meth:`suspend`)."""
        self._move(s, SYSTEM, row, "suspend", EventType.AGENT_SUSPENDED, reason=reason, now=now)

    def _move(
        self, s: Session, actor: Principal, row: AgentRow, op: str, event: EventType, *,
        reason: str | None, now: datetime,
    ) -> Event:  # fmt: skip
        self.expiry.catch_up(s, [row], now)
        current = Status(row.status)
        target = next_status(op, current)
        if target is None:
            if current in TERMINAL:
                raise self._terminal(row)
            raise InvalidTransition(
                f"cannot {op} agent {row.id}: it is {current}", status=current.value
            )
        if target is Status.ACTIVE and has_expired(row.expires_at, to_micros(now)):
            raise InvalidTransition(
                f"cannot {op} agent {row.id}: its expires_at has passed; move expires_at "
                "into the future first (PATCH)",
                status=current.value,
            )
        row.status = target.value
        row.status_reason = None if target is Status.ACTIVE else reason
        row.updated_at = to_micros(now)
        details: dict[str, Any] = {"from": current.value, "to": target.value}
        if reason is not None:
            details["reason" if op != "resume" else "note"] = reason
        stopped = {Status.SUSPENDED: Why.SUSPENDED, Status.RETIRED: Why.RETIRED}.get(target)
        if stopped is not None:  # what must end even if it resumes (secret leases)
            cut = cut_off(self.cut_offs, s, [row.id], now, why=stopped, counts={})
            if any(cut.values()):
                details["cut_off"] = cut
        return self._audit(s, actor, event, row=row, now=now, details=details)

    def _descendants(self, s: Session, root_id: str) -> builtins.list[Descendant]:
        out = self.store.descendants(s, root_id, limit=MAX_CASCADE + 1)
        if len(out) > MAX_CASCADE:
            raise ValidationFailed("cascade larger than 10000 agents; kill in parts")
        return out

    @staticmethod
    def _unswept(status: str, expires_at: int | None, now_us: int) -> bool:
        """Expired, but the sweep has not stored it yet (:meth:`AgentExpiry.catch_up`)."""
        return status in EXPIRABLE and has_expired(expires_at, now_us)

    def _new_row(
        self,
        now: datetime,
        *,
        name: str,
        owner_id: str,
        purpose: str,
        tier: RiskTier,
        attributes: dict[str, Any],
        scopes: builtins.list[str],
        parent: str | None,
        lineage: builtins.list[str],
        lineage_kind: str | None,
        fingerprint: dict[str, Any] | None,
        expires_at: datetime | None,
        recertify_by: datetime | None,
    ) -> AgentRow:
        agent_id = new_id(IdPrefix.AGENT)
        recertify = recertify_by or now + period(tier)
        return AgentRow(
            id=agent_id,
            spiffe_id=spiffe_id(self.trust_domain, agent_id),
            name=name,
            owner_id=owner_id,
            purpose=purpose,
            risk_tier=tier.value,
            status=Status.ACTIVE.value,
            status_reason=None,
            attributes=canonical_text(attributes),
            scopes=canonical_text(scopes),
            parent_id=parent,
            lineage=canonical_text(lineage),
            lineage_kind=lineage_kind,
            fingerprint=canonical_text(fingerprint) if fingerprint else None,
            fingerprint_digest=fingerprint["digest"] if fingerprint else None,
            created_at=to_micros(now),
            updated_at=to_micros(now),
            expires_at=to_micros(expires_at) if expires_at else None,
            recertify_by=to_micros(recertify),
        )

    def _audit(
        self,
        s: Session,
        actor: Principal,
        type_: EventType,
        *,
        row: AgentRow,
        now: datetime,
        details: dict[str, Any],
    ) -> Event:
        changes.record(s, changes.Kind.AGENT, row.id, now_us=to_micros(now))
        (event,) = self.ledger.append(
            s, [self._event(actor, type_, agent_id=row.id, details=details)], now=now
        )
        return event

    @staticmethod
    def _event(
        actor: Principal, type_: EventType, *, agent_id: str, details: dict[str, Any]
    ) -> NewEvent:
        return NewEvent(
            type_,
            actor.ref,
            agent_id=agent_id,
            action=str(type_),
            resource={"type": "Agent", "id": agent_id},
            outcome="success",
            details=details,
        )

    def authorized_row(self, s: Session, actor: Principal, agent_id: str, need: str) -> AgentRow:
        """For other domains acting on an agent inside their own transaction: the agent's row
        if ``actor`` has ``need`` (``read``, ``operate``, ``manage``) over it; raises
        :class:`AgentNotFound` or :class:`Forbidden` otherwise."""
        row = self._row(s, agent_id)
        self._require(s, actor, row, need)
        return row

    def _row(self, s: Session, agent_id: str) -> AgentRow:
        row = self.store.get(s, agent_id)
        if row is None:
            raise AgentNotFound(f"no agent {agent_id!r}", agent=agent_id)
        return row

    def _require(self, s: Session, actor: Principal, row: AgentRow, need: str) -> None:
        """``need`` is ``read``, ``operate`` (suspend/resume/kill) or ``manage``: the rule is
        :func:`tether.agents.authority.allows`."""
        stewards = (
            self.store.stewards(s, row)
            if authority.reads_stewards(actor)
            else authority.Stewards(row.owner_id)
        )
        authority.require(actor, authority.Act(need), row.id, stewards)

    def _human(self, s: Session, ref: str, field: str) -> UserRow:
        user = self.users.resolve(s, ref)
        if user is None:
            raise ValidationFailed(f"no user {ref!r}", field=field)
        if user.role not in (Role.ADMIN, Role.SUPERVISOR):
            raise ValidationFailed(
                f"user {ref!r} is an {user.role}; owners and supervisors must be admins or "
                "supervisors",
                field=field,
            )
        return user

    @staticmethod
    def _tier(value: str) -> RiskTier:
        if value == "prohibited":
            raise RiskTierProhibited(
                "risk tier 'prohibited' cannot be registered (EU AI Act Art. 5 practices)",
                field="risk_tier",
            )
        return RiskTier(value)

    @staticmethod
    def _check_future(value: datetime | None, now: datetime, field: str) -> None:
        if value is not None:
            if value.tzinfo is None:
                raise ValidationFailed(f"{field} needs a timezone (use Z for UTC)", field=field)
            if value <= now:
                raise ValidationFailed(f"{field} must be in the future", field=field)

    @staticmethod
    def _terminal(row: AgentRow) -> InvalidTransition:
        if row.status == Status.REVOKED:
            return AgentRevoked(f"agent {row.id} is revoked; revocation is permanent", agent=row.id)
        return InvalidTransition(
            f"agent {row.id} is {row.status}; that is final", agent=row.id, status=row.status
        )
