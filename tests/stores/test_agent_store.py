"""The agent registry's store contract (``DatabaseAgentStore``), on SQLite and PostgreSQL.

Rows round-trip exactly; a key no row could hold is "not found", never a driver error; role
and supervisor sets replace, never append; every page walks the registry in id order with no
loss or repeat under each filter; a supervisor's view is what they own merged with what they
supervise; and the status a reader sees is the one at ``now`` (an agent past its
``expires_at`` is expired before the sweep stores it).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from tests.stores.conftest import T0_US, add_agent, add_user, agent_row
from tether.agents.authority import Stewards
from tether.agents.models import AgentRow
from tether.agents.store import DatabaseAgentStore
from tether.db import Database

STORE = DatabaseAgentStore()
HOUR_US = 3600 * 1_000_000


@pytest.fixture
def owners(db: Database) -> Database:
    add_user(db, "usr_owner", username="owner")
    add_user(db, "usr_other", username="other")
    add_user(db, "usr_sup", username="sup")
    return db


def _page(db: Database, **filters: Any) -> list[str]:
    """Every id a walk of pages of 3 finds under ``filters``."""
    now_us = filters.pop("now_us", T0_US)
    seen: list[str] = []
    after: str | None = None
    while True:
        with db.read() as s:
            rows = STORE.page(s, after=after, limit=3, now_us=now_us, **filters)
        seen += [r.id for r in rows]
        if len(rows) < 3:
            return seen
        after = rows[-1].id


def test_a_row_comes_back_exactly(owners: Database) -> None:
    columns = {
        "name": "Ågent «quoted» 🚀",
        "purpose": "p" * 10_000,
        "risk_tier": "high",
        "status": "suspended",
        "status_reason": "paused by ops",
        "attributes": '{"team":"payments","ü":[1,2]}',
        "scopes": '["read","write:payments"]',
        "lineage": "[]",
        "fingerprint": '{"model":"m"}',
        "fingerprint_digest": "sha256:" + "a" * 64,
        "created_at": T0_US + 1,
        "updated_at": T0_US + 999_999,
        "expires_at": 2**62,
        "recertify_by": T0_US + 7,
    }
    add_agent(owners, "agt_exact", **columns)
    with owners.read() as s:
        row = STORE.get(s, "agt_exact")
        assert row is not None
        for name, value in columns.items():
            assert getattr(row, name) == value, name
        assert row.parent_id is None


def test_unknown_and_unstorable_ids_are_not_found(owners: Database) -> None:
    add_agent(owners, "agt_1")
    with owners.read() as s:
        assert STORE.get(s, "agt_2") is None
        assert STORE.get(s, "agt_1\x00") is None
        assert STORE.get(s, "") is None
    with owners.write() as s:
        row = STORE.get(s, "agt_1", for_update=True)
        assert row is not None
        assert row.id == "agt_1"


def test_spiffe_ids_are_unique(owners: Database) -> None:
    add_agent(owners, "agt_1", spiffe_id="spiffe://t/agent/same")

    def add_twin() -> None:
        with owners.write() as s:
            STORE.add(s, agent_row("agt_2", spiffe_id="spiffe://t/agent/same"))

    with pytest.raises(IntegrityError):
        add_twin()
    with owners.read() as s:
        assert STORE.get(s, "agt_2") is None


def test_an_agent_needs_an_owner_that_exists(db: Database) -> None:
    def orphan() -> None:
        with db.write() as s:
            STORE.add(s, agent_row("agt_orphan", owner_id="usr_nobody"))

    with pytest.raises(IntegrityError):
        orphan()


def test_roles_and_supervisors_are_replaced_and_read_sorted(owners: Database) -> None:
    add_agent(owners, "agt_1")
    add_agent(owners, "agt_2")
    with owners.write() as s:
        STORE.set_roles(s, "agt_1", ["writer", "reader"])
        STORE.set_roles(s, "agt_1", ["zeta", "alpha"])  # replaces, never appends
        STORE.set_supervisors(s, "agt_1", ["usr_sup", "usr_other"])
        STORE.set_supervisors(s, "agt_2", ["usr_sup"])
        STORE.set_supervisors(s, "agt_2", [])
    with owners.read() as s:
        assert STORE.roles_of(s, ["agt_1", "agt_2", "agt_none"]) == {"agt_1": ["alpha", "zeta"]}
        assert STORE.supervisors_of(s, ["agt_1", "agt_2"]) == {"agt_1": ["usr_other", "usr_sup"]}
        assert STORE.roles_of(s, []) == {}
        assert STORE.supervisors_of(s, []) == {}
        assert STORE.usernames(s, ["usr_sup", "usr_sup", "usr_gone"]) == {"usr_sup": "sup"}
        assert STORE.usernames(s, []) == {}
        stewards = STORE.stewards(s, STORE.get(s, "agt_1"))  # type: ignore[arg-type]
        assert stewards == Stewards("usr_owner", frozenset({"usr_sup", "usr_other"}))


def test_a_supervisor_must_be_a_user(owners: Database) -> None:
    add_agent(owners, "agt_1")

    def supervise() -> None:
        with owners.write() as s:
            STORE.set_supervisors(s, "agt_1", ["usr_ghost"])

    with pytest.raises(IntegrityError):
        supervise()


@pytest.fixture
def registry(owners: Database) -> Database:
    """Eleven agents across owners, tiers, statuses, roles and supervision."""
    spec: list[tuple[str, dict[str, Any]]] = [
        ("agt_00", {}),
        ("agt_01", {"risk_tier": "high"}),
        ("agt_02", {"owner_id": "usr_other"}),
        ("agt_03", {"status": "suspended"}),
        ("agt_04", {"expires_at": T0_US - 1}),  # past: expired, though stored as active
        ("agt_05", {"status": "expired", "expires_at": T0_US - HOUR_US}),
        ("agt_06", {"owner_id": "usr_other", "risk_tier": "high"}),
        ("agt_07", {"status": "revoked"}),
        ("agt_08", {"expires_at": T0_US + HOUR_US}),  # future: still active
        ("agt_09", {"owner_id": "usr_sup"}),
        ("agt_10", {"owner_id": "usr_other", "status": "suspended", "expires_at": T0_US}),
    ]
    for agent_id, fields in spec:
        add_agent(owners, agent_id, **fields)
    with owners.write() as s:
        for agent_id in ("agt_01", "agt_02", "agt_06"):
            STORE.set_roles(s, agent_id, ["payments"])
        for agent_id in ("agt_02", "agt_06", "agt_09", "agt_10"):
            STORE.set_supervisors(s, agent_id, ["usr_sup"])
    return owners


def test_pages_walk_in_id_order_under_every_filter(registry: Database) -> None:
    every = [f"agt_{i:02}" for i in range(11)]
    assert _page(registry) == every
    assert _page(registry, risk_tier="high") == ["agt_01", "agt_06"]
    assert _page(registry, owner_id="usr_other") == ["agt_02", "agt_06", "agt_10"]
    assert _page(registry, role="payments") == ["agt_01", "agt_02", "agt_06"]
    assert _page(registry, role="payments", owner_id="usr_owner") == ["agt_01"]
    assert _page(registry, role="nobody") == []


def test_status_is_the_one_at_now(registry: Database) -> None:
    assert _page(registry, status="active") == [
        "agt_00",
        "agt_01",
        "agt_02",
        "agt_06",
        "agt_08",
        "agt_09",
    ]
    # agt_10 expired at T0 exactly: a deadline is passed when it is reached.
    assert _page(registry, status="expired") == ["agt_04", "agt_05", "agt_10"]
    assert _page(registry, status="suspended") == ["agt_03"]
    assert _page(registry, status="revoked") == ["agt_07"]
    later = T0_US + 2 * HOUR_US
    assert "agt_08" in _page(registry, status="expired", now_us=later)
    assert "agt_08" not in _page(registry, status="active", now_us=later)


def test_a_supervisor_sees_what_they_own_and_what_they_supervise(registry: Database) -> None:
    # agt_09 is owned (and supervised); the rest supervised; each once, in id order.
    assert _page(registry, visible_to="usr_sup") == ["agt_02", "agt_06", "agt_09", "agt_10"]
    assert _page(registry, visible_to="usr_sup", owner_id="usr_other") == [
        "agt_02",
        "agt_06",
        "agt_10",
    ]
    assert _page(registry, visible_to="usr_sup", owner_id="usr_sup") == ["agt_09"]
    assert _page(registry, visible_to="usr_sup", risk_tier="high") == ["agt_06"]
    assert _page(registry, visible_to="usr_owner") == [
        "agt_00", "agt_01", "agt_03", "agt_04", "agt_05", "agt_07", "agt_08",
    ]  # fmt: skip


def test_filters_no_row_could_match_find_nothing(registry: Database) -> None:
    with registry.read() as s:
        assert STORE.page(s, after=None, limit=5, status="active\x00") == []
        assert STORE.page(s, after=None, limit=5, role="pay\x00ments") == []
        assert STORE.page(s, after=None, limit=5, risk_tier="x" * 1000) == []


def test_descendants_come_nearest_generation_first_in_id_order(owners: Database) -> None:
    add_agent(owners, "agt_root")
    add_agent(owners, "agt_other")
    for child, parent in (("agt_c2", "agt_root"), ("agt_c1", "agt_root"),
                          ("agt_g2", "agt_c1"), ("agt_g1", "agt_c2"), ("agt_h1", "agt_g2"),
                          ("agt_x1", "agt_other")):  # fmt: skip
        add_agent(owners, child, parent_id=parent, lineage=f'["{parent}"]', lineage_kind="spawned")
    with owners.write() as s:
        STORE.revoke(s, ["agt_c2"], reason="gone", now_us=T0_US + 1)
    with owners.read() as s:
        found = STORE.descendants(s, "agt_root", limit=100)
        assert [(d.id, d.status) for d in found] == [
            ("agt_c1", "active"), ("agt_c2", "revoked"),  # whatever their status
            ("agt_g1", "active"), ("agt_g2", "active"),
            ("agt_h1", "active"),
        ]  # fmt: skip
        assert [d.id for d in STORE.descendants(s, "agt_root", limit=3)] == [
            "agt_c1", "agt_c2", "agt_g1",
        ]  # fmt: skip
        assert [d.id for d in STORE.descendants(s, "agt_g2", limit=100)] == ["agt_h1"]
        assert STORE.descendants(s, "agt_h1", limit=100) == []
        assert STORE.descendants(s, "agt_nobody\x00", limit=100) == []


def test_revoke_stores_status_reason_and_time_for_exactly_those(owners: Database) -> None:
    for agent_id in ("agt_a", "agt_b", "agt_c"):
        add_agent(owners, agent_id)
    with owners.write() as s:
        STORE.revoke(s, ["agt_a", "agt_c", "agt_nobody"], reason="compromised", now_us=T0_US + 5)
        STORE.revoke(s, [], reason="nothing", now_us=T0_US + 6)
    with owners.read() as s:
        rows = {a: STORE.get(s, a) for a in ("agt_a", "agt_b", "agt_c")}
        got = {a: (r.status, r.status_reason, r.updated_at) for a, r in rows.items() if r}
    assert got == {
        "agt_a": ("revoked", "compromised", T0_US + 5),
        "agt_b": ("active", None, T0_US),
        "agt_c": ("revoked", "compromised", T0_US + 5),
    }


def test_a_parent_must_exist(owners: Database) -> None:
    def orphan() -> None:
        with owners.write() as s:
            STORE.add(s, agent_row("agt_c", parent_id="agt_missing"))

    with pytest.raises(IntegrityError):
        orphan()
    with owners.read() as s:
        assert s.get(AgentRow, "agt_c") is None
