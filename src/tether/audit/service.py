"""Reading and verifying the ledger: events, checkpoints, verification, export."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime

from tether.audit.anchoring import FileState, judge_anchoring
from tether.audit.chain import Checkpoint, Event, VerifyResult, verify_chain
from tether.audit.checkpoint_file import CheckpointFile
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.witness import HttpWitness
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.errors import Forbidden, NotFound, ValidationFailed
from tether.maintenance import Task
from tether.pagination import Page, decode_seq_cursor, page_of
from tether.principals import Principal, Role

log = logging.getLogger("tether.audit")


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


def record_failure(
    db: Database, ledger: Ledger, actor: str, result: VerifyResult, *, now: datetime
) -> None:
    """A failed verification on the record (and so an alert, tether.alerts): appended after
    whatever the head now is — the answer already given is not changed by it."""
    try:
        with db.write() as s:
            ledger.append(s, [NewEvent(
                EventType.LEDGER_VERIFICATION_FAILED, actor,
                details={"problem": str(result.problem) if result.problem else None,
                         "message": (result.message or "")[:500],
                         "first_bad_seq": result.first_bad_seq, "checked": result.checked},
            )], now=now)  # fmt: skip
    except Exception:  # the failure is reported whatever the ledger can take now
        log.exception("a failed ledger verification could not be recorded")


class AuditService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        agent_reader: Callable[[Principal, str], object] | None = None,
        checkpoint_file: CheckpointFile | None = None,
        witness: HttpWitness | None = None,
    ) -> None:
        """``agent_reader(actor, agent_id)`` raises unless the actor may read that agent; with
        it, a supervisor may read the events of the agents they own or supervise. With
        ``checkpoint_file`` and ``witness``, every checkpoint the ledger signs is also
        written there, and verification holds the database to the file."""
        self.db = db
        self.agent_reader = agent_reader
        self.ledger = ledger
        self.store = ledger.store
        self.clock = clock
        self.checkpoint_file = checkpoint_file
        self.witness = witness
        if checkpoint_file is not None:
            ledger.publish.append(checkpoint_file.append)
        if witness is not None:
            ledger.publish.append(witness.send)
        # Events written while no server ran had nobody to sign them: judged from here.
        self.started_us = to_micros(clock.now())

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

    def event(self, actor: Principal, event_id: str) -> Event:
        """One event by id: admins and auditors read any; a supervisor, those about the agents
        they own or supervise (as :meth:`events` with ``agent``). Raises :class:`NotFound` if
        no event has this id, :class:`Forbidden` if the actor may not read it."""
        steward = actor.role is Role.SUPERVISOR and self.agent_reader is not None
        if not steward:
            _require_reader(actor)
        with self.db.read() as s:
            found = self.store.get(s, event_id)
        if found is None:
            raise NotFound(f"no event {event_id!r}")
        if steward and self.agent_reader is not None:
            if found.agent_id is None:
                raise Forbidden("only admins and auditors may read events about no agent")
            self.agent_reader(actor, found.agent_id)  # their own agents' events only
        return found

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
        """Recompute the chain end to end, check every checkpoint signature (the database's
        and the checkpoint file's) and hold the chain to the file and the checkpoint rules."""
        _require_reader(actor)
        now = self.clock.now()
        # The file before the database: each line was committed before it was written, so
        # the snapshot read next has every head the file names (unless it was taken away).
        lines = self.checkpoint_file.read() if self.checkpoint_file else None
        with self.db.read() as s, closing(self.store.stream(s)) as events:
            checkpoints = self.store.checkpoints(s)
            result = verify_chain(
                events,
                seq_of_hash=lambda h: self.store.seq_of_hash(s, h),
                checkpoints=checkpoints,
                external=lines.checkpoints if lines else (),
                check_signature=self.ledger.signer.check,
                progress=progress,
                cut_at=lambda size: self.store.cut_at(s, size),
            )
            cut_sizes = self.store.cut_sizes(s) if lines is not None else set()
        if lines is not None:
            # Retention cuts go to the file too (tether.audit.retention), from their own table.
            in_db = {c.size for c in checkpoints} | cut_sizes
            not_in_db = {c.size for c in lines.checkpoints} - in_db
            file = FileState(lines.bad_lines, len(checkpoints), sorted(not_in_db))
            result = judge_anchoring(result, self.ledger.anchor_rule, file,
                                     now_us=to_micros(now), since_us=self.started_us)  # fmt: skip
        if not result.ok:
            record_failure(self.db, self.ledger, actor.ref, result, now=now)
        return result

    def maintenance(self) -> list[Task]:
        return [Task("ledger.checkpoint", self.checkpoint_tick)]

    def checkpoint_tick(self) -> Checkpoint | None:
        """Sign the head if the timed rule says so, and retry the witness; run periodically
        by every node."""
        if self.witness is not None:
            self.witness.retry()
        with self.db.write() as s:
            return self.ledger.checkpoint_if_due(s, now=self.clock.now())

    def checkpoint_now(self, actor: Principal) -> Checkpoint | None:
        """Sign the head now unless the newest checkpoint already covers it; either way the
        newest checkpoint goes to the file and the witness (again, if it was there: that is
        how a file deleted, a new node or an upgrade gets its first line)."""
        if not actor.is_admin:
            raise Forbidden("only an admin may force a checkpoint")
        with self.db.write() as s:
            before = self.store.latest_checkpoint(s)
            cp = self.ledger.force_checkpoint(s, now=self.clock.now())
        if cp is not None and cp == before and self.ledger.signer.check(cp):
            self.ledger.published(cp)  # not signed now, so not published on commit
        return cp
