"""Database access for the ledger: rows in, :class:`Event` values out."""

from __future__ import annotations

from collections.abc import Collection, Generator, Sequence
from dataclasses import fields
from typing import Any, cast

from sqlalchemy import Row, Table, delete, func, insert, select
from sqlalchemy.orm import Session

from tether.audit.chain import Checkpoint, Event
from tether.audit.models import CheckpointRow, CutRow, EventRow
from tether.db.bulk import Insert, fetch_one, insert_rows
from tether.db.engine import READ_WITH_LOCK
from tether.db.text import unstorable
from tether.jsonutil import canonical_text, loads

_EV = cast(Table, EventRow.__table__)
_CP = cast(Table, CheckpointRow.__table__)
_CUT = cast(Table, CutRow.__table__)


# Columns in Event's field order: rows are unpacked by position, which measured 3-4x faster
# than attribute access on SQLAlchemy rows (bench/ledger.py, verify).
_COLUMNS = tuple(_EV.c["time" if f.name == "time_us" else f.name] for f in fields(Event))


def _event(row: Sequence[Any]) -> Event:
    (
        seq,
        id_,
        time_us,
        type_,
        actor,
        agent_id,
        on_behalf_of,
        chain,
        action,
        resource,
        decision,
        reasons,
        policy_version,
        outcome,
        details,
        prev_hash,
        digest,
    ) = row
    return Event(
        seq, id_, time_us, type_, actor, agent_id, on_behalf_of, loads(chain), action,
        loads(resource) if resource is not None else None, decision, loads(reasons),
        policy_version, outcome, loads(details), prev_hash, digest,
    )  # fmt: skip


def event_row(ev: Event) -> dict[str, Any]:
    return dict(zip(_COLUMN_NAMES, event_values(ev), strict=True))


def event_values(ev: Event) -> tuple[Any, ...]:
    """The row's values in the table's column order (what :func:`insert_rows` takes)."""
    return (
        ev.seq, ev.id, ev.time_us, ev.type, ev.actor, ev.agent_id, ev.on_behalf_of,
        canonical_text(ev.chain), ev.action,
        canonical_text(ev.resource) if ev.resource is not None else None,
        ev.decision, canonical_text(ev.reasons), ev.policy_version, ev.outcome,
        canonical_text(ev.details), ev.prev_hash, ev.hash,
    )  # fmt: skip


_COLUMN_NAMES = tuple(c.name for c in _EV.columns)
# event_values follows Event's field order; the table must declare its columns in it too.
if tuple(c.name for c in _COLUMNS) != _COLUMN_NAMES:  # pragma: no cover - a model edit
    raise RuntimeError("audit_events must declare its columns in Event's field order")
_HEAD = "SELECT seq, hash, time FROM audit_events ORDER BY seq DESC LIMIT 1"
HEAD_QUERY = _HEAD  # for Database.write(then=...): the head read in the write lock's round trip
# PostgreSQL: the head is still ``(seq, hash)`` — divides by zero otherwise (the guard of
# :meth:`~tether.db.engine.PinnedWriter.raw_guarded`): a batch built on the head its writer
# appended last, checked under the write lock in the batch's own round trip.
HEAD_IS = (
    "SELECT 1 / count(*)::int FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC "
    "LIMIT 1) AS head WHERE seq = %s AND hash = %s"
)
_UNREAD = object()


class DatabaseLedgerStore:
    def head(self, session: Session) -> tuple[int, str] | None:
        head = self.head_with_time(session)
        return (head[0], head[1]) if head else None

    def head_with_time(self, session: Session) -> tuple[int, str, int] | None:
        """``(seq, hash, time_us)`` of the newest event: as the write lock's round trip read
        it (:data:`HEAD_QUERY` given to :meth:`~tether.db.Database.write`), if nothing was
        appended since, else read now."""
        row = session.info.pop((READ_WITH_LOCK, _HEAD), _UNREAD)
        if row is _UNREAD:
            row = fetch_one(session, _HEAD)
        return self.head_of(row)

    @staticmethod
    def head_of(row: Any) -> tuple[int, str, int] | None:
        """``(seq, hash, time_us)`` from :data:`HEAD_QUERY`'s row (None: no event yet)."""
        return (int(row[0]), str(row[1]), int(row[2])) if row else None

    def insert(self, session: Session, events: Sequence[Event]) -> None:
        insert_rows(session, *self.rows(events))

    @staticmethod
    def rows(events: Sequence[Event]) -> Insert:
        """The events' rows, for :func:`tether.db.bulk.insert_tables`."""
        return _EV, [event_values(e) for e in events]

    def page(
        self,
        session: Session,
        *,
        after_seq: int,
        limit: int,
        agent: str | None = None,
        type_: str | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        newest_first: bool = False,
        types: Collection[str] | None = None,
    ) -> list[Event]:
        """Events after ``after_seq`` in ``seq`` order; with ``newest_first``, events before it
        (``after_seq`` 0 meaning "from the head") from the newest down. ``types``: only
        events of these types (the database skips the rest: an index on type and seq)."""
        if unstorable(agent, type_):
            return []
        q = select(*_COLUMNS)
        if newest_first:
            q = q.where(_EV.c.seq < after_seq) if after_seq else q
        else:
            q = q.where(_EV.c.seq > after_seq)
        if agent is not None:
            q = q.where(_EV.c.agent_id == agent)
        if type_ is not None:
            q = q.where(_EV.c.type == type_)
        if types is not None:
            q = q.where(_EV.c.type.in_(sorted(types)))
        if since_us is not None:
            q = q.where(_EV.c.time >= since_us)
        if until_us is not None:
            q = q.where(_EV.c.time < until_us)
        order = _EV.c.seq.desc() if newest_first else _EV.c.seq
        rows = session.execute(q.order_by(order).limit(limit)).all()
        return [_event(r) for r in rows]

    def get(self, session: Session, event_id: str) -> Event | None:
        """The event with this id (unique, indexed); None if there is none."""
        if unstorable(event_id):
            return None
        row = session.execute(select(*_COLUMNS).where(_EV.c.id == event_id)).first()
        return _event(row) if row is not None else None

    def stream(
        self, session: Session, *, batch: int = 5000, through: int | None = None
    ) -> Generator[Event]:
        """Every event in ``seq`` order (up to ``through``, if given), fetched in batches
        (server-side cursor on PostgreSQL)."""
        q = select(*_COLUMNS)
        if through is not None:
            q = q.where(_EV.c.seq <= through)
        result = session.execute(q.order_by(_EV.c.seq).execution_options(yield_per=batch))
        try:
            for row in result:
                yield _event(row)
        finally:
            # A reader may stop early (verification stops at the first problem); the
            # server-side cursor must still be closed before the transaction ends.
            result.close()

    def seq_of_hash(self, session: Session, digest: str) -> int | None:
        seq: int | None = session.execute(
            select(_EV.c.seq).where(_EV.c.hash == digest).limit(1)
        ).scalar()
        return seq

    def count(self, session: Session) -> int:
        head = self.head(session)
        return head[0] if head else 0

    @staticmethod
    def checkpoint_rows(cp: Checkpoint) -> Insert:
        """``cp``'s row, for :func:`tether.db.bulk.insert_tables`."""
        return _CP, [(cp.size, cp.head_hash, cp.time_us, cp.key_id, cp.signature)]

    def add_checkpoint(self, session: Session, cp: Checkpoint) -> None:
        session.execute(
            insert(_CP).values(
                size=cp.size,
                head_hash=cp.head_hash,
                time=cp.time_us,
                key_id=cp.key_id,
                signature=cp.signature,
            )
        )

    def latest_checkpoint(self, session: Session) -> Checkpoint | None:
        row = session.execute(select(_CP).order_by(_CP.c.size.desc()).limit(1)).first()
        return _checkpoint(row) if row else None

    def checkpoints(self, session: Session) -> list[Checkpoint]:
        return [_checkpoint(r) for r in session.execute(select(_CP).order_by(_CP.c.size)).all()]

    # Retention (tether.audit.retention): the events a prune deletes, and its cut.

    def last_before(self, session: Session, time_us: int) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest event written before ``time_us``; None if none was.
        Times never run back along the chain (the ledger stamps each event no earlier than
        the head), so every event up to it is older too."""
        row = session.execute(
            select(_EV.c.seq, _EV.c.hash)
            .where(_EV.c.time < time_us)
            .order_by(_EV.c.seq.desc())
            .limit(1)
        ).first()
        return (int(row[0]), str(row[1])) if row else None

    def hash_at(self, session: Session, seq: int) -> str | None:
        digest: str | None = session.scalar(select(_EV.c.hash).where(_EV.c.seq == seq))
        return digest

    def first_seq(self, session: Session) -> int | None:
        first: int | None = session.scalar(select(func.min(_EV.c.seq)))
        return first

    def delete_through(self, session: Session, seq: int) -> int:
        """Delete every event up to ``seq``; how many there were."""
        result = session.execute(delete(_EV).where(_EV.c.seq <= seq))
        return int(result.rowcount)  # type: ignore[attr-defined]

    def add_cut(
        self, session: Session, cut: Checkpoint, *, pruned: int, cutoff_us: int, event_id: str
    ) -> None:
        session.execute(
            insert(_CUT).values(
                size=cut.size, head_hash=cut.head_hash, time=cut.time_us, key_id=cut.key_id,
                signature=cut.signature, pruned=pruned, cutoff=cutoff_us, event_id=event_id,
            )
        )  # fmt: skip

    def cut_at(self, session: Session, size: int) -> Checkpoint | None:
        """The retention cut after event ``size`` (what event ``size + 1`` follows), if any."""
        row = session.execute(select(_CUT).where(_CUT.c.size == size)).first()
        return _checkpoint(row) if row else None

    def latest_cut(self, session: Session) -> Checkpoint | None:
        row = session.execute(select(_CUT).order_by(_CUT.c.size.desc()).limit(1)).first()
        return _checkpoint(row) if row else None

    def cut_sizes(self, session: Session) -> set[int]:
        return set(session.scalars(select(_CUT.c.size)))


def _checkpoint(row: Row[Any]) -> Checkpoint:
    return Checkpoint(row.size, row.head_hash, row.time, row.key_id, row.signature)
