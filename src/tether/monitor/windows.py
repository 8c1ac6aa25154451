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
"""

from __future__ import annotations

import math
from array import array
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Any

from tether.monitor.rules import LOW, Risk

REQ, DENY, FIRST, SECRET, APPROVAL = range(5)
COUNTS = 5


# A bucket's counts: an array of machine integers, compact and mutable in place (the cyclic
# collector walks it as it would a list — every array is tracked since Python 3.10 — so the
# other per-agent state avoids containers: a serving process's collector runs rarely,
# tether.collector).
Counts = MutableSequence[int]
_ZERO = array("q", [0] * COUNTS)


def new_counts() -> Counts:
    return _ZERO[:]


@dataclass(slots=True)
class AgentWindow:
    bucket: int = -1  # the current bucket's number
    local: dict[int, Counts] = field(default_factory=dict)  # this worker's, by bucket
    remote: dict[int, Counts] = field(default_factory=dict)  # the others', summed
    closed: Counts = field(default_factory=new_counts)  # the window's buckets before the current
    folded: int = -1  # the last bucket folded into the baseline
    mean: float = 0.0
    var: float = 0.0
    active: int = 0  # active buckets folded
    known: int = 0  # the (action, resource) pairs it is known to have used (Monitor._pairs)
    risk: Risk = LOW  # as of its latest decision
    pending: int = 0  # the rank of a response on its way to the database
    flags: tuple[bool, int] = (False, 0)  # its latest request's (off_schedule, depth)
    dirty: tuple[int, ...] = ()  # buckets this worker has not published (a tuple of ints,
    # which the collector stops tracking: a set would be one more object per agent)

    def roll(self, b: int, width: int, alpha: float) -> None:
        """Move the window to bucket ``b``: fold what closed into the baseline first, then
        move the window's total — the buckets that closed in, those that left out, not a
        re-total (:meth:`resum`, after a jump of a whole window or back) — and drop the
        buckets that left the window and its grace."""
        old = self.bucket
        self.bucket = b
        self.fold(b, alpha)
        local, remote = self.local, self.remote
        if old < 0 or b < old or b - old >= width:
            limit = b - width - 2
            if local:
                for k in [k for k in local if k <= limit]:
                    del local[k]
            if remote:
                for k in [k for k in remote if k <= limit]:
                    del remote[k]
            self.resum(width)
            return
        self._move(old, b, width)

    def _move(self, old: int, b: int, width: int) -> None:
        """The window's total from bucket ``old`` to ``b`` (``old < b < old + width``)."""
        local, remote = self.local, self.remote
        closed = self.closed
        for k in range(max(old, b - width + 1), b):  # closed, within the window
            for counts in (local.get(k), remote.get(k)):
                if counts is not None:
                    for i in range(COUNTS):
                        closed[i] += counts[i]
        for k in range(old - width + 1, b - width + 1):  # left the window
            for counts in (local.get(k), remote.get(k)):
                if counts is not None:
                    for i in range(COUNTS):
                        closed[i] -= counts[i]
        for k in range(old - width - 1, b - width - 1):  # left its grace too
            local.pop(k, None)
            remote.pop(k, None)

    def fold(self, b: int, alpha: float) -> None:
        """Fold every bucket up to ``b - 2`` not folded yet (one bucket of grace)."""
        last = b - 2
        folded = self.folded
        if last <= folded:
            return
        local, remote = self.local, self.remote
        keys = [k for k in local if folded < k <= last]
        if remote:
            keys += [k for k in remote if folded < k <= last and k not in local]
        if len(keys) > 1:
            keys.sort()
        for k in keys:
            x = local.get(k, _NONE)[REQ] + remote.get(k, _NONE)[REQ]
            if x <= 0:
                continue
            if self.active == 0:
                self.mean, self.var = float(x), 0.0
            else:
                diff = x - self.mean
                incr = alpha * diff
                self.mean += incr
                self.var = (1 - alpha) * (self.var + diff * incr)
            self.active += 1
        self.folded = last

    def resum(self, width: int) -> None:
        total = new_counts()
        b = self.bucket
        for counts in (self.local, self.remote):
            # a copy, taken in one call: the decision path adds buckets without a lock
            for k, c in list(counts.items()):
                if b - width < k < b:
                    for i in range(COUNTS):
                        total[i] += c[i]
        self.closed = total

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
        """A human cleared the agent's risk: its counts start again (baseline and pairs kept)."""
        self.local.clear()
        self.remote.clear()
        self.closed = new_counts()
        self.risk = LOW
        self.pending = 0

    def to_json(self) -> dict[str, Any]:
        return {"baseline_per_bucket": round(self.mean, 2),
                "baseline_deviation": round(math.sqrt(self.var), 2),
                "active_buckets": self.active, "pairs_known": self.known}  # fmt: skip


_NONE = (0,) * COUNTS


def pair_key(agent: str, action: str, resource_type: str, resource_id: str) -> str:
    """An agent's (action, resource) pair as one string (a tuple would be one more object the
    garbage collector walks, per pair); the parts hold no NUL (the API refuses it)."""
    return f"{agent}\x00{action}\x00{resource_type}\x00{resource_id}"


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
