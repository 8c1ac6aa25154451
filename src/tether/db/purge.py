"""Deleting rows that have outlived their use, in batches: each batch is its own write
transaction, so a large backlog (after downtime, say) never holds the deployment-wide write
lock for long."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import InstrumentedAttribute

from tether.db.engine import Database

# Rows per transaction: a few tens of milliseconds of lock on either backend.
BATCH = 5_000


def delete_before(
    db: Database,
    key: InstrumentedAttribute[str],
    time: InstrumentedAttribute[int],
    before: int,
    *,
    batch: int = BATCH,
) -> int:
    """Delete every row of ``key``'s table whose ``time`` is less than ``before``, at most
    ``batch`` per transaction; returns how many rows went."""
    table = key.class_
    total = 0
    while True:
        doomed = select(key).where(time < before).limit(batch)
        with db.write() as s:
            result = cast(CursorResult[Any], s.execute(delete(table).where(key.in_(doomed))))
            n = result.rowcount or 0
        total += n
        if n < batch:
            return total
