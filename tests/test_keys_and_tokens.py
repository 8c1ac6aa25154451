"""Signing keys and token issuance through the services, on both backends, with a frozen
clock: rotation keeps old tokens verifying until they expire; keys are sealed at rest;
DPoP binds tokens to a key."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import text

from tether.agents.schemas import AgentCreate
from tether.clock import FrozenClock
from tether.container import Services
from tether.credentials.dpop import access_token_hash
from tether.credentials.errors import InvalidDPoPProof, InvalidScope, InvalidTarget
from tether.principals import SYSTEM
from tether.sdk import InvalidToken, JWKSCache, verify_access_token

START = 1_800_000_000


@pytest.fixture
def clocked(make_services: Callable[..., Services]) -> tuple[Services, FrozenClock]:
    from datetime import UTC, datetime

    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    return make_services(clock=clock, token_ttl_max_seconds=600), clock


def _client(services: Services, scopes: list[str] | None = None) -> dict[str, str]:
    agent = services.agents.create(SYSTEM, AgentCreate(
        name="bot", owner="admin", purpose="p", risk_tier="minimal",
        scopes=scopes or ["read", "write"],
    ))  # fmt: skip
    _cred, secret = services.credentials.create_api_key(SYSTEM, agent.id)
    return {"grant_type": "client_credentials", "client_id": agent.id, "client_secret": secret}


def _verify(services: Services, token: str, now: int) -> Any:
    return verify_access_token(
        token, issuer=services.settings.base_url, audience=services.settings.base_url,
        jwks=JWKSCache.from_static(services.signing_keys.jwks()), now=now,
    )  # fmt: skip


def test_rotation_keeps_old_tokens_valid_until_they_expire(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, clock = clocked
    form = _client(services)
    before = services.oauth.token(form, None)["access_token"]
    old_kid = jwt.decode(before, services.signing_keys.signer()).header["kid"]
    published_next = [k["kid"] for k in services.signing_keys.jwks()["keys"]]
    result = services.signing_keys.rotate(SYSTEM)
    assert result["retired"] == [old_kid]
    assert result["active"] in published_next  # the new signer was published before use
    after = services.oauth.token(form, None)["access_token"]
    assert jwt.decode(after, services.signing_keys.signer()).header["kid"] == result["active"]
    # Both verify against the JWKS a resource server fetches now.
    assert _verify(services, before, START).sub == form["client_id"]
    assert _verify(services, after, START).sub == form["client_id"]
    assert services.oauth.introspect(before, SYSTEM)["active"] is True
    # Once every token the old key signed has expired, it leaves the JWKS.
    clock.advance(600 + 5 * 60 + 1)
    services.signing_keys.reload()
    kids = {k["kid"] for k in services.signing_keys.jwks()["keys"]}
    assert old_kid not in kids
    assert result["active"] in kids


def test_private_keys_are_sealed_at_rest(clocked: tuple[Services, FrozenClock]) -> None:
    services, _ = clocked
    with services.db.read() as s:
        rows = s.execute(text("SELECT kid, private_sealed, public_jwk FROM signing_keys")).all()
    assert len(rows) == 2
    for kid, sealed, public in rows:
        assert sealed.startswith("v1.")
        assert '"d"' not in sealed
        assert "d" not in json.loads(public)
        assert kid == json.loads(public)["kid"]


def test_scope_and_audience_rules(clocked: tuple[Services, FrozenClock]) -> None:
    services, _ = clocked
    form = _client(services, ["read", "write"])
    assert services.oauth.token(form, None)["scope"] == "read write"
    assert services.oauth.token({**form, "scope": "read"}, None)["scope"] == "read"
    with pytest.raises(InvalidScope):
        services.oauth.token({**form, "scope": "read admin"}, None)
    with pytest.raises(InvalidTarget):
        services.oauth.token({**form, "resource": "not-a-uri"}, None)
    with pytest.raises(InvalidTarget):
        services.oauth.token({**form, "resource": "https://api.example/#frag"}, None)
    with pytest.raises(InvalidTarget):
        services.oauth.token({**form, "resource": "http://["}, None)
    token = services.oauth.token({**form, "resource": "https://api.example/x"}, None)
    claims = jwt.decode(token["access_token"], services.signing_keys.signer()).claims
    assert claims["aud"] == "https://api.example/x"


def _proof(key: ECKey, url: str, now: int, *, jti: str | None = None, **extra: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = {"jti": jti or uuid.uuid4().hex, "htm": "POST", "htu": url, "iat": now, **extra}
    return jwt.encode(header, claims, key)


def test_dpop_binds_the_token_and_replays_are_refused(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, _ = clocked
    form = _client(services)
    key = ECKey.generate_key("P-256")
    url = services.oauth.endpoints.token
    proof = _proof(key, url, START)
    body = services.oauth.token(form, None, dpop=[proof])
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], services.signing_keys.signer()).claims
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert services.oauth.introspect(body["access_token"], SYSTEM)["cnf"] == {
        "jkt": key.thumbprint()
    }
    for bad in (
        proof,  # replayed
        _proof(key, "https://evil.example/oauth/token", START),  # another URL
        _proof(key, url, START - 3600),  # stale
        "not.a.jwt",
    ):
        with pytest.raises(InvalidDPoPProof):
            services.oauth.token(form, None, dpop=[bad])
    with pytest.raises(InvalidDPoPProof):
        services.oauth.token(form, None, dpop=[_proof(key, url, START), _proof(key, url, START)])
    # The SDK refuses the bound token presented as Bearer (RFC 9449 §7.2).
    with pytest.raises(InvalidToken):
        verify_access_token(
            body["access_token"], issuer=services.settings.base_url,
            audience=services.settings.base_url, scheme="Bearer", now=START,
            jwks=JWKSCache.from_static(services.signing_keys.jwks()),
        )  # fmt: skip
    assert access_token_hash(body["access_token"])  # the ath a resource request would carry


def test_token_ledger_events_never_hold_secrets(clocked: tuple[Services, FrozenClock]) -> None:
    services, _ = clocked
    form = _client(services)
    token = services.oauth.token(form, None)["access_token"]
    bad = {**form, "client_secret": "tsk_wrong"}
    with pytest.raises(Exception, match="client authentication failed"):
        services.oauth.token(bad, None)
    with services.db.read() as s:
        dump = " ".join(str(r) for r in s.execute(text("SELECT * FROM audit_events")).all())
    assert form["client_secret"] not in dump
    assert token not in dump
    assert token.split(".")[2] not in dump
    assert "client.auth_failed" in dump
    assert "unknown client or credential" in dump
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"]
    assert jti in dump


def test_scheduled_rotation(make_services: Callable[..., Services]) -> None:
    from datetime import UTC, datetime

    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = make_services(clock=clock, key_rotation_days=1)
    first = services.signing_keys.signer().kid
    assert services.signing_keys.rotate_if_due() is None
    clock.advance(86_400 + 1)
    rotated = services.signing_keys.rotate_if_due()
    assert rotated is not None
    assert rotated["retired"] == [first]
    assert services.signing_keys.signer().kid == rotated["active"] != first
    assert services.signing_keys.rotate_if_due() is None  # the new key is fresh
    types = [e.type for e in services.audit.events(SYSTEM, type_="keys.rotated").items]
    assert types == ["keys.rotated"]


def test_spent_jtis_are_purged_after_they_expire(clocked: tuple[Services, FrozenClock]) -> None:
    services, _ = clocked
    with services.db.write() as s:
        assert services.oauth.replay.seen(s, "test", "a", START + 10) is False
        assert services.oauth.replay.seen(s, "test", "a", START + 10) is True
    assert services.oauth.replay.purge(START) == 0
    assert services.oauth.replay.purge(START + 11) == 1
