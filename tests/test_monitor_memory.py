"""What monitoring holds per agent in each worker (issue 21: a worker at 100,000 agents within
250 MB): an agent seen once, here or by another worker, costs a few hundred bytes — its
window, its first pair, the entries holding them — not the ~1 kB of a window of dicts of
arrays and a pair's string (measured: 998 B here, 1,208 B merged)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

from tether.clock import FrozenClock, to_micros
from tether.container import Services
from tether.ids import new_ids
from tether.monitor.rules import MonitorConfig
from tether.policy.values import Ask, Decision, Effect

N = 2_000
HERE = 450  # bytes per agent, measured 290 to 340 (the dict and set grow in steps)
MERGED = 650  # measured 445 to 460

ALLOW = Decision(Effect.ALLOW, ("read",), "v1")


def _traced(run: Callable[[], object]) -> int:
    """Bytes still allocated after ``run``, of what it allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_an_agent_seen_once_costs_a_worker_a_few_hundred_bytes(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock(datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    now = to_micros(clock.now())
    one = make_services(clock=clock, monitor=MonitorConfig())
    two = make_services(clock=clock, monitor=MonitorConfig())
    ids = new_ids("agt", N, now_ms=now // 1000)
    views = {i: SimpleNamespace(id=i, entity="{}", schedule=None) for i in ids}

    def asks() -> Iterator[Ask]:  # a request's strings are its own, not the runtime's
        for n, i in enumerate(ids):
            yield Ask("".join([i[:4], i[4:]]), "resource.read", "Resource", f"docs/{n % 50}")

    def decide() -> None:
        m = one.monitor
        for ask in asks():
            m.after(ask, ALLOW, m.before(ask, views[ask.subject], now), now)  # type: ignore[arg-type]
        m._take()  # what the next sync publishes, taken

    def learn() -> None:
        two.monitor.sync()  # the other worker's counts and pairs, read and merged

    m = one.monitor
    warm = Ask(ids[0], "resource.read", "Resource", "warm")  # the statements compiled
    m.before(warm, views[ids[0]], now)  # type: ignore[arg-type]
    m.sync()
    two.monitor.sync()
    m.windows.clear()
    m._pairs.clear()
    two.monitor.windows.clear()
    two.monitor._pairs.clear()

    here = _traced(decide) / N
    assert len(m.windows) == N
    assert here < HERE, f"{here:.0f} B per agent seen here"
    for ask in asks():  # published by a sync: counts and first pairs
        m.before(ask, views[ask.subject], now)  # type: ignore[arg-type]
    m.sync()
    merged = _traced(learn) / N
    assert len(two.monitor.windows) == N
    assert merged < MERGED, f"{merged:.0f} B per agent merged from another worker"
    assert {w.rest[0] for w in two.monitor.windows.values()} == {2}  # asked twice
