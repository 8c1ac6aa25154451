"""The revoked tokens' section of the runtime snapshot: the ids of tokens revoked before
their expiry, refused by every worker without a database read.

A live map, changed in place: a sync adds the newly revoked ids (one dict assignment each,
atomic under the GIL), so it costs what changed, however many are held; a reader that
iterates takes :meth:`RevokedTokens.all`. Maintenance replaces the map whole, under the
runtime's lock (never during a sync).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from tether.credentials.store import DatabaseCredentialStore
from tether.runtime.changes import Kind

_store = DatabaseCredentialStore()


class RevokedTokens:
    kinds = frozenset({Kind.TOKEN.value})

    def __init__(self) -> None:
        self.jtis: dict[str, int] = {}  # jti -> its expiry (microseconds)
        self.ready = True

    def load(self, s: Session, now_us: int) -> None:
        self.jtis = _store.revoked_unexpired(s, now_us)

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.jtis.update(_store.revoked_among(s, changed[Kind.TOKEN.value]))

    def all(self) -> list[tuple[str, int]]:
        """Every ``(jti, expiry)`` as of one instant (copied within one C call)."""
        return list(self.jtis.items())

    def purge(self, now_us: int) -> None:
        """Revoked ids past their expiry fail verification anyway."""
        self.jtis = {j: exp for j, exp in self.jtis.items() if exp > now_us}
