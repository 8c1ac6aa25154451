"""The change feed's store contract (``tether.runtime.changes``), on SQLite and PostgreSQL.

What every worker's snapshot relies on: ``seq`` grows in commit order, a reader at ``seq``
gets exactly what committed after it, a rolled-back writer leaves nothing a reader sees, a
reader that fell behind a purge is told so (and reloads), and a commit wakes this process
and, on PostgreSQL, every other node listening on the schema's channel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import _Templates, at_head, backend_for
from tests.stores.conftest import T0_US
from tether.db import Database
from tether.runtime import changes
from tether.runtime.changes import Kind

HOUR_US = 3600 * 1_000_000


def _record(db: Database, kind: Kind, keys: list[str] | str, now_us: int = T0_US) -> None:
    with db.write() as s:
        changes.record(s, kind, keys, now_us=now_us)


def _record_then_fail(db: Database, keys: list[str] | str) -> None:
    """A writer that records, then fails before its commit."""

    def write() -> None:
        with db.write() as s:
            changes.record(s, Kind.AGENT, keys, now_us=T0_US)
            raise RuntimeError("the writer failed after recording")

    with pytest.raises(RuntimeError):
        write()


def _read(db: Database, seq: int, limit: int = 10_000) -> changes.Changes:
    with db.read() as s:
        return changes.since(s, seq, limit=limit)


def test_an_empty_feed_has_head_zero_and_nothing_since(db: Database) -> None:
    with db.read() as s:
        assert changes.head(s) == 0
    found = _read(db, 0)
    assert found.rows == []
    assert found.gap is False
    assert found.last is None


def test_what_committed_comes_back_in_commit_order_after_any_seq(db: Database) -> None:
    _record(db, Kind.AGENT, "agt_1")
    _record(db, Kind.TOKEN, ["atk_1", "atk_2", "atk_3"])
    _record(db, Kind.POLICY, "v2")
    found = _read(db, 0)
    assert [(kind, key) for _, kind, key, _ in found.rows] == [
        ("agent", "agt_1"), ("token", "atk_1"), ("token", "atk_2"), ("token", "atk_3"),
        ("policy", "v2"),
    ]  # fmt: skip
    assert {time_us for *_, time_us in found.rows} == {T0_US}  # each change's own time
    seqs = [seq for seq, _, _, _ in found.rows]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    with db.read() as s:
        assert changes.head(s) == seqs[-1] == found.last
    # From the middle: exactly what came after, nothing before.
    assert [key for _, _, key, _ in _read(db, seqs[1]).rows] == ["atk_2", "atk_3", "v2"]
    assert _read(db, seqs[-1]).rows == []


def test_limit_pages_through_the_feed_without_loss_or_repeat(db: Database) -> None:
    _record(db, Kind.AGENT, [f"agt_{i:03}" for i in range(25)])
    seen: list[str] = []
    seq = 0
    while (page := _read(db, seq, limit=7)).rows:
        assert len(page.rows) <= 7
        seen += [key for _, _, key, _ in page.rows]
        assert page.last is not None
        seq = page.last
    assert seen == [f"agt_{i:03}" for i in range(25)]


def test_a_key_longer_than_the_column_is_cut_to_128_characters_on_every_backend(
    db: Database,
) -> None:
    _record(db, Kind.AGENT, "k" * 500)
    (row,) = _read(db, 0).rows
    assert row[2] == "k" * 128


def test_a_rolled_back_writer_leaves_nothing_a_reader_sees_and_no_gap(db: Database) -> None:
    _record(db, Kind.AGENT, "before")
    head = _read(db, 0).last
    assert head is not None
    _record_then_fail(db, ["lost_1", "lost_2"])
    _record(db, Kind.AGENT, "after")
    found = _read(db, head)
    # PostgreSQL's sequence may have spent numbers on the lost rows; a reader never notices.
    assert [key for _, _, key, _ in found.rows] == ["after"]
    assert found.gap is False


def test_purge_forgets_only_old_rows_below_the_purger_seq(db: Database) -> None:
    _record(db, Kind.AGENT, ["old_1", "old_2"], now_us=T0_US)
    _record(db, Kind.AGENT, "old_but_unapplied", now_us=T0_US)
    _record(db, Kind.AGENT, "recent", now_us=T0_US + 2 * HOUR_US)
    rows = _read(db, 0).rows
    unapplied_seq = rows[2][0]
    with db.write() as s:
        gone = changes.purge(s, before_us=T0_US + HOUR_US, below_seq=unapplied_seq)
    assert gone == 2
    assert [key for _, _, key, _ in _read(db, 0).rows] == ["old_but_unapplied", "recent"]


def test_a_reader_behind_a_purge_is_told_to_reload(db: Database) -> None:
    _record(db, Kind.USER, ["usr_1", "usr_2", "usr_3"], now_us=T0_US)
    _record(db, Kind.USER, "usr_4", now_us=T0_US + 2 * HOUR_US)
    rows = _read(db, 0).rows
    first, newest = rows[0][0], rows[-1][0]
    with db.write() as s:
        changes.purge(s, before_us=T0_US + HOUR_US, below_seq=newest)
    behind = _read(db, first)  # it saw usr_1; usr_2 and usr_3 went before it read them
    assert behind.gap is True
    assert behind.rows == ()
    # One that had read up to the purged end is not behind; a fresh reader (seq 0) never is.
    assert _read(db, rows[2][0]).gap is False
    assert [key for _, _, key, _ in _read(db, 0).rows] == ["usr_4"]


def test_this_process_is_told_after_commit_and_never_after_a_rollback(db: Database) -> None:
    calls: list[int] = []
    db.after_change.append(lambda _written: calls.append(1))
    _record_then_fail(db, "lost")
    assert calls == []
    with db.write() as s:
        changes.record(s, Kind.AGENT, "kept", now_us=T0_US)
        assert calls == []  # not before the commit: a refresh then would read the old state
    assert calls == [1]
    with db.write():
        pass  # a write that recorded nothing wakes nobody
    assert calls == [1]


def test_concurrent_writers_get_distinct_increasing_seqs(db: Database) -> None:
    def write(n: int) -> None:
        for i in range(5):
            _record(db, Kind.TOKEN, f"w{n}_{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _read(db, 0).rows
    assert len(rows) == 30
    assert len({seq for seq, _, _, _ in rows}) == 30
    # Each writer's own changes appear in the order it made them.
    for n in range(6):
        mine = [key for _, _, key, _ in rows if key.startswith(f"w{n}_")]
        assert mine == [f"w{n}_{i}" for i in range(5)]


# -- PostgreSQL: a commit wakes every node listening on the schema's channel ----------------


@pytest.fixture
def pg_pair(tmp_path: Path, schema_templates: _Templates) -> Iterator[tuple[Database, Database]]:
    """Two PostgreSQL schemas (two deployments sharing one server)."""
    with backend_for("postgresql", tmp_path) as a, backend_for("postgresql", tmp_path) as b:
        dbs = []
        for chosen in (a, b):
            at_head(chosen, schema_templates)
            dbs.append(Database(chosen.url, schema=chosen.schema))
        try:
            yield dbs[0], dbs[1]
        finally:
            for d in dbs:
                d.dispose()


def _listener(db: Database) -> psycopg.Connection[object]:
    dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f'LISTEN "{changes.channel(db.schema)}"')
    return conn


def _woken(conn: psycopg.Connection[object]) -> bool:
    return any(True for _ in conn.notifies(timeout=0.5, stop_after=1))


def test_postgresql_commit_notifies_its_schema_channel_only(
    pg_pair: tuple[Database, Database],
) -> None:
    mine, other = pg_pair
    with _listener(mine) as listen_mine, _listener(other) as listen_other:
        _record_then_fail(mine, "lost")
        assert not _woken(listen_mine)  # NOTIFY is transactional: a rollback sends nothing
        _record(mine, Kind.AGENT, "kept")
        assert _woken(listen_mine)
        assert not _woken(listen_other)


def test_channel_names_fit_postgresql_identifiers() -> None:
    assert changes.channel(None) == "tether_changes_public"
    assert len(changes.channel("s" * 100)) == 63
    assert changes.channel("t_a") != changes.channel("t_b")
