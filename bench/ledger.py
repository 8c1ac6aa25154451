"""Ledger throughput: durable appends (1 and N events per transaction) and end-to-end verify.

Every Tether figure is printed beside a baseline measured in the same run with the plain
driver (``sqlite3`` in WAL with ``synchronous=FULL``, or ``psycopg`` with the default
``synchronous_commit=on``) on a table with the same columns, keys and indexes as
``audit_events`` and rows of the same values:

- append, 1 event/tx: ``Database.write()`` + ``Ledger.append(s, [event])`` per transaction,
  against a raw ``INSERT`` + ``COMMIT`` per row.
- append, 100 events/tx: ``Ledger.append(s, events)`` with a list of 100, against a raw
  ``executemany`` of 100 rows per commit.
- verify: ``AuditService.verify`` over the whole ledger (read, decode, re-hash, check every
  checkpoint signature), against a raw driver scan of the same table in ``seq`` order.
  Two breakdown rows split it into reading+decoding and hashing.

Run: ``python -m bench.ledger [--quick] [--postgres URL] [--events N]``.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from bench.common import (
    SQLITE,
    Env,
    Options,
    Progress,
    ResultTable,
    create_tables,
    fmt_latency,
    fmt_rate,
    fmt_ratio,
    note,
    open_env,
    parse_options,
    percentile,
    pg_schema,
    raw_postgres,
    raw_sqlite,
    write_json,
)
from tether.audit.chain import GENESIS, link, verify_chain
from tether.audit.events import EventType, NewEvent
from tether.audit.models import EventRow
from tether.audit.store import event_row
from tether.clock import to_micros
from tether.ids import IdPrefix, new_id
from tether.tables import metadata


@dataclass(frozen=True)
class Sizes:
    single_tx: int  # transactions of one event
    batched_tx: int  # transactions of `batch` events
    batch: int
    verify_events: int  # the ledger is topped up to this many events before verifying
    max_seconds: float  # a cap on each append measurement (Tether + baseline)


FULL = Sizes(single_tx=2000, batched_tx=300, batch=100, verify_events=100_000, max_seconds=25)
QUICK = Sizes(single_tx=200, batched_tx=20, batch=100, verify_events=5_000, max_seconds=5)
FILL_BATCH = 1000  # events per transaction when topping the ledger up for verify

EVENTS = metadata.tables[EventRow.__tablename__]
COLUMNS = tuple(c.name for c in EVENTS.columns)


# -- the events ------------------------------------------------------------------------------
_AGENTS = [new_id(IdPrefix.AGENT) for _ in range(64)]
_ACTOR = f"user:{new_id(IdPrefix.USER)}"


def sample_event(i: int) -> NewEvent:
    """An event shaped like the ``agent.updated`` events AgentService writes."""
    agent = _AGENTS[i % len(_AGENTS)]
    return NewEvent(
        EventType.AGENT_UPDATED,
        _ACTOR,
        agent_id=agent,
        action=str(EventType.AGENT_UPDATED),
        resource={"type": "Agent", "id": agent},
        outcome="success",
        details={"changes": {"risk_tier": {"from": "limited", "to": "high"}}},
    )


def baseline_rows(count: int) -> list[tuple[Any, ...]]:
    """``count`` chained rows exactly as Tether stores them; built before any timing starts."""
    events = [sample_event(k) for k in range(count)]
    chained = link(events, after_seq=0, prev_hash=GENESIS, time_us=to_micros(datetime.now(UTC)))
    return [tuple(event_row(ev)[name] for name in COLUMNS) for ev in chained]


# -- measurements ------------------------------------------------------------------------------
@dataclass
class Run:
    """``items`` rows/events processed in ``seconds``; per-transaction latencies if any."""

    items: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.nan

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)


def warmup_tx(per_tx: int) -> int:
    """Untimed transactions before each append measurement."""
    return max(3, 20 // per_tx)


def measure_pair(
    tether: Callable[[], None],
    baseline: Callable[[], None],
    *,
    count: int,
    per_tx: int,
    max_seconds: float,
    rounds: int = 10,
) -> tuple[Run, Run]:
    """Time ``count`` calls of each, alternating in ``rounds`` blocks.

    Alternating blocks spreads the machine's noise (other tenants, disk throttling) evenly
    over Tether and its baseline instead of giving each a different slice of time. Stops
    early, after a whole block, once ``max_seconds`` have passed.
    """
    for _ in range(warmup_tx(per_tx)):
        tether()
        baseline()
    runs = (Run(0, 0.0), Run(0, 0.0))
    block = max(1, count // rounds)
    start = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - start < max_seconds:
        n = min(block, count - done)
        for fn, run in zip((tether, baseline), runs, strict=True):
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                run.latencies.append(time.perf_counter() - t0)
        done += n
    for run in runs:
        run.items = len(run.latencies) * per_tx
        run.seconds = sum(run.latencies)
    return runs


def tether_tx(env: Env, per_tx: int) -> Callable[[], None]:
    """One write transaction appending ``per_tx`` events through the Ledger."""
    db, ledger, clock = env.services.db, env.services.ledger, env.services.clock
    events = [sample_event(i) for i in range(per_tx)]

    def tx() -> None:
        with db.write() as s:
            ledger.append(s, events, now=clock.now())

    return tx


class RawEvents(Protocol):
    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None: ...


class SqliteEvents:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        params = ", ".join(["?"] * len(COLUMNS))
        self.sql = f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({params})"

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        if len(rows) == 1:
            self.conn.execute(self.sql, rows[0])
        else:
            self.conn.executemany(self.sql, rows)
        self.conn.execute("COMMIT")


class PostgresEvents:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        params = ", ".join(["%s"] * len(COLUMNS))
        self.sql = f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({params})"

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            if len(rows) == 1:
                cur.execute(self.sql, rows[0])
            else:
                cur.executemany(self.sql, rows)
        self.conn.commit()


@contextmanager
def raw_events_table(env: Env) -> Iterator[RawEvents]:
    """An empty copy of ``audit_events`` in its own SQLite file or PostgreSQL schema."""
    if env.backend == SQLITE:
        path = env.data_dir / "baseline.db"
        create_tables(f"sqlite:///{path}", None, [EVENTS])
        conn = raw_sqlite(path)
        try:
            yield SqliteEvents(conn)
        finally:
            conn.close()
        return
    with pg_schema(env.url, "bench_raw") as schema:
        create_tables(env.url, schema, [EVENTS])
        pg = raw_postgres(env.url, schema)
        try:
            yield PostgresEvents(pg)
        finally:
            pg.close()


def raw_tx(sink: RawEvents, rows: Iterator[tuple[Any, ...]], per_tx: int) -> Callable[[], None]:
    """One plain-driver transaction inserting the next ``per_tx`` prepared rows."""

    def tx() -> None:
        sink.insert([next(rows) for _ in range(per_tx)])

    return tx


def fill_ledger(env: Env, target: int) -> int:
    """Append events (1000 per transaction) until the ledger holds ``target``; the new size."""
    db, ledger, clock = env.services.db, env.services.ledger, env.services.clock
    with db.read() as s:
        have = ledger.store.count(s)
    if have >= target:
        return have
    progress = Progress("filling the ledger", target)
    events = [sample_event(i) for i in range(FILL_BATCH)]
    while have < target:
        chunk = events[: min(FILL_BATCH, target - have)]
        with db.write() as s:
            ledger.append(s, chunk, now=clock.now())
        have += len(chunk)
        progress.update(have)
    progress.finish()
    return have


def tether_verify(env: Env, size: int) -> Run:
    progress = Progress("verifying", size)
    start = time.perf_counter()
    result = env.services.audit.verify(env.admin, progress=progress.update)
    seconds = time.perf_counter() - start
    progress.finish()
    if not result.ok or result.checked != size:
        raise RuntimeError(f"the benchmark ledger does not verify: {result.to_json()}")
    return Run(result.checked, seconds)


def split_verify(env: Env) -> tuple[Run, Run]:
    """Verify in two halves: read+decode every event, then re-hash them in memory."""
    db, store, signer = env.services.db, env.services.ledger.store, env.services.ledger.signer
    start = time.perf_counter()
    with db.read() as s:
        events = list(store.stream(s))
        checkpoints = store.checkpoints(s)
    read = Run(len(events), time.perf_counter() - start)
    start = time.perf_counter()
    result = verify_chain(
        events, seq_of_hash=lambda _h: None, checkpoints=checkpoints, check_signature=signer.check
    )
    hashing = Run(result.checked, time.perf_counter() - start)
    if not result.ok:
        raise RuntimeError(f"the benchmark ledger does not verify: {result.to_json()}")
    return read, hashing


def raw_scan(env: Env) -> Run:
    """Fetch every row of ``audit_events`` in ``seq`` order with the plain driver."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq"
    count = 0
    if env.backend == SQLITE:
        conn = raw_sqlite(env.sqlite_path)
        try:
            start = time.perf_counter()
            for _row in conn.execute(sql):
                count += 1
            seconds = time.perf_counter() - start
        finally:
            conn.close()
        return Run(count, seconds)
    assert env.schema is not None
    with raw_postgres(env.url, env.schema) as pg:
        start = time.perf_counter()
        with pg.cursor(name="bench_scan") as cur:  # server-side, like Tether's stream()
            cur.itersize = 5000
            cur.execute(sql)
            for _row in cur:
                count += 1
        seconds = time.perf_counter() - start
    return Run(count, seconds)


# -- the table ---------------------------------------------------------------------------------
HEADERS = [
    "benchmark",
    "Tether",
    "Tether p50 / p99 per tx",
    "baseline",
    "baseline p50 / p99",
    "Tether ÷ baseline",
]


def _lat(run: Run) -> str:
    if not run.latencies:
        return "-"
    return f"{fmt_latency(run.pct(50))} / {fmt_latency(run.pct(99))}"


def _row(table: ResultTable, backend: str, label: str, tether: Run, base: Run | None) -> None:
    ratio = tether.rate / base.rate if base is not None else math.nan
    table.rows.append(
        [
            label,
            fmt_rate(tether.rate, " ev/s"),
            _lat(tether),
            fmt_rate(base.rate, " rows/s") if base else "-",
            _lat(base) if base else "-",
            fmt_ratio(ratio),
        ]
    )
    table.records.append(
        {
            "backend": backend,
            "benchmark": label,
            "tether_per_s": tether.rate,
            "tether_items": tether.items,
            "tether_seconds": tether.seconds,
            "tether_tx_p50_s": tether.pct(50),
            "tether_tx_p99_s": tether.pct(99),
            "baseline_per_s": base.rate if base else None,
            "baseline_items": base.items if base else None,
            "baseline_tx_p50_s": base.pct(50) if base else None,
            "baseline_tx_p99_s": base.pct(99) if base else None,
        }
    )


def run(env: Env, sizes: Sizes) -> ResultTable:
    """All ledger measurements on one backend; returns its table."""
    tag = f"[ledger/{env.backend}]"
    driver = "sqlite3" if env.backend == SQLITE else "psycopg"
    table = ResultTable(f"Ledger on {env.backend} — events/s (higher is better)", HEADERS)
    b = sizes.batch
    needed = sizes.single_tx + warmup_tx(1) + (sizes.batched_tx + warmup_tx(b)) * b
    note(f"{tag} preparing {needed:,} baseline rows")
    rows = iter(baseline_rows(needed))

    with raw_events_table(env) as sink:
        note(f"{tag} append, 1 event per transaction")
        one, raw_one = measure_pair(
            tether_tx(env, 1),
            raw_tx(sink, rows, 1),
            count=sizes.single_tx,
            per_tx=1,
            max_seconds=sizes.max_seconds,
        )
        note(f"{tag} append, {b} events per transaction")
        many, raw_many = measure_pair(
            tether_tx(env, b),
            raw_tx(sink, rows, b),
            count=sizes.batched_tx,
            per_tx=b,
            max_seconds=sizes.max_seconds,
        )
    _row(table, env.backend, "append, 1 event/tx", one, raw_one)
    _row(table, env.backend, f"append, {b} events/tx", many, raw_many)

    note(f"{tag} verify over {sizes.verify_events:,} events")
    size = fill_ledger(env, sizes.verify_events)
    verify = tether_verify(env, size)
    scan = raw_scan(env)
    read, hashing = split_verify(env)
    _row(table, env.backend, f"verify, {size:,} events (AuditService.verify)", verify, scan)
    _row(table, env.backend, "  of which: read + decode (store.stream)", read, scan)
    _row(table, env.backend, "  of which: re-hash in memory (verify_chain)", hashing, None)

    table.footnotes += [
        f"baseline = plain {driver} on a copy of audit_events (same columns, keys, indexes and "
        f"row values): one INSERT per COMMIT, or executemany of {b} rows per COMMIT; for "
        "verify, a full scan in seq order that fetches the rows without decoding them.",
        "durable: SQLite WAL with synchronous=FULL (fsync at every commit); PostgreSQL with "
        "synchronous_commit=on. Tether also takes its write lock (BEGIN IMMEDIATE / advisory "
        "lock) and reads the chain head in every transaction.",
        f"measured: {len(one.latencies):,} tx of 1 event and {len(many.latencies):,} tx of "
        f"{b} events each, after warm-up, Tether and baseline alternating in blocks; rates are "
        "items over the summed transaction times; p50/p99 are per transaction.",
    ]
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="ledger size for verify (default 100000)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.ledger",
        "Tether ledger append and verify throughput",
        argv,
        add_arguments=add_arguments,
    )
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


def sizes_for(options: Options) -> Sizes:
    sizes = QUICK if options.quick else FULL
    events: int | None = getattr(options.extra, "events", None)
    if events:
        sizes = Sizes(sizes.single_tx, sizes.batched_tx, sizes.batch, events, sizes.max_seconds)
    return sizes


def run_all(options: Options) -> list[ResultTable]:
    tables = []
    for backend in options.backends:
        with open_env(options, backend, "ledger") as env:
            table = run(env, sizes_for(options))
        table.print()
        tables.append(table)
    return tables


if __name__ == "__main__":
    main()
