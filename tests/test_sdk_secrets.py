"""The agent SDK's secrets (``AgentClient.secret``, ``release_secrets``, ``revoke_lease``,
``database_login``) against the real app in-process, on both backends, with the server's and
the client's clocks frozen together: a value held under its lease (one read on the record),
renewed near its end, read afresh once the lease is revoked, the refusals as
:class:`SecretError` with the server's code, DPoP-bound tokens. A database login's shape and
the failures a real server cannot be made to give are checked against scripted transports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import orjson
import psycopg
import pytest
from fastapi import FastAPI
from joserfc.jwk import ECKey
from starlette.testclient import TestClient

import tether
from tests.conftest import PG_URL
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.sdk import AgentClient, DatabaseLogin, SecretError

BASE = "http://testserver"  # the TestClient's origin, made the issuer via public_url
START = 1_800_000_000
TEAM = """
@id("read-team-secrets")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("team") };
"""
OTHER = TEAM.replace('"team"', '"finance"').replace("read-team", "read-finance")
DB_ROUTE = "/v1/secrets/db/{role}/lease"


class Transport(httpx.BaseTransport):
    """Hands every request to the app (through a TestClient), counting them by path; a path
    in ``unreachable`` fails as a refused connection."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.paths: list[str] = []
        self.unreachable: set[str] = set()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.paths.append(request.url.path)
        if request.url.path in self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        return self.app.send(request)

    def count(self, suffix: str) -> int:
        return sum(path.endswith(suffix) for path in self.paths)


@dataclass
class Server:
    services: Services
    clock: FrozenClock
    api: FastAPI
    app: TestClient
    transport: Transport
    http: httpx.Client
    admin: dict[str, str] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock.now().timestamp()

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        got = self.app.request(method, path, headers=self.admin, **kwargs)
        assert got.status_code in (200, 201), got.text
        return got.json()

    def policies(self, text: str) -> None:
        self.ok("PUT", "/v1/policies", json={"policies": text})

    def put(self, name: str, value: str, **fields: Any) -> None:
        self.ok("PUT", f"/v1/secrets/{name}", json={"value": value, **fields})

    def agent(self, **kwargs: Any) -> AgentClient:
        """A new agent with an API key (or ``private_key``, registered), as an SDK client."""
        body = {"name": "bot", "owner": "admin", "purpose": "p", "risk_tier": "minimal"}
        agent_id = self.ok("POST", "/v1/agents", json=body)["id"]
        key = kwargs.get("private_key")
        if key is None:
            made = self.ok("POST", f"/v1/agents/{agent_id}/credentials",
                           json={"type": "api_key"})  # fmt: skip
            kwargs["client_secret"] = made["client_secret"]
        else:
            jwk = dict(key.as_dict(private=False))
            self.ok("POST", f"/v1/agents/{agent_id}/credentials",
                    json={"type": "public_key", "jwk": jwk})  # fmt: skip
        return AgentClient(BASE, agent_id, http=self.http, clock=self.now, **kwargs)

    def events(self, type_: str) -> list[dict[str, Any]]:
        page = self.ok("GET", "/v1/audit/events", params={"type": type_, "limit": 500})
        assert page["next_cursor"] is None
        return list(page["items"])

    def leases_read(self, agent: AgentClient) -> list[str]:
        """The lease of each ``secret.read`` of this agent on the record, in order."""
        return [e["details"]["lease_id"] for e in self.events("secret.read")
                if e["agent_id"] == agent.client_id]  # fmt: skip

    def lease(self, lease_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/v1/secrets/leases/{lease_id}"))


@contextmanager
def deployed(
    make_services: Callable[..., Services], start: datetime | None = None, **settings: Any
) -> Iterator[Server]:
    """The app over services with a frozen clock (the agents' clock too) at ``start`` and
    ``settings``, the TEAM policy in force."""
    clock = FrozenClock(start or datetime.fromtimestamp(START, UTC))
    services = make_services(clock=clock, public_url=BASE, **settings)
    admin = {"Authorization": f"Bearer {services.settings.admin_token_path.read_text().strip()}"}
    api = create_app(services)
    with TestClient(api) as app:
        transport = Transport(app)
        with httpx.Client(transport=transport) as http:
            server = Server(services, clock, api, app, transport, http, admin)
            server.policies(TEAM)
            yield server


@pytest.fixture
def server(make_services: Callable[..., Services]) -> Iterator[Server]:
    with deployed(make_services) as server:
        yield server


# -- held under a lease --------------------------------------------------------------------------


def test_a_value_is_held_renewed_near_its_end_and_read_afresh_once_revoked(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.put("crm.api-key", "key-v1", labels=["team"], lease_seconds=60)
    agent = server.agent()
    assert agent.secret("crm.api-key") == "key-v1"
    (first,) = server.leases_read(agent)
    server.clock.advance(53)  # 7 s left: more than the margin (a tenth of 60 s)
    assert agent.secret("crm.api-key") == "key-v1"
    assert server.leases_read(agent) == [first]  # one read on the record: the value was held
    assert server.events("lease.renewed") == []

    server.clock.advance(1)  # within the last 6 s: renewed, and the value kept
    assert agent.secret("crm.api-key") == "key-v1"
    (renewed,) = server.events("lease.renewed")
    assert renewed["details"]["lease_id"] == first
    assert server.leases_read(agent) == [first]
    assert server.lease(first)["expires_at"] == "2027-01-15T08:01:54Z"  # START + 54 + 60

    # A new version is read only once the lease is over: an admin revokes it.
    server.put("crm.api-key", "key-v2")
    server.ok("POST", f"/v1/secrets/leases/{first}/revoke", json={})
    server.clock.advance(50)  # the client has not been told yet, and has no reason to ask
    assert agent.secret("crm.api-key") == "key-v1"
    server.clock.advance(5)  # within the margin: the renewal is refused (409 lease_revoked)
    assert agent.secret("crm.api-key") == "key-v2"
    assert server.transport.count("/renew") == 2
    first_again, second = server.leases_read(agent)
    assert first_again == first
    assert second != first
    assert server.lease(second)["state"] == "active"
    assert len(server.events("lease.renewed")) == 1
    assert "key-v1" not in caplog.text
    assert "key-v2" not in caplog.text


def test_a_lease_at_its_longest_is_replaced_by_a_fresh_read(
    make_services: Callable[..., Services],
) -> None:
    with deployed(make_services, secret_lease_max_seconds=90) as server:
        server.put("token", "t", labels=["team"], lease_seconds=60)
        agent = server.agent()
        assert agent.secret("token") == "t"
        server.clock.advance(55)  # renewed to the longest a lease may run: 90 s from its issue
        assert agent.secret("token") == "t"
        assert len(server.events("lease.renewed")) == 1
        assert len(server.leases_read(agent)) == 1
        server.clock.advance(30)  # 5 s left, and a renewal cannot add any: a new lease
        assert agent.secret("token") == "t"
        assert len(server.events("lease.renewed")) == 2
        assert len(server.leases_read(agent)) == 2
        server.clock.advance(1)
        assert agent.secret("token") == "t"  # the new lease is held
        assert len(server.leases_read(agent)) == 2


def test_a_renewal_that_fails_for_a_moment_keeps_the_value_until_the_lease_ends(
    server: Server,
) -> None:
    server.put("flaky", "v", labels=["team"], lease_seconds=60)
    agent = server.agent()
    assert agent.secret("flaky") == "v"
    (lease,) = server.leases_read(agent)
    server.transport.unreachable.add(f"/v1/secrets/leases/{lease}/renew")
    server.clock.advance(55)
    assert agent.secret("flaky") == "v"  # unavailable: kept, and not asked again at once
    assert agent.secret("flaky") == "v"
    assert server.transport.count("/renew") == 1
    server.clock.advance(1)
    assert agent.secret("flaky") == "v"
    assert server.transport.count("/renew") == 2
    server.clock.advance(4)  # the lease has ended: never served past its end
    assert agent.secret("flaky") == "v"
    assert len(server.leases_read(agent)) == 2


def test_a_renewal_policy_no_longer_permits_drops_the_value(server: Server) -> None:
    server.put("revoked-by-policy", "v", labels=["team"], lease_seconds=60)
    agent = server.agent()
    assert agent.secret("revoked-by-policy") == "v"
    server.policies(OTHER)
    server.clock.advance(55)
    with pytest.raises(SecretError) as caught:  # the renewal is denied
        agent.secret("revoked-by-policy")
    assert (caught.value.code, caught.value.status) == ("access_denied", 403)
    with pytest.raises(SecretError):  # nothing held: a read, denied too (not a renewal)
        agent.secret("revoked-by-policy")
    assert (server.transport.count("/renew"), server.transport.count("/value")) == (1, 2)


def test_versions_are_held_apart(server: Server) -> None:
    server.put("rotated", "old", labels=["team"])
    server.put("rotated", "new")
    agent = server.agent()
    assert agent.secret("rotated", version=1) == "old"
    assert agent.secret("rotated") == "new"
    assert agent.secret("rotated", version=1) == "old"
    assert len(server.leases_read(agent)) == 2
    with pytest.raises(SecretError) as caught:
        agent.secret("rotated", version=7)
    assert (caught.value.code, caught.value.status) == ("secret_version_not_found", 404)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ValueError, match="version"):
            agent.secret("rotated", version=bad)  # type: ignore[arg-type]
    for name in ("", ".", ".."):
        with pytest.raises(ValueError, match="name"):
            agent.secret(name)


def test_release_gives_every_lease_back(server: Server) -> None:
    server.put("one", "1", labels=["team"])
    server.put("two", "2", labels=["team"])
    agent = server.agent()
    assert (agent.secret("one"), agent.secret("two")) == ("1", "2")
    leases = server.leases_read(agent)
    assert agent.release_secrets() == 2
    assert [server.lease(x)["state"] for x in leases] == ["revoked", "revoked"]
    assert {e["details"]["lease_id"] for e in server.events("lease.revoked")} == set(leases)
    assert agent.release_secrets() == 0
    assert agent.secret("one") == "1"  # read afresh
    assert len(server.leases_read(agent)) == 3


def test_revoke_lease_drops_what_is_held_under_it(server: Server) -> None:
    server.put("given-back", "v", labels=["team"])
    agent = server.agent()
    agent.secret("given-back")
    (lease,) = server.leases_read(agent)
    agent.revoke_lease(lease)
    assert server.lease(lease)["state"] == "revoked"
    agent.secret("given-back")
    assert len(server.leases_read(agent)) == 2
    other = server.agent()
    with pytest.raises(SecretError) as caught:  # not its lease
        other.revoke_lease(server.leases_read(agent)[-1])
    assert (caught.value.code, caught.value.status) == ("lease_not_found", 404)


def test_concurrent_callers_share_one_read(server: Server) -> None:
    server.put("shared", "v", labels=["team"])
    agent = server.agent()
    agent.access_token()
    barrier = threading.Barrier(8)
    values: list[str] = []

    def call() -> None:
        barrier.wait()
        values.append(agent.secret("shared"))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert values == ["v"] * 8
    assert len(server.leases_read(agent)) == 1


def test_a_dpop_bound_agent_reads_with_its_proof(server: Server) -> None:
    server.put("bound", "v", labels=["team"], lease_seconds=60)
    key = ECKey.generate_key("P-256", private=True)
    agent = server.agent(private_key=key, dpop_key=True)
    assert agent.secret("bound") == "v"
    server.clock.advance(55)
    assert agent.secret("bound") == "v"
    assert len(server.events("lease.renewed")) == 1
    assert agent.release_secrets() == 1


# -- refusals ----------------------------------------------------------------------------------


def test_a_denied_read_raises_access_denied_and_holds_nothing(server: Server) -> None:
    server.put("finance.key", "not-yours", labels=["finance"])
    agent = server.agent()
    for _ in range(2):
        with pytest.raises(SecretError) as caught:
            agent.secret("finance.key")
        error = caught.value
        assert (error.code, error.status) == ("access_denied", 403)
        assert error.details["event_id"]
        assert error.approval_id is None
        assert "not-yours" not in str(error)
        assert "not-yours" not in repr(error.details)
    assert server.transport.count("/value") == 2
    with pytest.raises(SecretError) as missing:  # an unknown name: denied alike
        agent.secret("no-such-secret")
    assert missing.value.code == "access_denied"


def test_a_broker_only_secret_raises_secret_broker_only(server: Server) -> None:
    server.put("upstream", "only-for-the-gateway", labels=["team"], broker_only=True)
    agent = server.agent()
    with pytest.raises(SecretError) as caught:
        agent.secret("upstream")
    assert (caught.value.code, caught.value.status) == ("secret_broker_only", 403)
    assert "only-for-the-gateway" not in str(caught.value)


def test_an_approval_checkpoint_names_its_approval(server: Server) -> None:
    server.policies('@id("ask") @approval("required") permit (principal, '
                    'action == Action::"secret.read", resource);')  # fmt: skip
    server.put("guarded", "v", labels=["team"])
    agent = server.agent()
    with pytest.raises(SecretError) as caught:
        agent.secret("guarded")
    assert caught.value.code == "approval_required"
    assert caught.value.approval_id is not None
    assert caught.value.approval_id.startswith("apr_")


def test_reads_past_the_rate_raise_rate_limited_with_retry_after(
    make_services: Callable[..., Services],
) -> None:
    with deployed(make_services, secret_reads_per_minute=1) as server:
        server.put("a", "1", labels=["team"])
        server.put("b", "2", labels=["team"])
        agent = server.agent()
        assert agent.secret("a") == "1"
        assert agent.secret("a") == "1"  # held: no second read to count
        with pytest.raises(SecretError) as caught:
            agent.secret("b")
    assert (caught.value.code, caught.value.status) == ("rate_limited", 429)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


# -- database logins ---------------------------------------------------------------------------

LOGIN = {
    "lease_id": "lse_1",
    "role": "orders-ro",
    "username": "v-orders-ro-x1",
    "password": "p@ss:w/rd?#%",
    "host": "db.internal",
    "port": 5432,
    "database": "orders",
    "expires_in": 600,
}


DENIED = {"error": {"code": "access_denied", "message": "no", "details": {"role": "orders-ro"}}}


def _scripted(*responses: httpx.Response) -> tuple[AgentClient, list[httpx.Request]]:
    """An agent whose token endpoint and API answer from a script, recording API requests."""
    script, seen = list(responses), []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("oauth-authorization-server"):
            return httpx.Response(200, json={"issuer": BASE, "token_endpoint": f"{BASE}/t"})
        if request.url.path == "/t":
            return httpx.Response(
                200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 300}
            )
        seen.append(request)
        return script.pop(0)

    http = httpx.Client(transport=httpx.MockTransport(handle))
    agent = AgentClient(BASE, "agt_1", client_secret="s", http=http, clock=lambda: START)
    return agent, seen


def test_database_login_request_and_answer() -> None:
    agent, seen = _scripted(httpx.Response(201, json=LOGIN))
    login = agent.database_login("orders-ro")
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/v1/secrets/db/orders-ro/lease")
    assert orjson.loads(request.content) == {}
    assert request.headers["Authorization"] == "Bearer tok"
    assert login == DatabaseLogin(
        role="orders-ro", username="v-orders-ro-x1", password="p@ss:w/rd?#%",
        host="db.internal", port=5432, database="orders", lease_id="lse_1",
        expires_at=datetime.fromtimestamp(START + 600, UTC),
    )  # fmt: skip
    assert login.dsn == (
        "postgresql://v-orders-ro-x1:p%40ss%3Aw%2Frd%3F%23%25@db.internal:5432/orders"
    )
    assert "p@ss" not in repr(login)
    assert "p@ss" not in str(login)
    assert "password" not in repr(login)
    v6 = DatabaseLogin("r", "u", "p w", "::1", 5433, "my db", "lse_2", login.expires_at)
    assert v6.dsn == "postgresql://u:p%20w@[::1]:5433/my%20db"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (httpx.Response(201, json={**LOGIN, "port": "5432"}), "invalid_response"),
        (httpx.Response(201, json={**LOGIN, "password": None}), "invalid_response"),
        (httpx.Response(201, json={**LOGIN, "expires_in": 0}), "invalid_response"),
        (httpx.Response(201, text="<html>"), "invalid_response"),
        (httpx.Response(502, text="bad gateway"), "unavailable"),
        (httpx.Response(403, json=DENIED), "access_denied"),
    ],
)
def test_database_login_failures(answer: httpx.Response, code: str) -> None:
    agent, _seen = _scripted(answer)
    with pytest.raises(SecretError) as caught:
        agent.database_login("orders-ro")
    assert caught.value.code == code
    assert "p@ss" not in str(caught.value)


def test_a_database_login_connects_and_is_given_back(
    make_services: Callable[..., Services],
) -> None:
    """Minted on the machine's PostgreSQL (whichever backend Tether runs on), as
    test_secret_databases.py does: the DSN opens a session as the login, and giving the
    lease back drops the role."""
    if not PG_URL:
        pytest.skip("TETHER_TEST_POSTGRES_URL is empty: logins are minted on PostgreSQL")
    now = datetime.now(UTC)  # the role's VALID UNTIL is real time to PostgreSQL
    with deployed(make_services, start=now) as server:
        if DB_ROUTE not in {getattr(route, "path", None) for route in server.api.routes}:
            pytest.skip(f"the server has no {DB_ROUTE} route")
        admin_dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        server.policies(TEAM + '@id("lease-readers") permit (principal, action == '
                        'Action::"secret.lease", resource == DatabaseRole::"reader");')  # fmt: skip
        server.put("pg-admin", admin_dsn, broker_only=True)
        server.ok("PUT", "/v1/secrets/db/connections/main", json={"dsn_secret": "pg-admin"})
        creation = ("CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL "
                    "'{{expiry}}'; GRANT CONNECT ON DATABASE test TO \"{{name}}\";")  # fmt: skip
        server.ok("PUT", "/v1/secrets/db/roles/reader",
                  json={"connection": "main", "creation": creation, "ttl_seconds": 60})  # fmt: skip
        agent = server.agent()
        login = agent.database_login("reader")
        assert (login.role, login.expires_at) == ("reader", now + timedelta(seconds=60))
        assert login.password not in repr(login)
        with psycopg.connect(login.dsn, connect_timeout=5, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (login.username,)
        with pytest.raises(SecretError) as denied:
            agent.database_login("writer")
        assert (denied.value.code, denied.value.status) == ("access_denied", 403)
        agent.revoke_lease(login.lease_id)
        assert server.lease(login.lease_id)["state"] == "revoked"
        server.services.db.drain()  # the role is dropped after the commit, in the background
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(login.dsn, connect_timeout=5).close()


def test_a_read_answer_without_a_lease_is_refused() -> None:
    leaseless = {"name": "n", "value": "hush", "version": 1, "expires_in": 60}
    agent, _seen = _scripted(httpx.Response(200, json=leaseless))
    with pytest.raises(SecretError) as caught:
        agent.secret("n")
    assert caught.value.code == "invalid_response"
    assert "hush" not in str(caught.value)


def test_public_surface() -> None:
    assert {"DatabaseLogin", "SecretError"} <= set(tether.__all__)
    assert tether.SecretError is SecretError
    assert issubclass(SecretError, tether.ApiError)
