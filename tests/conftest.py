"""Fixtures. Every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``TETHER_TEST_POSTGRES_URL`` (the Makefile and .ci/run set it); each
test gets its own schema, dropped afterwards. If the variable is set and the server is
unreachable, the PostgreSQL half fails — it never silently skips.

``backend`` is an empty database: what a first start sees (test_bootstrap_config.py and every
server process migrate it for real). ``services`` and ``make_services`` first bring it to the
newest schema from a template built once per test process (:func:`at_head`), so the real
``prepare()`` finds nothing to migrate; test_schema_template.py holds the template to what a
migration builds.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from starlette.testclient import TestClient

from tether.api.app import create_app
from tether.bootstrap import prepare
from tether.clock import Clock
from tether.config import Settings
from tether.container import Services, build_services
from tether.db import Database, migrate

PG_URL = os.environ.get("TETHER_TEST_POSTGRES_URL", "")
# What a fresh deployment's ledger holds: system.bootstrapped, key.created (signing keys).
BOOTSTRAP_EVENTS = 2
BACKENDS = ["sqlite", "postgresql"]


# The few tests that take most of a run (the schemathesis runs alone were 40% of it). Run first,
# with work stealing, they end no later than the rest: under xdist's default "load"
# distribution all four schemathesis runs went to one worker, which finished minutes after the
# other (2026-12: 495 s against 316 s of work).
_LONGEST_FIRST = (
    "test_schemathesis_finds_nothing",
    "test_schemathesis_finds_nothing_as_an_auditor",
    "test_engine_matches_plain_cedar",
    "test_batch_matches_single",
    "test_a_change_reaches_every_worker",
    "test_two_workers_concurrent_writers_keep_one_chain",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    last = len(rank)
    # Stable: everything else keeps its order (every worker must collect the same list).
    items.sort(key=lambda item: rank.get(getattr(item, "originalname", item.name), last))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work stealing for ``-n`` without an explicit ``--dist``: a worker that runs out of tests
    takes half of what another has left, instead of idling while the other runs long ones."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)


@dataclass
class Backend:
    name: str
    url: str
    schema: str | None


class _Dropper:
    """Drops finished tests' PostgreSQL schemas on a thread of its own, so that a test's
    teardown does not wait for the catalog work (~10-70 ms a schema here): the next test
    starts at once. Drained at the end of the session (``pytest_sessionfinish``)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    def drop(self, schema: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="schema-dropper", daemon=True)
            self._thread.start()
        self._queue.put(schema)

    def _run(self) -> None:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
        try:
            while (schema := self._queue.get()) is not None:
                try:
                    with admin.connect() as conn:
                        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                except Exception as exc:  # reported at the end of the session
                    self.failures.append(f"{schema}: {exc}")
        finally:
            admin.dispose()

    def drain(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=120)
            self._thread = None


_DROPPER = _Dropper()


@cache
def _admin() -> Engine:
    """This test process's connection for creating schemas (one, kept open)."""
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _DROPPER.drain()
    if _DROPPER.failures:  # a schema left behind is litter, not a failed test
        print(f"\nleft {len(_DROPPER.failures)} test schema(s): {_DROPPER.failures[:3]}")


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
    with _admin().connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield Backend("postgresql", PG_URL, schema)
    finally:
        _DROPPER.drop(schema)


# Where the time of the suite went (2026-12, 2 cores): fsync. Every commit of a test database
# waits for the disk: SQLite's ``synchronous=FULL`` on the ext4 under /tmp, PostgreSQL's WAL
# flush (3 ms a commit here, 0.2 ms without). Test databases are thrown away, so their
# durability buys nothing: temporary directories live in RAM (/dev/shm, tmpfs, where fsync
# returns at once) and this process's PostgreSQL sessions commit asynchronously. Both are
# invisible to the code under test: it issues the same pragmas, fsyncs and commits, and a
# commit is visible to every other session the moment it returns either way (only a crash of
# the server could lose it). Server and spawned processes are started as in production.
if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/dev/shm")


@event.listens_for(Engine, "connect")
def _commit_asynchronously(dbapi_conn: Any, _record: Any) -> None:
    if type(dbapi_conn).__module__.startswith("psycopg"):
        with dbapi_conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_conn.commit()


class _Templates:
    """The newest schema, built once per test process (one per xdist worker) by a real
    migration and then copied: for SQLite the migrated file, for PostgreSQL the DDL Alembic
    emits for the same upgrade (offline mode), run in each new schema. A migration per test
    was ~0.1 s of its setup (and the migration tests still migrate)."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._sqlite: Path | None = None
        self._postgresql: str | None = None
        self._admin: Engine | None = None

    def sqlite(self) -> Path:
        if self._sqlite is None:
            path = self._tmp / "template.db"
            db = Database(f"sqlite:///{path}")
            try:
                migrate.upgrade(db)
            finally:
                db.dispose()  # the last connection closed: the WAL is folded into the file
            assert not Path(f"{path}-wal").exists()
            self._sqlite = path
        return self._sqlite

    def postgresql(self) -> str:
        if self._postgresql is None:
            db = Database(PG_URL)
            try:
                self._postgresql = migrate.upgrade_script(db)
            finally:
                db.dispose()
        return self._postgresql

    def admin(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            self._admin.dispose()


@pytest.fixture(scope="session")
def schema_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory.mktemp("template"))
    yield templates
    templates.close()


def at_head(backend: Backend, templates: _Templates) -> None:
    """Bring an empty ``backend`` to the newest schema from the template; a database that
    was already migrated is left alone."""
    if backend.schema is None:
        path = Path(backend.url.removeprefix("sqlite:///"))
        if not path.exists():
            shutil.copyfile(templates.sqlite(), path)
        return
    script = templates.postgresql()
    with templates.admin().connect() as conn:
        # An index lookup: pg_tables scans pg_class, which the test database's stream of
        # created and dropped schemas bloats.
        versioned = text("SELECT to_regclass(:t) IS NOT NULL")
        if conn.execute(versioned, {"t": f"{backend.schema}.alembic_version"}).scalar_one():
            return
        conn.exec_driver_sql(f"SET search_path TO {backend.schema}")
        try:
            # The script is Alembic's own BEGIN ... COMMIT; several statements in one round
            # trip, so straight to the driver (no parameters to bind).
            conn.connection.driver_connection.execute(script)  # type: ignore[union-attr]
        finally:
            conn.exec_driver_sql("RESET search_path")


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
def services(
    settings: Settings, backend: Backend, schema_templates: _Templates
) -> Iterator[Services]:
    at_head(backend, schema_templates)
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
def make_services(
    backend: Backend, tmp_path: Path, schema_templates: _Templates
) -> Iterator[Callable[..., Services]]:
    """Build (and bootstrap) services on this test's database with other settings or a clock.

    Every call shares the data dir, so all of them use the same keys and admin token.
    """
    built: list[Services] = []

    def factory(*, clock: Clock | None = None, **extra: object) -> Services:
        if not built:
            at_head(backend, schema_templates)
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
