"""The ledger's store contract (``DatabaseLedgerStore``), on SQLite and PostgreSQL.

The chain's guarantees rest on it: an event comes back byte for byte as it was hashed (so a
verifier recomputes the same digest on any backend), ``seq`` is unique and ordered, a
failed append leaves nothing behind, pages and the streaming reader see the same order,
and checkpoints come back by size.
"""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy.exc import IntegrityError

from tests.stores.conftest import T0_US
from tether.audit.chain import GENESIS, Checkpoint, Event, event_hash, link
from tether.audit.events import NewEvent
from tether.audit.store import HEAD_QUERY, DatabaseLedgerStore
from tether.db import Database

STORE = DatabaseLedgerStore()
SECOND_US = 1_000_000


def _append(db: Database, events: list[NewEvent], *, time_us: int = T0_US) -> list[Event]:
    """Link ``events`` after the stored head and insert them (what the ledger does)."""
    with db.write() as s:
        head = STORE.head(s)
        after, prev = head if head else (0, GENESIS)
        linked = link(events, after_seq=after, prev_hash=prev, time_us=time_us)
        STORE.insert(s, linked)
    return linked


def _all(db: Database) -> list[Event]:
    with db.read() as s:
        return list(STORE.stream(s))


def _new(i: int, **fields: object) -> NewEvent:
    values: dict[str, object] = {"type": "agent.updated", "actor": "usr_admin"}
    values.update(agent_id=f"agt_{i % 3}", details={"i": i})
    values.update(fields)
    return NewEvent(**values)  # type: ignore[arg-type]


def test_an_empty_ledger(db: Database) -> None:
    with db.read() as s:
        assert STORE.head(s) is None
        assert STORE.head_with_time(s) is None
        assert STORE.count(s) == 0
        assert STORE.page(s, after_seq=0, limit=10) == []
        assert STORE.page(s, after_seq=0, limit=10, newest_first=True) == []
        assert list(STORE.stream(s)) == []
        assert STORE.latest_checkpoint(s) is None
        assert STORE.checkpoints(s) == []
        assert STORE.seq_of_hash(s, "0" * 64) is None


def test_an_event_comes_back_exactly_as_it_was_hashed(db: Database) -> None:
    tricky = NewEvent(
        type="decision",
        actor="agt_ünïcødé",
        agent_id="agt_1",
        on_behalf_of="usr_ålice",
        chain=("agt_1", "agt_0"),
        action="tool.call",
        resource={"type": "Document", "id": "d/1", "tags": ["a", "ß"], "n": 2**53 + 1},
        decision="deny",
        reasons=("policy:forbid-1", "emoji 🚫"),
        policy_version="v7",
        outcome="deny",
        details={"nested": {"list": [1, 2.5, None, True], "empty": {}}, "quote": "\"'\\"},
    )
    bare = NewEvent(type="system.bootstrapped", actor="system")  # every optional field empty
    written = _append(db, [tricky, bare], time_us=T0_US + 123_456)
    read = _all(db)
    assert read == written
    for ev in read:
        assert event_hash(ev.prev_hash, ev.body()) == ev.hash
    assert read[0].time_us == T0_US + 123_456  # microseconds, not rounded to ms
    assert read[1].resource is None
    assert read[1].chain == []


def test_head_count_and_seq_of_hash_follow_appends(db: Database) -> None:
    first = _append(db, [_new(i) for i in range(3)], time_us=T0_US)
    second = _append(db, [_new(i) for i in range(3, 5)], time_us=T0_US + SECOND_US)
    with db.read() as s:
        assert STORE.head(s) == (5, second[-1].hash)
        assert STORE.head_with_time(s) == (5, second[-1].hash, T0_US + SECOND_US)
        assert STORE.count(s) == 5
        assert STORE.seq_of_hash(s, first[1].hash) == 2
        assert STORE.seq_of_hash(s, "f" * 64) is None
    assert second[0].prev_hash == first[-1].hash  # the chain links across transactions


def test_pages_forward_and_newest_first_with_cursors(db: Database) -> None:
    _append(db, [_new(i) for i in range(10)])
    with db.read() as s:
        forward = [e.seq for e in STORE.page(s, after_seq=0, limit=4)]
        assert forward == [1, 2, 3, 4]
        assert [e.seq for e in STORE.page(s, after_seq=4, limit=4)] == [5, 6, 7, 8]
        assert [e.seq for e in STORE.page(s, after_seq=8, limit=4)] == [9, 10]
        newest = [e.seq for e in STORE.page(s, after_seq=0, limit=4, newest_first=True)]
        assert newest == [10, 9, 8, 7]
        older = STORE.page(s, after_seq=7, limit=4, newest_first=True)
        assert [e.seq for e in older] == [6, 5, 4, 3]
        assert [e.seq for e in STORE.page(s, after_seq=1, limit=4, newest_first=True)] == []


def test_filters_by_agent_type_and_time_window(db: Database) -> None:
    _append(db, [_new(i) for i in range(6)], time_us=T0_US)
    _append(db, [_new(6, type="decision", agent_id="agt_0")], time_us=T0_US + SECOND_US)
    _append(db, [_new(7, agent_id="agt_0")], time_us=T0_US + 2 * SECOND_US)
    with db.read() as s:
        by_agent = [e.seq for e in STORE.page(s, after_seq=0, limit=50, agent="agt_0")]
        assert by_agent == [1, 4, 7, 8]
        assert [e.seq for e in STORE.page(s, after_seq=0, limit=50, type_="decision")] == [7]
        window = STORE.page(
            s, after_seq=0, limit=50, since_us=T0_US + SECOND_US, until_us=T0_US + 2 * SECOND_US
        )
        assert [e.seq for e in window] == [7]  # since inclusive, until exclusive
        both = STORE.page(s, after_seq=0, limit=50, agent="agt_0", newest_first=True)
        assert [e.seq for e in both] == [8, 7, 4, 1]
        assert STORE.page(s, after_seq=0, limit=50, agent="agt_none") == []


def test_a_filter_no_row_could_hold_finds_nothing_on_every_backend(db: Database) -> None:
    _append(db, [_new(0)])
    with db.read() as s:
        assert STORE.page(s, after_seq=0, limit=5, agent="agt\x00") == []
        assert STORE.page(s, after_seq=0, limit=5, type_="decision\x00") == []


def test_the_stream_reads_in_batches_and_can_stop_early(db: Database) -> None:
    _append(db, [_new(i) for i in range(11)])
    with db.read() as s:
        assert [e.seq for e in STORE.stream(s, batch=3)] == list(range(1, 12))
        reader = STORE.stream(s, batch=2)
        assert next(reader).seq == 1
        reader.close()  # a verifier stopping at a break: the cursor closes
        assert STORE.count(s) == 11  # and the transaction is still usable


def test_a_duplicate_seq_fails_and_the_whole_append_rolls_back(db: Database) -> None:
    (first,) = _append(db, [_new(0)])
    clash = link([_new(1), _new(2)], after_seq=0, prev_hash=first.hash, time_us=T0_US)

    def insert_forked_batch() -> None:
        with db.write() as s:
            STORE.insert(s, [clash[1], clash[0]])  # seq 2 is new, seq 1 exists

    with pytest.raises(IntegrityError):
        insert_forked_batch()
    assert _all(db) == [first]


def test_checkpoints_come_back_by_size_and_a_size_is_signed_once(db: Database) -> None:
    cps = [
        Checkpoint(size, f"{size:064x}", T0_US + size, "kid-1", f"sig{size}") for size in (5, 2, 9)
    ]
    with db.write() as s:
        for cp in cps:
            STORE.add_checkpoint(s, cp)
    with db.read() as s:
        assert [c.size for c in STORE.checkpoints(s)] == [2, 5, 9]
        assert STORE.latest_checkpoint(s) == cps[2]
        assert STORE.checkpoints(s)[0] == cps[1]

    def sign_size_again() -> None:
        with db.write() as s:
            STORE.add_checkpoint(s, Checkpoint(5, "e" * 64, T0_US, "kid-2", "other"))

    with pytest.raises(IntegrityError):
        sign_size_again()
    with db.read() as s:
        assert STORE.checkpoints(s)[1] == cps[0]


def test_concurrent_appenders_build_one_unbroken_chain(db: Database) -> None:
    def appender(n: int) -> None:
        for i in range(4):
            _append(db, [_new(n * 10 + i), _new(n * 10 + i, type="decision")])

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = _all(db)
    assert [e.seq for e in events] == list(range(1, 41))
    prev = GENESIS
    for ev in events:
        assert ev.prev_hash == prev
        assert event_hash(ev.prev_hash, ev.body()) == ev.hash
        prev = ev.hash


def _append_with_lock_read(db: Database, events: list[NewEvent]) -> list[Event]:
    """:func:`_append` as the group commit does it: the head read with the write lock."""
    with db.write(then=HEAD_QUERY) as s:
        linked: list[Event] = []
        for event in events:  # one append after another in one transaction
            head = STORE.head(s)
            after, prev = head if head else (0, GENESIS)
            batch = link([event], after_seq=after, prev_hash=prev, time_us=T0_US)
            STORE.insert(s, batch)
            linked += batch
    return linked


def test_the_head_read_with_the_write_lock_serves_one_append_then_is_read_again(
    db: Database,
) -> None:
    """``Database.write(then=HEAD_QUERY)``: on PostgreSQL the head comes in the lock's round
    trip; it answers the transaction's first head read only — after an append the head is
    read again — so several appends in one transaction still chain (on SQLite it is read)."""
    _append(db, [_new(0)])
    linked = _append_with_lock_read(db, [_new(1), _new(2), _new(3)])
    assert [e.seq for e in linked] == [2, 3, 4]
    stored = _all(db)
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    for before, after in itertools.pairwise(stored):
        assert after.prev_hash == before.hash


def test_the_head_read_with_the_lock_sees_what_committed_while_it_waited(db: Database) -> None:
    """The race the lock exists for: another writer holds the lock and appends; a batch
    waiting for the lock, whose head is read in the same round trip as the lock, must chain
    after that writer's event (a head read before the lock was granted would fork)."""
    _append(db, [_new(0)])
    holding, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with db.write() as s:
            head = STORE.head(s)
            assert head is not None
            STORE.insert(s, link([_new(1)], after_seq=head[0], prev_hash=head[1], time_us=T0_US))
            holding.set()
            release.wait(10)

    other = threading.Thread(target=other_writer)
    other.start()
    assert holding.wait(10)
    waiting: list[Event] = []
    mine = threading.Thread(target=lambda: waiting.extend(_append_with_lock_read(db, [_new(2)])))
    mine.start()
    mine.join(0.3)  # it waits for the lock
    assert mine.is_alive()
    release.set()
    other.join(10)
    mine.join(10)
    assert [e.seq for e in waiting] == [3]
    stored = _all(db)
    assert [e.seq for e in stored] == [1, 2, 3]
    assert stored[2].prev_hash == stored[1].hash
