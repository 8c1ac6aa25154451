"""Verifying an exported ledger with no server: ``tether audit verify --file``.

An auditor holds three files: the export (``tether audit export``, one event a line as
:meth:`Event.to_json`), signed checkpoints (lines of the server's ``checkpoints.jsonl``, a
witness's copies, or ``GET /v1/audit/checkpoints/latest`` bodies) and the ledger's public key
(``tether admin ledger-key``). The chain is recomputed with the ledger's own code
(:func:`tether.audit.chain.verify_chain`) and every checkpoint must be signed by that key and
match the chain at its size. A problem is named by the line of the export that holds it.

An export of a pruned ledger starts after its retention cut (tether.audit.retention): the
cut's signed checkpoint must be among the checkpoints given (the server's
``checkpoints.jsonl`` has every cut), and the export's first event must follow it.

The key must come from the auditor, never from the files checked: whoever could rewrite the
export could sign it with a key of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tether.audit.chain import Checkpoint, Event, Problem, VerifyResult, verify_chain
from tether.audit.checkpoint_file import CheckpointFile
from tether.audit.signing import LedgerVerifier
from tether.clock import to_micros
from tether.errors import ValidationFailed

_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class OfflineResult:
    """``result`` as the server's verify has it; ``line``: the export's line (1-based) of the
    first problem, when one line holds it."""

    result: VerifyResult
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = self.result.to_json()
        out["external_checkpoints"] = self.result.external_checkpoints
        out["anchored_size"] = self.result.anchored_size
        out["unanchored"] = self.result.end - self.result.anchored_size
        if self.line is not None:
            out["line"] = self.line
        return out


def load_public_key(path: Path) -> LedgerVerifier:
    """The ledger's key from a PEM file: the public key, or the private key it derives from.
    Raises :class:`ValidationFailed` if the file holds no Ed25519 key."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror}", field="--public-key") from exc
    key: object
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            key = None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValidationFailed(
            f"{path} holds no Ed25519 key in PEM — get the ledger's with `tether admin ledger-key`",
            field="--public-key",
        )
    return LedgerVerifier(key)


def load_checkpoints(path: Path) -> list[Checkpoint]:
    """Signed checkpoints, one JSON object a line. Raises :class:`ValidationFailed` naming the
    first line that is not one, or if the file is missing or holds none."""
    if not path.is_file():
        raise ValidationFailed(f"no checkpoint file at {path}", field="--checkpoints")
    lines = CheckpointFile(path).read()
    if lines.bad_lines:
        raise ValidationFailed(
            f"line {lines.bad_lines[0]} of {path} is not a signed checkpoint (one JSON object "
            "a line, as in checkpoints.jsonl)",
            field="--checkpoints",
        )
    if not lines.checkpoints:
        raise ValidationFailed(f"{path} holds no checkpoint", field="--checkpoints")
    return lines.checkpoints


def verify_export(
    path: Path, *, checkpoints: list[Checkpoint], verifier: LedgerVerifier
) -> OfflineResult:
    """Check the export at ``path`` against ``checkpoints`` signed by ``verifier``'s key.
    Raises :class:`ValidationFailed` if the file cannot be read."""
    try:
        index = _index(path)
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror}", field="--file") from exc
    if index.problem is not None:
        line, problem, message = index.problem
        seq = index.seq_at.get(line)
        return OfflineResult(VerifyResult().fail(seq, problem, message), line)
    result = verify_chain(
        _events(path),
        seq_of_hash=index.seq_of_hash.get,
        external=checkpoints,
        check_signature=verifier.check,
        cut_at=partial(_cut_at, checkpoints, index.first, verifier),
    )
    if result.ok:
        return OfflineResult(result)
    bad = result.first_bad_seq
    where = index.line_of.get(bad) if bad is not None else None
    if where is not None and result.problem in (Problem.EDITED, Problem.REORDERED):
        result.message = f"line {where}: {result.message}"
    return OfflineResult(result, where)


def _cut_at(
    checkpoints: list[Checkpoint], first: Event | None, verifier: LedgerVerifier, size: int
) -> Checkpoint | None:
    """The retention cut an export that starts after event ``size`` follows: a checkpoint at
    ``size`` among those given (``checkpoints.jsonl`` has each cut), the one signed for the
    head the export's first event follows if there is one."""
    at = [c for c in checkpoints if c.size == size]
    for cp in at:
        if first is not None and cp.head_hash == first.prev_hash and verifier.check(cp):
            return cp
    return at[0] if at else None


@dataclass(slots=True)
class _Index:
    """What a first pass over the export learns: where each event is, and the first line out
    of ``seq`` order or unreadable (``(line, problem, message)``)."""

    seq_of_hash: dict[str, int]
    line_of: dict[int, int]  # seq -> line
    seq_at: dict[int, int]  # line -> seq
    problem: tuple[int, Problem, str] | None = None
    first: Event | None = None


def _index(path: Path) -> _Index:
    index = _Index({}, {}, {})
    expected: int | None = None
    first_out_of_order: tuple[int, int, int] | None = None
    for number, event in _read(path):
        if isinstance(event, str):
            index.problem = (number, Problem.EDITED, f"line {number} is not an event: {event}")
            return index
        if expected is None:  # an export of a pruned ledger starts after its cut
            expected = event.seq
            index.first = event
        index.seq_of_hash.setdefault(event.hash, event.seq)
        index.line_of.setdefault(event.seq, number)
        index.seq_at[number] = event.seq
        if event.seq != expected and first_out_of_order is None:
            first_out_of_order = (number, event.seq, expected)
        expected = event.seq + 1
    if first_out_of_order is not None:
        index.problem = _out_of_order(index, *first_out_of_order)
    return index


def _out_of_order(index: _Index, line: int, seq: int, expected: int) -> tuple[int, Problem, str]:
    """Why line ``line`` holds event ``seq`` where event ``expected`` belongs."""
    elsewhere = index.line_of.get(expected)
    if elsewhere is not None:
        return (
            line,
            Problem.REORDERED,
            f"line {line} holds event {seq} where event {expected} belongs; event {expected} is "
            f"on line {elsewhere}: lines were moved",
        )
    if seq > expected:
        gone = f"event {expected}" if seq == expected + 1 else f"events {expected}..{seq - 1}"
        return (
            line,
            Problem.MISSING,
            f"{gone} missing before line {line} (which holds event {seq}): deleted",
        )
    again = f"line {line} holds event {seq} again, after event {expected - 1}"
    return line, Problem.REORDERED, again


def read_events(path: Path) -> Iterator[Event]:
    """The export's events in file order. Raises :class:`ValidationFailed` naming the first
    line that is not an event, or if the file cannot be read."""
    try:
        for number, event in _read(path):
            if isinstance(event, str):
                raise ValidationFailed(f"line {number} of {path} is not an event: {event}",
                                       field="--against")  # fmt: skip
            yield event
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror}", field="--against") from exc


def _events(path: Path) -> Iterator[Event]:
    for _number, event in _read(path):
        assert isinstance(event, Event)  # the first pass found every line readable
        yield event


def _read(path: Path) -> Iterator[tuple[int, Event | str]]:
    """Each non-empty line's event, or why it is none."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, _event(raw)


def _event(raw: bytes) -> Event | str:
    try:
        obj = orjson.loads(raw)
        when = datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
        event = Event(
            seq=obj["seq"], id=obj["id"], time_us=to_micros(when), type=obj["type"],
            actor=obj["actor"], agent_id=obj["agent_id"], on_behalf_of=obj["on_behalf_of"],
            chain=obj["chain"], action=obj["action"], resource=obj["resource"],
            decision=obj["decision"], reasons=obj["reasons"],
            policy_version=obj["policy_version"], outcome=obj["outcome"],
            details=obj["details"], prev_hash=obj["prev_hash"], hash=obj["hash"],
        )  # fmt: skip
    except orjson.JSONDecodeError:
        return "not JSON"
    except KeyError as exc:
        return f"no {exc.args[0]!r} field"
    except (TypeError, ValueError, AttributeError):
        return "a field has the wrong type"
    if type(event.seq) is not int or not all(
        isinstance(h, str) and _HASH.fullmatch(h) for h in (event.prev_hash, event.hash)
    ):
        return "a field has the wrong type"
    if when.tzinfo is None:
        return "its time has no UTC offset"
    return event
