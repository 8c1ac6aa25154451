"""Every running worker's place in the change feed, so a change is enforced everywhere before
the call that made it returns.

The change feed reaches every worker in milliseconds (PostgreSQL ``NOTIFY``, SQLite wake-up
pipes, the poll as the safety net), but asynchronously: the call that killed an agent could
return while another worker — of this node or another — has not applied it yet, and that
worker's next decision would still allow. So each running worker reports here the newest
change it has applied (after every sync that moved, and every second as a heartbeat), and a
process that committed changes waits, bounded, until every *live* worker has reported at
least that far (:meth:`Positions.await_applied`). On PostgreSQL a worker that moved also
announces where it is now (a ``NOTIFY`` on :func:`positions_channel` whose payload is its id
and position, heard by every runtime's listener), so a waiting writer counts it as there at
once, without looking at the table again, which it then does only rarely (without a listener:
every 1, 2, 4… up to 10 ms). A report is one statement outside any transaction (the upsert and the
``NOTIFY`` together): on the path of every change's writer, each round trip is a wake-up of a
worker thread and of a PostgreSQL backend.

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
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from tether.clock import Clock, to_micros
from tether.db import Database
from tether.runtime.models import RuntimePositionRow

log = logging.getLogger("tether.runtime")
# PostgreSQL: the upsert, and where announced the NOTIFY, in one statement run outside a
# transaction (its own, committed when it ends). A position need not survive a crash (a
# restarted worker reports afresh): that commit does not wait for a WAL flush
# (``synchronous_commit`` is read at commit; set_config(…, true) sets it for this one).
_REPORT_PG = text(
    "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)), "
    "moved AS (INSERT INTO runtime_positions (runtime_id, applied_seq, seen_at) "
    "VALUES (:runtime_id, :applied_seq, :seen_at) ON CONFLICT (runtime_id) DO UPDATE "
    "SET applied_seq = excluded.applied_seq, seen_at = excluded.seen_at RETURNING 1) "
    "SELECT 1 FROM moved, durability"
)
_ANNOUNCE_PG = text(  # the same, and the NOTIFY
    "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)), "
    "moved AS (INSERT INTO runtime_positions (runtime_id, applied_seq, seen_at) "
    "VALUES (:runtime_id, :applied_seq, :seen_at) ON CONFLICT (runtime_id) DO UPDATE "
    "SET applied_seq = excluded.applied_seq, seen_at = excluded.seen_at RETURNING 1) "
    "SELECT pg_notify(:channel, :payload) FROM moved, durability"
)
# How often a waiting writer looks at the table: every 1, 2, 4… up to 10 ms; while the
# runtime's listener is connected (PostgreSQL), every worker that moves announces it there,
# so the table is only the fallback (an announcement lost, a listener silently cut off):
# every 25, 50, 100 ms, not taking the CPU from the workers it waits for.
_LOOKS = (0.001, 0.01)
_LOOKS_LISTENING = (0.025, 0.1)
_HEARD_KEEP = 4096  # announced positions remembered (workers seen lately, restarts included)
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
        # Bumped whenever another worker announced a new position (PostgreSQL NOTIFY), with
        # what it announced: a writer waiting in await_applied counts it at once.
        self._announced = threading.Condition()
        self._announcements = 0
        self._heard: dict[str, int] = {}
        # The runtime's listener is connected and hearing announcements (PostgreSQL).
        self.listening = False

    def report(self, applied_seq: int, *, announce: bool = False) -> None:
        """Say where this worker is (one upsert); ``announce`` (it moved) also tells the
        writers waiting on every node (PostgreSQL). PostgreSQL: one statement, outside the
        deployment-wide write lock; SQLite: in the writers' queue (it has one writer at a
        time anyway)."""
        now_us = to_micros(self.clock.now())
        values = {"runtime_id": self.runtime_id, "applied_seq": applied_seq, "seen_at": now_us}
        if self.db.dialect == "postgresql":
            with self.db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                if announce:
                    channel = positions_channel(self.db.schema)
                    payload = f"{self.runtime_id} {applied_seq}"
                    conn.execute(_ANNOUNCE_PG, {**values, "channel": channel, "payload": payload})
                else:
                    conn.execute(_REPORT_PG, values)
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
        return [w for w, applied in self.live(s).items() if applied < seq]

    def live(self, s: Session) -> dict[str, int]:
        """The live workers other than this one, with the newest change each applied."""
        since = to_micros(self.clock.now()) - self.live_us
        q = select(RuntimePositionRow.runtime_id, RuntimePositionRow.applied_seq).where(
            RuntimePositionRow.seen_at >= since,
            RuntimePositionRow.runtime_id != self.runtime_id,
        )
        return {str(w): int(applied) for w, applied in s.execute(q)}

    def await_applied(self, seq: int, timeout: float) -> bool:
        """Wait until every live worker has applied ``seq`` (True), or ``timeout`` seconds
        passed (False: logged and counted; the change is durable and every worker will apply
        it, but one may answer from before it meanwhile). The workers behind come from the
        table; each then counts as there once it announced ``seq`` or later, or the table
        says so at a later look (a worker that could not announce: SQLite, a lost ``NOTIFY``)."""
        return self.wait(seq, timeout)[0]

    def wait(self, seq: int, timeout: float) -> tuple[bool, int]:
        """:meth:`await_applied`, and how many other live workers there were at the first
        look (each had to apply ``seq``: those behind were waited for)."""
        started = time.monotonic()
        workers = 0
        pause = 0.0
        waiting: set[str] | None = None
        looked = started
        while True:
            with self._announced:
                seen = self._announcements
                if waiting is not None:
                    waiting = {w for w in waiting if self._heard.get(w, -1) < seq}
            now = time.monotonic()
            late = now - started >= timeout
            if waiting is None or (waiting and (late or now - looked >= pause)):
                with self.db.read(transaction=False) as s:
                    live = self.live(s)
                behind = {w for w, applied in live.items() if applied < seq}
                if waiting is None:
                    workers = len(live)
                waiting = behind if waiting is None else waiting & behind
                with self._announced:  # what was announced meanwhile counts too
                    waiting = {w for w in waiting if self._heard.get(w, -1) < seq}
                looked = time.monotonic()
                first, most = _LOOKS_LISTENING if self.listening else _LOOKS
                pause = min(max(pause * 2, first), most)
                if waiting and not late:
                    continue
            if not waiting:
                WAITED.observe(time.monotonic() - started)
                return True, workers
            if late:
                TIMEOUTS.inc()
                log.warning("change %d not yet applied by %d live worker(s) after %.2fs: %s",
                            seq, len(waiting), timeout, ", ".join(sorted(waiting)[:5]))  # fmt: skip
                return False, workers
            # Until a worker announces, the time for the next look, or the timeout.
            self._await_announcement(seen, min(looked + pause, started + timeout) - now)

    def _await_announcement(self, seen: int, timeout: float) -> None:
        with self._announced:
            if self._announcements == seen and timeout > 0:
                self._announced.wait(timeout)

    def announced(self, payload: str = "") -> None:
        """Another worker announced a new position (the runtime's listener calls this with
        the ``NOTIFY``'s payload, ``"<runtime id> <applied seq>"``)."""
        runtime_id, _, position = payload.rpartition(" ")
        with self._announced:
            if runtime_id and position.isdigit():
                if len(self._heard) >= _HEARD_KEEP and runtime_id not in self._heard:
                    self._heard.clear()  # only a shortcut: the table stays the truth
                seq = int(position)
                if seq > self._heard.get(runtime_id, -1):
                    self._heard[runtime_id] = seq
            self._announcements += 1
            self._announced.notify_all()

    def purge(self, now_us: int) -> None:
        """Maintenance: forget workers gone for an hour (a crashed one leaves its row)."""
        with self.db.write() as s:
            s.execute(delete(RuntimePositionRow).where(
                RuntimePositionRow.seen_at < now_us - 3600 * 1_000_000))  # fmt: skip
