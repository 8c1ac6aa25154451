"""Per-agent read rate limit: a token bucket per agent, in this worker's memory.

An agent that reads secrets faster than it plausibly needs them is throttled before any
decision or decryption (429 with ``Retry-After``). Each worker keeps its own buckets, so a
deployment of N workers lets an agent read up to N times the configured rate at most: the
limit bounds a runaway agent's damage, it is not a quota.
"""

from __future__ import annotations

import math
import threading

from tether.errors import RateLimited

_MAX_AGENTS = 100_000  # buckets kept; past it the fullest (idle) ones are forgotten


class ReadLimiter:
    def __init__(self, per_minute: int, *, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst if burst is not None else max(1, per_minute))
        self._buckets: dict[str, tuple[float, float]] = {}  # agent -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, agent_id: str, now: float) -> None:
        """Spend one read for ``agent_id`` at monotonic time ``now``; raises
        :class:`RateLimited` (with the seconds until one is available) when none is left."""
        if self.rate <= 0:
            return
        with self._lock:
            tokens, at = self._buckets.get(agent_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[agent_id] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise RateLimited(
                    f"agent {agent_id} reads secrets too fast: retry in {wait} s "
                    "(TETHER_SECRET_READS_PER_MINUTE)",
                    retry_after=wait,
                )
            self._buckets[agent_id] = (tokens - 1.0, now)
            if len(self._buckets) > _MAX_AGENTS:
                full = [a for a, (t, _) in self._buckets.items() if t >= self.burst - 1]
                for a in full[: len(self._buckets) - _MAX_AGENTS + 1]:
                    del self._buckets[a]
