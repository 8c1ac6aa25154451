"""The SDK's revocation follower against a real server (issue 12, item 4), SQLite and PostgreSQL.

A resource server that verifies tokens offline, with :class:`RevocationFollower` as its
revocation check, refuses a killed agent's token, a token delegated through it and a frozen
agent's token within moments of the call (bounded waits, no fixed sleeps), honours them again
when a freeze lifts or a suspension ends, resumes from its cursor after a reconnect, and fails
closed when the feed has not confirmed it is current — or catches up, if told to.

One server per backend (per xdist worker) for the module: each test makes its own agents, and
the one that freezes does so by a role of its own and lifts its freeze.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS
from tests.serverproc import module_server
from tether.sdk import InvalidToken, JWKSCache, RevocationFollower, verify_access_token

pytestmark = pytest.mark.slow
BOUND = 3.0  # seconds: the stream looks every 50 ms; NOTIFY or the poll tells the worker


def _until(predicate: Callable[[], bool], timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Server:
    def __init__(self, url: str, admin: str) -> None:
        self.url = url
        self.admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"},
                                  timeout=30)  # fmt: skip
        self.jwks = JWKSCache(f"{url}/.well-known/jwks.json")

    def agent(self, audience: str = "https://rs.test", **fields: Any) -> tuple[str, str]:
        """A new agent and a client-credentials token of it for ``audience``."""
        spec = {"name": "rs-test", "owner": "admin", "purpose": "p", "risk_tier": "minimal",
                "scopes": ["tools"], **fields}  # fmt: skip
        agent = self.admin.post("/v1/agents", json=spec)
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["id"]
        key = self.admin.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
        form = {"grant_type": "client_credentials", "client_id": agent_id,
                "client_secret": key.json()["client_secret"],
                "audience": audience}  # fmt: skip
        token = httpx.post(f"{self.url}/oauth/token", data=form)
        assert token.status_code == 200, token.text
        return agent_id, token.json()["access_token"]

    def honours(self, follower: RevocationFollower, token: str) -> bool:
        try:
            verify_access_token(token, issuer=self.url, audience="https://rs.test",
                                jwks=self.jwks, revocation_check=follower)  # fmt: skip
        except InvalidToken:
            return False
        return True


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with module_server(request, tmp_path_factory, "revocations") as served:
        url, admin = served.url, served.admin_token
        made = Server(url, admin)
        try:
            yield made
        finally:
            made.admin.close()
            made.jwks.close()


def test_a_follower_refuses_at_once_what_tether_stopped_and_honours_what_it_let_go(
    server: Server,
) -> None:
    admin_token = server.admin.headers["Authorization"].removeprefix("Bearer ")
    victim, victim_token = server.agent()
    role = f"ops-{secrets.token_hex(4)}"  # only this test's agent has it
    _frozen, frozen_token = server.agent(roles=[role])
    bystander, bystander_token = server.agent()
    with RevocationFollower(server.url, admin_token, max_staleness=5).start() as follower:
        assert follower.wait_current(BOUND)
        assert server.honours(follower, victim_token)

        server.admin.post(f"/v1/agents/{victim}/kill", json={"reason": "rogue"}).raise_for_status()
        assert _until(lambda: not server.honours(follower, victim_token))
        assert follower.state(victim) == "revoked"

        freeze = server.admin.post("/v1/freeze", json={"reason": "r", "scope": {"role": role}})
        assert freeze.status_code == 201, freeze.text
        try:
            assert _until(lambda: not server.honours(follower, frozen_token))
            assert server.honours(follower, bystander_token)
        finally:
            lifted = server.admin.delete("/v1/freeze", params={"id": freeze.json()["id"]})
        lifted.raise_for_status()
        assert _until(lambda: server.honours(follower, frozen_token))

        server.admin.post(f"/v1/agents/{bystander}/suspend", json={"reason": "look"})
        assert _until(lambda: not server.honours(follower, bystander_token))
        server.admin.post(f"/v1/agents/{bystander}/resume", json={})
        assert _until(lambda: server.honours(follower, bystander_token))
        assert not server.honours(follower, victim_token)  # a kill is for good
        cursor = follower.cursor
        assert cursor is not None

    # A new follower from the old cursor resumes; a fresh one gets the whole state.
    with RevocationFollower(server.url, admin_token).start() as fresh:
        assert fresh.wait_current(BOUND)
        assert not server.honours(fresh, victim_token)
        assert server.honours(fresh, frozen_token)


def test_a_stale_follower_fails_closed_or_catches_up(server: Server) -> None:
    admin_token = server.admin.headers["Authorization"].removeprefix("Bearer ")
    _agent, token = server.agent()
    with RevocationFollower(server.url, admin_token, max_staleness=1) as never_started:
        never_started.close()  # not following: it never confirmed it is current
        with pytest.raises(InvalidToken, match="not current"):
            verify_access_token(token, issuer=server.url, audience="https://rs.test",
                                jwks=server.jwks, revocation_check=never_started)  # fmt: skip
    catching_up = RevocationFollower(server.url, admin_token, max_staleness=1, on_stale="fetch")
    try:
        assert server.honours(catching_up, token)  # one GET /v1/revocations made it current
        assert catching_up.is_current()
    finally:
        catching_up.close()
    unreachable = RevocationFollower("http://127.0.0.1:9", admin_token, on_stale="fetch")
    try:
        assert not server.honours(unreachable, token)  # cannot catch up: fail closed
    finally:
        unreachable.close()


def test_only_resource_server_credentials_and_admins_may_follow(server: Server) -> None:
    # The resource server's own credential, its token addressed to Tether (the feed's audience).
    _rs, rs_token = server.agent(audience=server.url, scopes=["tether:revocations"])
    _other, other_token = server.agent(audience=server.url)
    with RevocationFollower(server.url, rs_token).start() as allowed:
        assert allowed.wait_current(BOUND)
    refused = httpx.get(f"{server.url}/v1/revocations",
                        headers={"Authorization": f"Bearer {other_token}"})  # fmt: skip
    assert refused.status_code == 403
    denied = RevocationFollower(server.url, other_token, max_staleness=1).start()
    try:
        assert not denied.wait_current(1.0)  # a 403 never makes it current: it fails closed
    finally:
        denied.close()
