"""Delegation by token exchange (RFC 8693): the issued token names the subject and nests the
actors, never widens scope, is bounded in depth, honours may_act, and dies with its chain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tests.token_attacks.kit import assertion, assertion_form, counting_jobs, counting_writes
from tether.agents.models import AgentRow
from tether.agents.schemas import AgentCreate
from tether.audit.group import BATCH
from tether.clock import FrozenClock
from tether.container import Services
from tether.credentials.clients import ClientAuthError
from tether.credentials.errors import InvalidGrant, InvalidScope, InvalidTarget
from tether.credentials.models import AccessTokenRow, CredentialRow
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


def _hold_the_write_lock(
    svc: Services, then: Callable[[Session], None] | None = None
) -> Callable[[], None]:
    """Another writer (another worker's or node's batch) holds the write lock until the
    returned function is called; ``then`` runs in its transaction first."""
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with svc.db.write() as s:
            if then is not None:
                then(s)
            held.set()
            release.wait(20)

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(20)

    def done() -> None:
        release.set()
        thread.join(20)

    return done


def _queued(count: list[int], n: int) -> None:
    """Wait until ``n`` jobs were handed to the group committer (and then a moment, for the
    last to be queued)."""
    deadline = time.monotonic() + 20
    while count[0] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # its put into the queue follows at once; give a loaded machine time


def _batches() -> tuple[float, float]:
    """The group commit's batch-size histogram: (batches, jobs and events) so far."""
    [metric] = BATCH.collect()
    values = {s.name: s.value for s in metric.samples}
    return values["tether_ledger_group_commit_batch_size_count"], values[
        "tether_ledger_group_commit_batch_size_sum"
    ]


def test_exchanges_are_written_by_the_group_commit_many_per_transaction(svc: Services) -> None:
    """Issue 14, item 6: a token exchange is one job of the group commit (its assertion or
    ``last_used_at``, its token row and its ``token.exchanged`` event), not a write
    transaction of its own after another for the client's authentication: four exchanges
    queued behind another writer's lock are written in one transaction."""
    subject = _agent(svc, "subject", ["read"])
    actors = [_agent(svc, f"actor{i}", ["read"]) for i in range(4)]
    forms = [{"grant_type": EXCHANGE, **actor, "subject_token": _token(svc, subject),
              "subject_token_type": AT, "actor_token": _token(svc, actor),
              "actor_token_type": AT} for actor in actors]  # fmt: skip
    svc.oauth._touched.clear()  # every credential's last_used_at due again: written too
    release = _hold_the_write_lock(svc)
    count = counting_jobs(svc)
    writes = counting_writes(svc)
    before = _batches()
    answers: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda f=f: answers.append(svc.oauth.token(f, None)))
               for f in forms]  # fmt: skip
    for t in threads:
        t.start()
    _queued(count, 4)
    release()
    for t in threads:
        t.join(20)
    assert len(answers) == 4
    batches, items = _batches()
    assert (batches - before[0], items - before[1]) == (1, 4)  # one batch of four jobs
    assert writes == [1]  # and nothing else: one write transaction for the four exchanges
    for answer in answers:
        assert svc.oauth.introspect(answer["access_token"], SYSTEM)["active"] is True
    with svc.db.read() as s:
        used = s.scalars(select(CredentialRow.last_used_at).where(
            CredentialRow.agent_id.in_([a["client_id"] for a in actors]))).all()  # fmt: skip
    assert len(used) == 4
    assert None not in used


def test_a_subject_suspended_while_the_exchange_waited_gets_nothing(svc: Services) -> None:
    """The chain is checked again inside the job, under the write lock: a subject suspended
    by a transaction that committed after the exchange's checks (here: the writer holding
    the lock) is refused there — no token row, no ``token.exchanged`` event — and the
    actor's assertion stays spent: replaying it is refused as a replay."""
    subject = _agent(svc, "subject", ["read"])
    spec = AgentCreate(name="keyed", owner="admin", purpose="p", risk_tier="minimal",
                       scopes=["read"])  # fmt: skip
    actor = svc.agents.create(SYSTEM, spec)
    key = ECKey.generate_key("P-256")
    svc.credentials.create_public_key(SYSTEM, actor.id, jwk=key.as_dict(private=False))
    actor_token = svc.oauth.token(
        assertion_form(assertion(key, actor.id, svc.oauth.endpoints.token, START), actor.id),
        None,
    )["access_token"]
    exchanged = {
        "grant_type": EXCHANGE,
        "subject_token": _token(svc, subject),
        "subject_token_type": AT,
        "actor_token": actor_token,
        "actor_token_type": AT,
    }
    form = {**assertion_form(assertion(key, actor.id, svc.oauth.endpoints.token, START)),
            **exchanged}  # fmt: skip
    tokens_before = _rows(svc, AccessTokenRow)

    def suspend(s: Session) -> None:
        s.execute(update(AgentRow).where(AgentRow.id == subject["client_id"])
                  .values(status="suspended"))  # fmt: skip

    release = _hold_the_write_lock(svc, then=suspend)
    count = counting_jobs(svc)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            svc.oauth.token(dict(form), None)
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    _queued(count, 1)
    release()
    thread.join(20)
    [refused] = outcome
    assert isinstance(refused, InvalidGrant)
    assert str(refused) == f"agent {subject['client_id']} in the delegation chain is not active"
    assert _rows(svc, AccessTokenRow) == tokens_before
    with pytest.raises(ClientAuthError) as replayed:
        svc.oauth.token(dict(form), None)
    assert replayed.value.failure.reason == "assertion jti already used (replay)"
    events = svc.audit.events(SYSTEM, type_="token.exchanged", agent=actor.id, limit=100)
    assert events.items == []


def _rows(svc: Services, table: Any) -> int:
    with svc.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)
