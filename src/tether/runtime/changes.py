"""Telling every worker and node that something on the decision path changed.

A service that changes an agent, a user, a token's revocation or the policy set calls
:func:`record` inside its write transaction. The rows commit with the change (and, being
written under the deployment-wide write lock, in commit order); on PostgreSQL a
``NOTIFY`` wakes every node at commit; in this process the committing session marks itself
so :class:`tether.db.Database` runs the local refresh right after commit.

This module is the feed's store: :func:`record` writes it, :func:`head`, :func:`since` and
:func:`purge` are what a reader (the runtime snapshot) needs. ``seq`` only grows, in commit
order; it may skip numbers (a rolled-back writer spends one), so a reader that finds the
oldest row it needs already purged must start over: :class:`Changes` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import orjson
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from tether.db.engine import BEFORE_COMMIT
from tether.runtime.models import ChangeRow

CHANGED = "tether.runtime_changed"


class Kind(StrEnum):
    AGENT = "agent"
    USER = "user"
    TOKEN = "token"  # noqa: S105 - a kind, not a secret
    POLICY = "policy"
    FREEZE = "freeze"
    LEASE = "lease"
    SECRET = "secret"  # noqa: S105 - a kind, not a secret
    MONITOR = "monitor"  # an agent's risk state ("a:<id>"), a session's touches ("s:<key>")


def channel(schema: str | None) -> str:
    return f"tether_changes_{schema or 'public'}"[:63]


# What a write transaction recorded, kept in its session until its body is done
# (``session.info``): then written in one statement, whatever the number of records.
_PENDING = "tether.runtime_pending"

# PostgreSQL: every row in three array parameters, inserted in their order (``WITH ORDINALITY``
# … ``ORDER BY``: the sequence numbers them as they come), and the ``NOTIFY`` that wakes every
# node at commit in the same statement — one round trip for a transaction's whole feed, under
# the deployment-wide write lock (a kill recorded its agents and its tokens and notified: three
# round trips; a multi-row VALUES of 10,000 keys cost ~30 ms of SQLAlchemy and psycopg work;
# bench/README.md, "Kill"). The ``NOTIFY`` carries the rows themselves when they are few
# (:data:`PUSHED_ROWS`, well inside PostgreSQL's 8,000-byte payload), so a node that has applied
# everything before them applies them without reading the feed; the writer gets their numbers.
PUSHED_ROWS = 32
_FLUSH_POSTGRES = text(
    "WITH written AS (INSERT INTO runtime_changes (kind, key, time)"
    " SELECT k, v, t FROM unnest(CAST(:kinds AS VARCHAR[]), CAST(:keys AS VARCHAR[]),"
    " CAST(:times AS BIGINT[])) WITH ORDINALITY AS u(k, v, t, n) ORDER BY n"
    " RETURNING seq, kind, key, time),"
    " summary AS (SELECT min(seq) AS first, max(seq) AS last, count(*) AS n FROM written)"
    " SELECT first, last, pg_notify(:channel, CASE WHEN n BETWEEN 1 AND :pushed THEN"
    " (SELECT CASE WHEN octet_length(j) <= 7900 THEN j ELSE '' END FROM"  # the payload's limit
    " (SELECT json_agg(json_build_array(seq, kind, key, time) ORDER BY seq)::text AS j"
    " FROM written) AS rows) ELSE '' END) FROM summary"
)


def written(value: object) -> Sequence[tuple[int, str, str, int]] | None:
    """The rows a committed transaction wrote, from what it left for the database's
    ``after_change`` hooks (PostgreSQL gives their numbers back; SQLite: None, read the feed)
    — or from a ``NOTIFY``'s payload (None where it carried none or cannot be read)."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        rows = orjson.loads(value)
        return tuple((int(seq), str(kind), str(key), int(t)) for seq, kind, key, t in rows)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def record(session: Session, kind: Kind, keys: list[str] | str, *, now_us: int) -> None:
    """One row per key, in the given order, written with the transaction's other records in
    a single statement once its body is done (:data:`tether.db.engine.BEFORE_COMMIT`;
    PostgreSQL: an ``INSERT … SELECT`` from arrays that also notifies every node; SQLite:
    SQLAlchemy batches the executemany into ``INSERT … VALUES (…), (…)``): a kill of a family
    of a thousand with its tokens is one statement of the feed, not eleven thousand ORM
    rows. ``session`` must be a :meth:`tether.db.Database.write` transaction's."""
    wanted = [key[:128] for key in ([keys] if isinstance(keys, str) else keys)]
    pending: list[tuple[str, str, int]] | None = session.info.get(_PENDING)
    if pending is None:
        session.info[_PENDING] = pending = []
        session.info.setdefault(BEFORE_COMMIT, []).append(_flush)
    pending.extend((kind.value, key, now_us) for key in wanted)
    session.info[CHANGED] = True


def _flush(session: Session) -> None:
    pending: list[tuple[str, str, int]] = session.info.pop(_PENDING, [])
    if session.get_bind().dialect.name == "postgresql":
        first, last, _ = session.execute(_FLUSH_POSTGRES, {
            "kinds": [kind for kind, _, _ in pending],
            "keys": [key for _, key, _ in pending],
            "times": [time for _, _, time in pending],
            "channel": channel(session.info.get("tether.schema")),
            "pushed": PUSHED_ROWS,
        }).one()  # fmt: skip
        if pending and session.info.get(CHANGED) and last - first + 1 == len(pending):
            # What this process applies after the commit without reading the feed back.
            session.info[CHANGED] = tuple(
                (first + i, kind, key, time) for i, (kind, key, time) in enumerate(pending)
            )
    elif pending:
        rows = [{"kind": kind, "key": key, "time": time} for kind, key, time in pending]
        session.execute(insert(ChangeRow), rows)


@dataclass(frozen=True, slots=True)
class Changes:
    """What :func:`since` found: ``(seq, kind, key, time_us)`` in seq order, and whether some that
    came after the reader's ``seq`` were purged before it read them (``gap``: the reader
    missed changes and must reload everything; ``rows`` is then empty)."""

    rows: Sequence[tuple[int, str, str, int]]
    gap: bool

    @property
    def last(self) -> int | None:
        return self.rows[-1][0] if self.rows else None


def head(session: Session) -> int:
    """The newest ``seq`` (0 for an empty feed): a reader that loaded everything now starts
    after it."""
    return session.scalar(select(func.max(ChangeRow.seq))) or 0


def since(session: Session, seq: int, *, limit: int = 10_000) -> Changes:
    """Up to ``limit`` changes after ``seq``, oldest first. A reader at ``seq == 0`` has
    loaded nothing incrementally and never has a gap.

    One query when nothing can have been skipped: the first row found is ``seq + 1``, or
    there is none (:func:`purge` deletes only below a ``seq`` some reader applied, so the
    newest row always stays: had rows after ``seq`` gone, it would be found). Otherwise the
    oldest row tells whether the numbers between were purged or never committed."""
    rows: Sequence[tuple[int, str, str, int]] = session.execute(
        select(ChangeRow.seq, ChangeRow.kind, ChangeRow.key, ChangeRow.time)
        .where(ChangeRow.seq > seq).order_by(ChangeRow.seq).limit(limit)
    ).all()  # fmt: skip
    if not seq or not rows or rows[0][0] == seq + 1:
        return Changes(rows, gap=False)
    oldest = session.scalar(select(func.min(ChangeRow.seq)))
    if oldest is not None and oldest > seq + 1:
        return Changes((), gap=True)
    return Changes(rows, gap=False)


def purge(session: Session, *, before_us: int, below_seq: int) -> int:
    """Forget changes older than ``before_us`` and below ``below_seq`` (what the purging
    worker has applied itself); returns how many went."""
    result = session.execute(
        delete(ChangeRow).where(ChangeRow.time < before_us, ChangeRow.seq < below_seq)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
