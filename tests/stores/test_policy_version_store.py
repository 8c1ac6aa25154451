"""The policy version store's contract, on every backend (see conftest.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from tests.stores.conftest import T0_US
from tether.db import Database
from tether.policy.models import PolicyVersionRow
from tether.policy.store import MAX_NUMBER, DatabasePolicyVersionStore

store = DatabasePolicyVersionStore()


def version_row(number: int, **fields: Any) -> PolicyVersionRow:
    """An unsaved version with sensible defaults; ``fields`` override any column."""
    values: dict[str, Any] = {
        "number": number,
        "policies": f"// version {number}\n",
        "schema": "entity User;",
        "digest": f"{number:064x}",
        "policy_count": 0,
        "created_at": T0_US + number,
        "created_by": "user:usr_admin",
        "note": None,
    }
    return PolicyVersionRow(**{**values, **fields})


def push(db: Database, **fields: Any) -> int:
    """What a push does with the store: take the next number and add the version, in one
    write transaction."""
    with db.write() as s:
        number = store.next_number(s)
        store.add(s, version_row(number, **fields))
    return number


def columns(row: PolicyVersionRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in inspect(PolicyVersionRow).column_attrs}


def numbers(db: Database, *, before: int | None = None, limit: int = 1000) -> list[int]:
    with db.read() as s:
        return [r.number for r in store.page(s, before=before, limit=limit)]


def test_an_empty_store_has_no_current_version_and_numbers_from_one(db: Database) -> None:
    with db.read() as s:
        assert store.current(s) is None
        assert store.get(s, 1) is None
        assert store.page(s, before=None, limit=10) == []
        assert store.next_number(s) == 1


def test_numbers_run_one_two_three_and_the_highest_is_current(db: Database) -> None:
    assert [push(db, note=f"push {i}") for i in range(5)] == [1, 2, 3, 4, 5]
    with db.read() as s:
        current = store.current(s)
        assert current is not None
        assert (current.number, current.note) == (5, "push 4")
        assert store.next_number(s) == 6


def test_current_is_the_highest_number_not_the_last_added_nor_the_newest(db: Database) -> None:
    with db.write() as s:
        store.add(s, version_row(3, created_at=T0_US))
    with db.write() as s:
        store.add(s, version_row(1, created_at=T0_US + 10))
        store.add(s, version_row(2, created_at=T0_US + 20))
    with db.read() as s:
        current = store.current(s)
        assert current is not None
        assert current.number == 3
        assert store.next_number(s) == 4


def test_a_push_that_rolls_back_leaves_no_gap(db: Database) -> None:
    push(db)

    class Abandoned(Exception):
        pass

    def abandoned_push() -> None:
        with db.write() as s:
            store.add(s, version_row(store.next_number(s)))
            raise Abandoned

    with pytest.raises(Abandoned):
        abandoned_push()
    assert push(db) == 2
    assert numbers(db) == [2, 1]


def test_a_number_is_never_taken_twice(db: Database) -> None:
    push(db, note="first")
    with pytest.raises(IntegrityError), db.write() as s:
        store.add(s, version_row(1, note="second"))
    with db.read() as s:
        got = store.get(s, 1)
        assert got is not None
        assert got.note == "first"


def test_get_finds_a_version_by_its_number(db: Database) -> None:
    for _ in range(3):
        push(db)
    with db.read() as s:
        got = store.get(s, 2)
        assert got is not None
        assert (got.number, got.policies) == (2, "// version 2\n")


@pytest.mark.parametrize("number", [0, 4, -1, MAX_NUMBER, MAX_NUMBER + 1, 2**63, 2**80])
def test_get_of_a_number_no_version_has_is_none(db: Database, number: int) -> None:
    for _ in range(3):
        push(db)
    with db.read() as s:
        assert store.get(s, number) is None


def test_what_is_stored_comes_back_exactly(db: Database) -> None:
    unicode = 'permit(principal, action, resource) when { resource.name == "ドキュメント 🦀" };\n'
    odd = '// naïve — \u2028 \u2029 \ufeff e\u0301 \U0001f9ea \\u0041 "quoted" \t\r\n'
    policies = (unicode + odd) * (1_048_576 // len((unicode + odd).encode()) + 1)
    assert len(policies.encode()) > 1_048_576
    row = version_row(
        1,
        policies=policies,
        schema="namespace Ünï { entity Dokument; }  // 📄",
        digest="f" * 64,
        policy_count=2**31 - 1,
        created_at=2**62 + 1,  # microseconds, not rounded to anything
        created_by="user:usr_ünïcødé",
        note="first — of many 👍\nline two",
    )
    expected = columns(row)
    with db.write() as s:
        store.add(s, row)
    with db.read() as s:
        got = store.get(s, 1)
        assert got is not None
        assert columns(got) == expected
        current = store.current(s)
        assert current is not None
        assert current.policies == policies


def test_pages_run_newest_first_and_join_up_exactly(db: Database) -> None:
    for _ in range(7):
        push(db)
    pages: list[list[int]] = []
    before: int | None = None
    while page := numbers(db, before=before, limit=3):
        pages.append(page)
        before = page[-1]
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (None, [5, 4, 3, 2, 1]),
        (6, [5, 4, 3, 2, 1]),
        (5, [4, 3, 2, 1]),
        (2, [1]),
        (1, []),
        (0, []),
        (-5, []),
        (MAX_NUMBER, [5, 4, 3, 2, 1]),
        (MAX_NUMBER + 1, [5, 4, 3, 2, 1]),  # past the column: as from the newest
        (2**63, [5, 4, 3, 2, 1]),
        (2**80, [5, 4, 3, 2, 1]),
    ],
)
def test_the_cursor_is_the_last_number_seen(
    db: Database, before: int | None, expected: list[int]
) -> None:
    for _ in range(5):
        push(db)
    assert numbers(db, before=before) == expected
    assert numbers(db, before=before, limit=2) == expected[:2]


def test_concurrent_pushes_take_distinct_consecutive_numbers(db: Database) -> None:
    pushers = 6
    start = threading.Barrier(pushers)

    def one(i: int) -> int:
        start.wait(timeout=30)
        return push(db, note=f"pusher {i}")

    with ThreadPoolExecutor(pushers) as pool:
        taken = list(pool.map(one, range(pushers)))
    assert sorted(taken) == list(range(1, pushers + 1))
    with db.read() as s:
        rows = {r.number: r.note for r in store.page(s, before=None, limit=100)}
    assert rows == {n: f"pusher {i}" for i, n in enumerate(taken)}
