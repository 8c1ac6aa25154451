"""A section of the runtime snapshot: one domain's state on the decision path, in memory.

Each domain that keeps something every worker must hold (agents and their Cedar entities,
users, revoked token ids, the compiled policies — next secret leases, gateway upstreams, risk
scores, freezes) implements :class:`Section` and is registered with the
:class:`~tether.runtime.snapshot.Runtime` by the wiring. The runtime knows no domain: it loads
every section at start, hands each one the change-feed keys of the kinds it follows, and
calls its purge from maintenance (each under the runtime's lock: one at a time).

Applying a change costs what changed, never the section's size: a section keyed by id
(agents, users, revoked tokens) changes its map in place, each key's value built whole first
and then set with one dict assignment (atomic under the GIL), so a reader never sees half of
one key's state; within one sync it may see key A new and key B not yet, for a moment. Such a
map is live: readers look keys up, and one that iterates takes a copy from the section (a key
added mid-iteration would raise). A small section (the policies, the freezes) replaces its
value whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sqlalchemy.orm import Session


class Section(Protocol):
    kinds: frozenset[str]
    """The change kinds (:class:`tether.runtime.changes.Kind`) this section follows."""

    @property
    def ready(self) -> bool:
        """Loaded enough to answer (a worker with a section not ready is not current); once
        true, it stays true (the runtime stops asking)."""
        ...

    def load(self, s: Session, now_us: int) -> None:
        """Everything from scratch (start-up, or after the feed lost changes)."""

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        """The keys of each followed kind that changed since the last sync (up to 10,000 in
        one call: read them in one batch, not one query per key)."""

    def purge(self, now_us: int) -> None:
        """Maintenance: forget what can no longer matter."""
