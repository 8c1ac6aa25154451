"""Group commit: many concurrent decisions, one durable transaction.

Each caller submits its event and waits on a future; one writer thread per process takes
everything queued (up to ``max_batch``), appends it to the chain in one write transaction
and resolves every future only after the commit returned — so an answer never leaves before
its event is durable, and more concurrency means bigger batches, not more lock contention.
If the commit fails, every future in the batch fails and the callers fail closed.

A caller whose write is more than an event (an approval checkpoint reads and updates its
approval, then records the decision) submits a *job*: a function of the session that runs
inside the same transaction. A failing job fails only its own future: the transaction rolls
back and the rest of the batch is written again without it. A job that records events
returns :class:`Chain`: its events join the batch's one append (ahead of the plain events,
in job order) and ``finish`` gets them chained. The deployment-wide write lock is taken once
per batch either way. Jobs of a kind that each read something first (a token's client read
again under the lock) may read it for the whole batch in one statement: a job with a
``prepare(session, jobs)`` attribute has it called once per batch, before any job runs, with
every job of the batch that has the same ``prepare``.

When its process is otherwise idle — :attr:`GroupCommitter.inline_when` says so (the server:
this request is the only one in flight), the writer thread is between batches, nothing is
queued, and the write lock of a SQLite file is free at once — an event or a prebuilt chain
submitted from an event loop is written right there, on the writer's connection, instead of
being handed to the writer thread and back: the two thread wake-ups were a fifth of a
sequential commit (bench/README.md, issue 16). Nothing else changes: the same transaction,
answered only once it committed, failing closed the same way. With anything else in flight,
or the lock held or awaited by anyone, it queues as before, so batching under load is as it
was, and the event loop never waits on another writer.

On PostgreSQL, a writer whose last batch found, under the lock, the very head it had left
before (nobody else appends: one busy worker) builds its next batch on the head it left,
unread, and writes it in one round trip instead of two, with a guard that rolls the write
back, nothing written, if another writer appended meanwhile (then the batch goes the usual
way). A lone request's event on such a guessed head is written by a task of its own event
loop on a connection of its own (:class:`~tether.db.engine.LoopWriter`: the database awaited,
never the loop blocked), and no thread is woken.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import Table
from sqlalchemy.orm import Session

from tether.audit.chain import Checkpoint, Event
from tether.audit.events import NewEvent
from tether.audit.ledger import Ledger, counted
from tether.audit.store import HEAD_IS, HEAD_QUERY
from tether.clock import Clock
from tether.db import Database
from tether.db.bulk import Insert, insert_tables
from tether.db.engine import (
    BEFORE_COMMIT,
    GuardFailed,
    LoopWriter,
    PinnedWriter,
    RawWrite,
    WriteLockBusy,
)
from tether.errors import LedgerUnavailable

log = logging.getLogger("tether.audit.group")
BATCH = Histogram(
    "tether_ledger_group_commit_batch_size", "Events per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)  # fmt: skip
FAILED = Counter(
    "tether_ledger_group_commit_failures", "Group commits that failed (events lost: 0)"
)
GUESSED = Counter(
    "tether_ledger_group_commit_guessed",
    "Batches built on the head their writer left, unread (PostgreSQL, one round trip): "
    "held, or moved by another writer's append (then written again after it)",
    ["head"],
)

# The ledger's head: (seq, hash, time_us) of its newest event.
Head = tuple[int, str, int]
# Rows that go with the chained events (and what each was submitted with) in their statement.
Attach = Callable[[Sequence[tuple[Event, Any]]], Insert]


Job = Callable[[Session], Any]


@dataclass(frozen=True, slots=True)
class Chain:
    """A job's events to append with the batch; ``finish(chained)`` (the chained events, in
    order) gives the job's result, still inside the transaction. ``attachment`` goes with
    the first event, like a plain event's. ``finish`` and ``rows_of`` may run more than once
    (a batch built again): they must only build their result."""

    events: Sequence[NewEvent]
    finish: Callable[[list[Event]], Any]
    attachment: Any = None
    # Rows to insert with the batch: every job's rows go in the batch's one statement with
    # its events (PostgreSQL: one round trip) instead of a round trip per job under the lock.
    rows: Sequence[tuple[Table, tuple[Any, ...]]] = ()
    # Rows that name the chained events (their ids, seqs): built once they are chained, and
    # inserted in the same statement.
    rows_of: Callable[[list[Event]], Sequence[tuple[Table, tuple[Any, ...]]]] | None = None


@dataclass(slots=True)
class _Item:
    event: NewEvent | None  # None: a job
    attachment: Any
    # An event loop's future (settled in that loop), or a thread's (``loop`` None: run()).
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    loop: asyncio.AbstractEventLoop | None
    job: Job | None = None
    chain: Chain | None = None  # built beforehand: appended without a session


class GroupCommitter:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        max_batch: int = 256,
        attach: Attach | None = None,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.max_batch = max_batch
        self.attach = attach
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pinned: PinnedWriter | None = None  # the writer thread's connection
        # A job met while a batch of plain events gathered (they go without a session): the
        # next batch's first item.
        self._carry: _Item | None = None
        self._lock = threading.Lock()
        # Held while a batch is written, by the writer thread or by an event loop writing
        # its own item (the kept connection is used by one thread at a time).
        self._writing = threading.Lock()
        self._closed = False
        # Whether the caller's process has nothing else in flight (None: never write on the
        # caller's thread). Set by the server; read on the event loop, per item.
        self.inline_when: Callable[[], bool] | None = None
        # The head after this writer's last batch, and — while the head it read for that batch
        # was the one it had left (nobody else appends: one busy worker) — the head to build
        # the next plain batch on without reading it (PostgreSQL: one round trip, not two).
        # Under ``_writing``.
        self._wrote: Head | None = None
        self._guess: Head | None = None
        # PostgreSQL: a lone item's guarded write from its event loop (_inline_guessed), and
        # what its commit leaves to do after its caller's answer (_wrote_guessed).
        self._on_loop = LoopWriter(db) if db.dialect == "postgresql" else None
        self._written_after: tuple[Head, list[Event], Checkpoint | None] | None = None

    def submit_async(self, event: NewEvent, attachment: Any = None) -> asyncio.Future[Event]:
        """Queue ``event``; the future resolves to the chained event once it is durable, or
        fails with :class:`LedgerUnavailable`. One wake-up of the event loop per commit settles
        every future of that loop, instead of one cross-thread hand-off per event."""
        return self._enqueue(event, attachment, None)

    def append_async(self, chain: Chain) -> asyncio.Future[Any]:
        """Append ``chain`` — built beforehand, needing nothing of a session (its events,
        rows, finish) — in the next group transaction; the future resolves to what its
        ``finish`` gave once that committed, or fails with :class:`LedgerUnavailable`. A
        batch of such chains and plain events is written on the driver, like decisions."""
        return self._enqueue(None, None, None, chain)

    def run_async(self, job: Job) -> asyncio.Future[Any]:
        """Run ``job(session)`` in the next group transaction; the future resolves to its
        result once that transaction committed, or fails with the job's exception (the rest
        of the batch is then written without it), or with :class:`LedgerUnavailable` if the
        commit failed. A job may run more than once (when another job of its batch fails):
        it must only touch the session."""
        return self._enqueue(None, None, job)

    def run(self, job: Job, timeout: float | None = None) -> Any:
        """:meth:`run_async` for a thread outside any event loop (a synchronous route's
        worker thread): blocks until the job's transaction committed and returns the job's
        result, or raises the job's exception or :class:`LedgerUnavailable`."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._closed:
            raise LedgerUnavailable("the ledger writer is shut down")
        self._ensure_thread()
        self._queue.put(_Item(None, None, future, None, job))
        return future.result(timeout)

    def _enqueue(
        self, event: NewEvent | None, attachment: Any, job: Job | None, chain: Chain | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(LedgerUnavailable("the ledger writer is shut down"))
            return future
        self._ensure_thread()
        alone = self.inline_when
        item = _Item(event, attachment, future, loop, job, chain)
        if job is None and alone is not None and alone() and self._inline(item):
            return future
        self._queue.put(item)
        return future

    def _inline(self, item: _Item) -> bool:
        """``item`` (an event or a prebuilt chain, nothing else in flight) written without
        the writer thread: on a SQLite file, right here; on PostgreSQL, by a task of this
        loop, if the head is guessed. False, having done nothing, if neither can be."""
        if self._pinned is None:
            return False
        if self._pinned.can_skip_the_wait:
            return self._inline_here(item)
        return self._inline_guessed(item)

    def _inline_here(self, item: _Item) -> bool:
        """Write ``item`` alone on this thread if nobody writes or waits to: True once it is
        settled (committed, or failed closed); False, having done nothing, otherwise."""
        if not self._writing.acquire(blocking=False):
            return False
        try:
            if self._carry is not None or not self._queue.empty():
                return False  # the writer has work: this item's turn is after it
            here = _Item(item.event, item.attachment, item.future, None, None, item.chain)
            try:
                self._commit([here], wait=False)  # settled on this thread: no hand-off back
            except WriteLockBusy:
                return False
            return True
        finally:
            self._writing.release()

    def _inline_guessed(self, item: _Item) -> bool:
        """PostgreSQL: write ``item`` from its event loop, guarded on the head this writer
        left (:meth:`LoopWriter.write_guarded`, one round trip), sent right here and settled
        by the loop's reader callback, the writing turn held until then — if the head is
        guessed, nobody writes or waits to, and the loop's connection is open. False,
        having done nothing, otherwise."""
        on_loop, loop = self._on_loop, item.loop
        self._wrote_guessed()  # the last loop write's, if its turn has not come yet
        if on_loop is None or loop is None or self._guess is None or not on_loop.ready(loop):
            return False
        if not self._writing.acquire(blocking=False):
            return False
        guess = self._guess
        if self._carry is not None or not self._queue.empty() or guess is None:
            self._writing.release()
            return False
        # The writer thread may wait on the turn meanwhile: it is never awaited on the loop.
        results: list[Any] = [None]
        chains = [(0, item.chain)] if item.chain is not None else []
        try:
            inserts, events, checkpoint = self._append([item], results, chains, guess,
                                                       self.clock.now())  # fmt: skip

            def done(failure: BaseException | None) -> None:
                self._guessed(item, guess, failure, results=results, events=events,
                             checkpoint=checkpoint)  # fmt: skip

            on_loop.write_guarded(HEAD_IS, guess[:2], inserts, done)
        except BaseException as exc:  # nothing sent
            self._guessed(item, guess, exc, results=results, events=[], checkpoint=None)
            if not isinstance(exc, Exception):
                raise
        return True

    def _guessed(
        self, item: _Item, guess: Head, failure: BaseException | None, *,
        results: list[Any], events: list[Event], checkpoint: Checkpoint | None,
    ) -> None:  # fmt: skip
        """:meth:`_inline_guessed`'s write answered (on the loop): ``item`` settled, or —
        another writer appended since — queued for the writer thread (it reads the head
        under the lock and settles it); the writing turn released — once committed, on the
        loop's next turn: the answer goes first (:meth:`_wrote_guessed`)."""
        held = False
        try:
            if isinstance(failure, GuardFailed):
                GUESSED.labels("moved").inc()
                self._guess = None
                self._queue.put(item)
                return
            future = item.future
            assert isinstance(future, asyncio.Future)  # submitted from this loop
            if failure is not None:  # committed or not, unknown: fail closed
                self._guess = self._wrote = None
                FAILED.inc()
                log.warning("group commit of 1 item failed; failing it closed",
                            exc_info=failure)  # fmt: skip
                error = LedgerUnavailable(str(failure) or type(failure).__name__)
                _settle_in_loop([(future, error)])
                return
            _settle_in_loop([(future, results[0])])
            self._written_after = (guess, events, checkpoint)
            future.get_loop().call_soon(self._wrote_guessed)
            held = True
        finally:
            if not held:
                self._writing.release()

    def _wrote_guessed(self) -> None:
        """After a committed write from the loop, once its caller has run on (its answer
        sent): the head it left, the counts, the checkpoint published; the writing turn
        released — nothing the answer waits for, and nothing another write can start before
        (it needs the turn; a caller that submits again first does it right then). Once."""
        with self._lock:  # taken once, whichever thread comes first
            written, self._written_after = self._written_after, None
        if written is None:
            return
        guess, events, checkpoint = written
        try:
            GUESSED.labels("held").inc()
            self._guess = self._wrote = _after(guess, events)
            BATCH.observe(1)
            self._published([], events, checkpoint)
        finally:
            self._writing.release()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tether-group-commit",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self._on_loop is not None:
            self._on_loop.close()

    def _run(self) -> None:
        self._pinned = self.db.pinned()
        try:
            self._loop()
        finally:
            with self._writing:  # not under an event loop's write
                self._pinned.close()

    def _loop(self) -> None:
        while True:
            first, self._carry = self._carry or self._queue.get(), None
            if first is None:
                return
            batch = [first]
            with self._writing:
                self._gather(batch)  # a close request stays queued: the next get() returns
                self._commit(batch)

    def _commit(self, batch: list[_Item], *, wait: bool = True) -> None:
        """Write ``batch`` and settle every item of it. ``wait=False`` (a batch of plain
        items, written on an event loop): :class:`WriteLockBusy`, nothing written or
        settled, unless the write lock is free at once."""
        while batch:
            try:
                results = self._write(batch) if wait else self._write_events(batch, wait=False)
            except WriteLockBusy:
                raise  # nothing was written: the caller queues the batch instead
            except _JobFailed as failed:
                self._guess = self._wrote = None
                # The whole transaction rolled back; that job fails alone, the rest go again.
                # (Cheaper than a savepoint per job — two round trips each — since jobs fail
                # only when the database misbehaves.)
                log.debug("a group-commit job failed; retrying without it: %r", failed.error)
                _settle([batch[failed.index]], [_Failed(failed.error)])
                batch = batch[: failed.index] + batch[failed.index + 1 :]
                continue
            except Exception as exc:
                self._guess = self._wrote = None
                FAILED.inc()
                log.exception("group commit of %d items failed; failing them closed", len(batch))
                failure = LedgerUnavailable(str(exc))
                _settle(batch, [failure] * len(batch))
                return
            BATCH.observe(len(batch))
            _settle(batch, results)
            return

    def _write(self, batch: list[_Item]) -> list[Any]:
        if all(item.job is None for item in batch):
            return self._write_events(batch)
        return self._write_jobs(batch)

    def _write_events(self, batch: list[_Item], *, wait: bool = True) -> list[Any]:
        """:meth:`_write_jobs` for a batch without jobs — plain events (decisions) and
        chains built beforehand (the gateway's call records) — the same transaction on the
        connection's driver, without a session: SQLAlchemy's session and transaction set-up
        were most of a commit's CPU besides the fsync (bench/README.md). What queues while the
        lock is awaited joins, up to the first job (the next batch's); ``wait=False``: only
        if the lock is free at once (:class:`WriteLockBusy`), and ``batch`` alone.

        On PostgreSQL, while this writer is the only one appending, the batch is built on the
        head it left and written in one round trip, guarded (:data:`HEAD_IS`): the head's read
        is a round trip of the two a commit takes. If another writer appended meanwhile,
        that write is rolled back with nothing written, and the batch goes the usual way."""
        assert self._pinned is not None  # the writer thread's
        if wait and (guess := self._guess) is not None:
            self._guess = None
            try:
                with self._pinned.raw_guarded(HEAD_IS, guess[:2]) as tx:
                    results, events, checkpoint = self._write_on(tx, guess, batch)
            except GuardFailed:
                GUESSED.labels("moved").inc()
                log.debug("another writer appended: the head is read under the lock again")
            else:
                GUESSED.labels("held").inc()
                self._guess = self._wrote = _after(guess, events)
                return self._published(results, events, checkpoint)
        with self._pinned.raw(then=HEAD_QUERY, wait=wait) as tx:
            if wait:
                self._gather(batch, plain=True)
            head = self.ledger.store.head_of(tx.head)
            results, events, checkpoint = self._write_on(tx, head, batch)
        self._moved(head, events)
        return self._published(results, events, checkpoint)

    def _write_on(
        self, tx: RawWrite, head: Head | None, batch: list[_Item]
    ) -> tuple[list[Any], list[Event], Checkpoint | None]:
        """``batch`` appended after ``head`` in ``tx``: each item's result, the chained
        events, and the checkpoint to publish once committed."""
        now = self.clock.now()  # after the wait: no event is stamped before it was queued
        results: list[Any] = [None] * len(batch)
        chains = [(i, item.chain) for i, item in enumerate(batch) if item.chain is not None]
        inserts, events, checkpoint = self._append(batch, results, chains, head, now)
        tx.write(inserts)
        return results, events, checkpoint

    def _moved(self, head: Head | None, events: list[Event]) -> None:
        """A batch read ``head`` under the lock and appended ``events``: the next one is built
        on the head it leaves unread if ``head`` was the one this writer had left (nobody
        else appended meanwhile) and the database can guard the write."""
        after = _after(head, events)
        assert self._pinned is not None
        mine = head is not None and head == self._wrote and self._pinned.can_guard
        self._wrote, self._guess = after, (after if mine else None)

    def _published(
        self, results: list[Any], events: list[Event], checkpoint: Checkpoint | None
    ) -> list[Any]:
        """Once committed: the batch's events counted, its checkpoint published."""
        counted(events)
        if checkpoint is not None:
            self.ledger.published(checkpoint)
        return results

    def _write_jobs(self, batch: list[_Item]) -> list[Any]:
        """One write transaction for ``batch``: the jobs, then one append of every event.
        What was queued while the write lock was awaited joins ``batch`` (in place) once it
        is held: waiting for the lock is waiting for the other writers — another worker's
        batch, another node's — and a batch that grows meanwhile costs one transaction less
        after it. (With two workers on PostgreSQL, the one with fewer connections otherwise
        committed batches of one, each a whole turn of the lock.)"""
        assert self._pinned is not None  # the writer thread's
        with self._pinned.write(then=HEAD_QUERY) as s:  # the ledger's head with the lock
            self._gather(batch)
            now = self.clock.now()  # after the wait: no event is stamped before it was queued
            results: list[Any] = [None] * len(batch)
            _prepare(s, [item.job for item in batch if item.job is not None])
            chains: list[tuple[int, Chain]] = []
            for i, item in enumerate(batch):
                if item.job is not None:
                    try:
                        results[i] = item.job(s)
                    except Exception as exc:
                        raise _JobFailed(i, exc) from exc
                    if isinstance(results[i], Chain):
                        chains.append((i, results[i]))
                elif item.chain is not None:
                    chains.append((i, item.chain))
            # Read after the jobs: one may have appended events of its own.
            head = self.ledger.store.head_with_time(s)
            inserts, events, checkpoint = self._append(batch, results, chains, head, now)
            # The last write: on PostgreSQL the COMMIT goes with it, unless the jobs left
            # something for the session to flush or the change feed to write.
            last = not (s.new or s.dirty or s.deleted) and BEFORE_COMMIT not in s.info
            insert_tables(s, inserts, commit=last)
        self._moved(head, events)
        return self._published(results, events, checkpoint)

    def _append(
        self, batch: list[_Item], results: list[Any], chains: list[tuple[int, Chain]],
        head: Head | None, now: datetime,
    ) -> tuple[list[Insert], list[Event], Checkpoint | None]:  # fmt: skip
        """The batch's events chained after ``head`` — the chains' first, in order, then the
        plain events — each item's result set in ``results``; every row of the batch for one
        statement (PostgreSQL: one round trip under the lock, not one per table): the chains'
        rows, the events, what is attached to them, the checkpoint if one is due; the chained
        events; the checkpoint (to publish once committed). Builds, writes nothing: a guarded
        write that did not hold builds again (a chain's ``finish`` and ``rows_of`` run again)."""
        tables: dict[Table, list[tuple[Any, ...]]] = {}
        for _, chain in chains:
            for table, row in chain.rows:
                tables.setdefault(table, []).append(row)
        plain = [i for i, item in enumerate(batch) if item.event is not None]
        news = [e for _, c in chains for e in c.events]
        news += [e for i in plain if (e := batch[i].event) is not None]
        events, checkpoint = self.ledger.link_after(head, news, now=now) if news else ([], None)
        attached: list[tuple[Event, Any]] = []
        at = 0
        for i, chain in chains:
            mine = events[at : at + len(chain.events)]
            at += len(chain.events)
            results[i] = chain.finish(mine)
            if chain.rows_of is not None:
                for table, row in chain.rows_of(mine):
                    tables.setdefault(table, []).append(row)
            if mine and chain.attachment is not None:
                attached.append((mine[0], chain.attachment))
        for i, ev in zip(plain, events[at:], strict=True):
            results[i] = ev
            attached.append((ev, batch[i].attachment))
        inserts: list[Insert] = [*tables.items(), self.ledger.store.rows(events)]
        if self.attach is not None:
            inserts.append(self.attach(attached))
        if checkpoint is not None:
            inserts.append(self.ledger.store.checkpoint_rows(checkpoint))
        return inserts, events, checkpoint

    def _gather(self, batch: list[_Item], *, plain: bool = False) -> None:
        """Add to ``batch`` what is queued, up to ``max_batch``; a close request stays queued.
        ``plain``: only events — a job ends the gathering and starts the next batch."""
        while len(batch) < self.max_batch and self._carry is None:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)  # _run sees it next and stops
                return
            if plain and item.job is not None:
                self._carry = item
                return
            batch.append(item)


def _after(head: Head | None, events: list[Event]) -> Head | None:
    """The head once ``events`` (chained after ``head``) are appended."""
    if not events:
        return head
    last = events[-1]
    return last.seq, last.hash, last.time_us


def _prepare(s: Session, jobs: list[Job]) -> None:
    """Each ``prepare`` of the batch's jobs, once, with every job that has it."""
    kinds: dict[Callable[[Session, list[Job]], None], list[Job]] = {}
    for job in jobs:
        if (prepare := getattr(job, "prepare", None)) is not None:
            kinds.setdefault(prepare, []).append(job)
    for prepare, same in kinds.items():
        prepare(s, same)


class _JobFailed(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"job {index} failed: {error!r}")
        self.index = index
        self.error = error


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _settle(batch: list[_Item], results: Sequence[Any]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for item, result in zip(batch, results, strict=True):
        if item.loop is None:  # a thread waits on it (run())
            _resolve(item.future, result)
            continue
        assert isinstance(item.future, asyncio.Future)
        by_loop.setdefault(item.loop, []).append((item.future, result))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, pairs)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            log.warning("an event loop closed before its %d decisions were settled", len(pairs))


def _settle_in_loop(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in pairs:
        if not future.done():  # else the caller gave up (cancelled)
            _resolve(future, result)


def _resolve(future: asyncio.Future[Any] | concurrent.futures.Future[Any], result: Any) -> None:
    """An item's outcome onto its future: a failure (an exception, or a job's :class:`_Failed`)
    as the future's exception, anything else as its result."""
    if isinstance(result, BaseException):
        future.set_exception(result)
    elif isinstance(result, _Failed):
        future.set_exception(result.error)
    else:
        future.set_result(result)
