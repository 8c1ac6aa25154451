"""Maintenance: what every node runs every few seconds, declared by each domain.

Each domain's service names its own periodic work (``maintenance()`` → :class:`Task`\\ s):
the ledger signs a head that waited too long, the keys rotate, spent assertion ids and
long-expired token rows are purged, due approvals and agents expire, the runtime forgets
what no longer matters. The wiring collects them; the server's loop runs them in order.
Every task must be idempotent under the write lock, so nodes running it together do it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    run: Callable[[], object]
