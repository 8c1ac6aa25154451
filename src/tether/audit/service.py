"""Reading and verifying the ledger: events, checkpoints, verification, export."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime

from tether.audit.chain import Checkpoint, Event, VerifyResult, verify_chain
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.errors import Forbidden, NotFound, ValidationFailed
from tether.pagination import Page, decode_seq_cursor, page_of
from tether.principals import Principal, Role


def _require_reader(actor: Principal) -> None:
    if not (actor.is_admin or actor.role is Role.AUDITOR):
        raise Forbidden(
            "only admins and auditors may read the whole ledger; supervisors may read their "
            "agents' events with ?agent=<id>"
        )


def _micros(value: datetime | None, field: str) -> int | None:
    """RFC 3339 times carry an offset: a naive one would silently mean the server's zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValidationFailed(f"{field} needs a UTC offset (use Z for UTC)", field=field)
    try:
        return to_micros(value)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValidationFailed(f"{field} is out of range", field=field) from exc


class AuditService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        agent_reader: Callable[[Principal, str], object] | None = None,
    ) -> None:
        """``agent_reader(actor, agent_id)`` raises unless the actor may read that agent; with
        it, a supervisor may read the events of the agents they own or supervise."""
        self.db = db
        self.agent_reader = agent_reader
        self.ledger = ledger
        self.store = ledger.store
        self.clock = clock

    def events(
        self,
        actor: Principal,
        *,
        cursor: str | None = None,
        limit: int = 100,
        agent: str | None = None,
        type_: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        newest_first: bool = False,
    ) -> Page[Event]:
        if actor.role is Role.SUPERVISOR and agent is not None and self.agent_reader:
            self.agent_reader(actor, agent)  # their own agents' history only
        else:
            _require_reader(actor)
        after_seq = decode_seq_cursor(cursor) or 0
        since_us, until_us = _micros(since, "since"), _micros(until, "until")
        with self.db.read() as s:
            rows = self.store.page(
                s,
                after_seq=after_seq,
                limit=limit + 1,
                agent=agent,
                type_=type_,
                since_us=since_us,
                until_us=until_us,
                newest_first=newest_first,
            )
        return page_of(rows, limit, lambda e: str(e.seq))

    def export(self, actor: Principal) -> Iterator[Event]:
        """Every event in order, streamed (JSON lines at the API)."""
        _require_reader(actor)
        with self.db.read() as s:
            yield from self.store.stream(s)

    def latest_checkpoint(self, actor: Principal) -> Checkpoint:
        _require_reader(actor)
        with self.db.read() as s:
            cp = self.store.latest_checkpoint(s)
        if cp is None:
            raise NotFound("no checkpoint has been signed yet")
        return cp

    def verify(
        self, actor: Principal, *, progress: Callable[[int], None] | None = None
    ) -> VerifyResult:
        """Recompute the chain end to end and check every checkpoint signature."""
        _require_reader(actor)
        with self.db.read() as s, closing(self.store.stream(s)) as events:
            return verify_chain(
                events,
                seq_of_hash=lambda h: self.store.seq_of_hash(s, h),
                checkpoints=self.store.checkpoints(s),
                check_signature=self.ledger.signer.check,
                progress=progress,
            )

    def checkpoint_tick(self) -> Checkpoint | None:
        """Sign the head if the timed rule says so; run periodically by every node."""
        with self.db.write() as s:
            return self.ledger.checkpoint_if_due(s, now=self.clock.now())

    def checkpoint_now(self, actor: Principal) -> Checkpoint | None:
        if not actor.is_admin:
            raise Forbidden("only an admin may force a checkpoint")
        with self.db.write() as s:
            return self.ledger.force_checkpoint(s, now=self.clock.now())
