"""The store contract suites: one module per store, written once, run on every backend.

Each test gets ``db``, an empty database at the newest schema on SQLite and on PostgreSQL
(the ``backend`` parameter), with no services built on it: a contract speaks to the store
itself, in the store's own terms (sessions, rows, values), so a new backend — or a new
implementation of a store — proves itself by passing the same module, as ory/hydra's
persister suites do for each of its databases. Rows that a store needs to refer to (an
agent's owner, a credential's agent) are made with the small factories here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Backend, _Templates, at_head
from tether.agents.models import AgentRow
from tether.clock import to_micros
from tether.db import Database
from tether.users.models import UserRow

# A fixed instant the contracts count from: their times are values, never the wall clock.
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0_US = to_micros(T0)


@pytest.fixture
def db(backend: Backend, schema_templates: _Templates) -> Iterator[Database]:
    at_head(backend, schema_templates)
    database = Database(backend.url, schema=backend.schema)
    try:
        yield database
    finally:
        database.dispose()


def add_user(
    db: Database, user_id: str, *, username: str | None = None, role: str = "supervisor"
) -> None:
    with db.write() as s:
        s.add(UserRow(id=user_id, username=username or user_id, role=role, created_at=T0_US))


def agent_row(agent_id: str, *, owner_id: str = "usr_owner", **fields: Any) -> AgentRow:
    """An unsaved agent row with sensible defaults; ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": agent_id,
        "spiffe_id": f"spiffe://contract.test/agent/{agent_id}",
        "name": agent_id,
        "owner_id": owner_id,
        "purpose": "contract tests",
        "risk_tier": "minimal",
        "status": "active",
        "attributes": "{}",
        "lineage": "[]",
        "created_at": T0_US,
        "updated_at": T0_US,
    }
    return AgentRow(**{**values, **fields})


def add_agent(db: Database, agent_id: str, *, owner_id: str = "usr_owner", **fields: Any) -> None:
    """Save an agent row (its owner must exist: see :func:`add_user`)."""
    with db.write() as s:
        s.add(agent_row(agent_id, owner_id=owner_id, **fields))
