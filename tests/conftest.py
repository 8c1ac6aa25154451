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

import gc
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
# Monitoring runs in every test (windows, principal.risk, context.session), without risk
# rules: the suite's synthetic traffic (bursts of denials by design) would trip the default
# ones. Monitoring's own tests (test_monitor*.py) set the rules they exercise.
QUIET_MONITOR = '{"rules": []}'
os.environ["TETHER_MONITOR"] = QUIET_MONITOR
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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Python's cyclic collector in a test process: what the imports built stays (frozen), and
    it runs every 10,000 allocations with the oldest generation rarely. Its full collections
    walked a heap of several hundred thousand objects (Hypothesis, schemathesis, SQLAlchemy)
    ~0.2 s each: with the usual thresholds 8 % of a test process's CPU went to them."""
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


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


@dataclass(frozen=True)
class Prebuilt:
    """What every test of a module starts from besides the deployment (users with console
    passwords, say): ``build`` makes it through the real services of a started deployment
    once per test process and backend, and returns what the tests need to know of it (ids,
    tokens); each test then gets a copy of that database and data dir, as it gets a copy of
    the deployment (:func:`at_head`). For state that is the same in every test and costly to
    make: four console passwords were four argon2id hashes, ~0.7 s of CPU, per test."""

    name: str
    build: Callable[[Services], Any]
    # The services' clock. With one, the deployment too is started on it (its first events at
    # that clock's time, as ``make_services(clock=...)`` starts it), not copied.
    clock: Callable[[], Clock] | None = None


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
                        if not _RECYCLER.take_back(conn, schema):
                            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                except Exception as exc:  # reported at the end of the session
                    self.failures.append(f"{schema}: {exc}")
        finally:
            admin.dispose()

    def drain(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=120)
            self._thread = None
        for schema in _RECYCLER.leftovers():  # the pool and the template: nothing stays behind
            try:
                with _admin().connect() as conn:
                    conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            except Exception as exc:
                self.failures.append(f"{schema}: {exc}")


# What makes two schemas the same for a test: every relation with its columns (name, type,
# nullability), every trigger (and whether it is enabled), constraint and function body.
_FINGERPRINT = text("""
SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
  SELECT c.relname::text || ':' || c.relkind::text || ':' || coalesce(a.attname::text || '='
         || format_type(a.atttypid, a.atttypmod) || a.attnotnull::text, '') AS x
    FROM pg_class c
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
   WHERE c.relnamespace = CAST(:s AS regnamespace)
  UNION ALL
  SELECT 't:' || c.relname::text || ':' || t.tgname::text || ':' || t.tgenabled::text
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = CAST(:s AS regnamespace) AND NOT t.tgisinternal
  UNION ALL
  SELECT 'k:' || conname::text || ':' || md5(replace(pg_get_constraintdef(oid), :s || '.', ''))
    FROM pg_constraint WHERE connamespace = CAST(:s AS regnamespace)
  UNION ALL
  SELECT 'p:' || proname::text || ':' || md5(prosrc)
    FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace)
) q
""")


class _Recycler:
    """Finished tests' PostgreSQL schemas, emptied and used again instead of dropped.

    Creating a schema at head (the template's DDL) was ~70 ms of PostgreSQL's CPU per test and
    dropping it ~16 ms more, most of the server's work in a run, and the stream of created and
    dropped catalog rows bloats the catalogs (autovacuum is off on these machines), which
    slows every later DDL. A schema whose structure still matches the template's
    (:data:`_FINGERPRINT`: a test that added a trigger and failed before removing it does not
    match, and is dropped) has every row deleted and its sequences restarted (~2 ms; a
    ``VACUUM`` now and then keeps its tables from filling with dead rows), and the next test's
    :func:`at_head` renames it to its own schema's name: what it gets is exactly what the DDL
    would have built, an empty database at head."""

    POOL = 4  # schemas kept per test process; a fifth is dropped
    VACUUM_EVERY = 25  # recycles between two VACUUMs of a schema's tables

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: list[str] = []
        self._uses: dict[str, int] = {}
        self.fingerprint: str | None = None
        self.tables: list[str] = []
        self.sequences: list[str] = []
        self.template: str | None = None

    def learn(self, conn: Any, template: str) -> None:
        """What an empty schema at head looks like: ``template``'s structure."""
        self.template = template
        self.fingerprint = self._fingerprint(conn, template)
        tables = text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1")
        self.tables = [t for t in conn.execute(tables, {"s": template}).scalars()
                       if t != "alembic_version"]  # fmt: skip
        sequences = text("SELECT sequencename FROM pg_sequences WHERE schemaname = :s")
        self.sequences = list(conn.execute(sequences, {"s": template}).scalars())

    @staticmethod
    def _fingerprint(conn: Any, schema: str) -> str | None:
        """The structure's fingerprint and the revision Alembic has stamped (a test that
        stamps another revision on the same tables leaves a schema that is not at head)."""
        versioned = text("SELECT to_regclass(:t) IS NOT NULL")
        if not conn.execute(versioned, {"t": f"{schema}.alembic_version"}).scalar_one():
            return None
        revisions = conn.exec_driver_sql(f"SELECT version_num FROM {schema}.alembic_version")
        structure = conn.execute(_FINGERPRINT, {"s": schema}).scalar_one()
        return f"{structure} {sorted(revisions.scalars())}"

    def take_back(self, conn: Any, schema: str) -> str | None:
        """Empty ``schema`` into the pool if it still has the template's structure; its name
        there, or None if it is to be dropped."""
        with self._lock:
            if self.fingerprint is None or len(self._pool) >= self.POOL:
                return None
        fingerprint = self._fingerprint(conn, schema)
        if fingerprint is None or fingerprint != self.fingerprint:
            return None
        # As a replica, so that neither foreign keys nor the ledger's append-only triggers
        # stand in the way of emptying it.
        clean = ["SET session_replication_role = replica"]
        clean += [f"DELETE FROM {schema}.{t}" for t in self.tables]
        clean += [f"ALTER SEQUENCE {schema}.{q} RESTART" for q in self.sequences]
        clean.append("SET session_replication_role = DEFAULT")
        conn.connection.driver_connection.execute("; ".join(clean))
        with self._lock:
            uses = self._uses.pop(schema, 0) + 1
        if uses % self.VACUUM_EVERY == 0:
            conn.exec_driver_sql("VACUUM " + ", ".join(f"{schema}.{t}" for t in self.tables))
        pooled = f"p_{secrets.token_hex(6)}"
        conn.exec_driver_sql(f"ALTER SCHEMA {schema} RENAME TO {pooled}")
        with self._lock:
            self._uses[pooled] = uses
            self._pool.append(pooled)
        return pooled

    def give(self, conn: Any, schema: str, pooled: str | None = None) -> bool:
        """Make ``schema`` (new and empty) a recycled one at head (``pooled``, or any), if
        the pool has one."""
        with self._lock:
            if not self._pool or (pooled is not None and pooled not in self._pool):
                return False
            pooled = pooled or self._pool[-1]
            self._pool.remove(pooled)
            self._uses[schema] = self._uses.pop(pooled, 0)
        conn.connection.driver_connection.execute(
            f"DROP SCHEMA {schema}; ALTER SCHEMA {pooled} RENAME TO {schema}"
        )
        return True

    def leftovers(self) -> list[str]:
        with self._lock:
            left, self._pool = self._pool, []
        return [*left, *([self.template] if self.template else [])]


_RECYCLER = _Recycler()


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


# Tables the migrations themselves write rows into (the alert projector's cursor, ...).
_MIGRATION_ROWS = ("runtime_positions", "alert_state")


class _Templates:
    """The newest schema, built once per test process (one per xdist worker) by a real
    migration and then copied: for SQLite the migrated file, for PostgreSQL the DDL Alembic
    emits for the same upgrade (offline mode), run in each new schema (or a recycled schema of
    the same structure, :class:`_Recycler`). A migration per test was ~0.1 s of its setup (and
    the migration tests still migrate).

    Also a *deployment* built once per process the same way: the template bootstrapped by the
    real ``prepare()`` (its admin, admin token, signing keys and first ledger events, and the
    data dir's keys and token files). The ``services`` fixture starts from a copy of it, so
    ``prepare()`` there finds a started deployment, as on every start after the first one;
    the first start itself is what ``make_services``, ``backend`` and the server processes
    get (and test_bootstrap_config.py tests)."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._sqlite: Path | None = None
        self._sqlite_deployed: tuple[Path, Path] | None = None
        self._postgresql: str | None = None
        self._pg_deployed: tuple[str, Path, str] | None = None
        self._admin: Engine | None = None
        # (name, backend kind) -> (its database: SQLite file or PostgreSQL copy statements,
        # its data dir, what build returned)
        self._prebuilt: dict[tuple[str, str], tuple[Path | str, Path, Any]] = {}
        self._prebuilt_schemas: list[str] = []

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

    def sqlite_deployed(self) -> tuple[Path, Path]:
        """The bootstrapped SQLite file and its data dir."""
        if self._sqlite_deployed is None:
            path = self._tmp / "deployed.db"
            shutil.copyfile(self.sqlite(), path)
            data = self._tmp / "deployed-data"
            _bootstrap(Backend("sqlite", f"sqlite:///{path}", None), data)
            assert not Path(f"{path}-wal").exists()
            self._sqlite_deployed = path, data
        return self._sqlite_deployed

    def postgresql(self) -> str:
        if self._postgresql is None:
            db = Database(PG_URL)
            try:
                self._postgresql = migrate.upgrade_script(db)
            finally:
                db.dispose()
        return self._postgresql

    def pg_deployed(self) -> tuple[str, Path, str]:
        """The bootstrapped template schema, its data dir, and the statements that copy its
        rows into another schema at head (``{schema}`` to be filled in)."""
        if self._pg_deployed is None:
            template = f"tpl_{secrets.token_hex(6)}"
            with self.admin().connect() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {template}")
                self._run_script(conn, template)
                _RECYCLER.learn(conn, template)
            data = self._tmp / "deployed-pg-data"
            _bootstrap(Backend("postgresql", PG_URL, template), data)
            copy: list[str] = []
            with self.admin().connect() as conn:
                for table in _RECYCLER.tables:
                    rows = f"SELECT count(*) FROM {template}.{table}"
                    # (Rows the migrations themselves write, e.g. the alert projector's
                    # cursor, are in a migrated schema already.)
                    own = table in _MIGRATION_ROWS
                    if not own and conn.exec_driver_sql(rows).scalar_one():
                        copy.append(
                            f"INSERT INTO {{schema}}.{table} SELECT * FROM {template}.{table}"
                        )
                copy += _sequences_as_in(conn, template)
            # As a replica: foreign keys are not checked, so the tables' order does not matter.
            copy = ["SET session_replication_role = replica", *copy,
                    "SET session_replication_role = DEFAULT"]  # fmt: skip
            self._pg_deployed = template, data, "; ".join(copy)
        return self._pg_deployed

    def prebuilt(self, built: Prebuilt, kind: str) -> tuple[Path | str, Path, Any]:
        """``built`` made on a copy of the started deployment of kind ``kind``: the SQLite
        file, or the statements that copy its rows into another schema at head."""
        key = (built.name, kind)
        if key in self._prebuilt:
            return self._prebuilt[key]
        data = self._tmp / f"prebuilt-{built.name}-{kind}-data"
        if kind == "sqlite":
            path = self._tmp / f"prebuilt-{built.name}.db"
            backend = Backend("sqlite", f"sqlite:///{path}", None)
        else:
            backend = Backend("postgresql", PG_URL, f"w_{secrets.token_hex(6)}")
            self._prebuilt_schemas.append(backend.schema)  # type: ignore[arg-type]
            with self.admin().connect() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {backend.schema}")
        if built.clock is None:
            at_head(backend, self, deployed=data)
            svc = build_services(make_settings(backend, data))
        else:
            at_head(backend, self)
            svc = build_services(make_settings(backend, data), clock=built.clock())
        try:
            prepare(svc)
            value = built.build(svc)
        finally:
            svc.close()
        if backend.schema is None:
            assert not Path(f"{path}-wal").exists()
            self._prebuilt[key] = path, data, value
            return self._prebuilt[key]
        # Every table as the build left it (the ones the migrations write too), as a replica
        # (foreign keys unchecked: the order does not matter), and the sequences where it
        # left them.
        copy = ["SET session_replication_role = replica"]
        with self.admin().connect() as conn:
            for table in _RECYCLER.tables:
                rows = conn.exec_driver_sql(f"SELECT count(*) FROM {backend.schema}.{table}")
                if rows.scalar_one():
                    copy.append(f"DELETE FROM {{schema}}.{table}")
                    copy.append(
                        f"INSERT INTO {{schema}}.{table} SELECT * FROM {backend.schema}.{table}"
                    )
                elif table in _MIGRATION_ROWS:
                    copy.append(f"DELETE FROM {{schema}}.{table}")
            copy += _sequences_as_in(conn, backend.schema)
        copy.append("SET session_replication_role = DEFAULT")
        self._prebuilt[key] = "; ".join(copy), data, value
        return self._prebuilt[key]

    def _run_script(self, conn: Any, schema: str) -> None:
        conn.exec_driver_sql(f"SET search_path TO {schema}")
        try:
            # The script is Alembic's own BEGIN ... COMMIT; several statements in one round
            # trip, so straight to the driver (no parameters to bind).
            conn.connection.driver_connection.execute(self.postgresql())
        finally:
            conn.exec_driver_sql("RESET search_path")

    def admin(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
        return self._admin

    def close(self) -> None:
        for schema in self._prebuilt_schemas:
            _DROPPER.drop(schema)
        if self._admin is not None:
            self._admin.dispose()


def _sequences_as_in(conn: Any, source: str) -> list[str]:
    """Statements that set a new schema's (``{schema}``) sequences as ``source``'s stand."""
    out = []
    for seq in _RECYCLER.sequences:
        last, called = conn.exec_driver_sql(
            f"SELECT last_value, is_called FROM {source}.{seq}"
        ).one()
        if called:
            out.append(f"SELECT setval('{{schema}}.{seq}', {last})")
    return out


def _bootstrap(backend: Backend, data_dir: Path) -> None:
    svc = build_services(make_settings(backend, data_dir))
    try:
        prepare(svc)
    finally:
        svc.close()


@pytest.fixture(scope="session")
def schema_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory.mktemp("template"))
    yield templates
    templates.close()


def at_prebuilt(backend: Backend, templates: _Templates, data_dir: Path, built: Prebuilt) -> Any:
    """Bring an empty ``backend`` (and ``data_dir``) to a copy of ``built``; what its build
    returned."""
    source, data, value = templates.prebuilt(built, backend.name)
    if isinstance(source, Path):
        shutil.copyfile(source, backend.url.removeprefix("sqlite:///"))
    else:
        at_head(backend, templates)
        with templates.admin().connect() as conn:
            conn.connection.driver_connection.execute(source.format(schema=backend.schema))
    shutil.copytree(data, data_dir, dirs_exist_ok=True)
    return value


def at_head(backend: Backend, templates: _Templates, deployed: Path | None = None) -> None:
    """Bring an empty ``backend`` to the newest schema from the template; a database that
    was already migrated is left alone. With ``deployed`` (a data dir), bring it to the
    template's started deployment instead, its files copied into that data dir."""
    if backend.schema is None:
        path = Path(backend.url.removeprefix("sqlite:///"))
        if path.exists():
            return
        if deployed is None:
            shutil.copyfile(templates.sqlite(), path)
            return
        source, data = templates.sqlite_deployed()
        shutil.copyfile(source, path)
        shutil.copytree(data, deployed, dirs_exist_ok=True)
        return
    _template, data, copy = templates.pg_deployed()  # built once; the recycler learns from it
    with templates.admin().connect() as conn:
        # An index lookup: pg_tables scans pg_class, which the test database's stream of
        # created and dropped schemas bloats.
        versioned = text("SELECT to_regclass(:t) IS NOT NULL")
        if conn.execute(versioned, {"t": f"{backend.schema}.alembic_version"}).scalar_one():
            return
        if not _RECYCLER.give(conn, backend.schema):
            templates._run_script(conn, backend.schema)
        if deployed is not None:
            conn.connection.driver_connection.execute(copy.format(schema=backend.schema))
            shutil.copytree(data, deployed, dirs_exist_ok=True)


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
def prebuilt() -> Prebuilt | None:
    """What this test's ``services`` start from besides the deployment (:class:`Prebuilt`);
    none here, a module with one overrides this fixture."""
    return None


@pytest.fixture
def services(
    settings: Settings,
    backend: Backend,
    schema_templates: _Templates,
    prebuilt: Prebuilt | None,
) -> Iterator[Services]:
    if prebuilt is None:
        at_head(backend, schema_templates, deployed=settings.data_dir)
    else:
        at_prebuilt(backend, schema_templates, settings.data_dir, prebuilt)
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
