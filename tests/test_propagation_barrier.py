"""A change is enforced by every running worker before the call that made it returns
(``tether.runtime.positions``), on SQLite and PostgreSQL.

Two apps on one database in this process are two workers: each has its own runtime (started
by its app), told of the other's commits only asynchronously (NOTIFY, or SQLite's wake-up
pipes). Right after a kill, a suspension or a freeze made through one returns, the other's
snapshot already holds it — every time, no retry — and a worker that stops is no longer
waited for.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.testclient import TestClient

from tests.conftest import AGENT_DEFAULTS, bearer
from tether.api.app import create_app
from tether.container import Services


def test_the_other_worker_holds_each_change_when_the_call_returns(
    make_services: Callable[..., Services],
) -> None:
    one, two = make_services(), make_services()
    token = one.settings.admin_token_path.read_text().strip()
    with TestClient(create_app(one)) as a, TestClient(create_app(two)):
        a.headers.update(bearer(token))
        agents = [a.post("/v1/agents", json={**AGENT_DEFAULTS, "name": f"w{i}", "roles": ["ops"]})
                  .json()["id"] for i in range(8)]  # fmt: skip
        views = two.decisions.runtime.agents
        assert all(views[i].status == "active" for i in agents)  # creation was waited for too
        for agent_id in agents[:4]:
            a.post(f"/v1/agents/{agent_id}/kill", json={"reason": "r"}).raise_for_status()
            assert two.decisions.runtime.agents[agent_id].status == "revoked"
        for agent_id in agents[4:6]:
            a.post(f"/v1/agents/{agent_id}/suspend", json={"reason": "r"}).raise_for_status()
            assert two.decisions.runtime.agents[agent_id].status == "suspended"
        a.post("/v1/freeze", json={"reason": "r", "scope": {"role": "ops"}}).raise_for_status()
        assert [f.scope.role for f in two.decisions.runtime.freezes] == ["ops"]
        a.delete("/v1/freeze").raise_for_status()
        assert two.decisions.runtime.freezes == ()


def test_a_stopped_worker_is_not_waited_for(make_services: Callable[..., Services]) -> None:
    one, two = make_services(), make_services()
    token = one.settings.admin_token_path.read_text().strip()
    with TestClient(create_app(one)) as a:
        a.headers.update(bearer(token))
        with TestClient(create_app(two)), one.db.read() as s:
            assert one.runtime.positions.behind(s, 10**12) == [two.runtime.id]
        # Stopped: it withdrew its position, so nobody waits for it (not even for a change
        # it could never have applied).
        with one.db.read() as s:
            assert one.runtime.positions.behind(s, 10**12) == []
        assert one.runtime.positions.await_applied(10**12, timeout=0) is True
        made = a.post("/v1/agents", json=AGENT_DEFAULTS)
        assert made.status_code == 201, made.text
