"""Delegation by token exchange (RFC 8693): the issued token names the subject and nests the
actors, never widens scope, is bounded in depth, honours may_act, and dies with its chain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc import jwt

from tether.agents.schemas import AgentCreate
from tether.clock import FrozenClock
from tether.container import Services
from tether.credentials.clients import ClientAuthError
from tether.credentials.errors import InvalidGrant, InvalidScope, InvalidTarget
from tether.errors import ValidationFailed
from tether.principals import SYSTEM, Role

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
START = 1_800_000_000


@pytest.fixture
def svc(make_services: Callable[..., Services]) -> Services:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    return make_services(clock=clock, delegation_max_depth=2)


def _agent(svc: Services, name: str, scopes: list[str], owner: str = "admin") -> dict[str, str]:
    agent = svc.agents.create(SYSTEM, AgentCreate(
        name=name, owner=owner, purpose="p", risk_tier="minimal", scopes=scopes))  # fmt: skip
    _cred, secret = svc.credentials.create_api_key(SYSTEM, agent.id)
    return {"client_id": agent.id, "client_secret": secret}


def _token(svc: Services, who: dict[str, str], **form: str) -> str:
    body = svc.oauth.token({"grant_type": "client_credentials", **who, **form}, None)
    return str(body["access_token"])


def _exchange(svc: Services, actor: dict[str, str], subject: str, **form: str) -> dict[str, Any]:
    return svc.oauth.token({
        "grant_type": EXCHANGE, **actor, "subject_token": subject, "subject_token_type": AT,
        "actor_token": _token(svc, actor), "actor_token_type": AT, **form,
    }, None)  # fmt: skip


def _claims(svc: Services, token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, svc.signing_keys.signer()).claims)


def test_agent_acts_for_agent_with_attenuated_scope(svc: Services) -> None:
    a = _agent(svc, "a", ["read", "write"])
    b = _agent(svc, "b", ["read", "write", "admin"])
    body = _exchange(svc, b, _token(svc, a), scope="read")
    assert body["issued_token_type"] == AT
    claims = _claims(svc, body["access_token"])
    assert claims["sub"] == a["client_id"]
    assert claims["act"] == {"sub": b["client_id"]}
    assert claims["client_id"] == b["client_id"]
    assert claims["scope"] == "read"
    info = svc.oauth.introspect(body["access_token"], SYSTEM)
    assert info["active"] is True
    assert info["act"] == {"sub": b["client_id"]}
    # Without a scope request the token gets what both may hold, never more.
    default = _claims(svc, _exchange(svc, b, _token(svc, a))["access_token"])
    assert set(default["scope"].split()) == {"read", "write"}


def test_scope_widening_is_refused(svc: Services) -> None:
    a = _agent(svc, "a", ["read"])
    b = _agent(svc, "b", ["read", "write"])
    with pytest.raises(InvalidScope):
        _exchange(svc, b, _token(svc, a), scope="read write")


def test_chains_nest_and_depth_is_bounded(svc: Services) -> None:
    a, b, c, d = (_agent(svc, n, ["read"]) for n in "abcd")
    via_b = _exchange(svc, b, _token(svc, a))["access_token"]
    via_c = _exchange(svc, c, via_b)["access_token"]
    assert _claims(svc, via_c)["act"] == {"sub": c["client_id"], "act": {"sub": b["client_id"]}}
    with pytest.raises(InvalidGrant, match="depth"):
        _exchange(svc, d, via_c)  # a third actor exceeds delegation_max_depth=2


def test_revoked_actor_and_revoked_chain_member(svc: Services) -> None:
    a, b, c = (_agent(svc, n, ["read"]) for n in "abc")
    via_b = _exchange(svc, b, _token(svc, a))["access_token"]
    b_token = _token(svc, b)
    svc.agents.kill(SYSTEM, b["client_id"], reason="rogue")
    assert svc.oauth.introspect(via_b, SYSTEM) == {"active": False}
    with pytest.raises(ClientAuthError):  # the revoked agent cannot act at all
        svc.oauth.token({"grant_type": EXCHANGE, **b, "subject_token": _token(svc, a),
                         "subject_token_type": AT, "actor_token": b_token,
                         "actor_token_type": AT}, None)  # fmt: skip
    with pytest.raises(InvalidGrant):  # nor can anyone build on a chain it is part of
        _exchange(svc, c, via_b)


def test_suspended_subject_cannot_be_acted_for(svc: Services) -> None:
    a, b = _agent(svc, "a", ["read"]), _agent(svc, "b", ["read"])
    subject = _token(svc, a)
    svc.agents.suspend(SYSTEM, a["client_id"], reason="pause")
    with pytest.raises(InvalidGrant):
        _exchange(svc, b, subject)


def test_actor_token_must_be_the_clients_own(svc: Services) -> None:
    a, b, c = (_agent(svc, n, ["read"]) for n in "abc")
    with pytest.raises(InvalidGrant, match="actor token"):
        svc.oauth.token({"grant_type": EXCHANGE, **b, "subject_token": _token(svc, a),
                         "subject_token_type": AT, "actor_token": _token(svc, c),
                         "actor_token_type": AT}, None)  # fmt: skip


def test_audience_cannot_escape_the_subject_token(svc: Services) -> None:
    a, b = _agent(svc, "a", ["read"]), _agent(svc, "b", ["read"])
    subject = _token(svc, a, resource="https://api.a.example")
    ok = _exchange(svc, b, subject, resource="https://api.a.example")
    assert _claims(svc, ok["access_token"])["aud"] == "https://api.a.example"
    with pytest.raises(InvalidTarget):
        _exchange(svc, b, subject, resource="https://api.b.example")


def test_human_delegates_to_one_named_agent(svc: Services) -> None:
    alice = svc.users.create(SYSTEM, username="alice", role=Role.SUPERVISOR).principal()
    b, c = _agent(svc, "b", ["read", "write"], "alice"), _agent(svc, "c", ["read"], "alice")
    minted = svc.oauth.subject_token(alice, actor=b["client_id"], scopes=["read"])
    form = {
        "subject_token": minted["subject_token"],
        "subject_token_type": minted["subject_token_type"],
    }
    actor = {"actor_token": _token(svc, b), "actor_token_type": AT}
    body = svc.oauth.token({"grant_type": EXCHANGE, **b, **form, **actor}, None)
    claims = _claims(svc, body["access_token"])
    assert claims["sub"] == alice.id
    assert claims["act"] == {"sub": b["client_id"]}
    assert claims["scope"] == "read"
    info = svc.oauth.introspect(body["access_token"], SYSTEM)
    assert (info["active"], info["sub"], info["act"]) == (True, alice.id, {"sub": b["client_id"]})
    with pytest.raises(InvalidGrant, match="may_act"):  # another agent cannot use it
        svc.oauth.token({"grant_type": EXCHANGE, **c, **form,
                         "actor_token": _token(svc, c), "actor_token_type": AT}, None)  # fmt: skip
    events = svc.audit.events(SYSTEM, type_="token.exchanged").items
    assert events[-1].on_behalf_of == f"user:{alice.id}"
    assert events[-1].chain == [b["client_id"]]
    # A subject token is not an access token: resource servers (typ at+jwt) refuse it.
    assert svc.oauth.introspect(minted["subject_token"], SYSTEM) == {"active": False}


def test_no_subject_token_for_an_agent_past_its_expiry(svc: Services) -> None:
    """Before the sweep stores it, an agent past expires_at is already not active."""
    alice = svc.users.create(SYSTEM, username="alice", role=Role.SUPERVISOR).principal()
    soon = datetime.fromtimestamp(START + 60, UTC)
    agent = svc.agents.create(SYSTEM, AgentCreate(
        name="brief", owner="alice", purpose="p", risk_tier="minimal", scopes=["read"],
        expires_at=soon))  # fmt: skip
    assert svc.oauth.subject_token(alice, actor=agent.id, scopes=["read"])["subject_token"]
    clock = svc.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(61)
    with pytest.raises(ValidationFailed, match="not an active agent"):
        svc.oauth.subject_token(alice, actor=agent.id, scopes=["read"])
