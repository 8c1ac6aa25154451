"""Attacks: Client authentication at the token endpoint — HTTP; each is 401 invalid_client, no
token, one client.auth_failed event with the reason and without the secret/assertion."""

from __future__ import annotations

import json
import secrets as pysecrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc.jwk import ECKey
from starlette.testclient import TestClient

from tests.token_attacks.kit import (
    DROP,
    START,
    Client,
    Env,
    Snapshot,
    assert_nothing_issued,
    assert_oauth_error,
    assertion,
    assertion_form,
    basic,
    hs256,
    introspect,
    issued,
    keyed_agent,
    new_agent,
    new_client,
    post_token,
    token_rows,
    unsigned,
)
from tether.api.app import create_app
from tether.credentials.clients import ASSERTION_TYPE, ClientAuthError
from tether.principals import SYSTEM


@dataclass
class Attempt:
    data: dict[str, str]
    client_id: str | None
    method: str
    reason: str
    auth: str | None = None
    never_logged: tuple[str, ...] = ()


def _wrong_secret_post(e: Env) -> Attempt:
    c = new_client(e)
    guess = "tsk_" + pysecrets.token_urlsafe(32)
    return Attempt(
        {**c.form, "client_secret": guess},
        c.agent_id,
        "client_secret_post",
        "unknown client or credential",
        never_logged=(guess, c.secret),
    )


def _wrong_secret_basic(e: Env) -> Attempt:
    c = new_client(e)
    guess = "tsk_" + pysecrets.token_urlsafe(32)
    return Attempt(
        {"grant_type": "client_credentials"},
        c.agent_id,
        "client_secret_basic",
        "unknown client or credential",
        auth=basic(c.agent_id, guess),
        never_logged=(guess, c.secret),
    )


def _secret_of_a_with_id_of_b(e: Env) -> Attempt:
    a, b = new_client(e), new_client(e, scopes=["read", "write", "admin"])
    return Attempt(
        {**a.form, "client_id": b.agent_id},
        b.agent_id,
        "client_secret_post",
        "unknown client or credential",
        never_logged=(a.secret, b.secret),
    )


def _secret_of_a_with_id_of_b_basic(e: Env) -> Attempt:
    a, b = new_client(e), new_client(e)
    return Attempt(
        {"grant_type": "client_credentials"},
        b.agent_id,
        "client_secret_basic",
        "unknown client or credential",
        auth=basic(b.agent_id, a.secret),
        never_logged=(a.secret,),
    )


def _deleted_credential(e: Env) -> Attempt:
    c = new_client(e)
    e.services.credentials.delete(SYSTEM, c.agent_id, c.credential_id)
    return Attempt(
        c.form, c.agent_id, "client_secret_post", "credential deleted", never_logged=(c.secret,)
    )


def _expired_credential(e: Env) -> Attempt:
    c = new_client(e, expires_in=60)
    assert post_token(e, c.form).status_code == 200  # control: valid until it expires
    e.clock.advance(60)
    return Attempt(
        c.form, c.agent_id, "client_secret_post", "credential expired", never_logged=(c.secret,)
    )


def _expired_agent(e: Env) -> Attempt:
    agent_id = new_agent(e, expires_at=datetime.fromtimestamp(START + 60, UTC))
    cred, secret = e.services.credentials.create_api_key(SYSTEM, agent_id)
    e.clock.advance(61)
    return Attempt(
        Client(agent_id, secret, cred.id).form,
        agent_id,
        "client_secret_post",
        "agent expired",
        never_logged=(secret,),
    )


def _stopped(op: str, status: str) -> Callable[[Env], Attempt]:
    def build(e: Env) -> Attempt:
        c = new_client(e)
        if op == "kill":
            e.services.agents.kill(SYSTEM, c.agent_id, reason="rogue")
        else:
            getattr(e.services.agents, op)(SYSTEM, c.agent_id, reason="stop")
        return Attempt(
            c.form, c.agent_id, "client_secret_post", f"agent is {status}", never_logged=(c.secret,)
        )

    return build


def _unknown_client(e: Env) -> Attempt:
    return Attempt(
        {
            "grant_type": "client_credentials",
            "client_id": "agt_nobody",
            "client_secret": "tsk_nothing",
        },
        "agt_nobody",
        "client_secret_post",
        "unknown client or credential",
        never_logged=("tsk_nothing",),
    )


def _pkjwt(
    reason: str,
    *,
    aud: str = "issuer",
    header: dict[str, Any] | None = None,
    sign: str = "own",
    **claims: Any,
) -> Callable[[Env], Attempt]:
    """A private_key_jwt attempt with one thing wrong."""

    def build(e: Env) -> Attempt:
        agent_id, key, _cred = keyed_agent(e)
        endpoints = e.services.oauth.endpoints
        audience = {"issuer": e.issuer, "introspection": endpoints.introspection}.get(aud, aud)
        if sign == "unregistered":
            token = assertion(ECKey.generate_key("P-256"), agent_id, audience, e.now, **claims)
        elif sign == "other-agent":
            _other, other_key, _ = keyed_agent(e)
            token = assertion(other_key, agent_id, audience, e.now, **claims)
        elif sign == "none":
            body = {
                "iss": agent_id,
                "sub": agent_id,
                "aud": audience,
                "iat": e.now,
                "exp": e.now + 60,
                "jti": uuid.uuid4().hex,
            }
            token = unsigned({"alg": "none"}, body)
        elif sign == "hs256-public-jwk":
            body = {
                "iss": agent_id,
                "sub": agent_id,
                "aud": audience,
                "iat": e.now,
                "exp": e.now + 60,
                "jti": uuid.uuid4().hex,
            }
            token = hs256({"alg": "HS256"}, body, json.dumps(key.as_dict(private=False)).encode())
        else:
            token = assertion(key, agent_id, audience, e.now, header=header, **claims)
        return Attempt(
            assertion_form(token, agent_id),
            agent_id,
            "private_key_jwt",
            reason,
            never_logged=tuple(filter(None, (token, token.rsplit(".", 1)[1]))),
        )

    return build


def _pkjwt_replayed(e: Env) -> Attempt:
    agent_id, key, _cred = keyed_agent(e)
    token = assertion(key, agent_id, e.issuer, e.now)
    first = post_token(e, assertion_form(token, agent_id))
    assert first.status_code == 200, first.text  # the first use is legitimate
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion jti already used (replay)",
        never_logged=(token,),
    )


def _pkjwt_replayed_after_introspection(e: Env) -> Attempt:
    """Spent at /oauth/introspect, replayed at /oauth/token: one jti space for all endpoints."""
    agent_id, key, _cred = keyed_agent(e)
    token = assertion(key, agent_id, e.issuer, e.now)
    form = {
        "token": "x",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
        "client_id": agent_id,
    }
    assert e.http.post("/oauth/introspect", data=form).json() == {"active": False}
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion jti already used (replay)",
        never_logged=(token,),
    )


def _pkjwt_deleted_key(e: Env) -> Attempt:
    agent_id, key, cred_id = keyed_agent(e)
    e.services.credentials.delete(SYSTEM, agent_id, cred_id)
    token = assertion(key, agent_id, e.issuer, e.now)
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion signature does not verify with a registered key",
        never_logged=(token,),
    )


def _pkjwt_expired_key(e: Env) -> Attempt:
    agent_id, key, _cred = keyed_agent(e, expires_in=60)
    e.clock.advance(61)
    token = assertion(key, agent_id, e.issuer, e.now)
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "credential expired",
        never_logged=(token,),
    )


def _pkjwt_iss_of_another_agent(e: Env) -> Attempt:
    """No client_id in the form: the server picks keys by the (unverified) iss, so the
    attacker names the victim and signs with its own key."""
    victim, _vkey, _ = keyed_agent(e)
    _attacker, akey, _ = keyed_agent(e)
    token = assertion(akey, victim, e.issuer, e.now)
    return Attempt(
        assertion_form(token),
        victim,
        "private_key_jwt",
        "assertion signature does not verify with a registered key",
        never_logged=(token,),
    )


CLIENT_AUTH_ATTACKS: dict[str, Callable[[Env], Attempt]] = {
    "wrong-secret-post": _wrong_secret_post,
    "wrong-secret-basic": _wrong_secret_basic,
    "unknown-client-id": _unknown_client,
    "secret-of-agent-a-with-client-id-of-b": _secret_of_a_with_id_of_b,
    "secret-of-agent-a-with-client-id-of-b-basic": _secret_of_a_with_id_of_b_basic,
    "deleted-credential": _deleted_credential,
    "expired-credential": _expired_credential,
    "suspended-agent": _stopped("suspend", "suspended"),
    "killed-agent": _stopped("kill", "revoked"),
    "retired-agent": _stopped("retire", "retired"),
    "expired-agent": _expired_agent,
    "pkjwt-replayed-jti": _pkjwt_replayed,
    "pkjwt-replayed-jti-across-endpoints": _pkjwt_replayed_after_introspection,
    "pkjwt-wrong-aud": _pkjwt(
        "assertion aud must be the issuer or the token endpoint",
        aud="https://evil.example/oauth/token",
    ),
    "pkjwt-aud-introspection-endpoint": _pkjwt(
        "assertion aud must be the issuer or the token endpoint", aud="introspection"
    ),
    "pkjwt-iss-differs-from-sub": _pkjwt(
        "assertion iss and sub must both be the client_id", sub="agt_someone_else"
    ),
    "pkjwt-iss-of-another-agent-signed-by-own-key": _pkjwt_iss_of_another_agent,
    "pkjwt-unregistered-key": _pkjwt(
        "assertion signature does not verify with a registered key", sign="unregistered"
    ),
    "pkjwt-key-of-another-agent": _pkjwt(
        "assertion signature does not verify with a registered key", sign="other-agent"
    ),
    "pkjwt-deleted-key": _pkjwt_deleted_key,
    "pkjwt-expired-key": _pkjwt_expired_key,
    "pkjwt-exp-too-far-in-the-future": _pkjwt(
        "assertion exp is more than 3600s away", exp=START + 3600 + 31
    ),
    "pkjwt-expired": _pkjwt("assertion expired", iat=START - 600, exp=START - 31),
    "pkjwt-no-exp": _pkjwt("assertion has no exp", exp=DROP),
    "pkjwt-nbf-in-the-future": _pkjwt("assertion not yet valid (nbf)", nbf=START + 600),
    "pkjwt-iat-in-the-future": _pkjwt("assertion issued in the future (iat)", iat=START + 600),
    "pkjwt-no-jti": _pkjwt("assertion needs a jti of 8-200 characters, no NUL", jti=DROP),
    "pkjwt-nul-in-jti": _pkjwt(
        "assertion needs a jti of 8-200 characters, no NUL", jti="assertion\x00jti"
    ),
    "pkjwt-alg-none": _pkjwt(
        "assertion signature does not verify with a registered key", sign="none"
    ),
    "pkjwt-hs256-keyed-with-registered-public-jwk": _pkjwt(
        "assertion signature does not verify with a registered key", sign="hs256-public-jwk"
    ),
}


# These advance the clock, so they run on a deployment of their own.
MOVES_THE_CLOCK = ("expired-credential", "expired-agent", "pkjwt-expired-key")


@pytest.mark.parametrize("name", [n for n in CLIENT_AUTH_ATTACKS if n not in MOVES_THE_CLOCK])
def test_client_authentication_attack_is_refused_and_audited(env: Env, name: str) -> None:
    _refused_and_audited(env, CLIENT_AUTH_ATTACKS[name](env))


@pytest.mark.parametrize("name", MOVES_THE_CLOCK)
def test_client_authentication_attack_after_time_passed_is_refused_and_audited(
    fresh: Env, name: str
) -> None:
    _refused_and_audited(fresh, CLIENT_AUTH_ATTACKS[name](fresh))


def _refused_and_audited(env: Env, attempt: Attempt) -> None:
    before = Snapshot.of(env)
    response = post_token(env, attempt.data, auth=attempt.auth)

    assert_oauth_error(response, 401, "invalid_client")
    if attempt.method == "client_secret_basic":  # RFC 6749 §5.2
        assert response.headers["www-authenticate"].startswith("Basic")
    new = assert_nothing_issued(env, before, response)
    assert [ev.type for ev in new] == ["client.auth_failed"]
    event = new[0]
    assert event.outcome == "failure"
    assert event.details == {
        "client_id": attempt.client_id,
        "method": attempt.method,
        "reason": attempt.reason,
    }
    dumped = json.dumps(event.to_json())
    for secret in attempt.never_logged:
        assert secret not in dumped


def test_concurrent_replays_of_one_assertion_yield_exactly_one_token(env: Env) -> None:
    """SERVICE layer, 8 threads racing one private_key_jwt assertion (the Hydra bug)."""
    agent_id, key, _cred = keyed_agent(env)
    form = assertion_form(assertion(key, agent_id, env.issuer, env.now), agent_id)
    before = Snapshot.of(env)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        try:
            env.services.oauth.token(dict(form), None)
            result = "token"
        except ClientAuthError as exc:
            result = exc.failure.reason
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["assertion jti already used (replay)"] * 7 + ["token"]
    assert token_rows(env) == before.tokens + 1
    assert [ev.type for ev in before.new_events(env)].count("client.auth_failed") == 7


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_no_client_authentication_at_all_is_refused(env: Env, path: str) -> None:
    """A client_id alone proves nothing (RFC 6749 §2.3): no token, no introspection."""
    victim = new_client(env)
    token = issued(env, victim)
    before = Snapshot.of(env)
    data = {"grant_type": "client_credentials", "client_id": victim.agent_id, "token": token}
    response = env.http.post(path, data=data)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert "active" not in response.json()
    assert_nothing_issued(env, before, response)
    assert introspect(env, token)["active"] is True  # the revoke did not happen


@pytest.mark.parametrize(
    "combo",
    ["basic+post", "post+private_key_jwt", "basic+private_key_jwt", "basic-body-id-differs"],
)
def test_ambiguous_client_authentication_is_invalid_request(env: Env, combo: str) -> None:
    """Two authentication methods at once (RFC 6749 §2.3): 400, never a token."""
    c = new_client(env)
    agent_id, key, _cred = keyed_agent(env)
    pkjwt = assertion_form(assertion(key, agent_id, env.issuer, env.now), agent_id)
    auth: str | None = basic(c.agent_id, c.secret)
    if combo == "basic+post":
        data = c.form
    elif combo == "post+private_key_jwt":
        data, auth = {**pkjwt, "client_secret": c.secret}, None
    elif combo == "basic+private_key_jwt":
        data = pkjwt
    else:
        data = {"grant_type": "client_credentials", "client_id": agent_id}
    before = Snapshot.of(env)
    response = post_token(env, data, auth=auth)
    assert_oauth_error(response, 400, "invalid_request")
    assert_nothing_issued(env, before, response)


@pytest.mark.parametrize(
    ("path", "how"),
    [("/oauth/token", "post"), ("/oauth/token", "basic"), ("/oauth/token", "private_key_jwt"),
     ("/oauth/introspect", "post"), ("/oauth/introspect", "basic")],
    ids=["token-post", "token-basic", "token-private_key_jwt", "introspect-post",
         "introspect-basic"],
)  # fmt: skip
def test_nul_byte_in_client_id_is_refused_never_a_500(env: Env, path: str, how: str) -> None:
    """HTTP. PostgreSQL refuses NUL in text: a NUL that reaches a query is a 500 and an
    unaudited failure. Either the route refuses the request as malformed (400), or the
    failed authentication is a 401 with its client.auth_failed event."""
    c = new_client(env)
    evil = c.agent_id + "\x00"
    headers: dict[str, str] = {}
    if how == "post":
        data = {**c.form, "client_id": evil, "token": "x"}
    elif how == "basic":
        data = {"grant_type": "client_credentials", "token": "x"}
        headers["Authorization"] = basic(evil, c.secret)
    else:
        data = assertion_form("e30.e30.e30", evil)
    before = Snapshot.of(env)
    with TestClient(create_app(env.services), raise_server_exceptions=False) as http:
        response = http.post(path, data=data, headers=headers)
    assert response.status_code in (400, 401), response.text
    new = assert_nothing_issued(env, before, response)
    if response.status_code == 400:
        assert response.json()["error"] == "invalid_request"
        assert new == []
    else:
        assert response.json()["error"] == "invalid_client"
        assert [ev.type for ev in new] == ["client.auth_failed"]


@pytest.mark.parametrize("how", ["service-post", "service-private_key_jwt"])
def test_service_refuses_and_audits_a_nul_byte_in_client_id(env: Env, how: str) -> None:
    """SERVICE layer, defence in depth: whatever transport sits in front of it."""
    c = new_client(env)
    evil = c.agent_id + "\x00"
    if how == "service-post":
        form = {**c.form, "client_id": evil}
    else:
        form = assertion_form("e30.e30.e30", evil)
    before = Snapshot.of(env)
    with pytest.raises(ClientAuthError):
        env.services.oauth.token(form, None)
    new = assert_nothing_issued(env, before)
    assert [ev.type for ev in new] == ["client.auth_failed"]
