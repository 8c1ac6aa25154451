"""A section of the runtime snapshot: one domain's state on the decision path, in memory.

Each domain that keeps something every worker must hold (agents and their Cedar entities,
users, revoked token ids, the compiled policies — next secret leases, gateway upstreams, risk
scores, freezes) implements :class:`Section` and is registered with the
:class:`~tether.runtime.snapshot.Runtime` by the wiring. The runtime knows no domain: it loads
every section at start, hands each one the change-feed keys of the kinds it follows, and
calls its purge from maintenance. A section replaces its state whole (never mutates what a
reader may hold), so readers never see half a change.
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
        """Loaded enough to answer (a worker with a section not ready is not current)."""
        ...

    def load(self, s: Session, now_us: int) -> None:
        """Everything from scratch (start-up, or after the feed lost changes)."""

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        """The keys of each followed kind that changed since the last sync."""

    def purge(self, now_us: int) -> None:
        """Maintenance: forget what can no longer matter."""
