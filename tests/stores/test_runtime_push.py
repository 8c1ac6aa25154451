"""What the change feed hands the runtime without a read, on SQLite and PostgreSQL: the
committing process gets the rows it wrote (PostgreSQL numbers them; SQLite says nothing and the
feed is read), other nodes get them in the ``NOTIFY`` while they are few and short, and a
runtime applies known rows without reading the feed only when they follow on from what it
applied — a gap, or nothing known, and it reads the feed as before."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.stores.conftest import T0, T0_US
from tether.clock import FrozenClock
from tether.db import Database
from tether.runtime import changes
from tether.runtime.changes import PUSHED_ROWS, Kind
from tether.runtime.snapshot import Runtime


class Recording:
    """A section that notes which keys it was handed."""

    kinds = frozenset({Kind.AGENT.value})
    ready = True

    def __init__(self) -> None:
        self.applied: list[set[str]] = []

    def load(self, s: Session, now_us: int) -> None:
        pass

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.applied.append(set(changed[Kind.AGENT.value]))

    def purge(self, now_us: int) -> None:
        pass


def _write(db: Database, *keys: str) -> object:
    """Record ``keys`` in one write transaction; what its commit handed the hooks."""
    handed: list[object] = []
    db.after_change.append(handed.append)
    try:
        with db.write() as s:
            changes.record(s, Kind.AGENT, list(keys), now_us=T0_US)
    finally:
        db.after_change.remove(handed.append)
    return handed[0]


def _feed(db: Database, after: int = 0) -> list[tuple[int, str, str, int]]:
    with db.read() as s:
        return [tuple(row) for row in changes.since(s, after).rows]  # type: ignore[misc]


@pytest.fixture
def feed_reads() -> Iterator[Callable[[Callable[[], object]], int]]:
    """How many times the change feed is read while a call runs."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT runtime_changes.seq"):
            seen.append(statement)

    def during(call: Callable[[], object]) -> int:
        before = len(seen)
        call()
        return len(seen) - before

    event.listen(Engine, "before_cursor_execute", note)  # SQLite reads on an engine of its own
    yield during
    event.remove(Engine, "before_cursor_execute", note)


Reads = Callable[[Callable[[], object]], int]


def test_the_committing_process_gets_the_rows_it_wrote(db: Database) -> None:
    handed = _write(db, "agt_a", "agt_b")
    if db.dialect == "postgresql":
        assert changes.written(handed) == tuple(_feed(db))
        assert [key for _, _, key, _ in _feed(db)] == ["agt_a", "agt_b"]
    else:  # SQLite's executemany gives no numbers back: the feed is read
        assert changes.written(handed) is None
    assert changes.written(True) is None
    assert changes.written("not json") is None
    assert changes.written('[["x", "agent", "k", 1]]') is None  # not a number


def test_other_nodes_get_the_rows_in_the_notify_while_few_and_short(db: Database) -> None:
    if db.dialect != "postgresql":  # no NOTIFY: other processes are woken and read the feed
        assert changes.written(_write(db, "agt_a")) is None
        return
    dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{changes.channel(db.schema)}"')

        def payload_of(*keys: str) -> str:
            _write(db, *keys)
            (note,) = list(conn.notifies(timeout=5, stop_after=1))
            return note.payload

        before = _feed(db)[-1][0] if _feed(db) else 0
        assert changes.written(payload_of("agt_a", "agt_b")) == tuple(_feed(db, before))
        # Too many rows, or rows too long for a NOTIFY (8,000 bytes): the feed says what.
        assert payload_of(*[f"agt_{i}" for i in range(PUSHED_ROWS + 1)]) == ""
        assert payload_of(*['"' * 128 for _ in range(PUSHED_ROWS)]) == ""  # escaped: 2x
        assert payload_of("agt_c") != ""


def _runtime(db: Database) -> tuple[Runtime, Recording]:
    runtime = Runtime(db, FrozenClock(T0), propagation_wait=0)
    db.after_change.remove(runtime.changed)  # told only what each test tells it
    section = Recording()
    runtime.register(section)
    runtime.load()
    return runtime, section


def test_known_rows_that_follow_on_are_applied_without_reading_the_feed(
    db: Database, feed_reads: Reads
) -> None:
    runtime, section = _runtime(db)
    _write(db, "agt_a")
    rows = _feed(db, runtime.last_seq)
    assert feed_reads(lambda: runtime.sync(rows)) == 0
    assert section.applied == [{"agt_a"}]
    assert runtime.last_seq == rows[-1][0]
    # Applied already (by the listener, say): nothing to do, nothing read.
    assert feed_reads(lambda: runtime.sync(rows)) == 0
    assert section.applied == [{"agt_a"}]


def test_a_gap_before_the_known_rows_means_the_feed_is_read(
    db: Database, feed_reads: Reads
) -> None:
    runtime, section = _runtime(db)
    _write(db, "agt_missed")  # never told of it
    _write(db, "agt_told")
    told = _feed(db)[-1:]
    assert feed_reads(lambda: runtime.sync(told)) == 1
    assert section.applied == [{"agt_missed", "agt_told"}]  # both, from the feed


def test_rows_pushed_by_a_notify_wait_for_the_next_sync(db: Database, feed_reads: Reads) -> None:
    runtime, section = _runtime(db)
    _write(db, "agt_pushed")
    (seq, kind, key, time) = _feed(db)[-1]
    runtime.pushed(f'[[{seq}, "{kind}", "{key}", {time}]]')
    runtime.pushed("garbage")  # unreadable: only a wake-up
    assert feed_reads(runtime.sync) == 0
    assert section.applied == [{"agt_pushed"}]
    assert feed_reads(runtime.sync) == 1  # nothing known: the feed is read (nothing new)
    assert section.applied == [{"agt_pushed"}]
