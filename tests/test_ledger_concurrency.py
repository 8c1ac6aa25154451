"""Many writers at once — threads in one process, and separate processes each with its own
services over the same database — still produce one unbroken chain with contiguous seqs.

Spawned workers import this module, so it stays light: no ``tests.conftest`` (the web app).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.conftest import BOOTSTRAP_EVENTS
from tether.agents.schemas import AgentCreate
from tether.audit.events import NewEvent
from tether.config import Settings
from tether.container import Services, build_services
from tether.principals import SYSTEM

THREADS = 8
OPS_PER_THREAD = 20  # alternately create an agent and suspend it: 10 of each
PROCESSES = 3
CREATES_PER_PROCESS = 10
CHECKPOINT_EVERY = 7


def _spec(name: str) -> AgentCreate:
    return AgentCreate.model_validate(
        {"name": name, "owner": "admin", "purpose": "concurrency", "risk_tier": "minimal"}
    )


def _assert_one_chain(services: Services, expected_events: int) -> None:
    with services.db.read() as s:
        rows = s.execute(text("SELECT seq, id, hash FROM audit_events ORDER BY seq")).all()
        sizes = [r[0] for r in s.execute(text("SELECT size FROM audit_checkpoints"))]
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, expected_events + 1))  # contiguous, no gaps, no duplicates
    assert len({r[1] for r in rows}) == expected_events
    assert len({r[2] for r in rows}) == expected_events
    result = services.audit.verify(SYSTEM)
    assert result.ok, result.to_json()
    assert result.checked == expected_events
    assert result.checkpoints_checked == len(sizes)
    # Exactly one checkpoint per N events, however the writers interleaved.
    assert sorted(sizes) == list(range(CHECKPOINT_EVERY, expected_events + 1, CHECKPOINT_EVERY))


def test_threads_writing_at_once_keep_one_chain(make_services: Callable[..., Services]) -> None:
    services = make_services(checkpoint_every_events=CHECKPOINT_EVERY)
    start = threading.Barrier(THREADS)

    def work(worker: int) -> list[str]:
        start.wait(timeout=30)
        made: list[str] = []
        for i in range(OPS_PER_THREAD // 2):
            agent = services.agents.create(SYSTEM, _spec(f"t{worker}-{i}"))
            services.agents.suspend(SYSTEM, agent.id, reason=f"worker {worker}")
            made.append(agent.id)
        return made

    with ThreadPoolExecutor(THREADS) as pool:
        made = [agent_id for ids in pool.map(work, range(THREADS)) for agent_id in ids]
    assert len(set(made)) == THREADS * OPS_PER_THREAD // 2
    _assert_one_chain(services, BOOTSTRAP_EVENTS + THREADS * OPS_PER_THREAD)
    with services.db.read() as s:
        statuses = s.execute(text("SELECT status, count(*) FROM agents GROUP BY status")).all()
    assert [tuple(r) for r in statuses] == [("suspended", len(made))]


def _append_from_another_process(settings: dict[str, Any], worker: int, start: Any) -> None:
    """Runs in a spawned process: its own services, engine and connection pool."""
    services = build_services(Settings(**settings))
    try:
        start.wait(timeout=60)
        for i in range(CREATES_PER_PROCESS):
            services.agents.create(SYSTEM, _spec(f"p{worker}-{i}"))
    finally:
        services.close()


def _shared_settings(services: Services) -> dict[str, Any]:
    """What a spawned process needs to build its own services over the same database."""
    settings = services.settings
    return {
        "data_dir": settings.data_dir,
        "database_url": settings.database_url,
        "database_schema": settings.database_schema,
        "checkpoint_every_events": CHECKPOINT_EVERY,
    }


def test_processes_writing_at_once_keep_one_chain(make_services: Callable[..., Services]) -> None:
    services = make_services(checkpoint_every_events=CHECKPOINT_EVERY)
    shared = _shared_settings(services)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=_append_from_another_process, args=(shared, n, start))
        for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=90)
    assert [p.exitcode for p in workers] == [0] * PROCESSES
    _assert_one_chain(services, BOOTSTRAP_EVENTS + PROCESSES * CREATES_PER_PROCESS)
    with services.db.read() as s:
        names = {r[0] for r in s.execute(text("SELECT name FROM agents"))}
    assert names == {f"p{w}-{i}" for w in range(PROCESSES) for i in range(CREATES_PER_PROCESS)}


def test_event_times_never_run_backwards(services: Services) -> None:
    """A writer that read the clock before it waited for the lock stamps no earlier time."""
    from datetime import timedelta

    from tether.audit.events import NewEvent
    from tether.clock import to_micros
    from tether.principals import SYSTEM

    now = services.clock.now()
    with services.db.write() as s:
        late = services.ledger.append(s, [NewEvent("test.late", SYSTEM.ref)], now=now)
    with services.db.write() as s:
        early = services.ledger.append(
            s, [NewEvent("test.early", SYSTEM.ref)], now=now - timedelta(seconds=5)
        )
    assert early[0].time_us == late[0].time_us == to_micros(now)
    assert services.audit.verify(SYSTEM).ok


EVENTS_PER_PROCESS = 40
SOLO_EVENTS = 10


def _lone_events_from_another_process(
    settings: dict[str, Any], worker: int, start: Any, guessed: Any
) -> None:
    """Runs in a spawned process: a server worker's group committer, each event the only one
    in flight (written from the event loop when the head is guessed), one after another."""
    services = build_services(Settings(**settings))
    committer = services.committer
    committer.inline_when = lambda: True

    async def main(first: int, last: int) -> None:
        for i in range(first, last):
            await committer.submit_async(NewEvent("test.event", f"p{worker}-{i}"), None)
            if i % 5 == 0:
                await asyncio.sleep(0.005)  # lets the loop's connection open, others interleave

    try:
        start.wait(timeout=60)
        asyncio.run(main(0, EVENTS_PER_PROCESS))
        start.wait(timeout=60)
        if worker == 0:  # then alone: its head holds from its third event on
            asyncio.run(main(EVENTS_PER_PROCESS, EVENTS_PER_PROCESS + SOLO_EVENTS))
        held, moved = (
            REGISTRY.get_sample_value("tether_ledger_group_commit_guessed_total", {"head": h})
            or 0.0
            for h in ("held", "moved")
        )
        guessed.put((worker, held, moved))
    finally:
        services.close()


def test_lone_events_from_processes_at_once_keep_one_chain(
    make_services: Callable[..., Services],
) -> None:
    """Processes (server workers) each appending lone events, one after another: on
    PostgreSQL each builds on the head it left whenever nobody else appended, and the others'
    appends move it — one chain still, contiguous, every event once, one checkpoint per N."""
    services = make_services(checkpoint_every_events=CHECKPOINT_EVERY)
    shared = _shared_settings(services)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    guessed = context.Queue()
    workers = [
        context.Process(target=_lone_events_from_another_process, args=(shared, n, start, guessed))
        for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    counts = [c[1:] for c in sorted(guessed.get(timeout=120) for _ in workers)]
    for process in workers:
        process.join(timeout=90)
    assert [p.exitcode for p in workers] == [0] * PROCESSES
    _assert_one_chain(services, BOOTSTRAP_EVENTS + PROCESSES * EVENTS_PER_PROCESS + SOLO_EVENTS)
    with services.db.read() as s:
        actors = [r[0] for r in s.execute(text("SELECT actor FROM audit_events ORDER BY seq"))]
    mine = [a for a in actors if a.startswith("p")]
    each = [EVENTS_PER_PROCESS + SOLO_EVENTS] + [EVENTS_PER_PROCESS] * (PROCESSES - 1)
    for w in range(PROCESSES):  # each process's events once, in its order
        assert [a for a in mine if a.startswith(f"p{w}-")] == [
            f"p{w}-{i}" for i in range(each[w])]  # fmt: skip
    assert len(mine) == sum(each)
    if services.db.dialect == "postgresql":
        assert counts[0][0] >= SOLO_EVENTS - 2, counts  # alone, the one-round-trip path held
    else:
        assert counts == [(0.0, 0.0)] * PROCESSES
