"""Single-use ``jti``s shared by every worker and node, surviving restarts (table used_jtis)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.orm import Session

from tether.credentials.models import UsedJtiRow
from tether.db import Database
from tether.db.bulk import execute_counted, fetch_all_with
from tether.db.purge import delete_before
from tether.db.text import unstorable


class ReplayCache(Protocol):
    def seen(self, s: Session, namespace: str, key: str, expires_at: int) -> bool:
        """True if ``key`` was recorded before (a replay); otherwise record it until
        ``expires_at`` (NumericDate seconds) and return False. ``s`` is the caller's write
        transaction: the write lock makes check-and-insert atomic on every node."""
        ...

    def seen_many(self, s: Session, namespace: str, keys: Sequence[tuple[str, int]]) -> list[bool]:
        """:meth:`seen` of each ``(key, expires_at)``, in order, in one statement: a key
        that appears twice is a replay the second time."""
        ...


_SPEND = "INSERT INTO used_jtis (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
_SPEND_MANY = (
    "INSERT INTO used_jtis (key, expires_at) VALUES {} ON CONFLICT (key) DO NOTHING RETURNING key"
)


class DatabaseReplayCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    def seen(self, s: Session, namespace: str, key: str, expires_at: int) -> bool:
        full = f"{namespace}:{key}"[:200]
        if unstorable(full):  # no backend-neutral way to record it: refused as if used
            return True  # (DPoP and client-assertion checks reject a NUL jti before this)
        # One statement: the key's uniqueness decides, on every worker and node at once (a
        # concurrent second use inserts nothing, here or in the transaction that waits for
        # this one's lock).
        return execute_counted(s, _SPEND, (full, expires_at)) == 0

    def seen_many(self, s: Session, namespace: str, keys: Sequence[tuple[str, int]]) -> list[bool]:
        fulls = [f"{namespace}:{key}"[:200] for key, _ in keys]
        new: dict[str, int] = {}  # each storable key once, first come
        for full, (_, expires_at) in zip(fulls, keys, strict=True):
            if not unstorable(full):
                new.setdefault(full, expires_at)
        recorded: set[str] = set()
        if new:
            sql = _SPEND_MANY.format(", ".join(["(?, ?)"] * len(new)))
            params = tuple(v for pair in new.items() for v in pair)
            recorded = {row[0] for row in fetch_all_with(s, sql, params)}
        verdicts = []
        for full in fulls:
            verdicts.append(full not in recorded)
            recorded.discard(full)  # spent by its first use: any other is a replay
        return verdicts

    def purge(self, now: int) -> int:
        """Forget entries whose ``exp`` has passed (a replay then fails on ``exp`` anyway), in
        batches so a backlog never holds the write lock long."""
        return delete_before(self.db, UsedJtiRow.key, UsedJtiRow.expires_at, now)


class DatabaseDPoPReplayCache:
    """The DPoP proof replay cache (RFC 9449 §11.1) on the shared table, in its own short
    write transaction: a proof's ``jti`` is spent even if the request then fails."""

    def __init__(self, db: Database, replay: DatabaseReplayCache) -> None:
        self.db = db
        self.replay = replay

    def seen(self, jkt: str, jti: str, expires_at: int) -> bool:
        with self.db.write() as s:
            return self.replay.seen(s, "dpop", f"{jkt}:{jti}", expires_at)
