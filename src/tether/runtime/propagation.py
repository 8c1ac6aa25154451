"""How long a change took to reach every live worker, for the call that made it.

The runtime measures each change this process commits (:meth:`tether.runtime.snapshot.
Runtime.changed`: from the commit until every live worker applied it, this one included)
and hands the measure to whoever :func:`watch`-es the write on the same thread — a kill's or a
freeze's service, which records it in the ledger as evidence that oversight took effect (the
compliance report's propagation figures). Per thread (``threading.local``): concurrent calls
each see their own change, and a write nobody watches costs one attribute lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Propagation:
    """One change's propagation: ``seq`` its change-feed position, ``seconds`` from the
    commit until every live worker had applied it (or until the wait gave up), ``confirmed``
    whether every one did within the wait, ``workers`` how many other live workers had to
    apply it (0: this worker alone, which applied it before the call returned)."""

    seq: int
    seconds: float
    confirmed: bool
    workers: int

    def to_json(self) -> dict[str, Any]:
        """The measure as a ledger event records it (microsecond precision)."""
        return {
            "seconds": round(self.seconds, 6),
            "confirmed": self.confirmed,
            "workers": self.workers,
        }


@dataclass(slots=True)
class Watch:
    """What a :func:`watch` saw: the last change committed on this thread meanwhile (None if
    none was, or the runtime does not wait for propagation)."""

    measured: Propagation | None = None


_local = threading.local()


@contextmanager
def watch() -> Iterator[Watch]:
    """Collect the propagation of the changes this thread commits inside the block."""
    seen = Watch()
    outer = getattr(_local, "watch", None)
    _local.watch = seen
    try:
        yield seen
    finally:
        _local.watch = outer


def measured(propagation: Propagation) -> None:
    """The runtime's report of a change this thread committed (kept if someone watches)."""
    seen: Watch | None = getattr(_local, "watch", None)
    if seen is not None:
        seen.measured = propagation
