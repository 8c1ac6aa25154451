"""Appending to the ledger inside the caller's write transaction.

The caller holds the deployment-wide write lock (:meth:`tether.db.Database.write`), so
reading the head and inserting after it cannot race another writer on any node: the chain
has exactly one sequence. Events commit, or roll back, with the change they record.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from prometheus_client import Counter
from sqlalchemy.orm import Session

from tether.audit.anchoring import AnchorRule
from tether.audit.chain import GENESIS, Checkpoint, Event, link
from tether.audit.events import NewEvent
from tether.audit.signing import LedgerSigner
from tether.audit.store import DatabaseLedgerStore
from tether.clock import to_micros
from tether.db.engine import AFTER_COMMIT

log = logging.getLogger(__name__)
EVENTS_APPENDED = Counter("tether_ledger_events_appended", "Ledger events appended", ["type"])
CHECKPOINTS_SIGNED = Counter("tether_ledger_checkpoints_signed", "Ledger checkpoints signed")
PUBLISH_FAILED = Counter(
    "tether_ledger_checkpoint_file_failures",
    "Signed checkpoints that could not be appended to the checkpoint file",
)

Publish = Callable[[Checkpoint], None]


class Ledger:
    def __init__(
        self,
        signer: LedgerSigner,
        *,
        store: DatabaseLedgerStore | None = None,
        checkpoint_every_events: int = 1000,
        checkpoint_every_seconds: float = 60.0,
    ) -> None:
        self.signer = signer
        self.store = store or DatabaseLedgerStore()
        self.checkpoint_every_events = checkpoint_every_events
        self.checkpoint_every_seconds = checkpoint_every_seconds
        # Called with each signed checkpoint once its transaction committed (never before: a
        # rolled-back head outside the database would read as tampering). The checkpoint
        # file's append may raise OSError (logged, counted); others must not raise.
        self.publish: list[Publish] = []

    @property
    def anchor_rule(self) -> AnchorRule:
        return AnchorRule(self.checkpoint_every_events, self.checkpoint_every_seconds)

    def append(self, session: Session, events: Sequence[NewEvent], *, now: datetime) -> list[Event]:
        """Chain ``events`` after the current head; the caller's transaction makes them durable."""
        out = self.chain_next(session, events, now=now)
        self.store.insert(session, out)
        return out

    def chain_next(
        self, session: Session, events: Sequence[NewEvent], *, now: datetime
    ) -> list[Event]:
        """:meth:`append` without the insert: the caller inserts the chained events
        (``store.rows(events)``) before anything else reads the head in this transaction —
        the group commit, whose one statement carries them with the rest of its batch."""
        if not events:
            return []
        out, checkpoint = self.link_after(self.store.head_with_time(session), events, now=now)
        counted(out)
        if checkpoint is not None:
            self._keep(session, checkpoint)
        return out

    def link_after(
        self, head: tuple[int, str, int] | None, events: Sequence[NewEvent], *, now: datetime
    ) -> tuple[list[Event], Checkpoint | None]:
        """``events`` chained after ``head`` (``(seq, hash, time_us)`` read under the write
        lock; None: the ledger is empty), and the checkpoint signed at the last of them if the
        batch reaches a multiple of N — for the caller to store in the same transaction and
        hand to :meth:`published` once it committed (and the events to :func:`counted`). Pure:
        a write that does not happen (its guard failed) built them for nothing."""
        seq, prev, head_time = head if head else (0, GENESIS, 0)
        # Callers read the clock before they got the write lock; under contention an event
        # could otherwise be stamped earlier than the one before it. Time never runs back.
        time_us = max(to_micros(now), head_time)
        out = link(events, after_seq=seq, prev_hash=prev, time_us=time_us)
        seq, prev = out[-1].seq, out[-1].hash
        first = out[0].seq
        # Every N events: sign when this batch reaches a multiple of N. Deciding from the
        # sequence alone keeps a checkpoint query off every append (timed and forced
        # checkpoints come in between, from checkpoint_if_due / force_checkpoint).
        n = self.checkpoint_every_events
        if (first - 1) // n != seq // n:
            return out, self._signed(seq, prev, time_us)
        return out, None

    def checkpoint_if_due(self, session: Session, *, now: datetime) -> Checkpoint | None:
        """The timed rule: sign the head if it moved and T seconds passed since the last one."""
        head = self.store.head(session)
        if head is None:
            return None
        size, head_hash = head
        last = self.store.latest_checkpoint(session)
        if last is not None and size <= last.size:
            return None
        time_us = to_micros(now)
        last_time = last.time_us if last else 0
        if time_us - last_time < self.checkpoint_every_seconds * 1_000_000:
            return None
        return self._sign(session, size, head_hash, time_us)

    def _sign(self, session: Session, size: int, head_hash: str, time_us: int) -> Checkpoint:
        cp = self._signed(size, head_hash, time_us)
        self._keep(session, cp)
        return cp

    def _signed(self, size: int, head_hash: str, time_us: int) -> Checkpoint:
        cp = self.signer.sign(size, head_hash, time_us)
        CHECKPOINTS_SIGNED.inc()
        return cp

    def _keep(self, session: Session, cp: Checkpoint) -> None:
        """``cp`` stored in ``session``'s transaction, and published once that committed."""
        self.store.add_checkpoint(session, cp)
        if self.publish:
            session.info.setdefault(AFTER_COMMIT, []).append(partial(self.published, cp))

    def published(self, cp: Checkpoint) -> None:
        """Hand ``cp`` to every :attr:`publish` sink; call only once ``cp`` is committed."""
        for sink in self.publish:
            try:
                sink(cp)
            except OSError:  # the write is committed: say so loudly, do not undo it
                PUBLISH_FAILED.inc()
                log.exception("checkpoint %d is signed but not in the checkpoint file", cp.size)

    def force_checkpoint(self, session: Session, *, now: datetime) -> Checkpoint | None:
        head = self.store.head(session)
        if head is None:
            return None
        last = self.store.latest_checkpoint(session)
        if last is not None and last.size >= head[0]:
            return last
        return self._sign(session, head[0], head[1], to_micros(now))


_APPENDED: dict[str, Any] = {}  # EVENTS_APPENDED's child per type (labels() is a lookup)


def counted(events: Sequence[Event]) -> None:
    """``events`` appended: counted by type (:data:`EVENTS_APPENDED`)."""
    tally: Iterable[tuple[str, int]] = (
        Tally(ev.type for ev in events).items() if len(events) > 1
        else [(ev.type, 1) for ev in events]
    )  # fmt: skip
    for type_, n in tally:
        child = _APPENDED.get(type_)
        if child is None:
            child = _APPENDED[type_] = EVENTS_APPENDED.labels(type_)
        child.inc(n)
