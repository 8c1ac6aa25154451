"""What the ledger tamper tests share: a small ledger with frequent checkpoints, and ways to
edit its database behind Tether's back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import text

from tests.conftest import AGENT_DEFAULTS, BOOTSTRAP_EVENTS, Api
from tether.agents.schemas import AgentCreate
from tether.audit.chain import event_hash
from tether.clock import to_micros
from tether.container import Services
from tether.jsonutil import canonical_text
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


def rewrite_from(services: Services, api: Api, seq: int) -> None:
    """Edit event ``seq`` and re-hash every event after it, as a forger with database access
    would: the chain is self-consistent again, only signed checkpoints can tell."""
    events = api.events()
    prev = events[seq - 2]["hash"] if seq > 1 else "0" * 64
    for ev in events[seq - 1 :]:
        details = {**ev["details"], "name": "forged"} if ev["seq"] == seq else ev["details"]
        body = {k: v for k, v in ev.items() if k != "hash"}
        body.update(
            details=details, prev_hash=prev, time=to_micros(datetime.fromisoformat(ev["time"]))
        )
        digest = event_hash(prev, body)
        tamper(
            services,
            "UPDATE audit_events SET details = :d, prev_hash = :p, hash = :h WHERE seq = :s",
            d=canonical_text(details),
            p=prev,
            h=digest,
            s=ev["seq"],
        )
        prev = digest


def verify(api: Api) -> dict[str, Any]:
    response = api.client.get("/v1/audit/verify")
    assert response.status_code == 200, response.text
    return dict(response.json())
