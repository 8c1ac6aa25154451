"""What the ledger tamper tests share: a small ledger with frequent checkpoints, and ways to
edit its database behind Tether's back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from tests.conftest import AGENT_DEFAULTS, BOOTSTRAP_EVENTS, Api
from tether.agents.schemas import AgentCreate
from tether.container import Services
from tether.principals import SYSTEM

EVERY = 5  # a checkpoint every five events
EVENTS = 12


def create_agents(services: Services, n: int) -> None:
    for i in range(n):
        spec = AgentCreate.model_validate({**AGENT_DEFAULTS, "name": f"agent-{i}"})
        services.agents.create(SYSTEM, spec)


def small_ledger(make_services: Callable[..., Services]) -> Services:
    """:data:`EVENTS` events, signed every :data:`EVERY`."""
    services = make_services(checkpoint_every_events=EVERY)
    create_agents(services, EVENTS - BOOTSTRAP_EVENTS)
    return services


def tamper(services: Services, statement: str, **params: Any) -> None:
    """Tamper with the database directly, behind Tether's back."""
    with services.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def verify(api: Api) -> dict[str, Any]:
    response = api.client.get("/v1/audit/verify")
    assert response.status_code == 200, response.text
    return dict(response.json())
