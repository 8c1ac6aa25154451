"""The secrets broker's reads and writes (SQLAlchemy; SQLite and PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tether.db.text import unstorable
from tether.secrets.models import LeaseRow, SecretRow, SecretVersionRow


class DatabaseSecretStore:
    @staticmethod
    def secret(s: Session, name: str, *, live: bool = True) -> SecretRow | None:
        """The secret ``name`` (with ``live``, None if it was deleted)."""
        if unstorable(name):
            return None
        row = s.get(SecretRow, name)
        if row is None or (live and row.deleted_at is not None):
            return None
        return row

    @staticmethod
    def current(s: Session, name: str, version: int | None) -> tuple[Any, ...] | None:
        """``(version, broker_only, lease_seconds, labels, key_id, data_key, ciphertext)`` of
        a live secret, the last four those of ``version`` (default: its current one; None if
        that version is not kept); None if there is no such secret. One statement."""
        if unstorable(name):
            return None
        wanted = SecretVersionRow.version == (version if version is not None else SecretRow.version)
        q = (
            select(SecretRow.version, SecretRow.broker_only, SecretRow.lease_seconds,
                   SecretRow.labels, SecretVersionRow.key_id, SecretVersionRow.data_key,
                   SecretVersionRow.ciphertext)
            .outerjoin(SecretVersionRow, (SecretVersionRow.name == SecretRow.name) & wanted)
            .where(SecretRow.name == name, SecretRow.deleted_at.is_(None))
        )  # fmt: skip
        row = s.execute(q).first()
        return tuple(row) if row is not None else None

    @staticmethod
    def current_all(s: Session, names: Sequence[str] | None = None) -> dict[str, tuple[Any, ...]]:
        """:meth:`current` (the current version) of every live secret, or of ``names``."""
        q = (
            select(SecretRow.name, SecretRow.version, SecretRow.broker_only,
                   SecretRow.lease_seconds, SecretRow.labels, SecretVersionRow.key_id,
                   SecretVersionRow.data_key, SecretVersionRow.ciphertext)
            .outerjoin(SecretVersionRow, (SecretVersionRow.name == SecretRow.name)
                       & (SecretVersionRow.version == SecretRow.version))
            .where(SecretRow.deleted_at.is_(None))
        )  # fmt: skip
        if names is not None:
            q = q.where(SecretRow.name.in_(list(names)))
        return {str(row[0]): tuple(row[1:]) for row in s.execute(q)}

    @staticmethod
    def page(s: Session, *, after: str | None, limit: int) -> list[SecretRow]:
        q = select(SecretRow).where(SecretRow.deleted_at.is_(None))
        if after is not None:
            q = q.where(SecretRow.name > after)
        return list(s.scalars(q.order_by(SecretRow.name).limit(limit)))

    @staticmethod
    def versions(s: Session, names: Sequence[str]) -> dict[str, list[SecretVersionRow]]:
        out: dict[str, list[SecretVersionRow]] = {n: [] for n in names}
        if names:
            q = (select(SecretVersionRow).where(SecretVersionRow.name.in_(list(names)))
                 .order_by(SecretVersionRow.name, SecretVersionRow.version))  # fmt: skip
            for row in s.scalars(q):
                out[row.name].append(row)
        return out

    @staticmethod
    def version(s: Session, name: str, version: int) -> SecretVersionRow | None:
        return s.get(SecretVersionRow, (name, version))

    @staticmethod
    def drop_versions(s: Session, name: str, *, below: int | None = None) -> int:
        """Delete ``name``'s versions (those below ``below`` only, when given)."""
        q = delete(SecretVersionRow).where(SecretVersionRow.name == name)
        if below is not None:
            q = q.where(SecretVersionRow.version < below)
        return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]

    @staticmethod
    def versions_under(s: Session, key_ids: Sequence[str], *, limit: int) -> list[SecretVersionRow]:
        """Versions whose data key some key of ``key_ids`` wraps (a rotation's next batch)."""
        q = (select(SecretVersionRow).where(SecretVersionRow.key_id.in_(list(key_ids)))
             .order_by(SecretVersionRow.name, SecretVersionRow.version).limit(limit))  # fmt: skip
        return list(s.scalars(q))

    # -- leases -------------------------------------------------------------------------------
    @staticmethod
    def lease(s: Session, lease_id: str) -> LeaseRow | None:
        return None if unstorable(lease_id) else s.get(LeaseRow, lease_id)

    @staticmethod
    def leases(
        s: Session, *, agent_id: str | None, name: str | None, live_at: int | None,
        after: str | None, limit: int,
    ) -> list[LeaseRow]:  # fmt: skip
        q = select(LeaseRow)
        if agent_id is not None:
            q = q.where(LeaseRow.agent_id == agent_id)
        if name is not None:
            q = q.where(LeaseRow.name == name)
        if live_at is not None:
            q = q.where(LeaseRow.revoked_at.is_(None), LeaseRow.expires_at > live_at)
        if after is not None:
            q = q.where(LeaseRow.id > after)
        return list(s.scalars(q.order_by(LeaseRow.id).limit(limit)))

    @staticmethod
    def live_leases_of(
        s: Session, *, agent_ids: Sequence[str] = (), name: str | None = None, now_us: int
    ) -> list[LeaseRow]:
        q = select(LeaseRow).where(LeaseRow.revoked_at.is_(None), LeaseRow.expires_at > now_us)
        if agent_ids:
            q = q.where(LeaseRow.agent_id.in_(list(agent_ids)))
        if name is not None:
            q = q.where(LeaseRow.name == name)
        return list(s.scalars(q.order_by(LeaseRow.id)))

    @staticmethod
    def revoke(s: Session, lease_ids: Sequence[str], *, now_us: int, by: str, why: str) -> None:
        if lease_ids:
            s.execute(update(LeaseRow).where(LeaseRow.id.in_(list(lease_ids)),
                                             LeaseRow.revoked_at.is_(None))
                      .values(revoked_at=now_us, revoked_by=by, revoked_why=why[:200]))  # fmt: skip

    @staticmethod
    def revoked_unexpired(s: Session, now_us: int) -> dict[str, int]:
        q = select(LeaseRow.id, LeaseRow.expires_at).where(
            LeaseRow.revoked_at.is_not(None), LeaseRow.expires_at > now_us
        )
        return {str(row[0]): int(row[1]) for row in s.execute(q)}

    @staticmethod
    def revoked_among(s: Session, lease_ids: set[str]) -> dict[str, int]:
        if not lease_ids:
            return {}
        q = select(LeaseRow.id, LeaseRow.expires_at).where(
            LeaseRow.id.in_(list(lease_ids)), LeaseRow.revoked_at.is_not(None)
        )
        return {str(row[0]): int(row[1]) for row in s.execute(q)}

    @staticmethod
    def purge_leases(s: Session, *, ended_before: int) -> int:
        """Leases that ended (expired or revoked) before ``ended_before``."""
        q = delete(LeaseRow).where(LeaseRow.expires_at < ended_before)
        return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]
