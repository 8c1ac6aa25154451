"""The group committer: events and jobs in one durable transaction, failures kept apart."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.audit import group
from tether.audit.events import NewEvent
from tether.audit.group import Chain, LedgerUnavailable
from tether.audit.models import EventRow
from tether.container import Services
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

    def broken_insert(s: Session, inserts: Any) -> None:
        # fails after the job ran and the events were inserted: all of it must roll back
        insert_tables(s, inserts)
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
        return await asyncio.gather(
            services.committer.submit_async(NewEvent("test.event", "event:1")),
            services.committer.run_async(failing),
            services.committer.run_async(chained),
            return_exceptions=True,
        )

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


def test_what_queues_while_the_write_lock_is_awaited_joins_the_batch(services: Services) -> None:
    """A batch is formed, then waits for the deployment-wide write lock (another worker's or
    node's batch holds it); what was queued meanwhile is written in that same transaction once
    the lock is held, not in a transaction of its own after it."""
    committer = services.committer
    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with services.db.write():
            held.set()
            release.wait(10)

    batches: list[object] = []

    def job(s: Session) -> int:
        batches.append(s.info.setdefault("test.batch", object()))
        return len(batches)

    holder = threading.Thread(target=other_writer)
    holder.start()
    assert held.wait(10)
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
