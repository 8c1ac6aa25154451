"""Ledger verification end to end: tamper with the stored rows (as someone with database access
would) and check that ``GET /v1/audit/verify`` names the problem and the first bad event.

Services here sign a checkpoint every 5 events; the fixture leaves 12 events (the bootstrap
and key events and 10 agent creations), so checkpoints exist at sizes 5 and 10.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from tests.conftest import BOOTSTRAP_EVENTS, Api, admin_client, assert_error, bearer
from tests.ledger_tampering import EVENTS, small_ledger
from tests.ledger_tampering import create_agents as _create_agents
from tests.ledger_tampering import rewrite_from as _rewrite_from
from tests.ledger_tampering import tamper as _sql
from tests.ledger_tampering import verify as _verify
from tether.audit.chain import checkpoint_payload, event_hash
from tether.audit.signing import LedgerSigner
from tether.clock import FrozenClock, to_micros
from tether.container import Services
from tether.jsonutil import canonical_text

EVENT_FIELDS = {
    "seq",
    "id",
    "time",
    "type",
    "actor",
    "on_behalf_of",
    "chain",
    "action",
    "resource",
    "decision",
    "reasons",
    "policy_version",
    "outcome",
    "details",
    "prev_hash",
    "hash",
}


@pytest.fixture
def ledger(make_services: Callable[..., Services]) -> Services:
    return small_ledger(make_services)


@pytest.fixture
def lapi(ledger: Services) -> Iterator[Api]:
    with admin_client(ledger) as client:
        yield Api(client)


def _checkpoints(services: Services) -> list[dict[str, Any]]:
    with services.db.read() as s:
        rows = s.execute(text("SELECT * FROM audit_checkpoints ORDER BY size")).mappings().all()
    return [dict(r) for r in rows]


def _assert_problem(api: Api, problem: str, seq: int) -> None:
    result = _verify(api)
    assert result["ok"] is False, result
    assert (result["problem"], result["first_bad_seq"]) == (problem, seq), result
    assert result["message"]


# -- an intact ledger --------------------------------------------------------------------------


def test_intact_ledger_verifies(lapi: Api) -> None:
    events = lapi.events()
    assert [e["seq"] for e in events] == list(range(1, EVENTS + 1))
    result = _verify(lapi)
    assert (result["ok"], result["checked"], result["checkpoints_checked"]) == (True, EVENTS, 2)
    assert result["head_hash"] == events[-1]["hash"]
    assert result.get("problem") is None
    assert result.get("first_bad_seq") is None


def test_events_are_chained_and_have_the_documented_fields(lapi: Api) -> None:
    events = lapi.events()
    assert events[0]["prev_hash"] == "0" * 64
    for prev, ev in itertools.pairwise(events):
        assert ev["prev_hash"] == prev["hash"]
    for ev in events:
        assert set(ev) >= EVENT_FIELDS
        assert ev["time"].endswith("Z")


def test_export_is_every_event_in_order(lapi: Api) -> None:
    response = lapi.client.get("/v1/audit/export", params={"format": "jsonl"})
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == lapi.events()


def test_checkpoints_every_n_events(ledger: Services, lapi: Api) -> None:
    hashes = {e["seq"]: e["hash"] for e in lapi.events()}
    cps = _checkpoints(ledger)
    assert [c["size"] for c in cps] == [5, 10]
    assert all(c["head_hash"] == hashes[c["size"]] for c in cps)
    _create_agents(ledger, 3)
    assert [c["size"] for c in _checkpoints(ledger)] == [5, 10, 15]


def test_latest_checkpoint_signature_verifies(ledger: Services, lapi: Api) -> None:
    response = lapi.client.get("/v1/audit/checkpoints/latest")
    assert response.status_code == 200
    cp = response.json()
    assert set(cp) == {"size", "head_hash", "time", "key_id", "signature"}
    assert cp["size"] == 10
    assert cp["head_hash"] == lapi.events()[9]["hash"]
    assert cp["key_id"] == ledger.ledger.signer.key_id
    time_us = to_micros(datetime.fromisoformat(cp["time"]))
    payload = checkpoint_payload(cp["size"], cp["head_hash"], time_us)
    # The documented payload is reproducible from the response alone.
    fields = {"size": cp["size"], "head_hash": cp["head_hash"], "time": cp["time"]}
    assert payload == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    signature = base64.urlsafe_b64decode(cp["signature"] + "=" * (-len(cp["signature"]) % 4))
    ledger.ledger.signer.public_key.verify(signature, payload)  # raises if it does not verify


def test_post_checkpoint_signs_the_current_head(ledger: Services, lapi: Api) -> None:
    head = lapi.events()[-1]
    response = lapi.client.post("/v1/audit/checkpoints")
    assert response.status_code == 200, response.text
    cp = response.json()
    assert (cp["size"], cp["head_hash"]) == (EVENTS, head["hash"])
    assert lapi.client.get("/v1/audit/checkpoints/latest").json() == cp
    assert _verify(lapi)["checkpoints_checked"] == 3
    # Signing an unchanged head again adds nothing.
    assert lapi.client.post("/v1/audit/checkpoints").json() == cp
    assert [c["size"] for c in _checkpoints(ledger)] == [5, 10, EVENTS]


def test_timed_checkpoints(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock()
    services = make_services(clock=clock, checkpoint_every_seconds=30)
    first = services.audit.checkpoint_tick()  # nothing signed yet: due at once
    assert first is not None
    assert first.size == BOOTSTRAP_EVENTS
    _create_agents(services, 1)
    clock.advance(29)
    assert services.audit.checkpoint_tick() is None
    clock.advance(1)
    second = services.audit.checkpoint_tick()
    assert second is not None
    assert second.size == BOOTSTRAP_EVENTS + 1
    clock.advance(3600)
    assert services.audit.checkpoint_tick() is None  # the head has not moved


def test_only_readers_verify(lapi: Api) -> None:
    alice = lapi.user("alice")
    assert_error(lapi.client.get("/v1/audit/verify", headers=bearer(alice["token"])), 403)


# -- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [2, 7, EVENTS])
def test_edited_event(ledger: Services, lapi: Api, seq: int) -> None:
    _sql(
        ledger,
        "UPDATE audit_events SET details = :d WHERE seq = :s",
        d='{"name":"forged"}',
        s=seq,
    )
    _assert_problem(lapi, "edited", seq)


@pytest.mark.parametrize("column", ["actor", "type", "agent_id", "time"])
def test_edited_column(ledger: Services, lapi: Api, column: str) -> None:
    value: Any = 1 if column == "time" else "forged"
    _sql(ledger, f"UPDATE audit_events SET {column} = :v WHERE seq = 6", v=value)
    _assert_problem(lapi, "edited", 6)


def test_edited_event_with_its_hash_recomputed(ledger: Services, lapi: Api) -> None:
    [ev] = lapi.events()[6:7]
    forged = {**ev["details"], "name": "forged"}
    body = {k: v for k, v in ev.items() if k != "hash"}
    body.update(details=forged, time=to_micros(datetime.fromisoformat(ev["time"])))
    _sql(
        ledger,
        "UPDATE audit_events SET details = :d, hash = :h WHERE seq = 7",
        d=canonical_text(forged),
        h=event_hash(ev["prev_hash"], body),
    )
    _assert_problem(lapi, "edited", 7)


@pytest.mark.parametrize("seq", [1, 4, 8])
def test_deleted_event(ledger: Services, lapi: Api, seq: int) -> None:
    _sql(ledger, "DELETE FROM audit_events WHERE seq = :s", s=seq)
    _assert_problem(lapi, "missing", seq)


@pytest.mark.parametrize(("a", "b"), [(3, 4), (2, 6), (8, 11)])
def test_swapped_events(ledger: Services, lapi: Api, a: int, b: int) -> None:
    _sql(ledger, "UPDATE audit_events SET seq = -1 WHERE seq = :a", a=a)
    _sql(ledger, "UPDATE audit_events SET seq = :a WHERE seq = :b", a=a, b=b)
    _sql(ledger, "UPDATE audit_events SET seq = :b WHERE seq = -1", b=b)
    _assert_problem(lapi, "reordered", a)


@pytest.mark.parametrize("keep", [7, 3, 0])
def test_truncated_tail_before_a_checkpoint(ledger: Services, lapi: Api, keep: int) -> None:
    _sql(ledger, "DELETE FROM audit_events WHERE seq > :k", k=keep)
    _assert_problem(lapi, "missing", keep + 1)


@pytest.mark.parametrize(("seq", "after", "through"), [(3, 0, 5), (7, 5, 10), (10, 5, 10)])
def test_rewritten_history_is_reported_as_a_range(
    ledger: Services, lapi: Api, seq: int, after: int, through: int
) -> None:
    """Issue 10, item 4: a re-hashed chain cannot show which event was edited, only that
    checkpoint ``through`` no longer matches while checkpoint ``after`` still does."""
    _rewrite_from(ledger, lapi, seq)
    result = _verify(lapi)
    assert result["ok"] is False, result
    assert result["problem"] == "chain_rewritten_before", result
    assert (result["after_seq"], result["through_seq"]) == (after, through), result
    # The first event verify can no longer vouch for, not the checkpoint's size.
    assert result["first_bad_seq"] == after + 1, result
    assert f"{after + 1}" in result["message"], result
    assert f"{through}" in result["message"], result


def _flip(signature: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[-1] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "forgery", ["signature", "head_hash", "time", "other_key", "other_key_and_key_id"]
)
def test_forged_checkpoint(ledger: Services, lapi: Api, forgery: str) -> None:
    cp = _checkpoints(ledger)[1]
    assert cp["size"] == 10
    hashes = {e["seq"]: e["hash"] for e in lapi.events()}
    thief = LedgerSigner(Ed25519PrivateKey.generate())
    resigned = thief.sign(cp["size"], cp["head_hash"], cp["time"])
    changes = {
        "signature": {"signature": _flip(cp["signature"])},
        "head_hash": {"head_hash": hashes[9]},
        "time": {"time": cp["time"] + 1},
        "other_key": {"signature": resigned.signature},
        "other_key_and_key_id": {"signature": resigned.signature, "key_id": thief.key_id},
    }[forgery]
    assignments = ", ".join(f"{column} = :{column}" for column in changes)
    _sql(ledger, f"UPDATE audit_checkpoints SET {assignments} WHERE size = 10", **changes)
    _assert_problem(lapi, "bad_checkpoint_signature", 10)
