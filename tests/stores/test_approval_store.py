"""The approval store's contract, on every backend (see conftest.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from tests.stores.conftest import T0_US, add_agent, add_user
from tether.agents.models import AgentSupervisorRow
from tether.approvals.models import ApprovalRow
from tether.approvals.store import DatabaseApprovalStore
from tether.db import Database

store = DatabaseApprovalStore()
NOW = T0_US + 3_600_000_000  # an hour after T0: the "now" the queries are asked at
LATER = NOW + 900_000_000
EARLIER = NOW - 1
STATUSES = ("pending", "approved", "denied", "expired", "used", "cancelled")


def approval_row(approval_id: str, agent_id: str = "agt_a", **fields: Any) -> ApprovalRow:
    """An unsaved approval with sensible defaults; ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": approval_id,
        "agent_id": agent_id,
        "on_behalf_of": None,
        "request_digest": "d" * 64,
        "request": '{"action":"read"}',
        "action": "read",
        "resource": '{"id":"r1","type":"Document"}',
        "reasons": '["needs-approval"]',
        "policy_version": "v1",
        "status": "pending",
        "created_at": T0_US,
        "expires_at": LATER,
    }
    return ApprovalRow(**{**values, **fields})


def add_approvals(db: Database, *rows: ApprovalRow) -> None:
    with db.write() as s:
        for row in rows:
            store.add(s, row)


def columns(row: ApprovalRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in inspect(ApprovalRow).column_attrs}


@pytest.fixture
def agents(db: Database) -> Database:
    """Users ``usr_owner`` (owns agt_a, agt_b, agt_c) and ``usr_other`` (owns agt_z and
    supervises agt_b)."""
    add_user(db, "usr_owner")
    add_user(db, "usr_other")
    for agent_id in ("agt_a", "agt_b", "agt_c"):
        add_agent(db, agent_id)
    add_agent(db, "agt_z", owner_id="usr_other")
    with db.write() as s:
        s.add(AgentSupervisorRow(agent_id="agt_b", user_id="usr_other"))
    return db


def test_what_is_stored_comes_back_exactly(agents: Database) -> None:
    row = approval_row(
        "apr_01JQ0000000000000000000001",
        on_behalf_of="usr_ünïcødé",
        request_digest="ab" * 32,
        request='{"context":{"note":"naïve \\u2028 — 🦀","n":1.5e300},"subject":"agt_a"}',
        action="documents.lire-😀",
        resource='{"id":"ドキュメント","type":"Document"}',
        reasons='["rule-é","rule-\\"quoted\\""]',
        policy_version="v2147483647",
        status="used",
        created_at=T0_US + 1,  # microseconds, not rounded to anything
        expires_at=2**62 + 7,
        decided_by="user:usr_ünïcødé",
        decided_at=T0_US + 999_999,
        note="ok — go ahead 👍\nsecond line\ttab",
        used_at=T0_US + 1_000_001,
        used_event_id="evt_01JQ0000000000000000000001",
    )
    expected = columns(row)
    add_approvals(agents, row)
    with agents.read() as s:
        got = store.get(s, row.id)
        assert got is not None
        assert columns(got) == expected


def test_the_unset_columns_come_back_none(agents: Database) -> None:
    add_approvals(agents, approval_row("apr_1"))
    with agents.read() as s:
        got = store.get(s, "apr_1")
        assert got is not None
        assert (got.on_behalf_of, got.decided_by, got.decided_at, got.note) == (None,) * 4
        assert (got.used_at, got.used_event_id) == (None, None)


@pytest.mark.parametrize(
    "key",
    ["apr_unknown", "", "apr_" + "Z" * 500, "apr_\x00", "\x00", "apr_ü", "apr_1 "],
    ids=["unknown", "empty", "over-long", "nul", "only-nul", "unicode", "trailing-space"],
)
def test_lookups_of_what_names_nothing_find_nothing(agents: Database, key: str) -> None:
    add_approvals(agents, approval_row("apr_1"))
    with agents.write() as s:
        assert store.get(s, key) is None
        assert store.live(s, key, now_us=NOW) == []
        assert store.use(s, key, now_us=NOW) is False
        assert store.open_of(s, [key]) == []
        assert store.page(s, before=None, limit=10, now_us=NOW, agent_id=key) == []
        assert store.page(s, before=None, limit=10, now_us=NOW, own_agent=key) == []
        assert store.page(s, before=None, limit=10, now_us=NOW, steward=key) == []
        # and nothing else was touched
        got = store.get(s, "apr_1")
        assert got is not None
        assert got.status == "pending"


def test_add_refuses_an_approval_of_no_agent(agents: Database) -> None:
    with pytest.raises(IntegrityError), agents.write() as s:
        store.add(s, approval_row("apr_1", agent_id="agt_missing"))
    with agents.read() as s:
        assert store.get(s, "apr_1") is None


def test_add_refuses_a_second_approval_with_the_same_id(agents: Database) -> None:
    add_approvals(agents, approval_row("apr_1", action="first"))
    with pytest.raises(IntegrityError), agents.write() as s:
        store.add(s, approval_row("apr_1", action="second"))
    with agents.read() as s:
        got = store.get(s, "apr_1")
        assert got is not None
        assert got.action == "first"


def test_live_is_the_agents_open_unexpired_approvals_oldest_first(agents: Database) -> None:
    # created_at runs against the ids: the order is creation, not id
    add_approvals(
        agents,
        approval_row("apr_9", status="pending", created_at=T0_US + 1, request_digest="a" * 64),
        approval_row("apr_8", status="approved", created_at=T0_US + 2, request_digest="b" * 64),
        approval_row("apr_7", status="pending", created_at=T0_US + 3, expires_at=NOW + 1),
        approval_row("apr_6", status="pending", expires_at=NOW),  # due at NOW: not live
        approval_row("apr_5", status="approved", expires_at=EARLIER),
        *(approval_row(f"apr_4{s}", status=s) for s in ("denied", "expired", "used", "cancelled")),
        approval_row("apr_3", agent_id="agt_b", status="pending"),
    )
    with agents.read() as s:
        live = store.live(s, "agt_a", now_us=NOW)
    assert [(a.id, a.status, a.request_digest) for a in live] == [
        ("apr_9", "pending", "a" * 64),
        ("apr_8", "approved", "b" * 64),
        ("apr_7", "pending", "d" * 64),
    ]


def test_use_moves_an_approved_approval_to_used_once(agents: Database) -> None:
    add_approvals(
        agents,
        approval_row("apr_granted", status="approved"),
        *(approval_row(f"apr_{s}", status=s) for s in STATUSES if s != "approved"),
    )
    with agents.write() as s:
        assert store.use(s, "apr_granted", now_us=NOW) is True
        assert store.use(s, "apr_granted", now_us=NOW + 5) is False
        for status in STATUSES:
            if status != "approved":
                assert store.use(s, f"apr_{status}", now_us=NOW) is False
    with agents.read() as s:
        used = store.get(s, "apr_granted")
        assert used is not None
        assert (used.status, used.used_at) == ("used", NOW)
        for status in STATUSES:
            if status != "approved":
                other = store.get(s, f"apr_{status}")
                assert other is not None
                assert (other.status, other.used_at) == (status, None)


def test_of_two_concurrent_consumers_exactly_one_uses_the_approval(agents: Database) -> None:
    add_approvals(agents, approval_row("apr_1", status="approved"))
    start = threading.Barrier(2)

    def consume(now_us: int) -> bool:
        start.wait(timeout=30)
        with agents.write() as s:
            return store.use(s, "apr_1", now_us=now_us)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(consume, [NOW + 1, NOW + 2]))
    assert sorted(results) == [False, True]
    with agents.read() as s:
        row = store.get(s, "apr_1")
        assert row is not None
        assert row.status == "used"
        assert row.used_at == NOW + 1 + results.index(True)


def test_set_used_event_touches_only_that_approval(agents: Database) -> None:
    add_approvals(agents, approval_row("apr_1", status="used"), approval_row("apr_2"))
    with agents.write() as s:
        store.set_used_event(s, "apr_1", "evt_1")
    with agents.read() as s:
        rows = [store.get(s, i) for i in ("apr_1", "apr_2")]
        assert [r.used_event_id if r else "missing" for r in rows] == ["evt_1", None]


# Ids as the server makes them (prefix + Crockford base32, time-ordered), shuffled on insert.
IDS = [
    "apr_01JQ00000000000000000000ZZ",
    "apr_01JQ0000000000000000000000",
    "apr_01JQ000000000000000000000A",
    "apr_01JQ0000000000000000000009",
    "apr_01JQ00000000000000000000A0",
    "apr_01JR0000000000000000000000",
    "apr_01JP9ZZZZZZZZZZZZZZZZZZZZZ",
]


def test_pages_run_newest_first_and_join_up_exactly(agents: Database) -> None:
    add_approvals(agents, *(approval_row(i) for i in IDS))
    newest_first = sorted(IDS, reverse=True)
    seen: list[str] = []
    before: str | None = None
    with agents.read() as s:
        for _ in range(len(IDS)):
            page = [r.id for r in store.page(s, before=before, limit=3, now_us=NOW)]
            if not page:
                break
            seen += page
            before = page[-1]
        assert store.page(s, before=newest_first[-1], limit=3, now_us=NOW) == []
    assert seen == newest_first


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ("apr_01JQ0000000000000000000000", 1),  # exactly an id: strictly before it
        ("apr_01JQ", 1),  # a prefix of ids sorts before all of them
        ("apr_" + "Z" * 300, 7),  # over-long: every id is before it
        ("apr_01JQ0000000000000000000000\x00", 0),  # NUL: names nothing, pages nothing
        ("~", 7),
        ("", 0),
    ],
    ids=["an-id", "prefix", "over-long", "nul", "tilde", "empty"],
)
def test_a_cursor_that_is_not_an_id_pages_alike(
    agents: Database, before: str, expected: int
) -> None:
    add_approvals(agents, *(approval_row(i) for i in IDS))
    with agents.read() as s:
        page = store.page(s, before=before, limit=10, now_us=NOW)
    assert len(page) == expected
    assert [r.id for r in page] == sorted((i for i in IDS if i < before), reverse=True)[:expected]


@pytest.fixture
def mixed(agents: Database) -> Database:
    """One approval per (agent, status), plus open ones past their expiry (unswept)."""
    rows = [
        approval_row(f"apr_{agent[-1]}_{status}", agent_id=agent, status=status)
        for agent in ("agt_a", "agt_b", "agt_z")
        for status in STATUSES
    ]
    rows += [
        approval_row("apr_a_pending_due", status="pending", expires_at=NOW),
        approval_row("apr_b_approved_due", agent_id="agt_b", status="approved", expires_at=1),
        approval_row("apr_a_expired_late", status="expired", expires_at=LATER),
    ]
    add_approvals(agents, *rows)
    return agents


def _ids(db: Database, **filters: Any) -> list[str]:
    with db.read() as s:
        return [r.id for r in store.page(s, before=None, limit=100, now_us=NOW, **filters)]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pending", ["apr_z_pending", "apr_b_pending", "apr_a_pending"]),
        ("approved", ["apr_z_approved", "apr_b_approved", "apr_a_approved"]),
        (
            "expired",
            [
                "apr_z_expired",
                "apr_b_expired",
                "apr_b_approved_due",
                "apr_a_pending_due",
                "apr_a_expired_late",
                "apr_a_expired",
            ],
        ),
        ("denied", ["apr_z_denied", "apr_b_denied", "apr_a_denied"]),
        ("used", ["apr_z_used", "apr_b_used", "apr_a_used"]),
        ("cancelled", ["apr_z_cancelled", "apr_b_cancelled", "apr_a_cancelled"]),
        ("no-such-status", []),
    ],
)
def test_the_status_filter_is_the_status_readers_see_now(
    mixed: Database, status: str, expected: list[str]
) -> None:
    assert _ids(mixed, status=status) == expected


def test_the_agent_filters_and_the_stewards_view(mixed: Database) -> None:
    everything = _ids(mixed)
    assert len(everything) == 3 * len(STATUSES) + 3
    assert everything == sorted(everything, reverse=True)
    of_a = [i for i in everything if i.startswith("apr_a_")]
    of_b = [i for i in everything if i.startswith("apr_b_")]
    of_z = [i for i in everything if i.startswith("apr_z_")]
    assert _ids(mixed, agent_id="agt_a") == of_a
    assert _ids(mixed, own_agent="agt_b") == of_b
    assert _ids(mixed, agent_id="agt_a", own_agent="agt_b") == []  # both must hold
    assert _ids(mixed, agent_id="agt_c") == []
    # usr_other owns agt_z and supervises agt_b; usr_owner owns agt_a, agt_b and agt_c
    assert _ids(mixed, steward="usr_other") == sorted(of_b + of_z, reverse=True)
    assert _ids(mixed, steward="usr_owner") == sorted(of_a + of_b, reverse=True)
    assert _ids(mixed, steward="usr_nobody") == []
    assert _ids(mixed, steward="usr_other", agent_id="agt_b", status="pending") == ["apr_b_pending"]


def test_filtered_pages_join_up_exactly(mixed: Database) -> None:
    want = _ids(mixed, steward="usr_owner", status="expired")
    assert len(want) == 5
    seen: list[str] = []
    before: str | None = None
    with mixed.read() as s:
        while page := store.page(
            s, before=before, limit=2, now_us=NOW, steward="usr_owner", status="expired"
        ):
            assert len(page) <= 2
            seen += [r.id for r in page]
            before = page[-1].id
    assert seen == want


def test_due_is_exactly_the_open_approvals_at_or_past_their_expiry(agents: Database) -> None:
    add_approvals(
        agents,
        approval_row("apr_p_now", status="pending", expires_at=NOW),
        approval_row("apr_a_past", agent_id="agt_z", status="approved", expires_at=EARLIER),
        approval_row("apr_p_long_ago", agent_id="agt_b", status="pending", expires_at=0),
        approval_row("apr_p_next", status="pending", expires_at=NOW + 1),
        approval_row("apr_a_next", status="approved", expires_at=NOW + 1),
        *(
            approval_row(f"apr_{s}_past", status=s, expires_at=EARLIER)
            for s in ("denied", "expired", "used", "cancelled")
        ),
    )
    with agents.read() as s:
        due = {r.id for r in store.due(s, now_us=NOW)}
        assert due == {"apr_p_now", "apr_a_past", "apr_p_long_ago"}
        some = {r.id for r in store.due(s, now_us=NOW, limit=2)}
        assert len(some) == 2
        assert some <= due
        assert store.due(s, now_us=-1) == []


def test_open_of_is_every_open_approval_of_the_named_agents_only(agents: Database) -> None:
    add_approvals(
        agents,
        *(approval_row(f"apr_a_{s}", status=s) for s in STATUSES),
        *(approval_row(f"apr_b_{s}", agent_id="agt_b", status=s) for s in STATUSES),
        *(approval_row(f"apr_c_{s}", agent_id="agt_c", status=s) for s in STATUSES),
        approval_row("apr_a_pending_due", status="pending", expires_at=EARLIER),  # still open
    )
    with agents.read() as s:
        got = {r.id for r in store.open_of(s, ["agt_a", "agt_b", "agt_missing"])}
        assert got == {
            "apr_a_pending",
            "apr_a_approved",
            "apr_a_pending_due",
            "apr_b_pending",
            "apr_b_approved",
        }
        assert store.open_of(s, []) == []
        assert {r.id for r in store.open_of(s, ["agt_c"])} == {"apr_c_pending", "apr_c_approved"}
