"""The freezes in force, in every worker's runtime snapshot (a section of its own)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from tether.freeze.store import DatabaseFreezeStore
from tether.freeze.values import Freeze
from tether.runtime.changes import Kind


class FreezeSection:
    kinds = frozenset({Kind.FREEZE.value})

    def __init__(self) -> None:
        self.in_force: tuple[Freeze, ...] = ()
        self.ready = True
        self._store = DatabaseFreezeStore()

    def load(self, s: Session, now_us: int) -> None:
        self.in_force = tuple(self._store.in_force(s))

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.load(s, now_us)  # a handful of rows: read them all

    def purge(self, now_us: int) -> None:
        del now_us
