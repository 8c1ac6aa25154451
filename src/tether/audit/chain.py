"""The hash chain, as pure functions: event hashing and end-to-end verification.

``hash = SHA-256(prev_hash_bytes || canonical_json(body))`` where ``body`` is every field of
the event except ``hash`` (``seq`` and ``prev_hash`` included, so an event cannot move).
The first event's ``prev_hash`` is 64 zeros. Checkpoints sign ``{size, head_hash, time}``.
Once retention pruned the oldest events (tether.audit.retention), the chain starts after a
*cut*: a checkpoint signed at the last pruned event, whose head the first kept event's
``prev_hash`` must equal; verification starts there.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tether.audit.events import NewEvent
from tether.clock import from_micros, to_rfc3339
from tether.ids import IdPrefix, new_ids
from tether.jsonutil import canonical

GENESIS = "0" * 64


class Problem(StrEnum):
    """What ``tether audit verify`` found; README.md ("The ledger") says what each means."""

    EDITED = "edited"
    MISSING = "missing"
    REORDERED = "reordered"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    # An event was edited and every hash after it recomputed: only a signed checkpoint shows
    # it, and only as a range (after_seq, through_seq]. The first from the database's own
    # checkpoints, the second from the checkpoint file's, which the database no longer has.
    CHAIN_REWRITTEN_BEFORE = "chain_rewritten_before"
    EXTERNAL_CHECKPOINT_MISMATCH = "external_checkpoint_mismatch"
    TRUNCATED = "truncated"  # the checkpoint file vouches for events the database lacks
    EXTERNAL_CHECKPOINT_INVALID = "external_checkpoint_invalid"
    EXTERNAL_CHECKPOINTS_MISSING = "external_checkpoints_missing"
    DB_CHECKPOINTS_MISSING = "db_checkpoints_missing"  # in the file, deleted from the database
    UNANCHORED_TAIL = "unanchored_tail"  # more, or older, unsigned events than the rules allow
    # The ledger starts after a retention cut whose signed checkpoint does not verify.
    CUT_INVALID = "cut_invalid"


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    time_us: int
    type: str
    actor: str
    agent_id: str | None
    on_behalf_of: str | None
    chain: list[str]
    action: str | None
    resource: dict[str, Any] | None
    decision: str | None
    reasons: list[str]
    policy_version: str | None
    outcome: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str = ""

    @property
    def time(self) -> datetime:
        return from_micros(self.time_us)

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "time": self.time_us,
            "type": self.type,
            "actor": self.actor,
            "agent_id": self.agent_id,
            "on_behalf_of": self.on_behalf_of,
            "chain": self.chain,
            "action": self.action,
            "resource": self.resource,
            "decision": self.decision,
            "reasons": self.reasons,
            "policy_version": self.policy_version,
            "outcome": self.outcome,
            "details": self.details,
            "prev_hash": self.prev_hash,
        }

    def to_json(self) -> dict[str, Any]:
        out = self.body()
        out["time"] = to_rfc3339(self.time)
        out["hash"] = self.hash
        return out


def event_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(body)).hexdigest()


def link(
    events: Sequence[NewEvent], *, after_seq: int, prev_hash: str, time_us: int
) -> list[Event]:
    """Number, time-stamp, id and hash ``events`` as the successors of ``(after_seq, prev_hash)``.

    Pure: the ledger calls it under the write lock with the stored head.
    """
    out: list[Event] = []
    seq, prev = after_seq, prev_hash
    ids = new_ids(IdPrefix.EVENT, len(events), now_ms=time_us // 1000)
    for new, event_id in zip(events, ids, strict=True):
        seq += 1
        type_ = str(new.type)
        chain, reasons = list(new.chain), list(new.reasons)
        body: dict[str, Any] = {  # the same keys as Event.body(), without building one twice
            "seq": seq,
            "id": event_id,
            "time": time_us,
            "type": type_,
            "actor": new.actor,
            "agent_id": new.agent_id,
            "on_behalf_of": new.on_behalf_of,
            "chain": chain,
            "action": new.action,
            "resource": new.resource,
            "decision": new.decision,
            "reasons": reasons,
            "policy_version": new.policy_version,
            "outcome": new.outcome,
            "details": new.details,
            "prev_hash": prev,
        }
        digest = event_hash(prev, body)
        out.append(Event(
            seq, event_id, time_us, type_, new.actor, new.agent_id, new.on_behalf_of, chain,
            new.action, new.resource, new.decision, reasons, new.policy_version, new.outcome,
            new.details, prev, digest,
        ))  # fmt: skip
        prev = digest
    return out


def checkpoint_payload(size: int, head_hash: str, time_us: int) -> bytes:
    """The exact bytes a checkpoint signature covers (reproducible from the API response)."""
    return canonical(
        {"size": size, "head_hash": head_hash, "time": to_rfc3339(from_micros(time_us))}
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    head_hash: str
    time_us: int
    key_id: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "head_hash": self.head_hash,
            "time": to_rfc3339(from_micros(self.time_us)),
            "key_id": self.key_id,
            "signature": self.signature,
        }


@dataclass(slots=True)
class VerifyResult:
    """``first_bad_seq``: the first event verification cannot vouch for — the bad event itself
    when it can be named (edited, missing, reordered), else the first of the range in
    ``after_seq``/``through_seq`` (events ``after_seq + 1`` to ``through_seq``); None when the
    problem is no event's (a checkpoint file missing or unreadable)."""

    ok: bool = True
    checked: int = 0
    checkpoints_checked: int = 0
    first_bad_seq: int | None = None
    problem: Problem | None = None
    message: str | None = None
    head_hash: str = GENESIS
    extra: dict[str, Any] = field(default_factory=dict)
    after_seq: int | None = None
    through_seq: int | None = None
    external_checkpoints: int = 0  # in the checkpoint file, signatures checked
    # The largest size a verified signed checkpoint (database or file) covers, and the time
    # of the first event after it, if any: what tether.audit.anchoring judges.
    anchored_size: int = 0
    first_unanchored_us: int | None = None
    limits: dict[str, int | float] | None = None  # set by tether.audit.anchoring
    # The retention cut the chain was verified from (its signature checked), if it starts
    # after one: events 1..cut.size were pruned.
    cut: Checkpoint | None = None

    @property
    def end(self) -> int:
        """The seq of the last event verified (0: none, and no cut)."""
        return (self.cut.size if self.cut else 0) + self.checked

    def fail(
        self,
        seq: int | None,
        problem: Problem,
        message: str,
        *,
        after: int | None = None,
        through: int | None = None,
    ) -> VerifyResult:
        self.ok = False
        self.first_bad_seq = seq
        self.problem = problem
        self.message = message
        self.after_seq, self.through_seq = after, through
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "checked": self.checked,
            "checkpoints_checked": self.checkpoints_checked,
            # A failed walk vouches for no head: not the genesis hash it started from, nor
            # the last hash before the problem (events past it may still be fine).
            "head_hash": self.head_hash if self.ok else None,
        }
        if self.cut is not None:
            out["cut"] = self.cut.to_json()
        if self.limits is not None:
            out["external_checkpoints"] = self.external_checkpoints
            out["anchored_size"] = self.anchored_size
            out.update(self.limits)
        if not self.ok:
            out.update(first_bad_seq=self.first_bad_seq, problem=self.problem, message=self.message)
            if self.after_seq is not None:
                out.update(after_seq=self.after_seq, through_seq=self.through_seq)
        return out


def verify_chain(
    events: Iterable[Event],
    *,
    seq_of_hash: Callable[[str], int | None],
    checkpoints: Iterable[Checkpoint] = (),
    external: Iterable[Checkpoint] = (),
    check_signature: Callable[[Checkpoint], bool] = lambda _c: True,
    progress: Callable[[int], None] | None = None,
    cut_at: Callable[[int], Checkpoint | None] | None = None,
) -> VerifyResult:
    """Walk the chain from the first event and stop at the first problem.

    ``events`` must come in ascending ``seq`` order. ``seq_of_hash`` finds the event whose
    hash is given (to tell a reordered event from an edited one). Checkpoints — the
    database's, and ``external`` ones from the checkpoint file — are checked for their
    signature and against the recomputed chain at their ``size``.

    If the first event is not event 1, ``cut_at(size)`` gives the retention cut at the event
    before it (None: there is none, and the events before it are missing); the walk starts
    from that cut once its signature is checked. It is asked after the first event was read,
    so a reader whose query is its own snapshot sees the cut that query's events follow.
    """
    result = VerifyResult()
    by_size = {c.size: c for c in checkpoints}
    for cp in sorted(by_size.values(), key=lambda c: c.size):
        if not check_signature(cp):
            return result.fail(
                cp.size,
                Problem.BAD_CHECKPOINT_SIGNATURE,
                f"checkpoint at size {cp.size} has an invalid signature",
            )
        result.checkpoints_checked += 1
    outside: dict[int, set[str]] = {}  # the file may hold two heads for a size: check both
    for cp in sorted(external, key=lambda c: c.size):
        if not check_signature(cp):
            return result.fail(
                cp.size,
                Problem.EXTERNAL_CHECKPOINT_INVALID,
                f"the checkpoint file's checkpoint at size {cp.size} has an invalid signature",
            )
        outside.setdefault(cp.size, set()).add(cp.head_hash)
        result.external_checkpoints += 1
    signed: dict[int, tuple[str | None, set[str]]] = {
        size: (cp.head_hash, outside.get(size, set())) for size, cp in by_size.items()
    }
    signed.update((size, (None, heads)) for size, heads in outside.items() if size not in by_size)
    newest = max(signed, default=0)
    walk = iter(events)
    first = next(walk, None)
    if first is not None and first.seq > 1:
        cut = _cut(first, cut_at, check_signature)
        if isinstance(cut, tuple):
            return result.fail(*cut)
        result.cut = cut
    floor = result.cut.size if result.cut else 0
    result.anchored_size = floor  # the cut is a signed checkpoint too
    unanchored_from = max(newest, floor) + 1
    expected_seq = floor + 1
    prev = result.cut.head_hash if result.cut else GENESIS
    for ev in _ahead(first, walk):
        found = _event_problem(ev, expected_seq, prev, seq_of_hash, floor)
        if found is not None:
            return result.fail(*found)
        heads = signed.get(ev.seq)
        if heads is not None:
            rewritten = _rewritten(ev, heads, result.anchored_size)
            if rewritten is not None:
                return result.fail(*rewritten, after=result.anchored_size, through=ev.seq)
            result.anchored_size = ev.seq
        elif ev.seq == unanchored_from:
            result.first_unanchored_us = ev.time_us
        prev = ev.hash
        expected_seq += 1
        result.checked += 1
        if progress is not None and result.checked % 10_000 == 0:
            progress(result.checked)
    result.head_hash = prev
    return _beyond_the_end(result, max(by_size, default=0), newest)


def _ahead(first: Event | None, rest: Iterator[Event]) -> Iterator[Event]:
    return rest if first is None else itertools.chain((first,), rest)


def _cut(
    first: Event,
    cut_at: Callable[[int], Checkpoint | None] | None,
    check_signature: Callable[[Checkpoint], bool],
) -> Checkpoint | tuple[int, Problem, str]:
    """The signed retention cut ``first`` follows, or the problem: events before it missing
    with no cut to vouch for their pruning, or a cut whose signature does not verify."""
    size = first.seq - 1
    cut = cut_at(size) if cut_at is not None else None
    if cut is None:
        gone = "event 1 is" if size == 1 else f"events 1..{size} are"
        return (
            1,
            Problem.MISSING,
            f"{gone} missing (the first present is {first.seq}) and no signed retention cut "
            f"at {size} vouches for their pruning",
        )
    if cut.size != size or not check_signature(cut):
        return (
            first.seq,
            Problem.CUT_INVALID,
            f"the retention cut at {size} (the checkpoint event {first.seq} follows) has an "
            "invalid signature: it was edited or forged",
        )
    return cut


def _beyond_the_end(result: VerifyResult, newest_in_db: int, newest: int) -> VerifyResult:
    """Fail ``result`` if a checkpoint covers more events than the ledger has."""
    end = result.end
    if newest_in_db > end:
        return result.fail(
            end + 1,
            Problem.MISSING,
            f"a checkpoint covers {newest_in_db} events but the ledger ends at {end}",
        )
    if newest > end:  # only the file's checkpoints reach this far
        return result.fail(
            end + 1,
            Problem.TRUNCATED,
            f"the checkpoint file has a signed head at size {newest} but the ledger ends at "
            f"{end}: events {end + 1}..{newest} were deleted",
            after=end,
            through=newest,
        )
    return result


def _rewritten(
    ev: Event, heads: tuple[str | None, set[str]], anchored: int
) -> tuple[int, Problem, str] | None:
    """If a checkpoint at ``ev.seq`` signed another head than ``ev``'s: the problem, named
    from ``anchored + 1`` on, since a re-hashed chain shows no more than the range."""
    in_db, in_file = heads
    if in_db is not None and in_db != ev.hash:
        problem, whose = Problem.CHAIN_REWRITTEN_BEFORE, "checkpoint"
    elif in_file - {ev.hash}:
        problem, whose = Problem.EXTERNAL_CHECKPOINT_MISMATCH, "the checkpoint file's checkpoint"
    else:
        return None
    if anchored + 1 == ev.seq:
        where = f"event {ev.seq} was rewritten"
    else:
        where = f"one of events {anchored + 1}..{ev.seq} was rewritten"
    since = f"checkpoint {anchored} still matches" if anchored else "no checkpoint precedes it"
    return (
        anchored + 1,
        problem,
        f"{whose} {ev.seq} signed another head than the chain has now: {where} and the "
        f"hashes after it recomputed ({since}; a hash chain cannot narrow it further)",
    )


def _event_problem(
    ev: Event,
    expected_seq: int,
    prev: str,
    seq_of_hash: Callable[[str], int | None],
    floor: int = 0,
) -> tuple[int, Problem, str] | None:
    """What is wrong with ``ev`` at position ``expected_seq`` after hash ``prev``, if anything.
    ``floor``: the retention cut (0: none); the event after it follows a signed head, which
    cannot have been rewritten: a link that does not match is that event's own problem."""
    if ev.seq != expected_seq:
        return (
            expected_seq,
            Problem.MISSING,
            (f"event {expected_seq} is missing (next present is {ev.seq})"),
        )
    if ev.prev_hash != prev:
        return _link_problem(ev, seq_of_hash, floor)
    if event_hash(ev.prev_hash, ev.body()) != ev.hash:
        return ev.seq, Problem.EDITED, f"event {ev.seq} was altered after writing"
    return None


def _link_problem(
    ev: Event, seq_of_hash: Callable[[str], int | None], floor: int
) -> tuple[int, Problem, str]:
    """Why ``ev`` does not link to the event (or the cut) before it."""
    owner = seq_of_hash(ev.prev_hash)
    if owner is not None and owner != ev.seq - 1:
        return (
            ev.seq,
            Problem.REORDERED,
            (f"event {ev.seq} follows event {owner} in the chain, not event {ev.seq - 1}"),
        )
    if floor and ev.seq == floor + 1:
        return (
            ev.seq,
            Problem.EDITED,
            f"event {ev.seq} does not follow the signed retention cut at {floor}",
        )
    if ev.seq > 1 and event_hash(ev.prev_hash, ev.body()) == ev.hash:
        # ``ev`` is intact, so its predecessor was rewritten (hash recomputed to hide it).
        return (
            ev.seq - 1,
            Problem.EDITED,
            (f"event {ev.seq - 1} was rewritten; event {ev.seq} links to another version"),
        )
    return ev.seq, Problem.EDITED, f"event {ev.seq} does not link to event {ev.seq - 1}"
