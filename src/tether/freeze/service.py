"""Freezing and unfreezing: who may, what a scope may name, the record and the alert.

A freeze is an incident switch: ``POST /v1/freeze`` stops every agent its scope holds on
every node at once — decisions, token issuance and exchange, introspection — with the reason
``tether.frozen``; tokens are not revoked, so lifting it restores service (what must end at
once, the agents' secret leases, ends through :attr:`FreezeService.on_freeze`). Each freeze and each
lifting is a ledger event, a change-feed entry (every worker reloads its freezes) and a
webhook alert once committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tether.agents import directory
from tether.agents.values import RiskTier
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.propagated import record_propagation
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.db.engine import AFTER_COMMIT
from tether.db.text import unstorable
from tether.errors import Forbidden, FreezeNotFound, ValidationFailed
from tether.freeze.store import DatabaseFreezeStore
from tether.freeze.values import Freeze, Scope
from tether.ids import IdPrefix, new_id
from tether.principals import Principal
from tether.runtime import changes, propagation
from tether.users.store import DatabaseUserStore

log = logging.getLogger("tether.freeze")
Alert = Callable[[str, dict[str, Any]], None]
# A freeze's hook, run inside its transaction: what a domain ends at once for the agents the
# scope holds (secret leases), returning counts for the ledger event (``{"leases": 2}``).
OnFreeze = Callable[[Session, Scope, datetime], dict[str, int]]
_MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class ScopeRequest:
    """A scope as a caller names it: an owner by username or id, a role, a risk tier."""

    owner: str | None = None
    role: str | None = None
    risk_tier: str | None = None


@dataclass(frozen=True, slots=True)
class FreezeState:
    in_force: list[Freeze]
    recent: list[Freeze]

    def to_json(self) -> dict[str, Any]:
        everything = any(f.scope.everything for f in self.in_force)
        return {
            "frozen": bool(self.in_force),
            "everything": everything,
            "freezes": [f.to_json() for f in self.in_force],
            "recent": [f.to_json() for f in self.recent],
        }


def _require_admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin may freeze or unfreeze agents", required_role="admin")


def _reason(value: str | None, *, field: str, required: bool) -> str | None:
    """A reason as given (the same rule as an agent's suspension or kill reason)."""
    if not value:
        if required:
            raise ValidationFailed("say why: a reason is required", field=field)
        return None
    if len(value) > _MAX_REASON or unstorable(value):
        raise ValidationFailed(f"{field} must be 1-{_MAX_REASON} characters, no NUL", field=field)
    return value


class FreezeService:
    def __init__(self, db: Database, ledger: Ledger, clock: Clock, alert: Alert) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.alert = alert
        self.store = DatabaseFreezeStore()
        self._users = DatabaseUserStore()
        self.on_freeze: list[OnFreeze] = []

    def _scope(self, s: Session, wanted: ScopeRequest, *, in_use: bool = True) -> Scope:
        """The scope named by ``wanted``, each part checked: an owner that exists, a role some
        agent holds, a risk tier there is (422 naming the field otherwise). Lifting passes
        ``in_use=False``: a role frozen once may since have left every agent, and its freeze
        must still be liftable by name."""
        owner_id = None
        if wanted.owner is not None:
            user = self._users.resolve(s, wanted.owner) if wanted.owner else None
            if user is None:
                raise ValidationFailed(f"no user {wanted.owner!r}", field="scope.owner")
            owner_id = user.id
        if wanted.role is not None and (
            not wanted.role
            or unstorable(wanted.role)
            or (in_use and not directory.role_in_use(s, wanted.role))
        ):
            raise ValidationFailed(f"no agent has role {wanted.role!r}", field="scope.role")
        if wanted.risk_tier is not None and wanted.risk_tier not in set(RiskTier):
            tiers = ", ".join(RiskTier)
            raise ValidationFailed(f"risk_tier must be one of {tiers}", field="scope.risk_tier")
        return Scope(owner_id, wanted.role, wanted.risk_tier)

    def freeze(
        self, actor: Principal, *, reason: str, scope: ScopeRequest | None = None
    ) -> tuple[Freeze, bool]:
        """Freeze the agents ``scope`` holds (all without one). Returns the freeze and whether
        it is new: freezing a scope already frozen returns that freeze and records nothing.
        Once it returned, how long every live worker took to apply it is recorded
        (``runtime.propagated``), best effort."""
        _require_admin(actor)
        why = _reason(reason, field="reason", required=True)
        assert why is not None
        now = self.clock.now()
        with propagation.watch() as seen, self.db.write() as s:
            wanted = self._scope(s, scope or ScopeRequest())
            for existing in self.store.in_force(s):
                if existing.scope == wanted:
                    return existing, False
            freeze = Freeze(new_id(IdPrefix.FREEZE), wanted, why, actor.ref, to_micros(now))
            self.store.add(s, freeze)
            changes.record(s, changes.Kind.FREEZE, freeze.id, now_us=freeze.created_at)
            details: dict[str, Any] = {"scope": wanted.to_json(), "reason": why}
            cut: dict[str, int] = {}
            for hook in self.on_freeze:
                for key, n in hook(s, wanted, now).items():
                    cut[key] = cut.get(key, 0) + n
            if any(cut.values()):
                details["cut_off"] = cut
            (event,) = self.ledger.append(s, [NewEvent(
                EventType.FREEZE_STARTED, actor.ref, action="freeze",
                resource={"type": "Freeze", "id": freeze.id}, outcome="success", details=details,
            )], now=now)  # fmt: skip
            self._alert_after_commit(s, "freeze.started", freeze, event.id)
        record_propagation(self.db, self.ledger, self.clock, actor.ref, change=event, seen=seen)
        return freeze, True

    def lift(
        self,
        actor: Principal,
        *,
        freeze_id: str | None = None,
        scope: ScopeRequest | None = None,
        reason: str | None = None,
    ) -> list[Freeze]:
        """Lift one freeze (by id), those of exactly ``scope``, or every freeze in force.
        Returns those lifted now (none if nothing matching was in force)."""
        _require_admin(actor)
        why = _reason(reason, field="reason", required=False)
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            in_force = self.store.in_force(s)
            if freeze_id is not None:
                if self.store.get(s, freeze_id) is None:
                    raise FreezeNotFound(f"no freeze {freeze_id!r}", freeze=freeze_id[:80])
                chosen = [f for f in in_force if f.id == freeze_id]
            elif scope is not None:
                wanted = self._scope(s, scope, in_use=False)
                chosen = [f for f in in_force if f.scope == wanted]
            else:
                chosen = in_force
            if not chosen:
                return []
            self.store.lift(s, [f.id for f in chosen], by=actor.ref, at_us=now_us, reason=why)
            changes.record(s, changes.Kind.FREEZE, [f.id for f in chosen], now_us=now_us)
            events = self.ledger.append(s, [NewEvent(
                EventType.FREEZE_LIFTED, actor.ref, action="unfreeze",
                resource={"type": "Freeze", "id": f.id}, outcome="success",
                details={"scope": f.scope.to_json(), "reason": why, "frozen_by": f.created_by},
            ) for f in chosen], now=now)  # fmt: skip
            lifted = [replace(f, lifted_by=actor.ref, lifted_at=now_us, lift_reason=why)
                      for f in chosen]  # fmt: skip
            for freeze, event in zip(lifted, events, strict=True):
                self._alert_after_commit(s, "freeze.lifted", freeze, event.id)
        return lifted

    def state(self, actor: Principal, *, recent: int = 20) -> FreezeState:
        """What is frozen, and the latest freezes (lifted ones included): any human may see
        it (a supervisor needs to know why their agents are refused); agents may not."""
        if actor.kind != "user":
            raise Forbidden("only people may read the freeze state")
        with self.db.read() as s:
            return FreezeState(self.store.in_force(s), self.store.recent(s, limit=recent))

    def _alert_after_commit(self, s: Session, name: str, freeze: Freeze, event_id: str) -> None:
        payload = {"event": name, "event_id": event_id, "freeze": freeze.to_json()}

        def send() -> None:  # committed: a failing notifier must not turn it into an error
            try:
                self.alert(name, payload)
            except Exception:
                log.exception("%s %s recorded but not alerted", name, freeze.id)

        s.info.setdefault(AFTER_COMMIT, []).append(send)
