"""The revoked leases' section of the runtime snapshot: what the revocation feed names.

A lease revoked before its expiry (by hand, or by a kill, suspension, freeze or expiry of its
agent) is in the change feed as ``lease``; every worker keeps the ids until they expire, so
the revocation feed can tell a resource server — or the gateway that injects a secret under
a lease — to stop honouring it. The same live-map discipline as the revoked tokens'
(:mod:`tether.credentials.runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from tether.runtime.changes import Kind
from tether.secrets.store import DatabaseSecretStore

_store = DatabaseSecretStore()


class RevokedLeases:
    kinds = frozenset({Kind.LEASE.value})
    # The revocation feed's projection (tether.revocations.feed.FeedSource).
    kind = Kind.LEASE
    item_type = "lease"

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}  # lease id -> its expiry (microseconds)
        self.ready = True

    def load(self, s: Session, now_us: int) -> None:
        self.ids = _store.revoked_unexpired(s, now_us)

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.ids.update(_store.revoked_among(s, changed[Kind.LEASE.value]))

    def revoked(self) -> list[tuple[str, int]]:
        """Every ``(lease id, expiry)`` as of one instant."""
        return list(self.ids.items())

    def expiry_of(self, key: str) -> int | None:
        return self.ids.get(key)

    def purge(self, now_us: int) -> None:
        self.ids = {i: exp for i, exp in self.ids.items() if exp > now_us}
