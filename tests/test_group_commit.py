"""The group committer: events and jobs in one durable transaction, failures kept apart."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.audit import group
from tether.audit.events import NewEvent
from tether.audit.group import Chain, LedgerUnavailable
from tether.audit.models import EventRow
from tether.container import Services
from tether.db import engine
from tether.db.bulk import insert_tables
from tether.policy.models import DecisionInputRow
from tether.principals import SYSTEM


def _events(services: Services) -> list[tuple[int, str, str]]:
    with services.db.read() as s:
        rows = s.execute(select(EventRow.seq, EventRow.type, EventRow.actor).order_by(EventRow.seq))
        return [(r.seq, r.type, r.actor) for r in rows]


def test_events_and_jobs_share_a_batch_and_a_failing_job_fails_alone(services: Services) -> None:
    before = _events(services)
    committer = services.committer

    def good_job(s: Session) -> str:
        [ev] = services.ledger.append(
            s, [NewEvent("test.job", "job:good")], now=services.clock.now()
        )
        return ev.id

    def bad_job(s: Session) -> Any:
        # Writes first, then fails: its event must be rolled back with it.
        services.ledger.append(s, [NewEvent("test.job", "job:bad")], now=services.clock.now())
        raise ValueError("the job refuses")

    async def main() -> list[Any]:
        futures = [
            committer.submit_async(NewEvent("test.event", "event:1"), "one"),
            committer.run_async(bad_job),
            committer.run_async(good_job),
            committer.submit_async(NewEvent("test.event", "event:2"), None),
        ]
        return await asyncio.gather(*futures, return_exceptions=True)

    first, bad, good, second = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert isinstance(good, str)
    assert good.startswith("evt_")
    new = _events(services)[len(before) :]
    actors = sorted(actor for _, _, actor in new)
    assert actors == ["event:1", "event:2", "job:good"]  # job:bad rolled back to its savepoint
    seqs = [seq for seq, _, _ in new]
    assert seqs == list(range(before[-1][0] + 1, before[-1][0] + 4))  # no gap in the chain
    assert {first.seq, second.seq} < set(seqs)
    with services.db.read() as s:
        stored = s.get(DecisionInputRow, first.seq)
        assert stored is not None
        assert stored.request == "one"
        assert s.get(DecisionInputRow, second.seq) is None
    assert services.audit.verify(SYSTEM).ok


def test_a_failed_commit_fails_every_item_closed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _events(services)
    ran: list[str] = []

    inside: list[int] = []

    def broken_insert(s: Session, inserts: Any, **_: Any) -> None:
        # fails after the job ran and the events were inserted: all of it must roll back
        insert_tables(s, inserts)  # without the commit that would go with them
        inside.append(s.scalar(select(func.count()).select_from(EventRow)) or 0)
        raise RuntimeError("disk full")

    def job(s: Session) -> str:
        services.ledger.append(s, [NewEvent("test.job", "job:x")], now=services.clock.now())
        ran.append("job")
        return "job ran"

    monkeypatch.setattr(group, "insert_tables", broken_insert)

    async def main() -> list[Any]:
        return await asyncio.gather(
            services.committer.submit_async(NewEvent("test.event", "event:x")),
            services.committer.run_async(job),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert ran == ["job"]
    assert inside == [len(before) + 2]  # the event and the job's event were written, then...
    assert all(isinstance(r, LedgerUnavailable) for r in results)
    assert _events(services) == before
    with services.db.read() as s:
        assert s.scalar(select(func.count()).select_from(DecisionInputRow)) == 0


def test_a_jobs_chain_joins_the_batchs_one_append(services: Services) -> None:
    """A job returning Chain: its events are appended with the batch's (ahead of the plain
    ones), ``finish`` gets exactly those, chained, and the attachment goes with the first;
    a job that fails after building its chain appends nothing."""
    before = _events(services)
    got: list[list[str]] = []

    def chained(s: Session) -> Chain:
        def finish(events: list[Any]) -> str:
            got.append([e.actor for e in events])
            return str(events[0].id)

        return Chain(
            [NewEvent("test.job", "job:a"), NewEvent("test.job", "job:b")], finish, "inputs"
        )

    def failing(s: Session) -> Chain:
        Chain([NewEvent("test.job", "job:never")], lambda _: None)
        raise ValueError("refused")

    async def main() -> list[Any]:
        committer = services.committer
        with committer._writing:  # one batch: all queued before the writer gathers
            futures = [committer.submit_async(NewEvent("test.event", "event:1")),
                       committer.run_async(failing), committer.run_async(chained)]  # fmt: skip
        return await asyncio.gather(*futures, return_exceptions=True)

    plain, failed, first_id = asyncio.run(main())
    assert isinstance(failed, ValueError)
    assert got == [["job:a", "job:b"]]
    new = _events(services)[len(before) :]
    assert [actor for _, _, actor in new] == ["job:a", "job:b", "event:1"]
    assert new[-1][0] == plain.seq
    with services.db.read() as s:
        job_a = s.scalar(select(EventRow).where(EventRow.actor == "job:a"))
        assert job_a is not None
        assert job_a.id == first_id
        stored = s.get(DecisionInputRow, job_a.seq)
        assert stored is not None
        assert stored.request == "inputs"
    assert services.audit.verify(SYSTEM).ok


def test_a_job_failing_after_others_ran_leaves_theirs_written_once(services: Services) -> None:
    """The batch is written again without the failed job: what ran before it in the rolled
    back attempt is neither lost nor doubled."""
    before = _events(services)
    runs: list[str] = []

    def good(s: Session) -> Chain:
        runs.append("good")
        return Chain([NewEvent("test.job", "job:good")], lambda evs: evs[0].seq)

    def bad(s: Session) -> Any:
        services.ledger.append(s, [NewEvent("test.job", "job:bad")], now=services.clock.now())
        raise ValueError("refused")

    async def main() -> list[Any]:
        return await asyncio.gather(
            services.committer.run_async(good),
            services.committer.submit_async(NewEvent("test.event", "event:1")),
            services.committer.run_async(bad),
            return_exceptions=True,
        )

    seq, plain, failed = asyncio.run(main())
    assert isinstance(failed, ValueError)
    # ran again in the retried batch (once only if the writer took it in a batch of its own)
    assert runs in (["good", "good"], ["good"])
    new = _events(services)[len(before) :]
    assert [actor for _, _, actor in new] == ["job:good", "event:1"]
    assert (new[0][0], new[1][0]) == (seq, plain.seq)
    assert services.audit.verify(SYSTEM).ok


def test_threads_outside_any_event_loop_run_jobs_and_get_results_or_errors(
    services: Services,
) -> None:
    """``run`` (token issuance's way in, from a synchronous route's worker thread): many
    threads at once share batches; each gets its job's result once committed, or its error,
    and the others' writes stand."""
    before = _events(services)
    committer = services.committer

    def job(i: int) -> Any:
        def write(s: Session) -> Chain:
            if i == 3:
                raise ValueError("job 3 refuses")
            return Chain([NewEvent("test.job", f"job:{i}")], finish=lambda evs: evs[0].seq)

        return committer.run(write)

    outcomes: list[Any] = [None] * 8
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = job(i)
        except ValueError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(outcomes[3], ValueError)
    new = _events(services)[len(before) :]
    assert sorted(actor for _, _, actor in new) == [f"job:{i}" for i in range(8) if i != 3]
    assert sorted(o for i, o in enumerate(outcomes) if i != 3) == [seq for seq, _, _ in new]
    assert services.audit.verify(SYSTEM).ok


def _write_lock_held(services: Services) -> tuple[threading.Event, threading.Thread]:
    """Another writer holding the deployment-wide write lock (as another worker's batch
    would) until the event returned is set; its thread, to join."""
    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with services.db.write():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=other_writer)
    holder.start()
    assert held.wait(10)
    return release, holder


def test_what_queues_while_the_write_lock_is_awaited_joins_the_batch(services: Services) -> None:
    """A batch is formed, then waits for the deployment-wide write lock (another worker's or
    node's batch holds it); what was queued meanwhile is written in that same transaction once
    the lock is held, not in a transaction of its own after it."""
    committer = services.committer
    release, holder = _write_lock_held(services)
    batches: list[object] = []

    def job(s: Session) -> int:
        batches.append(s.info.setdefault("test.batch", object()))
        return len(batches)

    results: list[int] = []
    callers = [threading.Thread(target=lambda: results.append(committer.run(job, 20)))
               for _ in range(4)]  # fmt: skip
    callers[0].start()
    time.sleep(0.1)
    while not committer._queue.empty():  # the first taken: its batch waits for the lock
        time.sleep(0.01)
    for caller in callers[1:]:
        caller.start()
    while committer._queue.qsize() < 3:  # the others queued behind it
        time.sleep(0.01)
    release.set()
    for thread in (holder, *callers):
        thread.join(20)
    assert sorted(results) == [1, 2, 3, 4]
    assert len(batches) == 4
    assert all(b is batches[0] for b in batches), "one transaction for the four"


def _one(services: Services, actor: str) -> Any:
    async def main() -> Any:
        return await services.committer.submit_async(NewEvent("test.event", actor), "inputs")

    return asyncio.run(main())


def test_the_last_statement_carries_the_commit_and_a_failing_one_commits_nothing(
    services: Services,
) -> None:
    """The batch's rows and ``COMMIT`` go together (PostgreSQL: one pipeline). When that
    statement fails (a row that already exists), nothing of the batch is written — neither
    its events nor the job's rows — every item fails closed, and the next batch writes after
    the same head."""
    first = _one(services, "event:before")
    before = _events(services)

    def clashing(s: Session) -> Chain:
        # A decision input for a seq that already has one: the batch's one INSERT fails.
        return Chain([NewEvent("test.job", "job:x")], lambda evs: evs[0].seq,
                     rows=[(DecisionInputRow.__table__, (first.seq, "again"))])  # fmt: skip

    async def main() -> list[Any]:
        committer = services.committer
        # Both queued before the writer gathers its batch (it waits for its writing turn):
        # else, on a busy machine, it may take the event alone before the job comes.
        with committer._writing:
            futures = [committer.submit_async(NewEvent("test.event", "event:x"), "inputs"),
                       committer.run_async(clashing)]  # fmt: skip
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, LedgerUnavailable) for r in results), results
    assert _events(services) == before
    with services.db.read() as s:
        stored = s.get(DecisionInputRow, first.seq)
        assert stored is not None
        assert stored.request == "inputs"
    after = _one(services, "event:after")
    assert after.seq == first.seq + 1
    assert services.audit.verify(SYSTEM).ok


def test_a_jobs_orm_changes_commit_with_the_batch(services: Services) -> None:
    """A job that leaves rows for the session to flush: the batch's statement does not carry
    the COMMIT then, and the job's rows and the events commit together."""

    def adding(s: Session) -> Chain:
        s.add(DecisionInputRow(seq=10**12, request="orm"))  # flushed at the commit
        return Chain([NewEvent("test.job", "job:orm")], lambda evs: evs[0].seq)

    async def main() -> Any:
        return await services.committer.run_async(adding)

    seq = asyncio.run(main())
    with services.db.read() as s:
        assert s.get(DecisionInputRow, 10**12) is not None
        assert s.scalar(select(EventRow.actor).where(EventRow.seq == seq)) == "job:orm"


def test_the_writer_keeps_its_connection_and_recovers_when_it_is_lost(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group commit's connection is kept between batches; when the database drops it,
    the batch that finds out fails closed and the next one writes on a new connection."""
    monkeypatch.setattr(engine, "_PING_AFTER_IDLE_SECONDS", 3600.0)  # never idle here
    _one(services, "event:1")
    pinned = services.committer._pinned
    assert pinned is not None
    conn = pinned._conn
    _one(services, "event:2")
    assert pinned._conn is conn  # kept
    if services.db.dialect == "postgresql":
        assert conn is not None
        pid = conn.connection.driver_connection.info.backend_pid
        with services.db.read() as s:
            s.execute(select(func.pg_terminate_backend(pid)))
        with pytest.raises(LedgerUnavailable):
            _one(services, "event:lost")
        assert pinned._conn is None  # given back to the pool (which discards it)
    after = _one(services, "event:3")
    assert pinned._conn is not None
    assert [actor for _, _, actor in _events(services)[-3:]] == ["event:1", "event:2", "event:3"]
    assert after.seq == _events(services)[-1][0]
    assert services.audit.verify(SYSTEM).ok


def _traced(services: Services, actor: str, trace: Any) -> tuple[list[str], str]:
    """One event committed while libpq traces the writer's connection: the kinds of the
    messages it sent, and the whole trace."""
    pinned = services.committer._pinned
    assert pinned is not None
    assert pinned._conn is not None
    pgconn = pinned._conn.connection.driver_connection.pgconn
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        try:
            _one(services, actor)
        finally:
            pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    return [fields[3] for fields in sent if len(fields) > 3 and fields[1] == "F"], trace.read_text()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_postgresql_commit_is_two_round_trips_then_one_while_nobody_else_appends(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """On PostgreSQL a group commit that must read the ledger's head is two waits for the
    server (libpq's own trace of the writer's connection): ``BEGIN``, the write lock and the
    head in one query; the rows and ``COMMIT`` in one pipeline, one ``Sync``. Once a batch
    found the head this writer had left (nobody else appended), the next is built on the
    head it left and is one wait: ``BEGIN``, the lock, the head's guard, the rows and
    ``COMMIT`` in one pipeline."""
    monkeypatch.setattr(engine, "_PING_AFTER_IDLE_SECONDS", 3600.0)
    _one(services, "event:warm")
    with services.db.write() as s:  # another writer appends: the head is read again
        services.ledger.append(s, [NewEvent("test.event", "other")], now=services.clock.now())
    kinds, text = _traced(services, "event:read", tmp_path / "read.trace")
    waits = [kind for kind in kinds if kind in ("Query", "Sync")]
    assert waits == ["Query", "Sync"], kinds
    assert kinds.count("Execute") == 2  # the rows' INSERT, then COMMIT
    assert "BEGIN; SELECT pg_advisory_xact_lock" in text
    _one(services, "event:mine")  # reads the head this writer left: the next is guessed
    kinds, text = _traced(services, "event:guessed", tmp_path / "guessed.trace")
    waits = [kind for kind in kinds if kind in ("Query", "Sync")]
    assert waits == ["Sync"], kinds
    assert kinds.count("Execute") == 5  # BEGIN, the lock, the guard, the INSERT, COMMIT
    assert "pg_advisory_xact_lock" in text
    assert "AS head WHERE seq = $1 AND hash = $2" in text
    assert [actor for _, _, actor in _events(services)[-5:]] == [
        "event:warm", "other", "event:read", "event:mine", "event:guessed"]  # fmt: skip
    assert services.audit.verify(SYSTEM).ok


def _appended(kind: str) -> float:
    return REGISTRY.get_sample_value("tether_ledger_events_appended_total", {"type": kind}) or 0.0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_guessed_head_that_another_writer_moved_writes_nothing_and_the_batch_goes_after_it(
    services: Services,
) -> None:
    """Two writers (two workers' group committers) on one ledger. One that appended twice in
    a row builds its next batch on the head it left; when the other appended meanwhile, the
    guard fails under the write lock, that write is rolled back with nothing written, and
    the batch is written after the other's events: one chain, no gap, no fork, every event
    once, counted once."""
    other = group.GroupCommitter(services.db, services.ledger, services.clock)
    guarded: list[str] = []
    real = engine.PinnedWriter.raw_guarded

    @contextlib.contextmanager
    def counting(self: engine.PinnedWriter, guard: str, params: Any) -> Iterator[Any]:
        try:
            with real(self, guard, params) as tx:
                yield tx
        except engine.GuardFailed:
            guarded.append("failed")
            raise
        guarded.append("held")

    counted_before = _appended("test.event")
    try:
        engine.PinnedWriter.raw_guarded = counting  # type: ignore[method-assign]
        _one(services, "mine:1")
        _one(services, "mine:2")  # read the head it left: the next is guessed
        assert guarded == []
        _one(services, "mine:3")
        assert guarded == ["held"]

        async def theirs() -> Any:
            return await other.submit_async(NewEvent("test.event", "theirs:1"), None)

        asyncio.run(theirs())
        assert guarded == ["held"]  # the other writer read the head: not its own
        before = _events(services)
        last = _one(services, "mine:4")
        assert guarded == ["held", "failed"]
        _one(services, "mine:5")  # the head it read was the other's: read again
        assert guarded == ["held", "failed"]
        _one(services, "mine:6")
        assert guarded == ["held", "failed", "held"]
    finally:
        engine.PinnedWriter.raw_guarded = real  # type: ignore[method-assign]
        other.close()
    events = _events(services)
    assert events[: len(before)] == before
    assert last.seq == before[-1][0] + 1
    actors = [actor for _, _, actor in events if actor.startswith(("mine:", "theirs:"))]
    assert actors == ["mine:1", "mine:2", "mine:3", "theirs:1", "mine:4", "mine:5", "mine:6"]
    seqs = [seq for seq, _, _ in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert _appended("test.event") - counted_before == 7
    with services.db.read() as s:  # the failed write's decision inputs went nowhere either
        assert s.scalar(select(func.count()).select_from(DecisionInputRow)) == sum(
            1 for a in actors if a.startswith("mine:"))  # fmt: skip
    assert services.audit.verify(SYSTEM).ok


def test_plain_events_fail_closed_together_when_their_statement_fails(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of plain events (written on the driver, without a session): when its one
    statement fails, none of them is written, every caller fails closed, and the next batch
    follows the same head."""
    first = _one(services, "event:before")
    before = _events(services)
    clash = (DecisionInputRow.__table__, [(first.seq, "again")])
    monkeypatch.setattr(services.committer, "attach", lambda _attached: clash)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(services.committer.submit_async(NewEvent("test.event", f"event:{i}"), "x")
              for i in range(3)),
            return_exceptions=True,
        )  # fmt: skip

    assert all(isinstance(r, LedgerUnavailable) for r in asyncio.run(main()))
    assert _events(services) == before
    monkeypatch.undo()
    assert _one(services, "event:after").seq == first.seq + 1
    assert services.audit.verify(SYSTEM).ok


def test_plain_events_sign_and_publish_their_checkpoints(services: Services) -> None:
    """Every N events a checkpoint is signed at the batch that reaches it — written in the
    same statement as the events and handed to the publish sinks only after the commit."""
    ledger = services.ledger
    ledger.checkpoint_every_events = 3
    published: list[int] = []
    ledger.publish.append(lambda cp: published.append(cp.size))
    heads = [_one(services, f"event:{i}").seq for i in range(7)]
    with services.db.read() as s:
        signed = [cp.size for cp in services.ledger.store.checkpoints(s)]
    crossed = [seq for seq in heads if seq % 3 == 0]
    assert crossed
    assert set(crossed) <= set(signed)
    assert published == crossed
    assert services.audit.verify(SYSTEM).ok


def test_a_job_queued_while_plain_events_await_the_lock_goes_in_the_next_batch(
    services: Services,
) -> None:
    """Plain events and a job queued while the events' batch waits for the write lock: the
    events before it are written together without a session; the job, and what queued
    behind it, in the next transaction."""
    committer = services.committer
    release, holder = _write_lock_held(services)
    sessions: list[Session] = []

    def job(s: Session) -> Chain:
        sessions.append(s)
        return Chain([NewEvent("test.job", "job:after")], lambda evs: evs[0].seq)

    async def main() -> list[Any]:
        first = committer.submit_async(NewEvent("test.event", "event:0"))
        while not committer._queue.empty():  # taken: its batch waits for the lock
            await asyncio.sleep(0.01)
        rest = [committer.submit_async(NewEvent("test.event", "event:1")),
                committer.run_async(job),
                committer.submit_async(NewEvent("test.event", "event:2"))]  # fmt: skip
        release.set()
        return [await first, *[await r for r in rest]]

    e0, e1, job_seq, e2 = asyncio.run(main())
    holder.join(10)
    assert len(sessions) == 1
    assert (e0.seq, e1.seq) == (e1.seq - 1, e0.seq + 1)
    # event:2 queued behind the job: in the job's batch, after its chain
    assert e1.seq < job_seq < e2.seq
    assert services.audit.verify(SYSTEM).ok


def test_a_chain_built_beforehand_is_appended_with_plain_events_without_a_session(
    services: Services,
) -> None:
    """``append_async``: a chain that needs no session (the gateway's call record) goes in
    the batch of plain events — its events first, its rows (built once chained) and the
    events' inputs in the same statement — and no session transaction is opened."""
    opened: list[object] = []
    transaction = services.db._transaction

    def counted(*args: Any, **options: Any) -> Any:
        opened.append(args)
        return transaction(*args, **options)

    services.db._transaction = counted  # type: ignore[method-assign]

    def rows_of(chained: list[Any]) -> list[tuple[Any, tuple[Any, ...]]]:
        return [(DecisionInputRow.__table__, (chained[0].seq + 10**12, "rows_of"))]

    chain = Chain([NewEvent("test.job", "chain:a"), NewEvent("test.job", "chain:b")],
                  finish=lambda evs: [e.seq for e in evs], attachment="first's",
                  rows_of=rows_of)  # fmt: skip

    async def main() -> list[Any]:
        return await asyncio.gather(
            services.committer.submit_async(NewEvent("test.event", "event:1"), "plain's"),
            services.committer.append_async(chain),
        )

    plain, seqs = asyncio.run(main())
    assert opened == []
    assert len(seqs) == 2
    assert seqs[1] == seqs[0] + 1
    with services.db.read() as s:
        assert s.get(DecisionInputRow, seqs[0] + 10**12).request == "rows_of"  # type: ignore[union-attr]
        assert s.get(DecisionInputRow, seqs[0]).request == "first's"  # type: ignore[union-attr]
        assert s.get(DecisionInputRow, seqs[1]) is None
        assert s.get(DecisionInputRow, plain.seq).request == "plain's"  # type: ignore[union-attr]
    actors = {seq: actor for seq, _, actor in _events(services)}
    assert (actors[seqs[0]], actors[seqs[1]], actors[plain.seq]) == ("chain:a", "chain:b",
                                                                     "event:1")  # fmt: skip
    assert services.audit.verify(SYSTEM).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_connection_dropped_while_the_writer_was_idle_is_replaced_before_a_batch(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops the writer's kept connection while no decision comes (a restart,
    an idle timeout): the next batch pings it first and writes on a new one — no caller is
    failed for it."""
    monkeypatch.setattr(engine, "_PING_AFTER_IDLE_SECONDS", 0.05)
    _one(services, "event:1")
    pinned = services.committer._pinned
    assert pinned is not None
    assert pinned._conn is not None
    pid = pinned._conn.connection.driver_connection.info.backend_pid
    with services.db.read() as s:
        s.execute(select(func.pg_terminate_backend(pid)))
    time.sleep(0.2)
    after = _one(services, "event:2")  # not LedgerUnavailable
    assert pinned._conn is not None
    assert pinned._conn.connection.driver_connection.info.backend_pid != pid
    assert after.seq == _events(services)[-1][0]
    assert services.audit.verify(SYSTEM).ok


def _written_on(services: Services, actor: str) -> tuple[int, int]:
    """A chain appended from an event loop: the thread its events were chained on, and the
    loop's own thread."""

    async def main() -> tuple[int, int]:
        chain = Chain([NewEvent("test.event", actor)],
                      finish=lambda _evs: threading.get_ident())  # fmt: skip
        return await services.committer.append_async(chain), threading.get_ident()

    return asyncio.run(main())


def _writer_idle(committer: group.GroupCommitter) -> None:
    deadline = time.monotonic() + 10
    while not committer._writing.acquire(timeout=0.01):
        assert time.monotonic() < deadline, "the writer thread never went idle"
    committer._writing.release()


def test_a_lone_request_commits_on_its_event_loop_and_a_busy_one_queues(
    services: Services,
) -> None:
    """With nothing else in flight (``inline_when``) and the write lock free, an event is
    written on the event loop's own thread — durable before its answer, on the writer's
    connection, the chain intact; with other requests in flight, it goes to the writer
    thread as before."""
    committer = services.committer
    _one(services, "event:start")  # the writer thread and its connection are up
    if not committer._pinned.can_skip_the_wait:  # type: ignore[union-attr]
        committer.inline_when = lambda: True
        on, loop = _written_on(services, "event:postgresql")
        assert on != loop, "PostgreSQL, the head not guessed yet: queued"
        return
    committer.inline_when = lambda: False
    on, loop = _written_on(services, "event:busy")
    assert on != loop
    _writer_idle(committer)  # it settles a batch a moment before it lets go of it
    committer.inline_when = lambda: True
    on, loop = _written_on(services, "event:alone")
    assert on == loop
    actors = [actor for _, _, actor in _events(services)]
    assert actors[-2:] == ["event:busy", "event:alone"]
    assert services.audit.verify(SYSTEM).ok


def test_a_lone_request_never_waits_on_another_writer_from_its_event_loop(
    services: Services,
) -> None:
    """The write lock held by another writer (another worker's batch, a CLI): the lone
    request's event queues for the writer thread instead of blocking the event loop, and is
    written once the lock is free."""
    committer = services.committer
    _one(services, "event:start")
    _writer_idle(committer)
    committer.inline_when = lambda: True
    release, holder = _write_lock_held(services)
    ticks: list[float] = []

    async def main() -> tuple[int, int]:
        async def tick() -> None:  # the loop stays free while the event waits for the lock
            for _ in range(5):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)
            release.set()

        ticker = asyncio.create_task(tick())
        chain = Chain([NewEvent("test.event", "event:waited")],
                      finish=lambda _evs: threading.get_ident())  # fmt: skip
        on = await committer.append_async(chain)
        await ticker
        return on, threading.get_ident()

    on, loop = asyncio.run(main())
    holder.join(10)
    assert on != loop
    assert len(ticks) == 5
    assert [actor for _, _, actor in _events(services)][-1] == "event:waited"


def test_a_lone_request_whose_commit_fails_fails_closed_and_writes_nothing(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written on the event loop, a failing statement fails the caller closed (the ledger
    unavailable), writes nothing, and the next event follows the same head."""
    first = _one(services, "event:before")
    before = _events(services)
    _writer_idle(services.committer)
    services.committer.inline_when = lambda: True
    clash = (DecisionInputRow.__table__, [(first.seq, "again")])
    monkeypatch.setattr(services.committer, "attach", lambda _attached: clash)
    with pytest.raises(LedgerUnavailable):
        _one(services, "event:clash")
    assert _events(services) == before
    monkeypatch.undo()
    assert _one(services, "event:after").seq == first.seq + 1
    assert services.audit.verify(SYSTEM).ok


async def _guessed_on_the_loop(committer: group.GroupCommitter) -> None:
    """Lone events until the next is written from this event loop (PostgreSQL): the head
    guessed, the loop's connection open, the writer thread idle."""
    assert committer._on_loop is not None
    loop = asyncio.get_running_loop()
    for i in range(100):
        await committer.submit_async(NewEvent("test.event", f"warm:{i}"), None)
        await asyncio.sleep(0.01)
        if committer._guess is not None and committer._on_loop.ready(loop):
            return
    raise AssertionError("the head was never guessed, or the loop's connection never opened")


def _chain_noting_threads(actor: str, threads: list[int]) -> Chain:
    def finish(_events: list[Any]) -> int:
        threads.append(threading.get_ident())
        return threading.get_ident()

    return Chain([NewEvent("test.event", actor)], finish=finish)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_lone_request_on_postgresql_commits_from_its_event_loop_without_blocking_it(
    services: Services,
) -> None:
    """PostgreSQL, nothing else in flight, the head guessed: the event is written from the
    request's own event loop on a connection of its own (no thread woken), durable
    before its answer. While another writer holds the write lock, the loop keeps running and
    the event is written once the lock is free — still from the loop."""
    committer = services.committer
    committer.inline_when = lambda: True
    threads: list[int] = []
    ticks: list[float] = []

    async def main() -> tuple[int, int, int]:
        await _guessed_on_the_loop(committer)
        first = await committer.append_async(_chain_noting_threads("lone:1", threads))
        release, holder = _write_lock_held(services)

        async def tick() -> None:
            for _ in range(5):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)
            release.set()

        ticker = asyncio.create_task(tick())
        waited = await committer.append_async(_chain_noting_threads("lone:waited", threads))
        await ticker
        holder.join(10)
        return first, waited, threading.get_ident()

    first, waited, loop = asyncio.run(main())
    assert first == loop
    assert waited == loop
    prepared = committer._on_loop._prepared  # type: ignore[union-attr]
    assert any(sql.startswith(b"SELECT 1 / count(*)") for sql in prepared)  # the guard
    assert any(sql.startswith(b"INSERT INTO audit_events") for sql in prepared)
    assert threads == [loop, loop]  # each built once: no guard failed
    assert len(ticks) == 5  # the loop ran while the event waited for the lock
    actors = [actor for _, _, actor in _events(services)]
    assert actors[-2:] == ["lone:1", "lone:waited"]
    seqs = [seq for seq, _, _ in _events(services)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert services.audit.verify(SYSTEM).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_lone_request_on_postgresql_after_another_writers_append_goes_to_the_writer_thread(
    services: Services,
) -> None:
    """Another writer appended after the head the loop guessed: the loop's write is rolled
    back by its guard under the lock, nothing written, and the writer thread reads the head
    and writes the event after the other's — one chain, the event once."""
    committer = services.committer
    committer.inline_when = lambda: True
    threads: list[int] = []

    async def main() -> tuple[int, int]:
        await _guessed_on_the_loop(committer)
        with services.db.write() as s:
            services.ledger.append(s, [NewEvent("test.event", "other")],
                                   now=services.clock.now())  # fmt: skip
        on = await committer.append_async(_chain_noting_threads("lone:after", threads))
        return on, threading.get_ident()

    on, loop = asyncio.run(main())
    assert threads == [loop, on]  # built on the guess, then again by the writer thread
    assert on != loop
    actors = [actor for _, _, actor in _events(services)]
    assert actors[-2:] == ["other", "lone:after"]
    assert actors.count("lone:after") == 1
    assert services.audit.verify(SYSTEM).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_lone_request_on_postgresql_whose_commit_fails_fails_closed_and_writes_nothing(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written from the event loop, a failing statement fails the caller closed, writes
    nothing (rolled back, the guess forgotten), and the next event follows the same head."""
    committer = services.committer
    committer.inline_when = lambda: True
    first = _one(services, "event:before")

    tried: list[str] = []

    async def main() -> tuple[BaseException | None, list[Any]]:
        await _guessed_on_the_loop(committer)
        on_loop = committer._on_loop
        assert on_loop is not None
        write = on_loop.write_guarded

        def noted(*args: Any) -> None:
            *sent, done = args

            def seen(failure: BaseException | None) -> None:
                tried.append("failed" if failure is not None else "written")
                done(failure)

            write(*sent, seen)

        monkeypatch.setattr(on_loop, "write_guarded", noted)
        before = _events(services)
        clash = (DecisionInputRow.__table__, [(first.seq, "again")])
        monkeypatch.setattr(committer, "attach", lambda _attached: clash)
        failed: BaseException | None = None
        try:
            await committer.submit_async(NewEvent("test.event", "event:clash"), "x")
        except LedgerUnavailable as exc:
            failed = exc
        assert _events(services) == before
        assert committer._guess is None
        assert tried == ["failed"]  # on the loop's connection, which is kept (rolled back)
        assert committer._on_loop is not None
        assert committer._on_loop._conn is not None
        assert committer._on_loop._prepared == {}  # deallocated with the rollback
        monkeypatch.undo()
        after = await committer.submit_async(NewEvent("test.event", "event:after"), "y")
        return failed, [before[-1][0], after.seq]

    failed, (head, after) = asyncio.run(main())
    assert isinstance(failed, LedgerUnavailable)
    assert after == head + 1
    assert services.audit.verify(SYSTEM).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_loops_connection_dropped_while_idle_is_replaced_in_the_background(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops the event loop's connection while no request comes (a restart, an
    idle timeout): the next lone event goes to the writer thread (which pings its own first)
    while the loop's connection opens again in the background — no caller is failed for it,
    and the loop writes again once it is open."""
    committer = services.committer
    committer.inline_when = lambda: True
    threads: list[int] = []

    async def main() -> tuple[int, int, int, int]:
        await _guessed_on_the_loop(committer)
        on_loop = committer._on_loop
        assert on_loop is not None
        pid = on_loop._conn.info.backend_pid
        with services.db.read() as s:
            s.execute(select(func.pg_terminate_backend(pid)))
        monkeypatch.setattr(engine, "_PING_AFTER_IDLE_SECONDS", 0.05)
        await asyncio.sleep(0.2)
        after = await committer.append_async(_chain_noting_threads("after:drop", threads))
        monkeypatch.undo()
        await _guessed_on_the_loop(committer)
        again = await committer.append_async(_chain_noting_threads("again", threads))
        return pid, on_loop._conn.info.backend_pid, after, again

    old, new, after, again = asyncio.run(main())
    assert new != old
    assert after != threading.get_ident()  # not failed: written by the writer thread
    assert again == threading.get_ident()  # from the loop again, on its new connection
    assert [actor for _, _, actor in _events(services)][-1] == "again"
    assert "after:drop" in [actor for _, _, actor in _events(services)]
    assert services.audit.verify(SYSTEM).ok


async def _failure_then_release(
    waiting: asyncio.Future[Any], release: threading.Event, holder: threading.Thread
) -> LedgerUnavailable | None:
    """How ``waiting`` failed closed (None if it did not), then the other writer's lock
    released (:func:`_write_lock_held`)."""
    failed: LedgerUnavailable | None = None
    try:
        await asyncio.wait_for(waiting, 10)
    except LedgerUnavailable as exc:
        failed = exc
    release.set()
    holder.join(10)
    return failed


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_loops_connection_lost_mid_write_fails_that_write_closed_and_writes_nothing(
    services: Services,
) -> None:
    """The event loop's connection is lost while its write waits (for another writer's lock):
    that caller fails closed with nothing written, the loop is not blocked, and the next
    events are written after the same head, the chain whole."""
    committer = services.committer
    committer.inline_when = lambda: True

    async def main() -> tuple[BaseException | None, int]:
        await _guessed_on_the_loop(committer)
        on_loop = committer._on_loop
        assert on_loop is not None
        pid = on_loop._conn.info.backend_pid
        before = _events(services)
        release, holder = _write_lock_held(services)
        waiting = committer.submit_async(NewEvent("test.event", "lost:mid-write"), None)
        await asyncio.sleep(0.1)
        assert not waiting.done()  # waits for the lock, the loop running meanwhile
        with services.db.read() as s:
            s.execute(select(func.pg_terminate_backend(pid)))
        failed = await _failure_then_release(waiting, release, holder)
        assert _events(services) == before
        assert on_loop._conn is None  # closed: opened again in the background
        after = await committer.submit_async(NewEvent("test.event", "after:lost"), None)
        return failed, after.seq - before[-1][0]

    failed, step = asyncio.run(main())
    assert isinstance(failed, LedgerUnavailable)
    assert step == 1
    assert [actor for _, _, actor in _events(services)].count("lost:mid-write") == 0
    assert services.audit.verify(SYSTEM).ok


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_closing_the_loops_connection_mid_write_fails_that_write_and_frees_the_writer(
    services: Services,
) -> None:
    """Closed with a write under way (the committer shut down while the database has not
    answered): the caller fails closed, and the writing turn is given back — the writer
    thread is not left waiting for it."""
    committer = services.committer
    committer.inline_when = lambda: True

    async def main() -> BaseException | None:
        await _guessed_on_the_loop(committer)
        on_loop = committer._on_loop
        assert on_loop is not None
        release, holder = _write_lock_held(services)
        waiting = committer.submit_async(NewEvent("test.event", "closed:mid-write"), None)
        await asyncio.sleep(0.1)
        on_loop.close()
        return await _failure_then_release(waiting, release, holder)

    assert isinstance(asyncio.run(main()), LedgerUnavailable)
    assert committer._writing.acquire(timeout=5)
    committer._writing.release()
    queued = committer.run(lambda _s: "the writer thread still writes", timeout=10)
    assert queued == "the writer thread still writes"
