"""Dynamic PostgreSQL logins (issue 15, item 5), against the real PostgreSQL on the machine
(the database logins are minted on, whichever backend Tether itself runs on).

An allowed agent leases a login that works; a second agent's lease is another role; when
the lease ends — revoked, the agent killed, or expired — the role is gone and a session
opened with it is terminated. The password is in the agent's answer and nowhere else.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    BACKENDS,
    PG_URL,
    admin_client,
    assert_error,
    backend_for,
    bearer,
    make_settings,
)
from tests.pdp import Env, credential, env_of, push_policies, token
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services

POLICIES = """
@id("lease-readers")
permit (principal, action == Action::"secret.lease", resource == DatabaseRole::"reader");
"""
CREATION = (
    "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiry}}';"
    ' GRANT CONNECT ON DATABASE test TO "{{name}}";'
)


def _admin_dsn() -> str:
    if not PG_URL:
        pytest.skip("TETHER_TEST_POSTGRES_URL is empty: PostgreSQL half disabled explicitly")
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def _setup(e: Env) -> None:
    push_policies(e.http, POLICIES)
    stored = e.http.put("/v1/secrets/pg-admin", json={"value": _admin_dsn(), "broker_only": True})
    assert stored.status_code in (200, 201), stored.text
    made = e.http.put("/v1/secrets/db/connections/main", json={"dsn_secret": "pg-admin"})
    assert made.status_code == 200, made.text
    for role in ("reader", "writer"):
        body = {"connection": "main", "creation": CREATION, "ttl_seconds": 60}
        made = e.http.put(f"/v1/secrets/db/roles/{role}", json=body)
        assert made.status_code == 200, made.text


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    _admin_dsn()
    tmp = tmp_path_factory.mktemp(f"dblogins-{request.param}")
    with backend_for(request.param, tmp) as backend:
        services = build_services(make_settings(backend, tmp / "data"))
        try:
            prepare(services)
            with admin_client(services) as http, env_of(services, http) as e:
                _setup(e)
                yield e
        finally:
            services.close()


def agent_token(e: Env) -> tuple[str, str]:
    made = e.http.post("/v1/agents", json={"name": "dba", "owner": "admin", "purpose": "db",
                                           "risk_tier": "minimal"})  # fmt: skip
    assert made.status_code == 201, made.text
    agent_id = str(made.json()["id"])
    return agent_id, token(e, credential(e, agent_id))


def lease(e: Env, access: str, role: str = "reader") -> Any:
    return e.anon.post(f"/v1/secrets/db/{role}/lease", headers=bearer(access), json={})


def connect(login: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(host=login["host"], port=login["port"], dbname=login["database"],
                           user=login["username"], password=login["password"],
                           connect_timeout=5, autocommit=True)  # fmt: skip


def role_exists(name: str) -> bool:
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            is not None
        )


def test_a_leased_login_works_and_is_the_agents_alone(env: Env) -> None:
    agent, access = agent_token(env)
    got = lease(env, access)
    assert got.status_code == 201, got.text
    login = got.json()
    assert got.headers["cache-control"] == "no-store"
    assert login["username"].startswith("tether_")
    with connect(login) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (login["username"],)
    other_agent, other_access = agent_token(env)
    other = lease(env, other_access).json()
    assert other["username"] != login["username"]
    assert role_exists(other["username"])
    shown = env.http.get(f"/v1/secrets/leases/{login['lease_id']}").json()
    assert shown["login"] == login["username"]
    assert shown["agent"] == agent
    export = env.http.get("/v1/audit/export", params={"format": "jsonl"}).text
    assert login["username"] in export  # the login is on the record ...
    assert login["password"] not in export  # ... its password is not
    del other_agent


def test_a_denied_lease_is_403_and_mints_nothing(env: Env) -> None:
    _agent, access = agent_token(env)
    before = env.http.get("/v1/secrets/leases", params={"limit": 500}).json()["items"]
    denied = lease(env, access, "writer")
    assert_error(denied, 403, "access_denied")
    assert env.http.get("/v1/secrets/leases", params={"limit": 500}).json()["items"] == before
    assert_error(lease(env, access, "nosuch"), 403, "access_denied")


@pytest.mark.parametrize("how", ["revoke", "kill", "suspend"])
def test_when_the_lease_ends_the_role_and_its_sessions_are_gone(env: Env, how: str) -> None:
    agent, access = agent_token(env)
    login = lease(env, access).json()
    session = connect(login)
    assert session.execute("SELECT 1").fetchone() == (1,)
    if how == "revoke":
        ended = env.http.post(f"/v1/secrets/leases/{login['lease_id']}/revoke", json={})
    else:
        ended = env.api.act(agent, how, reason="done")
    assert ended.status_code == 200, ended.text
    env.services.db.drain()  # the drop runs after the commit, in the background
    assert not role_exists(login["username"])
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    with pytest.raises(psycopg.OperationalError):
        connect(login).close()
    assert env.http.get(f"/v1/secrets/leases/{login['lease_id']}").json()["state"] == "revoked"


def test_an_expired_lease_loses_its_role(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock(datetime.now(UTC))
    services = make_services(clock=clock)
    with admin_client(services) as http, env_of(services, http) as e:
        _setup(e)
        _agent, access = agent_token(e)
        login = lease(e, access).json()
        assert role_exists(login["username"])
        session = connect(login)
        assert services.db_logins.finish_drops() == 0  # live: kept
        clock.advance(61)
        assert services.db_logins.finish_drops() == 1
        assert not role_exists(login["username"])
        with pytest.raises(psycopg.OperationalError):  # its session was terminated
            session.execute("SELECT 1")
        session.close()
        assert services.db_logins.finish_drops() == 0  # once


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"connection": "main", "creation": 'CREATE ROLE "{{name}}"'}, "creation"),
        ({"connection": "main", "creation": CREATION + " {{secret}}"}, "creation"),
        ({"connection": "nope", "creation": CREATION}, "connection"),
        ({"connection": "main", "creation": CREATION, "ttl_seconds": 5}, "ttl_seconds"),
    ],
)
def test_a_bad_role_names_the_field(env: Env, body: dict[str, Any], field: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    got = env.http.put(f"/v1/secrets/db/roles/{name}", json=body)
    assert got.status_code == 422, got.text
    assert field in str(got.json()["error"])
    roles = env.http.get("/v1/secrets/db/roles").json()["items"]
    assert name not in [r["name"] for r in roles]


def test_logins_minted_and_dropped_at_once_all_succeed(env: Env) -> None:
    """Granting on the database and dropping what was granted touch the same catalog rows:
    Tether takes its turn on the database (an advisory lock) instead of failing a lease with
    PostgreSQL's "tuple concurrently updated"."""
    agents = [agent_token(env)[1] for _ in range(4)]

    def churn(access: str) -> list[int]:
        statuses = []
        for _ in range(3):
            got = lease(env, access)
            statuses.append(got.status_code)
            if got.status_code == 201:
                env.http.post(f"/v1/secrets/leases/{got.json()['lease_id']}/revoke", json={})
        return statuses

    with ThreadPoolExecutor(4) as pool:
        results = [s for statuses in pool.map(churn, agents) for s in statuses]
    env.services.db.drain()
    assert results == [201] * 12
