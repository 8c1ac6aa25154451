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
from tether.secrets.values import SecretMeta

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


class SecretsSection:
    """Every live secret's metadata and its current version, sealed (never opened here: a
    read decrypts after its decision), so that a read asks the database nothing before its
    one commit. A put or a delete names the secret in the change feed; each worker reads it
    again (:meth:`apply`)."""

    kinds = frozenset({Kind.SECRET.value})

    def __init__(self) -> None:
        self.current: dict[str, SecretMeta] = {}
        self.ready = False

    def load(self, s: Session, now_us: int) -> None:
        self.current = {name: SecretMeta.of(row) for name, row in _store.current_all(s).items()}
        self.ready = True

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        names = sorted(changed[Kind.SECRET.value])
        found = _store.current_all(s, names)
        for name in names:  # one assignment each: a reader sees a secret whole, or not
            if name in found:
                self.current[name] = SecretMeta.of(found[name])
            else:
                self.current.pop(name, None)

    def lookup(self, name: str, version: int | None) -> tuple[bool, SecretMeta | None]:
        """``(True, meta)`` when this section knows: the secret's metadata with its current
        version (``version`` None or that one), or None if there is no such live secret;
        ``(False, None)`` when the database must be asked (another version, or the section
        not loaded yet)."""
        if not self.ready:
            return False, None
        meta = self.current.get(name)
        if meta is not None and version is not None and version != meta.version:
            return False, None
        return True, meta

    def purge(self, now_us: int) -> None:
        del now_us
