"""The decision path's agent views: what many agents have in common is shared between their
views, what is an agent's own is not, and the runtime's full load (batched) builds the views
the incremental apply builds."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tether.agents import directory
from tether.agents.schemas import AgentCreate
from tether.clock import to_micros
from tether.container import Services
from tether.policy.entities import AgentView, agent_view, without_roles
from tether.policy.runtime import AgentSection, view_of
from tether.principals import SYSTEM, Role


def _view(id: str, **changed: Any) -> AgentView:
    fields: dict[str, Any] = {
        "id": id, "name": id, "owner_id": "usr_owner", "purpose": "p", "risk_tier": "minimal",
        "status": "active", "attributes": {"team": "a"}, "expires_at": None,
        "roles": ["writer", "reader"], "supervisors": [],
    }  # fmt: skip
    return agent_view(**{**fields, **changed})


def test_agents_with_the_same_roles_share_their_sets() -> None:
    a, b = _view("agt_a"), _view("agt_b", roles=("reader", "writer", "reader"))
    assert a.roles == {"reader", "writer"}
    assert a.parents == {("Role", "reader"), ("Role", "writer")}
    assert b.roles is a.roles
    assert b.parents is a.parents
    assert b.supervisors is a.supervisors == frozenset()
    assert b.liveness is a.liveness  # the same status, no expiry
    with_sups = _view("agt_c", supervisors=["usr_y", "usr_x"])
    assert _view("agt_d", supervisors=("usr_x", "usr_y")).supervisors is with_sups.supervisors
    dated = _view("agt_e", expires_at=5)
    assert dated.liveness.expires_at == 5
    assert dated.liveness is not a.liveness
    fewer = without_roles(a, {"writer"})
    assert fewer.roles is _view("agt_f", roles=["reader"]).roles
    assert orjson.loads(fewer.entity)["parents"] == [{"type": "Role", "id": "reader"}]


def test_each_version_of_an_agent_has_its_own_entity_text() -> None:
    before = _view("agt_a")
    again = _view("agt_a")
    changed = _view("agt_a", status="suspended")
    # Each view joins its own text (a changed agent's differs; the engine's caches key by
    # the text, so an unchanged one is the same input).
    assert again.entity == before.entity
    assert again.entity is not before.entity
    assert changed.entity is not before.entity
    assert orjson.loads(changed.entity)["attrs"]["status"] == "suspended"
    assert changed.roles is before.roles


def test_the_entity_is_built_as_cedar_reads_it() -> None:
    attributes = {"team": "a", "n": 3, "ok": True, "schedule": "daily 09:00-17:00"}
    view = _view("agt_a", attributes=attributes)
    assert orjson.loads(view.entity) == {
        "uid": {"type": "Agent", "id": "agt_a"},
        "attrs": {"status": "active", "risk_tier": "minimal", "owner": "usr_owner",
                  "purpose": "p", "name": "agt_a", "risk": {"score": 0, "level": "low"}},
        "parents": [{"type": "Role", "id": "reader"}, {"type": "Role", "id": "writer"}],
        "tags": {"team": "a", "n": "3", "ok": "true", "schedule": "daily 09:00-17:00"},
    }  # fmt: skip
    assert view.schedule is not None


def test_the_full_load_builds_the_views_a_change_builds(services: Services) -> None:
    sup = services.users.create(SYSTEM, username="sup", role=Role.SUPERVISOR)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    specs: list[dict[str, Any]] = [
        {"roles": ["b.role", "a.role"], "supervisors": [sup.id],
         "attributes": {"schedule": "mon-fri 08:00-18:00 Europe/Berlin", "n": 2},
         "expires_at": expires.isoformat()},
        {"roles": ["a.role", "b.role"]},
        {"attributes": {"team": "x"}},
        *({"roles": [f"r{i % 3}"]} for i in range(7)),
    ]  # fmt: skip
    made = [services.agents.create(SYSTEM, AgentCreate.model_validate(
        {"name": f"v{i}", "owner": "admin", "purpose": "views", "risk_tier": "minimal", **spec}
    )).id for i, spec in enumerate(specs)]  # fmt: skip
    section = AgentSection()
    with services.db.read() as s:
        section.load(s, 0)
        one_by_one = {r.id: view_of(r) for r in directory.records(s, made)}
        # Batches that end mid-registry and one that ends exactly at its end.
        for batch in (3, 1, len(section.views)):
            assert [r.id for r in directory.every_record(s, batch=batch)] == sorted(section.views)
    assert set(made) <= section.views.keys()
    for agent_id in made:
        loaded, applied = section.views[agent_id], one_by_one[agent_id]
        for field in fields(AgentView):
            if field.name not in ("entity", "schedule"):
                assert getattr(loaded, field.name) == getattr(applied, field.name), field.name
        assert orjson.loads(loaded.entity) == orjson.loads(applied.entity)
        assert (loaded.schedule is None) == (applied.schedule is None)
    first = section.views[made[0]]
    assert first.roles == {"a.role", "b.role"}
    assert first.supervisors == {sup.id}
    assert first.expires_at == to_micros(expires)
    assert first.liveness.expires_at == first.expires_at
    assert first.schedule is not None
    assert orjson.loads(first.entity)["tags"] == {
        "schedule": "mon-fri 08:00-18:00 Europe/Berlin",
        "n": "2",
    }
    second = section.views[made[1]]
    assert second.roles is first.roles
    assert second.parents is first.parents
    assert second.supervisors == frozenset()
    assert second.expires_at is None
    assert section.views[made[2]].roles == frozenset()
