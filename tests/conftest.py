"""Fixtures. Every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``TETHER_TEST_POSTGRES_URL`` (the Makefile and .ci/run set it); each
test gets its own schema, migrated from scratch and dropped afterwards. If the variable is
set and the server is unreachable, the PostgreSQL half fails — it never silently skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from tether.api.app import create_app
from tether.bootstrap import prepare
from tether.clock import Clock
from tether.config import Settings
from tether.container import Services, build_services

PG_URL = os.environ.get("TETHER_TEST_POSTGRES_URL", "")
# What a fresh deployment's ledger holds: system.bootstrapped, key.created (signing keys).
BOOTSTRAP_EVENTS = 2
BACKENDS = ["sqlite", "postgresql"]


@dataclass
class Backend:
    name: str
    url: str
    schema: str | None


@contextmanager
def backend_for(name: str, tmp: Path) -> Iterator[Backend]:
    """A fresh database of kind ``name``: a SQLite file in ``tmp``, or a new PostgreSQL schema
    dropped afterwards (never a silent skip when TETHER_TEST_POSTGRES_URL is set)."""
    if name == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp / 'tether.db'}", None)
        return
    if not PG_URL:
        pytest.skip("TETHER_TEST_POSTGRES_URL is empty: PostgreSQL half disabled explicitly")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield Backend("postgresql", PG_URL, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, tmp_path) as chosen:
        yield chosen


def make_settings(backend: Backend, data_dir: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=backend.url,
        database_schema=backend.schema,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(backend, tmp_path / "data")


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = build_services(settings)
    prepare(svc)
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def admin_token(services: Services) -> str:
    return services.settings.admin_token_path.read_text().strip()


@pytest.fixture
def client(services: Services, admin_token: str) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as c:
        c.headers["Authorization"] = f"Bearer {admin_token}"
        yield c


# -- Shared helpers for the acceptance suites ------------------------------------------------

AGENT_DEFAULTS: dict[str, Any] = {
    "name": "worker",
    "owner": "admin",
    "purpose": "acceptance tests",
    "risk_tier": "minimal",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The API's one error shape, with this status (and code); returns the inner object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


class Api:
    """Helpers over the HTTP API; each one asserts the status it needs, so setup never lies."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def user(self, username: str, role: str = "supervisor") -> dict[str, Any]:
        """A new user plus a fresh bearer token for it under ``"token"``."""
        created = self.client.post("/v1/users", json={"username": username, "role": role})
        assert created.status_code == 201, created.text
        user = dict(created.json())
        token = self.client.post(f"/v1/users/{user['id']}/tokens", json={})
        assert token.status_code == 201, token.text
        user["token"] = token.json()["token"]
        return user

    def agent(self, token: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {**AGENT_DEFAULTS, **fields}
        headers = bearer(token) if token else None
        response = self.client.post("/v1/agents", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, agent_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/agents/{agent_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def act(self, agent_id: str, op: str, token: str | None = None, **body: Any) -> Any:
        """``POST /v1/agents/{id}/{op}`` (``op="patch"`` sends a PATCH); returns the response."""
        headers = bearer(token) if token else None
        if op == "patch":
            return self.client.patch(f"/v1/agents/{agent_id}", json=body, headers=headers)
        return self.client.post(f"/v1/agents/{agent_id}/{op}", json=body, headers=headers)

    def ok(self, agent_id: str, op: str, **body: Any) -> dict[str, Any]:
        response = self.act(agent_id, op, **body)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def _all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
            response = self.client.get(path, params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """Every ledger event (``GET /v1/audit/events``, all pages), in seq order."""
        return self._all("/v1/audit/events", **filters)

    def new_events(self, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events appended since ``before`` was read; the ones before must be untouched."""
        after = self.events()
        assert after[: len(before)] == before
        return after[len(before) :]

    def agents(self, **filters: Any) -> list[dict[str, Any]]:
        return self._all("/v1/agents", **filters)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Everything a failed request must leave alone: the ledger and every agent."""
        return self.events(), self.agents()


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


@pytest.fixture
def make_services(backend: Backend, tmp_path: Path) -> Iterator[Callable[..., Services]]:
    """Build (and bootstrap) services on this test's database with other settings or a clock.

    Every call shares the data dir, so all of them use the same keys and admin token.
    """
    built: list[Services] = []

    def factory(*, clock: Clock | None = None, **extra: object) -> Services:
        svc = build_services(make_settings(backend, tmp_path / "data", **extra), clock=clock)
        built.append(svc)
        prepare(svc)
        return svc

    yield factory
    for svc in built:
        svc.close()


@contextmanager
def admin_client(services: Services) -> Iterator[TestClient]:
    """A client of an app over ``services``, sending the bootstrap admin's token."""
    token = services.settings.admin_token_path.read_text().strip()
    with TestClient(create_app(services)) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c
