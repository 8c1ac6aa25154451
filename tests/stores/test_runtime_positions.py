"""Where each running worker is in the change feed (``tether.runtime.positions``), on SQLite
and PostgreSQL: reports upsert, the live workers behind a change are exactly those, a worker
silent longer than the live bound (stale by its own rule, so denying everything) is not waited
for, and a writer's wait ends when the last live worker reports — or at its timeout."""

from __future__ import annotations

import threading

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.stores.conftest import T0
from tether.clock import FrozenClock
from tether.db import Database
from tether.runtime.positions import TIMEOUTS, Positions, positions_channel


def _positions(db: Database, clock: FrozenClock, *names: str) -> list[Positions]:
    return [Positions(db, clock, name, live_seconds=5) for name in names]


def test_reports_upsert_and_behind_names_the_live_workers_not_there_yet(db: Database) -> None:
    clock = FrozenClock(T0)
    me, b, c, gone = _positions(db, clock, "me", "b", "c", "gone")
    gone.report(1)
    clock.advance(6)  # "gone" is now silent for longer than the live bound
    b.report(3)
    b.report(7)  # an upsert: one row, the newest position
    c.report(5)
    me.report(0)
    with db.read() as s:
        assert sorted(me.behind(s, 6)) == ["c"]  # never itself; never the silent one
        assert sorted(me.behind(s, 8)) == ["b", "c"]
        assert me.behind(s, 5) == []
    b.forget()
    with db.read() as s:
        assert me.behind(s, 8) == ["c"]


def test_a_writer_waits_until_the_last_live_worker_reports(db: Database) -> None:
    clock = FrozenClock(T0)
    me, b = _positions(db, clock, "me", "b")
    b.report(1)
    timer = threading.Timer(0.05, b.report, args=(9,))
    timer.start()
    try:
        assert me.await_applied(9, timeout=10) is True
    finally:
        timer.join()


def test_a_wait_ends_at_its_timeout_and_is_counted(db: Database) -> None:
    clock = FrozenClock(T0)
    me, b = _positions(db, clock, "me", "b")
    b.report(1)
    before = TIMEOUTS._value.get()
    assert me.await_applied(2, timeout=0.05) is False
    assert TIMEOUTS._value.get() == before + 1


def test_an_announced_position_counts_without_another_look_at_the_table(db: Database) -> None:
    """What a ``NOTIFY``'s payload (``"<runtime id> <seq>"``) tells a waiting writer counts
    as much as the table: here the table never moves past 1."""
    clock = FrozenClock(T0)
    me, b = _positions(db, clock, "me", "b")
    b.report(1)
    timer = threading.Timer(0.05, me.announced, args=("b 9",))
    timer.start()
    try:
        assert me.await_applied(9, timeout=10) is True
    finally:
        timer.join()
    for unreadable in ("b nine", "", "b"):
        me.announced(unreadable)
    me.announced("b 3")  # older than what was heard: ignored
    assert me.await_applied(9, timeout=0) is True
    assert me.await_applied(10, timeout=0.05) is False  # neither heard of nor in the table


def test_while_announcements_are_heard_the_table_is_only_the_fallback(db: Database) -> None:
    """With the runtime's listener connected, a waiting writer counts on announcements and
    looks at the table again only every 25, 50, 100 ms (it never looks more often than that);
    without one, every 1, 2, 4… 10 ms."""
    clock = FrozenClock(T0)
    me, b = _positions(db, clock, "me", "b")
    b.report(1)
    looks: list[int] = []
    live = me.live

    def counted(s: Session) -> dict[str, int]:
        looks.append(1)
        return live(s)

    me.live = counted  # type: ignore[method-assign]
    me.listening = True
    assert me.await_applied(9, timeout=0.06) is False
    assert len(looks) <= 3  # at once, after 25 ms and at the timeout (the next, 75 ms, is past it)
    looks.clear()
    me.listening = False
    assert me.await_applied(9, timeout=0.2) is False
    assert len(looks) > 2


def test_old_rows_are_purged(db: Database) -> None:
    clock = FrozenClock(T0)
    me, crashed = _positions(db, clock, "me", "crashed")
    crashed.report(1)
    clock.advance(3601)
    me.report(2)
    me.purge(int(clock.now().timestamp() * 1_000_000))
    with db.read() as s:
        clock.advance(-3600)  # even if "crashed" counted as live, its row is gone
        assert me.behind(s, 5) == []


def test_an_announcement_wakes_a_waiting_writer_before_its_next_look(db: Database) -> None:
    """What the runtime's listener does on a position ``NOTIFY``: a writer pausing between two
    looks (here a pause of a minute) looks again at once."""
    (me,) = _positions(db, FrozenClock(T0), "me")
    woke = threading.Event()

    def pause() -> None:
        me._await_announcement(0, 60)
        woke.set()

    waiter = threading.Thread(target=pause, daemon=True)
    waiter.start()
    assert not woke.wait(0.05)  # still pausing
    me.announced()
    assert woke.wait(10)
    waiter.join()


def test_postgresql_a_moved_worker_announces_on_its_schema_channel(db: Database) -> None:
    """A report that moved (``announce``) notifies the schema's positions channel at commit;
    a heartbeat does not. SQLite has no NOTIFY (one host; writers poll): it just reports."""
    me, b = _positions(db, FrozenClock(T0), "me", "b")
    if db.dialect != "postgresql":
        b.report(2, announce=True)
        with db.read() as s:
            assert me.behind(s, 3) == ["b"]
            assert me.behind(s, 2) == []
        return
    dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{positions_channel(db.schema)}"')
        b.report(1)
        assert not any(True for _ in conn.notifies(timeout=0.3, stop_after=1))
        b.report(2, announce=True)
        assert [(n.channel, n.payload) for n in conn.notifies(timeout=5, stop_after=1)] == [
            (positions_channel(db.schema), "b 2")
        ]
    with db.read() as s:
        assert me.behind(s, 2) == []  # the announcing statement reported too
    assert positions_channel(None) == "tether_positions_public"
    assert len(positions_channel("s" * 100)) == 63
