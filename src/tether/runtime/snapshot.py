"""The runtime snapshot: what the decision path reads, in memory, never from the database.

Its sections are the domains' (:mod:`tether.runtime.sections`): agents with their prebuilt
Cedar entities, users, revoked token ids, the compiled policy version, each registered by the
wiring. A full load at start; afterwards the change feed (``runtime_changes``) is applied
incrementally, each section getting the keys of the kinds it follows. Propagation is pushed:
the process that made the change applies it right after its commit; every other process
learns at once — on PostgreSQL from a NOTIFY (every node), on SQLite (one host) from a byte
in its wake-up pipe (:mod:`tether.runtime.wakeups`) — and a poll every ``poll_seconds`` is
only the safety net. A sync reads every pending change in passes of up to ``_BATCH`` rows
and costs in proportion to what changed, not to what the sections hold.

A worker that has not confirmed it is current for ``stale_seconds`` is *stale*: the decision
path then denies everything (fail closed) and ``/readyz`` says so.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import Counter, Gauge
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tether.clock import Clock, to_micros
from tether.db import Database
from tether.maintenance import Task
from tether.runtime import changes, propagation
from tether.runtime.changes import channel
from tether.runtime.positions import Positions, positions_channel
from tether.runtime.sections import Section
from tether.runtime.wakeups import FifoWakeups

log = logging.getLogger("tether.runtime")
SYNCS = Counter("tether_runtime_syncs", "Change-feed syncs applied", ["result"])
LAG = Gauge("tether_runtime_seconds_since_sync", "Seconds since this worker was last current")
_FEED_KEEP_US = 3600 * 1_000_000
_BATCH = 10_000  # change-feed rows read per pass (bounds every IN list a section builds)
_POLLER = "tether-runtime-poll"


class Runtime:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        poll_seconds: float = 0.25,
        stale_seconds: float = 5.0,
        propagation_wait: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.stale_seconds = stale_seconds
        self.sections: list[Section] = []
        self._loaded = False
        self._all_ready = False
        self.last_seq = 0
        self._synced_at = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Set with _wake when the feed moved (a NOTIFY, a wake-up byte): the poller reads or
        # applies it; woken without it, the poller only reports where this worker is.
        self._feed_moved = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.wakeups = _wakeups_for(db)
        # Where this worker is, for writers waiting until every live worker applied a change.
        self.id = f"{socket.gethostname()[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        self.positions = Positions(db, clock, self.id, live_seconds=stale_seconds)
        self.propagation_wait = propagation_wait
        self._participating = False  # started: others wait for it, it reports where it is
        self._reported: tuple[int, float] = (-1, 0.0)  # (seq, monotonic time)
        # Change-feed rows a NOTIFY carried (PostgreSQL), not applied yet (see sync()).
        self._pushed: list[tuple[int, str, str, int]] = []
        self._pushed_lock = threading.Lock()
        db.after_change.append(self.changed)

    def register(self, *sections: Section) -> None:
        self.sections.extend(sections)
        self._all_ready = False

    # -- state -----------------------------------------------------------------------------
    def _ready(self) -> bool:
        """Loaded, and every section ready — which, once true, stays true (a section, once
        ready, stays so): asked on every decision, the sections are not asked again."""
        if self._all_ready:
            return True
        ready = self._loaded and all(section.ready for section in self.sections)
        self._all_ready = ready
        return ready

    def current(self) -> bool:
        """Loaded, synced within ``stale_seconds`` and — while it runs — able to tell the
        others where it is (writers stop waiting for a worker silent that long, so such a
        worker must not answer either)."""
        now = time.monotonic()
        if not self._ready() or now - self._synced_at >= self.stale_seconds:
            return False
        return not self._participating or now - self._reported[1] < self.stale_seconds

    def waited_for(self) -> bool:
        """Started (writers wait until it applied their changes) and current: what it holds is
        as good as the tables for every change whose call has returned."""
        return self._participating and self.current()

    def fresh(self) -> bool:
        """Synced within a few poll intervals (the poller is keeping up): no I/O needed."""
        return self._ready() and time.monotonic() - self._synced_at < self.poll_seconds * 4

    def ensure_current(self) -> bool:
        """Current, or catch up now (the poller may be lagging or not running): one cheap
        query at most once per poll interval; False if the database cannot be reached."""
        if self.fresh():
            return True
        try:
            self.sync()
        except Exception:
            SYNCS.labels("failed").inc()
            log.warning("runtime sync failed", exc_info=True)
        return self.current()

    def load(self) -> None:
        """Everything from scratch (start-up, or after a large batch of changes)."""
        with self._lock, self.db.read() as s:
            seq = changes.head(s)
            now_us = to_micros(self.clock.now())
            for section in self.sections:
                section.load(s, now_us)
            self.last_seq = seq
            self._loaded = True
            self._synced_at = time.monotonic()

    def changed(self, written: object = True) -> None:
        """Run by the database after a commit of this process that recorded changes (given
        what the transaction wrote, :func:`changes.written`): the other processes on this
        host are woken (SQLite; PostgreSQL's NOTIFY left with the commit), then this one
        applies the changes."""
        committed = time.monotonic()
        if self.wakeups is not None:
            self.wakeups.ring()
        rows = changes.written(written)
        if rows and self.propagation_wait > 0:
            # Its numbers known (PostgreSQL), the wait for the others comes first: this
            # worker's poller, woken by the same NOTIFY, applies it meanwhile (or this
            # thread does after), in the time the others' apply takes anyway.
            seq = rows[-1][0]
            confirmed, workers = self.positions.wait(seq, self.propagation_wait)
            self.sync(rows)
        else:
            self.sync(rows)
            if self.propagation_wait <= 0:
                return
            # Return only once every live worker (this node's and every other's) applied it:
            # after a kill returns, no worker anywhere answers from before it.
            seq = self.last_seq
            confirmed, workers = self.positions.wait(seq, self.propagation_wait)
        # Measured for the caller (a kill's service records it: tether.runtime.propagation).
        spent = time.monotonic() - committed
        propagation.measured(propagation.Propagation(seq, spent, confirmed, workers))

    def pushed(self, payload: str) -> None:
        """A change-feed ``NOTIFY`` arrived (the listener): the rows it carried wait for the
        poller, which applies them without reading the feed if nothing came between."""
        rows = changes.written(payload)
        if rows:
            with self._pushed_lock:
                self._pushed.extend(rows)
        self._feed_changed()

    def _feed_changed(self) -> None:
        self._feed_moved = True
        self._wake.set()

    def _report(self) -> None:
        """Tell the others where this worker is: after a sync that moved, and at least once a
        second (the heartbeat that keeps it live to them). Never raises."""
        if not self._participating:
            return
        seq, at = self._reported
        now = time.monotonic()
        if seq == self.last_seq and now - at < 1.0:
            return
        applied = self.last_seq
        try:
            self.positions.report(applied, announce=applied != seq)
        except Exception:
            log.warning("runtime could not report its position", exc_info=True)
            return
        self._reported = (applied, now)

    def sync(self, known: Sequence[tuple[int, str, str, int]] | None = None) -> None:
        """Apply the change feed since the last sync, every pending row (in passes of
        ``_BATCH``); thread-safe, cheap when nothing moved. Rows already known (``known``,
        what this process just wrote; or what a ``NOTIFY`` carried) that follow on from the
        last applied one without a gap are applied without reading the feed: on PostgreSQL
        the round trip a kill's propagation saves on every node."""
        if not self._loaded:
            self.load()
            return
        moved = gap = False
        # Statement by statement (no transaction round trips): each section reads rows at
        # least as new as the feed rows that named them; anything newer comes again later.
        with self._lock, self.db.read(transaction=False) as s:
            follow = self._following(known)
            if follow:
                self._apply(s, follow)
                self.last_seq = follow[-1][0]
                moved = True
            elif follow is None or time.monotonic() - self._synced_at >= self.poll_seconds:
                while True:
                    found = changes.since(s, self.last_seq, limit=_BATCH)
                    gap = found.gap
                    if found.last is not None:
                        self._apply(s, found.rows)
                        self.last_seq = found.last
                        moved = True
                    if gap or len(found.rows) < _BATCH:
                        break
            else:
                return  # what it was told of is applied already (by another thread)
            self._synced_at = time.monotonic()
        if gap:
            self.load()  # changes we never saw were purged: start over
        SYNCS.labels("changes" if moved else "idle").inc()
        if not (moved or gap):
            return
        if threading.current_thread().name == _POLLER:
            self._report()
        else:
            # The poller reports (a write transaction of its own): not on the path of the
            # call that committed, which only waits for the *other* workers.
            self._wake.set()

    def _following(
        self, known: Sequence[tuple[int, str, str, int]] | None
    ) -> list[tuple[int, str, str, int]] | None:
        """Of the rows known without reading the feed (``known`` and what was pushed), those
        after the last applied one, if they follow on from it without a gap; [] if every one
        of them is applied already; None if none is known or one in between may be missing
        (then the feed is read). Under ``_lock``."""
        with self._pushed_lock:
            rows, self._pushed = self._pushed, []
        rows += known or ()
        if not rows:
            return None
        rows = sorted({row for row in rows if row[0] > self.last_seq})
        expected = self.last_seq + 1
        for row in rows:
            if row[0] != expected:
                return None
            expected += 1
        return rows

    def _apply(self, s: Session, rows: Sequence[tuple[int, str, str, int]]) -> None:
        kinds: dict[str, set[str]] = {}
        for _, kind, key, _time in rows:
            kinds.setdefault(kind, set()).add(key)
        now_us = to_micros(self.clock.now())
        for section in self.sections:
            changed = {k: keys for k, keys in kinds.items() if k in section.kinds}
            if changed:
                section.apply(s, changed, now_us)

    def maintenance(self) -> list[Task]:
        return [Task("runtime.purge", self.purge)]

    def purge(self) -> None:
        """Maintenance: each section forgets what no longer matters, and change-feed rows an
        hour old go (every worker has long applied them; one that was away that long reloads
        everything when it finds a gap)."""
        now_us = to_micros(self.clock.now())
        with self._lock:  # sections change their state in place while syncing
            for section in self.sections:
                section.purge(now_us)
        with self.db.write() as s:
            changes.purge(s, before_us=now_us - _FEED_KEEP_US, below_seq=self.last_seq)
        self.positions.purge(now_us)

    # -- background ------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        poller = threading.Thread(target=self._poll, name=_POLLER, daemon=True)
        self._threads.append(poller)
        if self.db.dialect == "postgresql":
            listener = threading.Thread(target=self._listen, name="tether-runtime-listen",
                                        daemon=True)  # fmt: skip
            self._threads.append(listener)
        for thread in self._threads:
            thread.start()
        if self.wakeups is not None:
            self.wakeups.listen(self._feed_changed)
        self._participating = True
        self._report()

    def stop(self) -> None:
        if self._participating:
            self._participating = False
            try:
                self.positions.forget()
            except Exception:  # gone for good anyway: it stops counting after stale_seconds
                log.warning("runtime could not withdraw its position", exc_info=True)
        if self.wakeups is not None:
            self.wakeups.close()
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            # The listener notices within its notifies() timeout; it holds nothing, so it is
            # not waited for (a daemon thread; shutdown should not take a second).
            if thread.name != "tether-runtime-listen":
                thread.join(timeout=5)
        self._threads = []

    def _poll(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._feed_moved or not woken:  # else: woken to report what a call applied
                self._feed_moved = False
                try:
                    self.sync()
                except Exception:  # the database may be away; we go stale and fail closed
                    SYNCS.labels("failed").inc()
                    log.warning("runtime sync failed", exc_info=True)
            self._report()  # the heartbeat (at most once a second unless it moved)
            LAG.set(time.monotonic() - self._synced_at)

    def _listen(self) -> None:
        import psycopg  # PostgreSQL only: a SQLite server never loads it (~0.1 s)

        url = make_url(self.db.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        name, moved = channel(self.db.schema), positions_channel(self.db.schema)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{moved}"')
                    conn.execute(f'LISTEN "{name}"')
                    self.positions.listening = True  # writers may rely on announcements
                    try:
                        while not self._stop.is_set():
                            for note in conn.notifies(timeout=0.5, stop_after=1):
                                if note.channel == moved:
                                    self.positions.announced(note.payload)
                                else:
                                    self.pushed(note.payload)
                    finally:
                        self.positions.listening = False
            except psycopg.Error:
                log.warning("runtime LISTEN connection lost; polling meanwhile", exc_info=True)
                self._stop.wait(1.0)


def _wakeups_for(db: Database) -> FifoWakeups | None:
    """SQLite's push between this host's processes: pipes in a directory beside the database
    file (``tether.db.wake``); None for PostgreSQL (NOTIFY) and an in-memory database."""
    if db.dialect != "sqlite":
        return None
    path = make_url(db.url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return FifoWakeups(Path(f"{Path(path).resolve()}.wake"))
