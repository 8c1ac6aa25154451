"""Fixtures. Every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``TETHER_TEST_POSTGRES_URL`` (the Makefile and .ci/run set it); each
test gets its own schema, migrated from scratch and dropped afterwards. If the variable is
set and the server is unreachable, the PostgreSQL half fails — it never silently skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from tether.api.app import create_app
from tether.bootstrap import prepare
from tether.config import Settings
from tether.container import Services, build_services

PG_URL = os.environ.get("TETHER_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


@dataclass
class Backend:
    name: str
    url: str
    schema: str | None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'tether.db'}", None)
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
