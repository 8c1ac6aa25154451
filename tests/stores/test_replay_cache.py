"""The contract of the replay caches on the ``used_jtis`` table, on every backend.

:class:`DatabaseReplayCache` records a key in the caller's write transaction;
:class:`DatabaseDPoPReplayCache` in one of its own. First sight is ``False``, every later
sight ``True`` until the entry is purged after its expiry; entries outlive the process; of
writers racing one key, exactly one sees it first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select

from tests.conftest import Backend
from tether.credentials.models import UsedJtiRow
from tether.credentials.replay import DatabaseDPoPReplayCache, DatabaseReplayCache
from tether.db import Database

EXP = 1_772_366_400  # NumericDate seconds: the caches store what they are given
WIDTH = 200  # used_jtis.key


def seen(db: Database, namespace: str, key: str, expires_at: int = EXP) -> bool:
    with db.write() as s:
        return DatabaseReplayCache(db).seen(s, namespace, key, expires_at)


def stored(db: Database) -> dict[str, int]:
    with db.read() as s:
        return dict(s.execute(select(UsedJtiRow.key, UsedJtiRow.expires_at)).all())


def test_first_sight_is_false_every_later_one_true(db: Database) -> None:
    assert seen(db, "client_assertion", "agt_1:jti-1") is False
    assert seen(db, "client_assertion", "agt_1:jti-1") is True
    assert seen(db, "client_assertion", "agt_1:jti-1", EXP + 999) is True
    assert seen(db, "client_assertion", "agt_1:jti-2") is False
    # The first sight's expiry is kept: a replay does not extend it.
    assert stored(db) == {"client_assertion:agt_1:jti-1": EXP, "client_assertion:agt_1:jti-2": EXP}


def test_namespaces_are_separate(db: Database) -> None:
    assert seen(db, "client_assertion", "k:jti") is False
    assert seen(db, "dpop", "k:jti") is False
    assert seen(db, "dpop", "k:jti") is True
    assert seen(db, "client_assertion", "k:jti") is True
    assert set(stored(db)) == {"client_assertion:k:jti", "dpop:k:jti"}


@pytest.mark.parametrize("char", ["k", "é", "🙂"], ids=["ascii", "two-byte", "four-byte"])
def test_keys_longer_than_the_column_are_cut_to_it(db: Database, char: str) -> None:
    """``<namespace>:<key>`` is cut to the column's 200 characters (not bytes) on every
    backend: two keys alike in their first 200 characters are one key."""
    key = char * 300
    assert seen(db, "dpop", key) is False
    assert stored(db) == {("dpop:" + key)[:WIDTH]: EXP}
    assert len(next(iter(stored(db)))) == WIDTH
    assert seen(db, "dpop", key[: WIDTH - len("dpop:")] + "different tail") is True
    assert seen(db, "dpop", key[: WIDTH - len("dpop:") - 1]) is False  # one shorter: new


def test_a_key_exactly_the_column_width_is_kept_whole(db: Database) -> None:
    key = "x" * (WIDTH - len("ns:"))
    assert seen(db, "ns", key) is False
    assert seen(db, "ns", key[:-1] + "y") is False
    assert set(stored(db)) == {f"ns:{key}", f"ns:{key[:-1]}y"}


def test_purge_removes_only_expired_entries_and_counts_them(db: Database) -> None:
    now = EXP
    for key, exp in [("old", now - 1000), ("just", now - 1), ("at", now), ("later", now + 1)]:
        assert seen(db, "ns", key, exp) is False
    cache = DatabaseReplayCache(db)
    assert cache.purge(now) == 2
    assert stored(db) == {"ns:at": now, "ns:later": now + 1}
    assert cache.purge(now) == 0
    assert seen(db, "ns", "just", now + 60) is False  # forgotten: its exp refuses it anyway
    assert seen(db, "ns", "at") is True
    assert cache.purge(now + 2) == 2
    assert stored(db) == {"ns:just": now + 60}


def test_a_rolled_back_transaction_records_nothing(db: Database) -> None:
    """The entry is part of the caller's transaction: it is spent only if that commits."""
    cache = DatabaseReplayCache(db)
    answers: list[bool] = []

    def spend_then_fail() -> None:
        with db.write() as s:
            answers.append(cache.seen(s, "ns", "jti", EXP))
            answers.append(cache.seen(s, "ns", "jti", EXP))  # within it, already seen
            raise LookupError

    with pytest.raises(LookupError):
        spend_then_fail()
    assert answers == [False, True]
    assert stored(db) == {}
    assert seen(db, "ns", "jti") is False


def test_an_entry_survives_a_restart(db: Database, backend: Backend) -> None:
    assert seen(db, "dpop", "jkt:jti") is False
    DatabaseDPoPReplayCache(db, DatabaseReplayCache(db)).seen("jkt", "other", EXP)
    db.dispose()
    again = Database(backend.url, schema=backend.schema)
    try:
        assert seen(again, "dpop", "jkt:jti") is True
        dpop = DatabaseDPoPReplayCache(again, DatabaseReplayCache(again))
        assert dpop.seen("jkt", "other", EXP) is True
        assert seen(again, "dpop", "jkt:new") is False
    finally:
        again.dispose()


def test_dpop_proofs_are_keyed_by_key_and_jti_in_their_own_namespace(db: Database) -> None:
    dpop = DatabaseDPoPReplayCache(db, DatabaseReplayCache(db))
    assert dpop.seen("jkt-A", "jti-1", EXP) is False
    assert dpop.seen("jkt-A", "jti-1", EXP) is True
    assert dpop.seen("jkt-B", "jti-1", EXP) is False  # another key's proof
    assert dpop.seen("jkt-A", "jti-2", EXP) is False
    # Committed at once, as "dpop:<jkt>:<jti>": a client assertion's jti is another entry.
    assert set(stored(db)) == {"dpop:jkt-A:jti-1", "dpop:jkt-B:jti-1", "dpop:jkt-A:jti-2"}
    assert seen(db, "client_assertion", "jkt-A:jti-1") is False


def _race(n: int, attempt: Callable[[], bool]) -> list[bool]:
    start = threading.Barrier(n)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            start.wait(timeout=30)
            answer = attempt()
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_of_writers_racing_one_key_exactly_one_sees_it_first(db: Database) -> None:
    results = _race(8, lambda: seen(db, "client_assertion", "agt_1:raced"))
    assert sorted(results) == [False] + [True] * 7
    assert stored(db) == {"client_assertion:agt_1:raced": EXP}


def test_of_dpop_proofs_racing_one_jti_exactly_one_is_accepted(db: Database) -> None:
    dpop = DatabaseDPoPReplayCache(db, DatabaseReplayCache(db))
    results = _race(8, lambda: dpop.seen("jkt", "raced", EXP))
    assert sorted(results) == [False] + [True] * 7
    assert stored(db) == {"dpop:jkt:raced": EXP}


def test_a_key_no_backend_can_hold_is_refused_as_seen_and_never_recorded(db: Database) -> None:
    """A client chooses its assertion's and its DPoP proof's ``jti`` (any JSON string,
    ``\\u0000`` included). PostgreSQL text cannot hold a NUL (the driver raised: a 500 there,
    an accepted key on SQLite); the cache fails closed the same way on both."""
    assert seen(db, "dpop", "jkt:a\x00b") is True
    assert seen(db, "dpop", "jkt:a\x00b") is True
    assert stored(db) == {}
    assert seen(db, "dpop", "jkt:a") is False


def test_seen_many_is_seen_of_each_key_in_one_statement(db: Database) -> None:
    """``seen_many``: a key used before is a replay, a new one is recorded, a key twice in
    the same call is new the first time and a replay the second; unstorable keys are
    refused as if used. Same table, same answers as :meth:`seen` one by one."""
    assert seen(db, "client_assertion", "old") is False
    cache = DatabaseReplayCache(db)
    keys = [("new-1", EXP), ("old", EXP), ("new-2", EXP + 1), ("new-1", EXP + 2), ("nul\x00", EXP)]
    with db.write() as s:
        verdicts = cache.seen_many(s, "client_assertion", keys)
    assert verdicts == [False, True, False, True, True]
    assert stored(db) == {"client_assertion:old": EXP, "client_assertion:new-1": EXP,
                          "client_assertion:new-2": EXP + 1}  # fmt: skip
    with db.write() as s:  # and every one of them is spent now
        assert cache.seen_many(s, "client_assertion", keys[:3]) == [True, True, True]
    assert seen(db, "client_assertion", "new-2") is True


def test_seen_many_rolled_back_records_nothing(db: Database) -> None:
    cache = DatabaseReplayCache(db)
    verdicts: list[list[bool]] = []

    def failing_batch() -> None:
        with db.write() as s:
            verdicts.append(cache.seen_many(s, "ns", [("a", EXP), ("b", EXP)]))
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert verdicts == [[False, False]]
    assert stored(db) == {}
