"""Every running worker's place in the change feed, so a change is enforced everywhere before
the call that made it returns.

The change feed reaches every worker in milliseconds (PostgreSQL ``NOTIFY``, SQLite wake-up
pipes, the poll as the safety net), but asynchronously: the call that killed an agent could
return while another worker — of this node or another — has not applied it yet, and that
worker's next decision would still allow. So each running worker reports here the newest
change it has applied (after every sync that moved, and every second as a heartbeat), and a
process that committed changes waits, bounded, until every *live* worker has reported at
least that far (:meth:`Positions.await_applied`). On PostgreSQL a worker that moved also
announces it (a ``NOTIFY`` on :func:`positions_channel`, heard by every runtime's listener), so
the writer looks again at once instead of at its next poll (1, 2, 4… up to 10 ms).

Live means reported within ``live_seconds``, which is the runtime's stale bound: a worker
that could not report for that long is not current by its own rule and denies every
decision (fail closed), so not waiting for it loses nothing. Workers compare their own clocks
(node clocks must agree within a second or two, as DPoP nonces already require).
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Counter, Histogram
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tether.clock import Clock, to_micros
from tether.db import Database
from tether.runtime.models import RuntimePositionRow

log = logging.getLogger("tether.runtime")
_NOTIFY = text("SELECT pg_notify(:c, '')")
WAITED = Histogram(
    "tether_runtime_propagation_seconds",
    "How long a change's writer waited for every live worker to apply it",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TIMEOUTS = Counter(
    "tether_runtime_propagation_timeouts",
    "Changes returned before every live worker confirmed it applied them",
)


def positions_channel(schema: str | None) -> str:
    """PostgreSQL: where a worker that applied changes says so (the writers waiting for it
    listen, through the runtime's LISTEN connection, instead of polling)."""
    return f"tether_positions_{schema or 'public'}"[:63]


class Positions:
    def __init__(self, db: Database, clock: Clock, runtime_id: str, *, live_seconds: float):
        self.db = db
        self.clock = clock
        self.runtime_id = runtime_id
        self.live_us = int(live_seconds * 1_000_000)
        # Bumped whenever another worker announced a new position (PostgreSQL NOTIFY): a
        # writer waiting in await_applied looks again at once.
        self._announced = threading.Condition()
        self._announcements = 0

    def report(self, applied_seq: int, *, announce: bool = False) -> None:
        """Say where this worker is (one upsert); ``announce`` (it moved) also wakes the
        writers waiting on every node (PostgreSQL). PostgreSQL: outside the deployment-wide
        write lock; SQLite: in the writers' queue (it has one writer at a time anyway)."""
        now_us = to_micros(self.clock.now())
        values = {"runtime_id": self.runtime_id, "applied_seq": applied_seq, "seen_at": now_us}
        if self.db.dialect == "postgresql":
            pg = postgresql.insert(RuntimePositionRow).values(**values)
            stmt = pg.on_conflict_do_update(
                index_elements=["runtime_id"],
                set_={"applied_seq": pg.excluded.applied_seq, "seen_at": pg.excluded.seen_at},
            )
            with self.db.engine.begin() as conn:
                # A position need not survive a crash (a restarted worker reports afresh):
                # no WAL flush to wait for, on the path of every change's writer.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                conn.execute(stmt)
                if announce:  # delivered at commit
                    conn.execute(_NOTIFY, {"c": positions_channel(self.db.schema)})
            return
        lite = sqlite.insert(RuntimePositionRow).values(**values)
        upsert = lite.on_conflict_do_update(
            index_elements=["runtime_id"],
            set_={"applied_seq": lite.excluded.applied_seq, "seen_at": lite.excluded.seen_at},
        )
        with self.db.write() as s:
            s.execute(upsert)

    def forget(self) -> None:
        """This worker stops: nobody waits for it any more."""
        with self.db.write() as s:
            s.execute(delete(RuntimePositionRow).where(
                RuntimePositionRow.runtime_id == self.runtime_id))  # fmt: skip

    def behind(self, s: Session, seq: int) -> list[str]:
        """The live workers (other than this one) that have not applied ``seq``."""
        since = to_micros(self.clock.now()) - self.live_us
        q = select(RuntimePositionRow.runtime_id).where(
            RuntimePositionRow.applied_seq < seq,
            RuntimePositionRow.seen_at >= since,
            RuntimePositionRow.runtime_id != self.runtime_id,
        )
        return list(s.scalars(q))

    def await_applied(self, seq: int, timeout: float) -> bool:
        """Wait until every live worker has applied ``seq`` (True), or ``timeout`` seconds
        passed (False: logged and counted; the change is durable and every worker will apply
        it, but one may answer from before it meanwhile)."""
        started = time.monotonic()
        pause = 0.001
        while True:
            with self._announced:
                seen = self._announcements
            with self.db.read(transaction=False) as s:
                waiting = self.behind(s, seq)
            if not waiting:
                WAITED.observe(time.monotonic() - started)
                return True
            if time.monotonic() - started >= timeout:
                TIMEOUTS.inc()
                log.warning("change %d not yet applied by %d live worker(s) after %.2fs: %s",
                            seq, len(waiting), timeout, ", ".join(waiting[:5]))  # fmt: skip
                return False
            self._await_announcement(seen, pause)  # a worker moved, or time for the next look
            pause = min(pause * 2, 0.01)

    def _await_announcement(self, seen: int, timeout: float) -> None:
        with self._announced:
            if self._announcements == seen:
                self._announced.wait(timeout)

    def announced(self) -> None:
        """Another worker announced a new position (the runtime's listener calls this)."""
        with self._announced:
            self._announcements += 1
            self._announced.notify_all()

    def purge(self, now_us: int) -> None:
        """Maintenance: forget workers gone for an hour (a crashed one leaves its row)."""
        with self.db.write() as s:
            s.execute(delete(RuntimePositionRow).where(
                RuntimePositionRow.seen_at < now_us - 3600 * 1_000_000))  # fmt: skip
