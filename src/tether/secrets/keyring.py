"""The secrets master keys: sealed under the root master key, kept in the database.

Every node shares the root master key and the database, so a new secrets master key
(:meth:`Keyring.rotate`) is every node's at once: a version names the key that wraps its
data key, and a node unseals that key the first time it needs it (then keeps it in memory).
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tether.clock import to_micros
from tether.errors import ConfigurationError, SecretUnreadable
from tether.ids import IdPrefix, new_id
from tether.sealing import seal, unseal
from tether.secrets.envelope import master_aad, new_key
from tether.secrets.models import SecretKeyRow


class Keyring:
    def __init__(self, root_key: bytes) -> None:
        self._root = root_key
        self._open: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def current(self, s: Session, now: datetime) -> tuple[str, bytes]:
        """The key that wraps new data keys: the newest not retired, made on first use
        (``s`` must be a write transaction's)."""
        row = s.scalars(
            select(SecretKeyRow)
            .where(SecretKeyRow.retired_at.is_(None))
            .order_by(SecretKeyRow.created_at.desc(), SecretKeyRow.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return self.create(s, now)
        return row.id, self.key(s, row.id)

    def create(self, s: Session, now: datetime) -> tuple[str, bytes]:
        key_id, key = new_id(IdPrefix.SECRET_KEY), new_key()
        s.add(SecretKeyRow(id=key_id, sealed=seal(self._root, key, aad=master_aad(key_id)),
                           created_at=to_micros(now), retired_at=None))  # fmt: skip
        s.flush()
        with self._lock:
            self._open[key_id] = key
        return key_id, key

    def cached(self, key_id: str) -> bytes | None:
        """The key ``key_id`` if this process has opened it already (no database read)."""
        with self._lock:
            return self._open.get(key_id)

    def key(self, s: Session, key_id: str) -> bytes:
        """The secrets master key ``key_id``; raises :class:`SecretUnreadable` if it is gone or
        does not open under this node's root master key."""
        with self._lock:
            found = self._open.get(key_id)
        if found is not None:
            return found
        sealed = s.scalar(select(SecretKeyRow.sealed).where(SecretKeyRow.id == key_id))
        if sealed is None:
            raise SecretUnreadable(f"secrets master key {key_id} is missing", key_id=key_id)
        try:
            key = unseal(self._root, sealed, aad=master_aad(key_id))
        except (ConfigurationError, ValueError) as exc:
            raise SecretUnreadable(
                f"this node's master key does not open secrets master key {key_id}: is "
                "TETHER_MASTER_KEY (or master.key) this deployment's?",
                key_id=key_id,
            ) from exc
        with self._lock:
            self._open[key_id] = key
        return key

    @staticmethod
    def others(s: Session, key_id: str) -> list[str]:
        """Every key but ``key_id``, retired or not (a rotation re-wraps what they wrap)."""
        return [k for k in s.scalars(select(SecretKeyRow.id)) if k != key_id]

    @staticmethod
    def retire_all_but(s: Session, key_id: str, now: datetime) -> list[str]:
        """Retire every other key not retired yet; their ids."""
        ids = list(s.scalars(select(SecretKeyRow.id).where(
            SecretKeyRow.retired_at.is_(None), SecretKeyRow.id != key_id,
        )))  # fmt: skip
        if ids:
            s.execute(update(SecretKeyRow).where(SecretKeyRow.id.in_(ids))
                      .values(retired_at=to_micros(now)))  # fmt: skip
        return ids
