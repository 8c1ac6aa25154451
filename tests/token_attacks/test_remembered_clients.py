"""Attacks on what a worker remembers of a client (``ClientReads``): a credential or agent
that changed after a worker last read it must be refused or re-read, never answered from
memory. Each change here is made through the services, which never tell the token
endpoint's memory: as another worker or node would make it."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import ECKey
from sqlalchemy import text
from sqlalchemy.exc import UnboundExecutionError

from tests.token_attacks.kit import (
    Env,
    Snapshot,
    assert_nothing_issued,
    assert_oauth_error,
    assertion,
    assertion_form,
    keyed_agent,
    new_client,
    post_token,
    token_rows,
)
from tether.agents.schemas import AgentUpdate
from tether.credentials.clients import (
    AuthenticatedClient,
    ClientAuthError,
    ClientReads,
    authenticate,
    read_current,
    spend,
    spend_all,
    unchanged,
)
from tether.credentials.service import secret_digest
from tether.freeze.gate import IN_FORCE
from tether.principals import SYSTEM


def _granted(env: Env, data: dict[str, str]) -> dict[str, Any]:
    response = post_token(env, data)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _refusal_reason(env: Env, before: Snapshot, response: Any) -> str:
    assert_oauth_error(response, 401, "invalid_client")
    new = assert_nothing_issued(env, before, response)
    assert [ev.type for ev in new] == ["client.auth_failed"]
    return str(new[0].details["reason"])


def test_a_remembered_key_deleted_elsewhere_is_refused(env: Env) -> None:
    client = new_client(env)
    _granted(env, client.form)
    assert secret_digest(client.secret) in env.services.oauth.client_reads.secrets  # remembered
    env.services.credentials.delete(SYSTEM, client.agent_id, client.credential_id)

    before = Snapshot.of(env)
    assert _refusal_reason(env, before, post_token(env, client.form)) == "credential deleted"


def test_a_remembered_agent_suspended_is_refused_and_served_again_once_resumed(env: Env) -> None:
    client = new_client(env)
    _granted(env, client.form)
    env.services.agents.suspend(SYSTEM, client.agent_id, reason="investigating")
    before = Snapshot.of(env)
    assert _refusal_reason(env, before, post_token(env, client.form)) == "agent is suspended"
    # the refusal is not remembered either
    env.services.agents.resume(SYSTEM, client.agent_id)
    assert _granted(env, client.form)["token_type"] == "Bearer"


def test_a_remembered_agent_killed_gets_nothing(env: Env) -> None:
    client = new_client(env)
    _granted(env, client.form)
    env.services.agents.kill(SYSTEM, client.agent_id, reason="rogue")
    before = Snapshot.of(env)
    assert _refusal_reason(env, before, post_token(env, client.form)) == "agent is revoked"


def test_scopes_narrowed_after_a_client_was_remembered_bind_its_next_token(env: Env) -> None:
    client = new_client(env, scopes=["read", "write"])
    assert _granted(env, client.form)["scope"] == "read write"
    env.services.agents.update(SYSTEM, client.agent_id, AgentUpdate(scopes=["read"]))
    tokens = token_rows(env)
    # the default scope is the ceiling as it is now, not as it was remembered ...
    assert _granted(env, client.form)["scope"] == "read"
    assert token_rows(env) == tokens + 1  # one token for one request, after the start-over
    # ... and a scope taken away is refused
    refused = post_token(env, {**client.form, "scope": "write"})
    assert_oauth_error(refused, 400, "invalid_scope")


def test_a_key_registered_after_the_keys_were_remembered_is_accepted(env: Env) -> None:
    agent_id, first, first_id = keyed_agent(env)
    _granted(env, assertion_form(assertion(first, agent_id, env.token_url, env.now)))
    assert agent_id in env.services.oauth.client_reads.keys
    second = ECKey.generate_key("P-256")
    env.services.credentials.create_public_key(SYSTEM, agent_id,
                                               jwk=second.as_dict(private=False))  # fmt: skip
    _granted(env, assertion_form(assertion(second, agent_id, env.token_url, env.now)))
    # and the first key, deleted meanwhile, no longer is
    env.services.credentials.delete(SYSTEM, agent_id, first_id)
    before = Snapshot.of(env)
    stale = post_token(env, assertion_form(assertion(first, agent_id, env.token_url, env.now)))
    assert _refusal_reason(env, before, stale) == (
        "assertion signature does not verify with a registered key"
    )


def test_a_start_over_spends_the_assertion_once(env: Env) -> None:
    """The credential changed after it was remembered (a new expiry): the issuing job finds
    it changed, writes nothing, and the request starts over from the database — the
    assertion is spent once, by the start-over, and a replay of it is still refused."""
    agent_id, key, _ = keyed_agent(env)
    _granted(env, assertion_form(assertion(key, agent_id, env.token_url, env.now)))
    env.services.agents.update(SYSTEM, agent_id, AgentUpdate(purpose="changed, harmlessly"))
    env.services.agents.update(SYSTEM, agent_id, AgentUpdate(scopes=["read", "write", "x"]))
    token = assertion(key, agent_id, env.token_url, env.now)
    tokens = token_rows(env)
    assert _granted(env, assertion_form(token))["scope"] == "read write x"
    assert token_rows(env) == tokens + 1
    before = Snapshot.of(env)
    replay = post_token(env, assertion_form(token))
    assert _refusal_reason(env, before, replay) == "assertion jti already used (replay)"


def test_a_remembered_client_is_served_on_the_event_loop_and_a_new_one_in_a_thread(
    env: Env, monkeypatch: Any
) -> None:
    """``token_async``: a client this process remembers is authenticated and signed from
    memory, without :meth:`OAuthService.token` (the worker-thread path); a first request,
    which reads the database, and a refusal, which writes its audit event, take that path."""
    oauth = env.services.oauth
    threaded: list[str] = []
    blocking = oauth.token

    def spy(form: dict[str, str], authorization: str | None, **kw: Any) -> dict[str, Any]:
        threaded.append(form.get("scope", ""))
        return blocking(form, authorization, **kw)

    monkeypatch.setattr(oauth, "token", spy)
    # A serving worker's steady state, which a loaded test machine does not always reach in
    # time by itself: its runtime current (which freezes are in force: none) and its view of
    # the signing keys fresh. Either not so, and the thread path reads them (see below).
    monkeypatch.setitem(env.services.db.session_info, IN_FORCE, lambda: ())
    monkeypatch.setattr(oauth.keys, "signer_in_memory", oauth.keys.signer)
    client = new_client(env, scopes=["read", "write"])
    _granted(env, {**client.form, "scope": "read"})
    assert threaded == ["read"]  # not remembered yet: read from the database in a thread
    tokens = token_rows(env)
    for _ in range(3):
        _granted(env, {**client.form, "scope": "write"})
    assert threaded == ["read"]  # remembered: none of the three took the thread
    assert token_rows(env) == tokens + 3  # and each is recorded
    before = Snapshot.of(env)
    refused = post_token(env, {**client.form, "scope": "admin"})
    assert_oauth_error(refused, 400, "invalid_scope")
    assert threaded == ["read", "admin"]  # a refusal is decided where it may write
    assert_nothing_issued(env, before, refused)
    # a worker whose runtime is not current reads the freezes in force from the table
    monkeypatch.setitem(env.services.db.session_info, IN_FORCE, lambda: None)
    _granted(env, {**client.form, "scope": "read"})
    assert threaded == ["read", "admin", "read"]


def test_an_offline_session_runs_no_statement(env: Env) -> None:
    """What the event loop authenticates with: memory answers, a statement raises."""
    with env.services.db.offline() as s, pytest.raises(UnboundExecutionError):
        s.execute(text("SELECT 1"))


def test_a_batch_reads_its_clients_once_and_still_tells_each_change(env: Env) -> None:
    """A group commit's issuances re-read their remembered clients in one statement
    (``read_current``); each client's check is still its own: a key deleted, an agent
    suspended or narrowed since it was remembered, and nothing else, is found changed."""
    svc = env.services
    reads = ClientReads()
    names = ["kept", "deleted", "suspended", "narrowed"]
    made = {name: new_client(env, scopes=["read", "write"]) for name in names}

    def remembered(client: Any) -> AuthenticatedClient:
        for _ in range(2):  # the second authentication answers from memory
            with svc.db.read(transaction=False) as s:
                authenticated = authenticate(s, client.form, None, issuer=env.issuer,
                                             token_endpoint=env.token_url,
                                             now=svc.clock.now(), reads=reads)  # fmt: skip
        assert authenticated.remembered
        return authenticated

    authenticated = {name: remembered(client) for name, client in made.items()}
    svc.credentials.delete(SYSTEM, made["deleted"].agent_id, made["deleted"].credential_id)
    svc.agents.suspend(SYSTEM, made["suspended"].agent_id, reason="investigating")
    svc.agents.update(SYSTEM, made["narrowed"].agent_id, AgentUpdate(scopes=["read"]))
    with svc.db.write() as s:
        read_current(s, list(authenticated.values()))
        # Changed after the one read, inside the same transaction (under the write lock no
        # one else could): a check that read again would see it; these answer from the read.
        s.execute(text("UPDATE agents SET scopes = '[]' WHERE id = :id"),
                  {"id": made["kept"].agent_id})  # fmt: skip
        verdicts = {name: unchanged(s, client) for name, client in authenticated.items()}
        s.rollback()
    assert verdicts == {"kept": True, "deleted": False, "suspended": False, "narrowed": False}
    # and without the batch's read, each check reads for itself
    with svc.db.write() as s:
        assert unchanged(s, authenticated["kept"])
        assert not unchanged(s, authenticated["narrowed"])


def test_a_batch_spends_each_assertion_once_and_only_for_clients_still_as_read(env: Env) -> None:
    """``spend_all``, a batch of issuances' assertions in one statement: the same assertion
    twice in one batch is spent by the first and a replay for the second; a client found
    changed spends nothing (it is answered afresh, and its assertion must still work)."""
    svc = env.services
    reads = ClientReads()
    fresh_id, fresh_key, _ = keyed_agent(env)
    changed_id, changed_key, _ = keyed_agent(env)

    def remembered(form: dict[str, str]) -> AuthenticatedClient:
        with svc.db.read(transaction=False) as s:
            return authenticate(s, form, None, issuer=env.issuer, token_endpoint=env.token_url,
                                now=svc.clock.now(), reads=reads)  # fmt: skip

    remembered(assertion_form(assertion(changed_key, changed_id, env.token_url, env.now)))
    once = assertion_form(assertion(fresh_key, fresh_id, env.token_url, env.now))
    first, second = remembered(once), remembered(once)  # one assertion, sent twice
    changed = remembered(assertion_form(assertion(changed_key, changed_id, env.token_url, env.now)))
    assert changed.remembered
    svc.agents.update(SYSTEM, changed_id, AgentUpdate(scopes=["other"]))
    with svc.db.write() as s:
        read_current(s, [first, second, changed])
        spend_all(s, [first, second, changed], svc.oauth.replay)
        spend(s, first, svc.oauth.replay)  # the first use: spent, no error
        assert _replayed(s, second, svc)
        assert not unchanged(s, changed)
    # the changed client's assertion was not spent: it is still good once
    with svc.db.write() as s:
        spend(s, changed, svc.oauth.replay)
        assert _replayed(s, changed, svc)


def _replayed(s: Any, client: AuthenticatedClient, svc: Any) -> bool:
    with pytest.raises(ClientAuthError) as refused:
        spend(s, client, svc.oauth.replay)
    return refused.value.failure.reason == "assertion jti already used (replay)"
