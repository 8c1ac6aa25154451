"""The ``access_tokens`` purge (README "Configuration", ``TETHER_TOKEN_RETENTION_SECONDS``), on
both backends with a frozen clock: rows of tokens expired longer than the retention go, in
batches; live and recently expired ones stay; a purged token still introspects as exactly
``{"active": false}``; revocation keeps working; the runtime's revoked set forgets too."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc import jwt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.conftest import admin_client
from tether.agents.schemas import AgentCreate
from tether.clock import FrozenClock
from tether.container import Services
from tether.credentials.models import AccessTokenRow, UsedJtiRow
from tether.credentials.retention import purge_expired_tokens
from tether.db.purge import delete_before
from tether.principals import SYSTEM

START = 1_800_000_000
RETAIN = 3600


@pytest.fixture
def clocked(make_services: Callable[..., Services]) -> tuple[Services, FrozenClock]:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    return make_services(clock=clock, token_retention_seconds=RETAIN), clock


def _form(services: Services) -> dict[str, str]:
    agent = services.agents.create(SYSTEM, AgentCreate(
        name="bot", owner="admin", purpose="p", risk_tier="minimal", scopes=["read"],
    ))  # fmt: skip
    _cred, secret = services.credentials.create_api_key(SYSTEM, agent.id)
    return {"grant_type": "client_credentials", "client_id": agent.id, "client_secret": secret}


def _issue(services: Services, form: dict[str, str]) -> tuple[str, str]:
    token = services.oauth.token(form, None)["access_token"]
    return token, str(jwt.decode(token, services.signing_keys.signer()).claims["jti"])


def _jtis(services: Services) -> set[str]:
    with services.db.read() as s:
        return set(s.scalars(select(AccessTokenRow.jti)))


def _purge(services: Services) -> int:
    return purge_expired_tokens(services.db, now=services.clock.now(), retention_seconds=RETAIN)


def test_rows_expired_beyond_the_retention_are_purged(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, clock = clocked
    form = _form(services)
    old, old_jti = _issue(services, form)  # exp START+300
    clock.advance(3500)
    recent, recent_jti = _issue(services, form)  # exp START+3800
    clock.advance(401)  # START+3901: old expired 3601 s ago, recent 101 s ago
    live, live_jti = _issue(services, form)  # exp START+4201
    assert services.oauth.introspect(old, SYSTEM) == {"active": False}
    assert _purge(services) == 1
    assert _jtis(services) == {recent_jti, live_jti}
    assert _purge(services) == 0  # idempotent

    # A purged token introspects as it did before: exactly inactive.
    assert services.oauth.introspect(old, SYSTEM) == {"active": False}
    assert services.oauth.introspect(recent, SYSTEM) == {"active": False}
    assert services.oauth.introspect(live, SYSTEM)["active"] is True
    services.oauth.revoke(old, None, "system")  # unknown now: nothing happens, nothing fails
    # Revocation of a live token still works, and every path learns it.
    services.oauth.revoke(live, None, "system")
    assert services.oauth.introspect(live, SYSTEM) == {"active": False}
    services.runtime.sync()
    assert live_jti in services.decisions.runtime.revoked_jtis

    # Past the retention of the rest, everything goes; the runtime forgets the revoked id.
    clock.advance(300 + RETAIN + 1)
    services.runtime.purge()
    assert live_jti not in services.decisions.runtime.revoked_jtis
    assert _purge(services) == 2
    assert _jtis(services) == set()
    # The ledger still holds every issuance.
    issued = services.audit.events(SYSTEM, type_="token.issued").items
    assert {e.details["jti"] for e in issued} == {old_jti, recent_jti, live_jti}


def test_a_zero_retention_purges_as_soon_as_tokens_expire(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = make_services(clock=clock, token_retention_seconds=0)
    form = _form(services)
    _token, jti = _issue(services, form)
    clock.advance(300)  # exactly at exp: not yet older than now
    assert purge_expired_tokens(services.db, now=clock.now(), retention_seconds=0) == 0
    clock.advance(1)
    assert purge_expired_tokens(services.db, now=clock.now(), retention_seconds=0) == 1
    assert jti not in _jtis(services)


def test_the_purge_deletes_in_batches_of_its_own_transactions(
    clocked: tuple[Services, FrozenClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, clock = clocked
    form = _form(services)
    jtis = {_issue(services, form)[1] for _ in range(5)}
    clock.advance(300 + RETAIN + 1)
    keep = _issue(services, form)[1]
    writes = 0
    real_write = services.db.write

    def counted(**options: Any) -> AbstractContextManager[Session]:
        nonlocal writes
        writes += 1
        return real_write(**options)

    monkeypatch.setattr(services.db, "write", counted)
    cutoff = (START + 300 + 1) * 1_000_000
    assert delete_before(services.db, AccessTokenRow.jti, AccessTokenRow.expires_at, cutoff,
                         batch=2) == 5  # fmt: skip
    assert writes == 3  # 2 + 2 + 1: the write lock is released between batches
    assert _jtis(services) == {keep}
    assert not jtis & _jtis(services)


def test_spent_jtis_are_purged_in_batches_too(clocked: tuple[Services, FrozenClock]) -> None:
    services, _ = clocked
    with services.db.write() as s:
        for i in range(7):
            assert services.oauth.replay.seen(s, "test", f"j{i}", START + i) is False
    assert services.oauth.replay.purge(START + 5) == 5
    with services.db.read() as s:
        assert s.scalar(select(func.count()).select_from(UsedJtiRow)) == 2


def test_the_server_purges_in_its_maintenance_loop(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = make_services(clock=clock, token_retention_seconds=60,
                             checkpoint_every_seconds=0.05)  # fmt: skip
    form = _form(services)
    _token, jti = _issue(services, form)
    with admin_client(services):
        clock.advance(300 + 61)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and jti in _jtis(services):
            time.sleep(0.05)
        assert jti not in _jtis(services)
