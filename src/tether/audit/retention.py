"""Ledger retention that keeps the proof: events older than the retention period pruned, a
signed checkpoint kept at the cut, nothing pruned that another domain still references.

A prune deletes the events after the previous cut up to the new one — every event written
before ``now - retention_days`` (never fewer than six months: :mod:`.retention_rule`), below
the lowest hold — in one write transaction under the deployment-wide lock, which also

* signs a checkpoint at the cut, ``{size: cut, head_hash: hash of event cut}``, with the
  ledger's key: the statement every ledger checkpoint makes
  (:func:`~tether.audit.chain.checkpoint_payload`). It is kept in ``audit_cuts``; the first
  kept event's ``prev_hash`` must equal its head, and verification starts there
  (:func:`~tether.audit.chain.verify_chain`);
* appends a ``ledger.pruned`` event: the cut, how many, the period, the checkpoint;
* drops what other domains keep beside the pruned events (:attr:`RetentionService.on_prune`).

Once committed, the cut's checkpoint goes to the checkpoint file and the witness like every
other, so an export of the pruned ledger verifies offline against ``checkpoints.jsonl``.
Before anything is deleted the events to delete are verified (outside the lock, which
deletion alone holds): a prune never destroys the evidence of an edit.

A hold (:class:`RetentionHold`) is another domain's say: the lowest seq it still references
(an open access review's evidence, a compliance report's source range while the report is
younger than the retention period). Registered with :meth:`RetentionService.add_hold`; events
from the lowest hold on are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from sqlalchemy.orm import Session

from tether.audit.chain import Checkpoint, verify_chain
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.retention_rule import MIN_RETENTION_DAYS, retention_problem
from tether.audit.service import record_failure
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.db.engine import AFTER_COMMIT
from tether.errors import Conflict, Forbidden, ValidationFailed
from tether.maintenance import Task
from tether.principals import SYSTEM, Principal

log = logging.getLogger(__name__)

_DAY_US = 86_400 * 1_000_000
# The maintenance task: a node looks at most once an hour, and prunes when the newest cut is
# a day old — a ledger.pruned event a day, not one per tick for what aged since the last.
_LOOK_EVERY_US = 3600 * 1_000_000
_PRUNE_EVERY_US = _DAY_US
_ATTEMPTS = 3  # plans a prune makes when another node's prune moved the cut meanwhile


class RetentionHold(Protocol):
    def __call__(self, session: Session, cutoff_us: int) -> int | None:
        """The lowest ledger seq still referenced — that event and every later one are kept —
        or None if nothing is. ``cutoff_us``: the prune's ``now - retention``, for a hold
        that lapses with age (a compliance report older than the period holds nothing).
        Called in the prune's read and again in its write transaction (under the
        deployment-wide lock): a plain query, no write."""
        ...


class LedgerNotVerified(Conflict):
    """The events a prune would delete do not verify: deleting them would destroy the
    evidence. ``tether audit verify`` says more; nothing was pruned."""

    code = "ledger_not_verified"


@dataclass(frozen=True, slots=True)
class _Plan:
    start: int  # the cut the ledger now starts after (0: none)
    through: int  # the last event to prune; ``start``: none
    head_hash: str | None  # event ``through``'s hash, as the verification walk found it
    held_by: str | None  # the hold that stopped the prune short of the cutoff
    held_from: int | None


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune did, or (``dry_run``) would do. ``checkpoint``: the one signed at the cut;
    ``event_id``: its ``ledger.pruned`` event (both None when nothing was pruned)."""

    dry_run: bool
    retention_days: int
    cutoff_us: int
    pruned: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str | None
    held_by: str | None
    held_from_seq: int | None
    checkpoint: Checkpoint | None = None
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "retention_days": self.retention_days,
            "cutoff": to_rfc3339(from_micros(self.cutoff_us)),
            "pruned": self.pruned,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "held_by": self.held_by,
            "held_from_seq": self.held_from_seq,
            "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
            "event_id": self.event_id,
        }


class RetentionService:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, *, retention_days: int | None = None
    ) -> None:
        """``retention_days``: the configured period (``TETHER_LEDGER_RETENTION_DAYS``);
        None keeps every event unless an admin asks for a prune with a period."""
        if retention_days is not None and (problem := retention_problem(retention_days)):
            raise ValidationFailed(f"retention_days {problem}", field="retention_days")
        self.db = db
        self.ledger = ledger
        self.store = ledger.store
        self.clock = clock
        self.retention_days = retention_days
        self.holds: dict[str, RetentionHold] = {}
        # Rows other domains keep beside events (by seq), dropped with them: each is called
        # with the session and the cut, in the prune's transaction.
        self.on_prune: list[Callable[[Session, int], object]] = []
        self._next_look_us = 0

    def add_hold(self, name: str, hold: RetentionHold) -> None:
        """Keep every event from ``hold(session)`` on. ``name`` (``"access_reviews"``) says,
        in a prune's answer and event, what stopped it. Raises ValueError if it is taken."""
        if name in self.holds:
            raise ValueError(f"a retention hold named {name!r} is registered already")
        self.holds[name] = hold

    def prune(
        self, actor: Principal, *, retention_days: int | None = None, dry_run: bool = False
    ) -> PruneReport:
        """Prune the events written more than ``retention_days`` (default: the configured
        period) ago, below the lowest hold; with ``dry_run``, only say what that would do.
        Raises :class:`Forbidden` unless ``actor`` is an admin, :class:`ValidationFailed`
        (``retention_days``) for a period under six months or none at all,
        :class:`LedgerNotVerified` if the events to prune do not verify (nothing is pruned,
        the failure is a ``ledger.verification_failed`` event), :class:`Conflict` if other
        prunes kept moving the cut meanwhile."""
        if not actor.is_admin:
            raise Forbidden("only an admin may prune the ledger")
        days = self._period(retention_days)
        return self._prune(actor, days, dry_run=dry_run)

    def maintenance(self) -> list[Task]:
        return [Task("ledger.retention", self.tick)] if self.retention_days is not None else []

    def tick(self) -> PruneReport | None:
        """The configured period's prune, run by every node's maintenance loop: it looks once
        an hour and prunes once the newest cut is a day old (the first time: once anything
        is due). None when it did not look, or the events do not verify (logged)."""
        if self.retention_days is None:
            return None
        now_us = to_micros(self.clock.now())
        if now_us < self._next_look_us:
            return None
        self._next_look_us = now_us + _LOOK_EVERY_US
        with self.db.read() as s:
            last = self.store.latest_cut(s)
        if last is not None and now_us - last.time_us < _PRUNE_EVERY_US:
            return None
        try:
            return self._prune(SYSTEM, self.retention_days, dry_run=False)
        except LedgerNotVerified as exc:
            refused = exc.message
        log.error("the ledger was not pruned: %s", refused)
        return None

    def _period(self, days: int | None) -> int:
        if days is None:
            days = self.retention_days
        if days is None:
            raise ValidationFailed(
                "no retention period: give retention_days, or configure "
                "TETHER_LEDGER_RETENTION_DAYS (unset, the ledger keeps every event)",
                field="retention_days",
            )
        if problem := retention_problem(days):
            raise ValidationFailed(
                f"retention_days {problem}", field="retention_days", minimum=MIN_RETENTION_DAYS
            )
        return days

    def _prune(self, actor: Principal, days: int, *, dry_run: bool) -> PruneReport:
        now = self.clock.now()
        cutoff_us = to_micros(now) - days * _DAY_US
        for _attempt in range(_ATTEMPTS):
            plan = self._plan(actor, cutoff_us, now)
            if dry_run or plan.through == plan.start:
                return _report(plan, days, cutoff_us, dry_run=dry_run)
            done = self._cut(plan, actor, days, cutoff_us, now)
            if done is not None:
                return done
        raise Conflict("other prunes moved the cut while this one was planned; try again")

    def _plan(self, actor: Principal, cutoff_us: int, now: datetime) -> _Plan:
        """What to prune, read outside the lock, the events to prune verified."""
        with self.db.read() as s:
            first = self.store.first_seq(s)
            start = first - 1 if first else 0
            due = self.store.last_before(s, cutoff_us)
            through, held_by, held_from = self._held(s, due[0] if due else start, cutoff_us)
            if through <= start:
                return _Plan(start, start, None, held_by, held_from)
            result = verify_chain(
                self.store.stream(s, through=through),
                seq_of_hash=lambda h: self.store.seq_of_hash(s, h),
                checkpoints=[c for c in self.store.checkpoints(s) if c.size <= through],
                check_signature=self.ledger.signer.check,
                cut_at=lambda size: self.store.cut_at(s, size),
            )
        if not result.ok:
            record_failure(self.db, self.ledger, actor.ref, result, now=now)
            raise LedgerNotVerified(
                f"the events to prune do not verify ({result.problem}: {result.message}); "
                "pruning them would destroy the evidence — see `tether audit verify`",
                problem=str(result.problem),
                first_bad_seq=result.first_bad_seq,
            )
        start = result.cut.size if result.cut else 0  # as the walk's snapshot had it
        return _Plan(start, max(start, through), result.head_hash, held_by, held_from)

    def _held(
        self, session: Session, through: int, cutoff_us: int
    ) -> tuple[int, str | None, int | None]:
        """``through`` lowered below the lowest hold, and that hold (if it lowered it)."""
        held_by, held_from = None, None
        for name, hold in self.holds.items():
            lowest = hold(session, cutoff_us)
            if (
                lowest is not None
                and lowest <= through
                and (held_from is None or lowest < held_from)
            ):
                held_by, held_from = name, lowest
        return (through if held_from is None else held_from - 1), held_by, held_from

    def _cut(
        self, plan: _Plan, actor: Principal, days: int, cutoff_us: int, now: datetime
    ) -> PruneReport | None:
        """Carry out ``plan`` in one write transaction; None if another prune moved the cut
        since it was made (plan again)."""
        with self.db.write() as s:
            first = self.store.first_seq(s)
            if first is None or first - 1 != plan.start:
                return None
            # Holds again under the lock: one taken since the plan counts.
            through, held_by, held_from = self._held(s, plan.through, cutoff_us)
            if held_by is None:
                held_by, held_from = plan.held_by, plan.held_from
            if through <= plan.start:
                return _report(_Plan(plan.start, plan.start, None, held_by, held_from), days,
                               cutoff_us, dry_run=False)  # fmt: skip
            head_hash = self.store.hash_at(s, through)
            if head_hash is None or (through == plan.through and head_hash != plan.head_hash):
                raise LedgerNotVerified(
                    f"event {through} changed since the events to prune were verified; "
                    "nothing was pruned — see `tether audit verify`",
                    first_bad_seq=through,
                )
            count = through - plan.start
            cut = self.ledger.signer.sign(through, head_hash, to_micros(now))
            report = PruneReport(
                False, days, cutoff_us, count, plan.start + 1, through, head_hash, held_by,
                held_from, cut,
            )  # fmt: skip
            details = report.to_json()
            del details["dry_run"], details["event_id"]
            (event,) = self.ledger.append(
                s, [NewEvent(EventType.LEDGER_PRUNED, actor.ref, details=details)], now=now
            )
            self.store.add_cut(s, cut, pruned=count, cutoff_us=cutoff_us, event_id=event.id)
            deleted = self.store.delete_through(s, through)
            if deleted != count:  # rolls the whole prune back
                raise LedgerNotVerified(
                    f"{deleted} events were found to prune where {count} were verified; "
                    "nothing was pruned — see `tether audit verify`"
                )
            for drop in self.on_prune:
                drop(s, through)
            # The cut leaves the database once committed, as every signed checkpoint does.
            s.info.setdefault(AFTER_COMMIT, []).append(partial(self.ledger.published, cut))
        log.info("pruned ledger events %d..%d (%d days' retention)", plan.start + 1, through, days)
        return PruneReport(
            False, days, cutoff_us, count, plan.start + 1, through, head_hash, held_by, held_from,
            cut, event.id,
        )  # fmt: skip


def _report(plan: _Plan, days: int, cutoff_us: int, *, dry_run: bool) -> PruneReport:
    """What ``plan`` prunes, as a report with no checkpoint (a dry run, or nothing to do)."""
    count = plan.through - plan.start
    first, last = (plan.start + 1, plan.through) if count else (None, None)
    return PruneReport(
        dry_run, days, cutoff_us, count, first, last, plan.head_hash if count else None,
        plan.held_by, plan.held_from,
    )  # fmt: skip
