"""Behaviour windows, in memory: per agent, counts in time buckets (this worker's own, and the
other workers' and nodes' as last merged), a baseline of its own request rate, the
(action, resource) pairs it has used; per session, the data labels and tools it touched.

Pure state and arithmetic, no I/O, time passed in (microseconds). The monitor service
(:mod:`tether.monitor.service`) feeds it from the decision path and merges other workers'
counts into it off the hot path.

The baseline is an exponentially weighted mean and variance of the agent's requests per
*active* bucket (a bucket with at least one request, this worker's and the others'), folded
one bucket late so that the other workers' counts for it have arrived: an agent that works
in bursts (a batch every hour, office hours) is compared with its own bursts, not with its
nights. It has *learned* after ``learn_buckets`` active buckets; before that, ``rate_ratio``,
``rate_z`` and ``first_seen`` stay 0 (every pair is new to a new agent).

**Memory.** A worker holds a window for every agent it has seen, or heard of from the others
(issue 21: 100,000 agents, a worker within 250 MB). A window is one object of plain fields:
this worker's counts in the current bucket are fields, not a container; the window's other
counts (:attr:`AgentWindow.rest`) a shared tuple of zeros until they are not; its earlier
buckets and the others' counts records packed in ``bytes`` (immutable, 33 B of header, not
tracked by the cyclic collector), empty for an agent seen in one bucket by this worker only.
An agent seen once costs a worker ~300 B with its first pair and the entries holding them,
~450 B when another worker saw it (tests/test_monitor_memory.py); a window of dicts of
arrays cost ~1 kB.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.monitor.rules import LOW, Risk

COUNTS = 5  # requests, denies, first_seen, secret_reads, approvals
ZERO = (0,) * COUNTS  # shared by every window whose other counts are all zero

# Records, packed: this worker's (bucket, counts), the others' (worker, bucket, counts), where
# ``worker`` numbers another worker's id (Monitor._workers).
_MINE = struct.Struct(f"={1 + COUNTS}q")
_THEIRS = struct.Struct(f"={2 + COUNTS}q")
_KEY = 16  # the bytes of a record of theirs that say whose and which bucket
_BUCKET = struct.Struct("=q")  # the bytes of a record of mine that say which bucket


@dataclass(slots=True)
class AgentWindow:
    bucket: int = -1  # the current bucket's number
    # This worker's counts in the current bucket
    req: int = 0
    deny: int = 0
    first: int = 0
    secret: int = 0
    approval: int = 0
    dirty: bool = False  # those counts changed since this worker last published them
    # The window's other counts, summed: this worker's earlier buckets in it, the others'
    # buckets in it (the current one too) — a tuple of ints, which the collector stops tracking
    rest: tuple[int, ...] = ZERO
    mine: bytes = b""  # this worker's earlier buckets in the window and its grace (_MINE)
    theirs: bytes = b""  # the others' counts as they last published them, absolute (_THEIRS)
    folded: int = -1  # the bucket last rolled to: buckets up to two before it are folded
    mean: float = 0.0
    var: float = 0.0
    active: int = 0  # active buckets folded
    known: int = 0  # the (action, resource) pairs it is known to have used (Monitor._pairs)
    risk: Risk = LOW  # as of its latest decision
    pending: int = 0  # the rank of a response on its way to the database
    flags: tuple[bool, int] = (False, 0)  # its latest request's (off_schedule, depth)

    def counts(self) -> tuple[int, int, int, int, int]:
        """This worker's counts in the current bucket."""
        return (self.req, self.deny, self.first, self.secret, self.approval)

    def roll(self, b: int, width: int, alpha: float) -> tuple[int, ...] | None:
        """Move the window to bucket ``b``: this worker's counts in the bucket it leaves
        become a record, and those of ``b`` current again if it has some (a clock set back);
        then, in one pass over the records, fold what closed into the baseline, drop the
        buckets that left the window and its grace, and re-total the rest. Returns
        ``(bucket, *counts)`` of the bucket left when they were not published yet (they
        change no more: the next sync's)."""
        old = self.bucket
        if b == old:
            return None
        left = None
        counts = self.counts()
        if old >= 0 and counts != ZERO:
            if self.dirty:
                left = (old, *counts)
            self.mine += _MINE.pack(old, *counts)
        self.bucket, self.dirty = b, False
        self.req = self.deny = self.first = self.secret = self.approval = 0
        mine, theirs = self.mine, self.theirs
        at = _find(mine, _BUCKET.pack(b), _MINE.size) if mine else -1
        if at >= 0:  # counted in before: current again
            self.req, self.deny, self.first, self.secret, self.approval = _MINE.unpack_from(
                mine, at)[1:]  # fmt: skip
            mine = self.mine = mine[:at] + mine[at + _MINE.size :]
        folded = self.folded
        if b > folded:
            self.folded = b  # the same int as the bucket's (Monitor shares one among windows)
        if not mine and not theirs:  # seen in one bucket, and by this worker only
            self.rest = ZERO
            return left
        fold = range(folded - 1, b - 1)  # the buckets to fold: up to b - 2, not folded yet
        per: dict[int, int] = {}  # the requests in the buckets to fold, by bucket
        start = b - width + 1  # the window's first bucket
        sums = ZERO
        if mine:
            mine, sums = _scan(mine, _MINE, window=range(start, b), fold=fold,
                               keep_after=start - 3, sums=sums, per=per)  # fmt: skip
        if theirs:
            theirs, sums = _scan(theirs, _THEIRS, window=range(start, b + 1), fold=fold,
                                 keep_after=start - 3, sums=sums, per=per)  # fmt: skip
        self.mine, self.theirs = mine, theirs
        self.rest = ZERO if sums == ZERO else sums
        for k in sorted(per):
            self._fold(per[k], alpha)
        return left

    def _fold(self, x: int, alpha: float) -> None:
        """A closed bucket's requests into the baseline (an active bucket's only)."""
        if x <= 0:
            return
        if self.active == 0:
            self.mean, self.var = float(x), 0.0
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1 - alpha) * (self.var + diff * incr)
        self.active += 1

    def merge(self, worker: int, b: int, counts: Sequence[int], width: int) -> None:
        """Another worker's counts of bucket ``b`` (absolute) replace what it said of it
        before; the difference goes into :attr:`rest` when ``b`` is in the window."""
        theirs = self.theirs
        record = _THEIRS.pack(worker, b, *counts)
        at = _find(theirs, record[:_KEY], _THEIRS.size)
        if at < 0:
            before: Sequence[int] = ZERO
            self.theirs = theirs + record
        else:
            before = _THEIRS.unpack_from(theirs, at)[2:]
            self.theirs = theirs[:at] + record + theirs[at + _THEIRS.size :]
        if self.bucket - width < b <= self.bucket:
            rest = self.rest
            self.rest = tuple([rest[i] + counts[i] - before[i] for i in range(COUNTS)])

    def rate(self, requests: int, width: int, learn_buckets: int) -> tuple[float, float]:
        """(rate_ratio, rate_z) of ``requests`` in the window against the baseline."""
        if self.active < learn_buckets or self.mean <= 0:
            return 0.0, 0.0
        expected = self.mean * width
        ratio = requests / expected
        spread = math.sqrt(self.var * width)
        z = (
            (requests - expected) / spread
            if spread > 0
            else (0.0 if requests <= expected else float(requests - expected))
        )
        return ratio, z

    def clear(self) -> None:
        """A human cleared the agent's risk: its counts start again (baseline and pairs kept).
        The others' too: each worker clears its own, and what they publish next counts."""
        self.req = self.deny = self.first = self.secret = self.approval = 0
        self.dirty = False
        self.rest, self.mine, self.theirs = ZERO, b"", b""
        self.risk = LOW
        self.pending = 0

    def to_json(self) -> dict[str, Any]:
        return {"baseline_per_bucket": round(self.mean, 2),
                "baseline_deviation": round(math.sqrt(self.var), 2),
                "active_buckets": self.active, "pairs_known": self.known}  # fmt: skip


def _scan(records: bytes, layout: struct.Struct, *, window: range, fold: range,
          keep_after: int, sums: tuple[int, ...], per: dict[int, int]
          ) -> tuple[bytes, tuple[int, ...]]:  # fmt: skip
    """One pass over ``records`` (of ``layout``: a bucket, then the counts): the requests of
    those in buckets ``fold`` added to ``per``, by bucket. Returns those after
    ``keep_after``, and ``sums`` plus the counts of those in ``window``."""
    s0, s1, s2, s3, s4 = sums
    kept = []
    for rec in layout.iter_unpack(records):
        k, c0, c1, c2, c3, c4 = rec[-1 - COUNTS :]
        if k in fold:
            per[k] = per.get(k, 0) + c0
        if k > keep_after:
            kept.append(rec)
            if k in window:
                s0, s1, s2, s3, s4 = s0 + c0, s1 + c1, s2 + c2, s3 + c3, s4 + c4
    if len(kept) * layout.size != len(records):
        records = b"".join([layout.pack(*rec) for rec in kept])
    return records, (s0, s1, s2, s3, s4)


def _find(records: bytes, key: bytes, size: int) -> int:
    """The offset of the record that starts with ``key``, or -1."""
    at = records.find(key)
    while at >= 0 and at % size:  # found across two records
        at = records.find(key, at + 1)
    return at


def pair_digest(agent: str, action: str, resource_type: str, resource_id: str) -> int:
    """An agent's (action, resource) pair as a number of 60 bits: Python's string hash
    (SipHash-1-3, 64 bits, keyed at random per process) shifted to fit a two-digit int (32 B;
    the string itself was ~110 B). Only this process compares them — what workers exchange
    are the pairs themselves. Two pairs with one digest: the later is taken as known, at a
    chance of one in 2**60 / (pairs held), 1e-12 with a million held."""
    return hash(f"{agent}\x00{action}\x00{resource_type}\x00{resource_id}") >> 4


@dataclass(slots=True)
class SessionHistory:
    """What one session (a delegation chain's root, or an explicit session id) touched: each
    data label and tool with the last time it was touched (microseconds)."""

    labels: dict[str, int] = field(default_factory=dict)
    tools: dict[str, int] = field(default_factory=dict)
    _ctx: tuple[list[str], list[str]] | None = None
    _valid_until: int = 0

    def touch(self, kind: str, value: str, at: int) -> bool:
        """Record it; True when it is new to this session (or was forgotten)."""
        book = self.labels if kind == "label" else self.tools
        before = book.get(value)
        if before is None:
            book[value] = at
            self._ctx = None  # what the session touched changed
        elif before < at:
            book[value] = at  # only when: the cached answer holds until it is next due
        return before is None

    def seen(self, now_us: int, window_us: int) -> tuple[list[str], list[str]]:
        """(labels, tools) touched within the window, sorted."""
        if self._ctx is not None and now_us < self._valid_until:
            return self._ctx
        since = now_us - window_us
        for book in (self.labels, self.tools):
            for key in [k for k, at in book.items() if at < since]:
                del book[key]
        self._ctx = (sorted(self.labels), sorted(self.tools))
        oldest = min((*self.labels.values(), *self.tools.values()), default=now_us)
        self._valid_until = oldest + window_us if (self.labels or self.tools) else 2**62
        return self._ctx

    @property
    def empty(self) -> bool:
        return not self.labels and not self.tools
