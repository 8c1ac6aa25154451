"""The hash chain as pure functions (tether.audit.chain, tether.audit.signing): no database.

Hashes and payloads are recomputed here with hashlib and json, independently of the code
under test, so a change to the documented formula fails these tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.audit.anchoring import AnchorRule, FileState, judge_anchoring
from tether.audit.chain import (
    GENESIS,
    Checkpoint,
    Event,
    Problem,
    VerifyResult,
    checkpoint_payload,
    event_hash,
    verify_chain,
)
from tether.audit.signing import LedgerSigner

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _event(seq: int, prev: str, **fields: Any) -> Event:
    ev = Event(
        seq=seq,
        id=f"evt_{seq:026d}",
        time_us=T0 + seq,
        type="agent.created",
        actor="user:usr_1",
        agent_id=f"agt_{seq}",
        on_behalf_of=None,
        chain=[],
        action="agent.created",
        resource={"type": "Agent", "id": f"agt_{seq}"},
        decision=None,
        reasons=[],
        policy_version=None,
        outcome="success",
        details={"n": seq, "note": "café"},
        prev_hash=prev,
    )
    ev = replace(ev, **fields)
    return replace(ev, hash=event_hash(prev, ev.body()))


def _chain(n: int) -> list[Event]:
    out: list[Event] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        ev = _event(seq, prev)
        out.append(ev)
        prev = ev.hash
    return out


def _verify(
    events: list[Event],
    checkpoints: Sequence[Checkpoint] = (),
    check: Callable[[Checkpoint], bool] = lambda _c: True,
) -> VerifyResult:
    by_hash = {e.hash: e.seq for e in events}
    return verify_chain(
        sorted(events, key=lambda e: e.seq),
        seq_of_hash=by_hash.get,
        checkpoints=checkpoints,
        check_signature=check,
    )


def _rehash_from(events: list[Event], index: int) -> list[Event]:
    """Recompute every hash from ``index`` on, as a forger who rewrote history would."""
    out = events[:index]
    prev = out[-1].hash if out else GENESIS
    for original in events[index:]:
        relinked = replace(original, prev_hash=prev)
        ev = replace(relinked, hash=event_hash(prev, relinked.body()))
        out.append(ev)
        prev = ev.hash
    return out


# -- the formula -------------------------------------------------------------------------------


def test_genesis_is_64_zeros_and_first_event_links_to_it() -> None:
    assert GENESIS == "0" * 64
    assert _chain(1)[0].prev_hash == GENESIS


def test_event_hash_is_sha256_of_prev_bytes_and_canonical_body() -> None:
    ev = _chain(3)[2]
    body = ev.body()
    expected = hashlib.sha256(bytes.fromhex(ev.prev_hash) + _json(body)).hexdigest()
    assert event_hash(ev.prev_hash, body) == expected == ev.hash


def test_body_covers_every_field_but_hash() -> None:
    ev = _chain(1)[0]
    body = ev.body()
    assert "hash" not in body
    assert body["seq"] == 1
    assert body["prev_hash"] == GENESIS
    assert set(body) == set(ev.to_json()) - {"hash"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 2),
        ("id", "evt_other"),
        ("time_us", T0 + 99),
        ("type", "agent.killed"),
        ("actor", "system"),
        ("agent_id", "agt_other"),
        ("on_behalf_of", "user:usr_2"),
        ("chain", ["agt_x"]),
        ("action", "other"),
        ("resource", {"type": "Agent", "id": "agt_other"}),
        ("decision", "deny"),
        ("reasons", ["p1"]),
        ("policy_version", "v2"),
        ("outcome", "failure"),
        ("details", {"n": 1, "note": "cafe"}),
        ("prev_hash", "1" * 64),
    ],
)
def test_changing_any_field_changes_the_hash(field: str, value: Any) -> None:
    ev = _chain(1)[0]
    changed = replace(ev, **{field: value})
    assert event_hash(changed.prev_hash, changed.body()) != ev.hash


def test_checkpoint_payload_is_canonical_size_head_and_rfc3339_time() -> None:
    head = "ab" * 32
    payload = checkpoint_payload(7, head, T0 + 250_000)
    assert payload == _json({"size": 7, "head_hash": head, "time": "2026-01-01T00:00:00.250000Z"})
    assert checkpoint_payload(7, head, T0) == _json(
        {"size": 7, "head_hash": head, "time": "2026-01-01T00:00:00Z"}
    )


# -- verification ------------------------------------------------------------------------------


def test_intact_chain_verifies_and_reports_its_head() -> None:
    events = _chain(6)
    result = _verify(events)
    assert result.ok
    assert result.checked == 6
    assert result.head_hash == events[-1].hash
    assert result.to_json() == {
        "ok": True,
        "checked": 6,
        "checkpoints_checked": 0,
        "head_hash": events[-1].hash,
    }


def test_empty_ledger_verifies() -> None:
    result = _verify([])
    assert result.ok
    assert result.checked == 0
    assert result.head_hash == GENESIS


@pytest.mark.parametrize("seq", [1, 3, 6])
def test_edited_event_is_found_at_its_seq(seq: int) -> None:
    events = _chain(6)
    events[seq - 1] = replace(events[seq - 1], details={"n": seq, "note": "forged"})
    result = _verify(events)
    assert not result.ok
    assert result.problem is Problem.EDITED
    assert result.first_bad_seq == seq
    assert result.checked == seq - 1
    assert result.to_json()["problem"] == "edited"


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_edited_event_with_recomputed_hash_is_found_at_its_seq(seq: int) -> None:
    events = _chain(6)
    forged = replace(events[seq - 1], details={"n": seq, "note": "forged"})
    events[seq - 1] = replace(forged, hash=event_hash(forged.prev_hash, forged.body()))
    result = _verify(events)
    assert not result.ok
    assert result.problem is Problem.EDITED
    assert result.first_bad_seq == seq


def test_edited_hash_field_alone_is_found() -> None:
    events = _chain(4)
    events[1] = replace(events[1], hash="f" * 64)
    result = _verify(events)
    assert result.problem is Problem.EDITED
    assert result.first_bad_seq == 2


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_deleted_event_is_missing_at_its_seq(seq: int) -> None:
    events = [e for e in _chain(6) if e.seq != seq]
    result = _verify(events)
    assert not result.ok
    assert result.problem is Problem.MISSING
    assert result.first_bad_seq == seq


@pytest.mark.parametrize(("a", "b"), [(2, 3), (1, 2), (2, 5), (1, 6)])
def test_swapped_events_are_reordered_at_the_lower_seq(a: int, b: int) -> None:
    events = _chain(6)
    # What an UPDATE exchanging two rows' seq values does: each body keeps its own seq.
    first, second = events[a - 1], events[b - 1]
    swapped = [e for e in events if e.seq not in (a, b)]
    swapped += [_as_seq(first, b), _as_seq(second, a)]
    result = _verify(swapped)
    assert not result.ok
    assert result.problem is Problem.REORDERED
    assert result.first_bad_seq == a


def _as_seq(ev: Event, seq: int) -> Event:
    """``ev`` stored under another ``seq`` (the column), its hash left as it was."""
    return replace(ev, seq=seq)


@pytest.mark.parametrize(("seq", "after", "through"), [(2, 0, 4), (5, 4, 6), (6, 4, 6)])
def test_rewritten_history_is_reported_between_two_checkpoints(
    seq: int, after: int, through: int
) -> None:
    """An edit followed by re-hashing is only visible at the next checkpoint: verification
    names the range between the last checkpoint that matches and the first that does not."""
    events = _chain(6)
    cps = [Checkpoint(s, events[s - 1].hash, T0, "k", "sig") for s in (4, 6)]
    events[seq - 1] = replace(events[seq - 1], details={"n": seq, "note": "forged"})
    forged = _rehash_from(events, seq - 1)
    assert _verify(forged).ok  # without a checkpoint the rewrite is self-consistent
    result = _verify(forged, cps)
    assert not result.ok
    assert result.problem is Problem.CHAIN_REWRITTEN_BEFORE
    assert (result.after_seq, result.through_seq) == (after, through)
    assert result.first_bad_seq == after + 1
    out = result.to_json()
    assert (out["problem"], out["after_seq"], out["through_seq"]) == (
        "chain_rewritten_before", after, through,
    )  # fmt: skip


def test_the_checkpoint_files_heads_are_held_to_the_chain() -> None:
    events = _chain(6)
    in_db = [Checkpoint(2, events[1].hash, T0, "k", "s")]
    outside = [*in_db, Checkpoint(4, events[3].hash, T0, "k", "s")]
    by_hash = {e.hash: e.seq for e in events}

    def verify(chain: list[Event], file: list[Checkpoint]) -> VerifyResult:
        return verify_chain(chain, seq_of_hash=by_hash.get, checkpoints=in_db, external=file)

    intact = verify(events, outside)
    assert (intact.ok, intact.external_checkpoints, intact.anchored_size) == (True, 2, 4)
    assert intact.first_unanchored_us == events[4].time_us
    forged = _rehash_from([*events[:2], replace(events[2], details={"n": 3}), *events[3:]], 2)
    rewritten = verify(forged, outside)
    assert (rewritten.problem, rewritten.first_bad_seq) == (
        Problem.EXTERNAL_CHECKPOINT_MISMATCH, 3,
    )  # fmt: skip
    assert (rewritten.after_seq, rewritten.through_seq) == (2, 4)
    truncated = verify(events[:3], outside)
    assert (truncated.problem, truncated.first_bad_seq) == (Problem.TRUNCATED, 4)
    assert (truncated.after_seq, truncated.through_seq) == (3, 4)


def _judged(
    events: int, anchored: int, *, first_us: int | None, now_us: int, since_us: int = 0
) -> VerifyResult:
    result = VerifyResult(checked=events, anchored_size=anchored, first_unanchored_us=first_us)
    result.external_checkpoints = 1
    file = FileState(bad_lines=[], db_checkpoints=1, not_in_db=[])
    rule = AnchorRule(every_events=5, every_seconds=60)
    return judge_anchoring(result, rule, file, now_us=now_us, since_us=since_us)


def test_the_tail_may_not_outgrow_the_checkpoint_rules() -> None:
    limit_us = int(AnchorRule(5, 60).max_unanchored_seconds * 1_000_000)
    assert AnchorRule(5, 60).max_unanchored == 4
    within = _judged(14, 10, first_us=T0, now_us=T0 + limit_us)
    assert within.ok
    assert within.to_json()["unanchored"] == 4
    too_many = _judged(15, 10, first_us=T0, now_us=T0)
    assert (too_many.problem, too_many.first_bad_seq, too_many.through_seq) == (
        Problem.UNANCHORED_TAIL, 11, 15,
    )  # fmt: skip
    too_old = _judged(11, 10, first_us=T0, now_us=T0 + limit_us + 1)
    assert too_old.problem is Problem.UNANCHORED_TAIL
    # Written before this server started: the wait counts from the start.
    assert _judged(11, 10, first_us=T0, now_us=T0 + limit_us + 1, since_us=T0 + 1).ok


def test_bad_checkpoint_signature_is_reported_at_its_size() -> None:
    events = _chain(6)
    good = Checkpoint(3, events[2].hash, T0, "k", "good")
    bad = Checkpoint(6, events[5].hash, T0, "k", "bad")
    result = _verify(events, [good, bad], check=lambda c: c.signature == "good")
    assert not result.ok
    assert result.problem is Problem.BAD_CHECKPOINT_SIGNATURE
    assert result.first_bad_seq == 6


def test_checkpoint_beyond_the_end_means_events_are_missing() -> None:
    events = _chain(8)
    cp = Checkpoint(8, events[7].hash, T0, "k", "s")
    assert _verify(events, [cp]).ok
    truncated = events[:5]
    result = _verify(truncated, [cp])
    assert not result.ok
    assert result.problem is Problem.MISSING
    assert result.first_bad_seq == 6


def test_valid_checkpoints_are_counted() -> None:
    events = _chain(6)
    cps = [Checkpoint(s, events[s - 1].hash, T0, "k", "s") for s in (2, 4, 6)]
    result = _verify(events, cps)
    assert result.ok
    assert result.checkpoints_checked == 3


# -- checkpoint signatures (Ed25519, RFC 8032) ---------------------------------------------------


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_signer_signs_the_documented_payload() -> None:
    key = Ed25519PrivateKey.generate()
    signer = LedgerSigner(key)
    cp = signer.sign(5, "cd" * 32, T0)
    assert (cp.size, cp.head_hash, cp.time_us, cp.key_id) == (5, "cd" * 32, T0, signer.key_id)
    # Raises InvalidSignature if the signature is not over exactly these bytes.
    key.public_key().verify(_b64url_decode(cp.signature), checkpoint_payload(5, "cd" * 32, T0))
    assert signer.check(cp)
    assert cp.to_json()["time"] == datetime.fromtimestamp(T0 / 1e6, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def _flip(signature: str) -> str:
    raw = bytearray(_b64url_decode(signature))
    raw[0] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("forgery", ["signature", "head_hash", "size", "time", "other_key"])
def test_signer_rejects_forged_checkpoints(forgery: str) -> None:
    signer = LedgerSigner(Ed25519PrivateKey.generate())
    cp = signer.sign(5, "cd" * 32, T0)
    forged = {
        "signature": replace(cp, signature=_flip(cp.signature)),
        "head_hash": replace(cp, head_hash="ef" * 32),
        "size": replace(cp, size=6),
        "time": replace(cp, time_us=T0 + 1),
        # Re-signed with another key but claiming ours.
        "other_key": replace(
            LedgerSigner(Ed25519PrivateKey.generate()).sign(5, "cd" * 32, T0), key_id=cp.key_id
        ),
    }[forgery]
    assert not signer.check(forged)


@pytest.mark.parametrize("signature", ["", "not base64 at all!", "AAAA"])
def test_signer_rejects_garbage_signatures_without_raising(signature: str) -> None:
    signer = LedgerSigner(Ed25519PrivateKey.generate())
    assert not signer.check(replace(signer.sign(1, "00" * 32, T0), signature=signature))


def test_signer_rejects_another_key_id() -> None:
    signer = LedgerSigner(Ed25519PrivateKey.generate())
    other = LedgerSigner(Ed25519PrivateKey.generate())
    assert signer.key_id != other.key_id
    assert not signer.check(other.sign(1, "00" * 32, T0))
