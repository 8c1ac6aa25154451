"""One durable group commit, one at a time: what an answer waits for on the write path.

Per backend, a bootstrapped deployment (fresh SQLite file on a real disk, or a fresh
PostgreSQL schema) and its real :class:`~tether.audit.group.GroupCommitter`, driven from an
event loop as the server drives it: a decision-like event with its inputs
(``submit_async``), awaited before the next one; and a gateway-like call record (a chain
built beforehand, with a row that names its event: ``append_async``); each again as the only
request in flight (``inline_when``: on SQLite written on the event loop itself; on PostgreSQL
by a task of the event loop on its own async connection, once the head is guessed — the
bench is the only writer, so after the first batches every commit is on a guessed head, in
one round trip, queued or not). Beside them, in the same run and alternating blocks, the raw
driver's floor for the same durable write on a table of the same shape: SQLite ``BEGIN
IMMEDIATE``, the head read, ``INSERT``, ``COMMIT`` (WAL, ``synchronous=FULL``); PostgreSQL
``BEGIN`` + advisory lock + head in one simple query, then ``INSERT`` + ``COMMIT`` in one
pipeline (two round trips, ``synchronous_commit=on``), and the guarded write in one round
trip (``BEGIN``, the lock, a guard on the head, ``INSERT``, ``COMMIT`` in one pipeline).

Printed: p50 / p90 latency per commit and the CPU of this process per commit (user + system:
the fsync's kernel time counts).

Run: ``python -m bench.commit [--quick] [--postgres URL] [--no-sqlite]``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.common import (
    SQLITE,
    Env,
    ResultTable,
    fmt_latency,
    note,
    open_env,
    parse_options,
    percentile,
    raw_postgres,
    raw_sqlite,
    run_each_backend,
)
from tether.audit.events import NewEvent
from tether.audit.group import Chain
from tether.policy.models import DecisionInputRow

_DETAILS = {"request_digest": "a" * 64, "risk": 0, "effect": "allow", "latency_us": 25,
            "policies": ["p1", "p2"], "context": {"args": {"amount": 5}}}  # fmt: skip
_RESOURCE = {"type": "Tool", "id": "payments.get_balance",
             "properties": {"server": "payments", "tool": "get_balance"}}  # fmt: skip
_ROW = "x" * 700  # about a decision event's stored size


def _event(i: int) -> NewEvent:
    return NewEvent("decision.made", "agent:bench", agent_id="agt_bench", action="tool.call",
                    resource=_RESOURCE, decision="allow", reasons=("policy:p1",),
                    policy_version="v1", details={**_DETAILS, "n": i})  # fmt: skip


def _timed(run: Callable[[int], Any], n: int) -> tuple[list[float], float]:
    """``n`` calls of ``run``: each one's latency, and this process's CPU per call."""
    samples: list[float] = []
    t0 = os.times()
    for i in range(n):
        start = time.perf_counter()
        run(i)
        samples.append(time.perf_counter() - start)
    t1 = os.times()
    return samples, ((t1.user - t0.user) + (t1.system - t0.system)) / max(1, n)


def _raw_floor(env: Env) -> Callable[[int], None]:
    """The same durable write on the driver alone (a table of the ledger's head columns)."""
    if env.backend == SQLITE:
        conn = raw_sqlite(env.sqlite_path)
        conn.execute("CREATE TABLE IF NOT EXISTS floor (seq INTEGER PRIMARY KEY, hash TEXT, "
                     "time INTEGER, body TEXT)")  # fmt: skip

        def sqlite_commit(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            head = conn.execute("SELECT seq FROM floor ORDER BY seq DESC LIMIT 1").fetchone()
            conn.execute("INSERT INTO floor VALUES (?, ?, ?, ?)",
                         ((head[0] if head else 0) + 1, "h" * 64, i, _ROW))  # fmt: skip
            conn.execute("COMMIT")

        return sqlite_commit
    assert env.schema is not None
    pg = raw_postgres(env.url, env.schema, autocommit=True)
    pg.execute("CREATE TABLE IF NOT EXISTS floor (seq bigint PRIMARY KEY, hash text, "
               "time bigint, body text)")  # fmt: skip

    def postgres_commit(i: int) -> None:
        cur = pg.cursor()
        cur.execute("BEGIN; SELECT pg_advisory_xact_lock(1); "
                    "SELECT seq FROM floor ORDER BY seq DESC LIMIT 1")  # fmt: skip
        while cur.nextset():
            pass
        head = cur.fetchone()
        with pg.pipeline():
            cur.execute("INSERT INTO floor VALUES (%s, %s, %s, %s)",
                        ((head[0] if head else 0) + 1, "h" * 64, i, _ROW))  # fmt: skip
            cur.execute("COMMIT")

    return postgres_commit


def _raw_floor_guarded(env: Env) -> Callable[[int], None]:
    """PostgreSQL: the same durable write in one round trip, as a writer that knows the head
    sends it — ``BEGIN``, the advisory lock, a guard on the head, ``INSERT``, ``COMMIT`` in
    one pipeline."""
    assert env.schema is not None
    pg = raw_postgres(env.url, env.schema, autocommit=True)
    pg.execute("CREATE TABLE IF NOT EXISTS floor_guarded (seq bigint PRIMARY KEY, hash text, "
               "time bigint, body text)")  # fmt: skip
    head = [0]

    def postgres_commit(i: int) -> None:
        cur = pg.cursor()
        with pg.pipeline():
            cur.execute("BEGIN")
            cur.execute("SELECT pg_advisory_xact_lock(1)")
            cur.execute("SELECT 1 / count(*)::int FROM (SELECT seq FROM floor_guarded ORDER "
                        "BY seq DESC LIMIT 1) AS head WHERE seq = %s", (head[0],))  # fmt: skip
            cur.execute("INSERT INTO floor_guarded VALUES (%s, %s, %s, %s)",
                        (head[0] + 1, "h" * 64, i, _ROW))  # fmt: skip
            cur.execute("COMMIT")
        head[0] += 1

    pg.execute("INSERT INTO floor_guarded VALUES (0, '', 0, '')")
    return postgres_commit


def run_backend(env: Env, n: int, blocks: int) -> ResultTable:
    tag = f"[commit/{env.backend}]"
    committer = env.services.committer
    loop = asyncio.new_event_loop()

    def awaited(make: Callable[[int], Awaitable[Any]]) -> Callable[[int], Any]:
        return lambda i: loop.run_until_complete(make(i))

    async def decision(i: int) -> Any:
        return await committer.submit_async(_event(i), '{"context":{}}')

    def rows_of(chained: list[Any]) -> list[tuple[Any, tuple[Any, ...]]]:
        return [(DecisionInputRow.__table__, (chained[0].seq, "record"))]

    async def record(i: int) -> Any:
        chain = Chain([_event(i)], finish=lambda evs: evs[0].seq, rows_of=rows_of)
        return await committer.append_async(chain)

    def alone(run: Callable[[int], Any]) -> Callable[[int], Any]:
        """``run`` as the only request in flight: written on the event loop if it can be."""

        def inline(i: int) -> Any:
            committer.inline_when = lambda: True
            try:
                return run(i)
            finally:
                committer.inline_when = None

        return inline

    cases: list[tuple[str, Callable[[int], Any]]] = [
        ("group commit: a decision event + its inputs (submit_async)", awaited(decision)),
        ("group commit: a call record, chain built beforehand (append_async)", awaited(record)),
        ("the same decision event, the only request in flight", alone(awaited(decision))),
        ("the same call record, the only request in flight", alone(awaited(record))),
        ("raw driver floor: the same durable write", _raw_floor(env)),
    ]
    if env.backend != SQLITE:
        cases.append(("raw driver floor, one round trip (a guarded write)",
                      _raw_floor_guarded(env)))  # fmt: skip
    for _, run in cases:  # warm: connections, statements, caches
        for i in range(50):
            run(10**6 + i)
    note(f"{tag} {n:,} sequential commits per row, in {blocks} alternating blocks")
    got: dict[str, tuple[list[float], float]] = {label: ([], 0.0) for label, _ in cases}
    per = n // blocks
    for b in range(blocks):
        for label, run in cases if b % 2 == 0 else cases[::-1]:
            samples, cpu = _timed(lambda i, run=run, b=b: run(2 * 10**6 + b * per + i), per)
            got[label] = (got[label][0] + samples, got[label][1] + cpu / blocks)
    loop.close()
    table = ResultTable(
        f"One durable commit at a time on {env.backend} (lower is better)",
        ["commit", "p50", "p90", "CPU per commit"],
    )
    for label, (samples, cpu) in got.items():
        table.rows.append([label, fmt_latency(percentile(samples, 50)),
                           fmt_latency(percentile(samples, 90)), fmt_latency(cpu)])  # fmt: skip
        table.records.append({"benchmark": label, "backend": env.backend,
                              "p50_s": percentile(samples, 50),
                              "p90_s": percentile(samples, 90), "cpu_s": cpu})  # fmt: skip
    table.footnotes.append(
        "Each commit awaited before the next (the group commit's batch is one item: the "
        "sequential path's cost). CPU: this process's user + system time per commit (the "
        "writer thread's and the event loop's; the fsync's kernel time counts)."
    )
    return table


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options("python -m bench.commit", "One durable group commit at a time", argv)
    n, blocks = (600, 4) if options.quick else (4000, 8)

    def run(backend: str) -> ResultTable:
        with open_env(options, backend, "commit") as env:
            return run_backend(env, n, blocks)

    run_each_backend(options, run)


if __name__ == "__main__":
    main()
