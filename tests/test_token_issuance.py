"""Issuance through the group commit (issue 14): what a token request writes, and how often.

A token's row and its ``token.issued`` event are written by one group-commit job; the
client's credential records its last use at most once a minute per process (the token path
writes nothing else per request); a grant refused after the client authenticated still spends
a ``private_key_jwt`` assertion, so its replay is refused and audited."""

from __future__ import annotations

import json
import time

import pytest
from joserfc.jwk import ECKey
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.token_attacks.kit import assertion, assertion_form, counting_jobs, counting_writes
from tether.agents.schemas import AgentCreate
from tether.audit.models import EventRow
from tether.container import Services
from tether.credentials import oauth
from tether.credentials.models import CredentialRow
from tether.principals import SYSTEM

AGENT = {"name": "issuer-test", "owner": "admin", "purpose": "issuance", "risk_tier": "minimal",
         "scopes": ["read"]}  # fmt: skip


def _last_used(services: Services, credential_id: str) -> int | None:
    with services.db.read() as s:
        return s.scalar(select(CredentialRow.last_used_at).where(CredentialRow.id == credential_id))


def test_a_credentials_last_use_is_written_at_most_once_a_minute(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = services.agents.create(SYSTEM, AgentCreate.model_validate(AGENT))
    credential, secret = services.credentials.create_api_key(SYSTEM, agent.id)
    form = {"grant_type": "client_credentials", "client_id": agent.id, "client_secret": secret}
    assert _last_used(services, credential.id) is None
    assert client.post("/oauth/token", data=form, headers={"Authorization": ""}).status_code == 200
    first = _last_used(services, credential.id)
    assert first is not None
    time.sleep(0.002)  # a later microsecond
    for _ in range(3):
        issued = client.post("/oauth/token", data=form, headers={"Authorization": ""})
        assert issued.is_success
    # Introspection authenticates the client the same way: nothing written either.
    own = {"client_id": agent.id, "client_secret": secret, "token": issued.json()["access_token"]}
    looked = client.post("/oauth/introspect", data=own, headers={"Authorization": ""})
    assert looked.json()["active"] is True
    assert _last_used(services, credential.id) == first  # within the minute: not written
    monkeypatch.setattr(oauth, "TOUCH_EVERY_SECONDS", 0.0)  # as if the minute had passed
    assert client.post("/oauth/token", data=form, headers={"Authorization": ""}).is_success
    later = _last_used(services, credential.id)
    assert later is not None
    assert later > first


def test_an_assertion_is_spent_even_when_its_grant_is_refused(
    services: Services, client: TestClient
) -> None:
    agent = services.agents.create(SYSTEM, AgentCreate.model_validate(AGENT))
    key = ECKey.generate_key("P-256")
    services.credentials.create_public_key(SYSTEM, agent.id, jwk=key.as_dict(private=False))
    signed = assertion(key, agent.id, services.settings.base_url, int(time.time()))
    refused = {**assertion_form(signed, agent.id), "scope": "admin"}  # beyond its ceiling
    first = client.post("/oauth/token", data=refused, headers={"Authorization": ""})
    assert first.status_code == 400
    assert first.json()["error"] == "invalid_scope"
    again = client.post("/oauth/token", data=assertion_form(signed, agent.id),
                        headers={"Authorization": ""})  # fmt: skip
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    with services.db.read() as s:
        mine = select(EventRow.type, EventRow.details).where(EventRow.agent_id == agent.id)
        events = s.execute(mine.order_by(EventRow.seq)).all()
    failures = [json.loads(details)["reason"] for kind, details in events
                if kind == "client.auth_failed"]  # fmt: skip
    assert failures == ["assertion jti already used (replay)"]
    assert "token.issued" not in [kind for kind, _ in events]


def test_a_revocation_is_one_job_of_the_group_commit(services: Services) -> None:
    """Issue 14, item 6: RFC 7009 revocation writes through the group commit (the row's
    ``revoked_at``, the runtime's change, the ``token.revoked`` event in the batch's one
    append), not a write transaction of its own; a second revocation of the same token, and
    one of a token that is not the caller's, write nothing."""
    agent = services.agents.create(SYSTEM, AgentCreate.model_validate(AGENT))
    _credential, secret = services.credentials.create_api_key(SYSTEM, agent.id)
    form = {"grant_type": "client_credentials", "client_id": agent.id, "client_secret": secret}
    token = services.oauth.token(form, None)["access_token"]
    client = services.oauth.authenticate_client(form, None)
    jobs, writes = counting_jobs(services), counting_writes(services)
    services.oauth.revoke(token, client, f"agent:{agent.id}")
    assert (jobs, writes) == ([1], [1])  # the committer's transaction, nothing besides
    assert services.oauth.introspect(token, SYSTEM) == {"active": False}
    services.oauth.revoke(token, client, f"agent:{agent.id}")  # already revoked: a no-op
    with services.db.read() as s:
        mine = (EventRow.type == "token.revoked", EventRow.agent_id == agent.id)
        revoked = s.scalars(select(EventRow.type).where(*mine)).all()
    assert revoked == ["token.revoked"]
