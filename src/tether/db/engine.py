"""Engines and transactions.

Every write transaction holds the deployment-wide *write lock*, so all writers — threads,
worker processes and nodes — are serialized. That is what lets one ledger chain be
sequenced without forks: SQLite takes it with ``BEGIN IMMEDIATE``, PostgreSQL with a
transaction-scoped advisory lock. Reads never take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tether.db.bulk import (
    Insert,
    fetch_last,
    fetch_last_on,
    fetch_one_with,
    pipeline_statements,
    remember_driver,
    write_tables,
)

# Arbitrary but fixed: the advisory lock id every Tether node agrees on ("TETH").
PG_WRITE_LOCK = 0x54455448
_PG_LOCK = "SELECT pg_advisory_xact_lock(?)"
_PG_LOCK_LITERAL = f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"
# ``session.info[(READ_WITH_LOCK, sql)]``: the first row (or None) of ``sql`` as
# :meth:`Database.write` read it right after taking the write lock, in the lock's round trip.
READ_WITH_LOCK = "tether.read_with_lock"
_SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_CACHE_KIB = 512
_SQLITE_PAGE_BYTES = 2048
_PING_AFTER_IDLE_SECONDS = 1.0
# At most this many statements the event loop's connection prepares (their shapes: a write's
# tables and row counts); beyond, a statement is parsed in place.
_LOOP_PREPARED = 32
_IDLE_SINCE = "tether.idle_since"
# ``session.info[BEFORE_COMMIT]``: callables given the session once the write transaction's body
# finished without error, in order, still inside it and under the write lock (what a body
# gathered, written in one statement: tether.runtime.changes). Not run on a rollback.
BEFORE_COMMIT = "tether.before_commit"
# ``session.info[AFTER_COMMIT]``: callables a write transaction runs after it committed.
AFTER_COMMIT = "tether.after_commit"
# ``session.info[IN_BACKGROUND]``: callables a write transaction hands, once it committed, to
# the database's background thread: they run one at a time, in order, after the call that
# committed has returned (its own write transactions each take the write lock in turn).
IN_BACKGROUND = "tether.in_background"
log = logging.getLogger("tether.db")


class _WriterQueue:
    """SQLite writers wait their turn in the kernel instead of in SQLite's busy handler.

    SQLite's busy handler sleeps and retries with growing back-off, so under contention a
    writer can sleep long after the lock is free (p99 of a second with a few writers,
    bench/README.md). A thread lock queues this process's writers and an ``flock`` on a file
    beside the database queues the processes; BEGIN IMMEDIATE then finds the lock free.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def take_at_once(self) -> None:
        """Take the turn only if nobody holds or awaits it (:class:`WriteLockBusy`
        otherwise, nothing held); given back by ``__exit__``."""
        if not self._threads.acquire(blocking=False):
            raise WriteLockBusy("another thread of this process is writing")
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._threads.release()
            raise WriteLockBusy("another process is writing") from None
        except BaseException:
            self._threads.release()
            raise


class WriteLockBusy(Exception):
    """The write lock was not free at once (:meth:`PinnedWriter.raw` with ``wait=False``)."""


class GuardFailed(Exception):
    """What a guarded write assumed no longer held (:meth:`PinnedWriter.raw_guarded`):
    rolled back, nothing written."""


# How a guard statement says that what its write assumed no longer holds: it divides by zero
# (PostgreSQL has no ASSERT outside PL/pgSQL, and a DO block takes no parameters).
_GUARD_FAILED = "22012"  # SQLSTATE division_by_zero


class PinnedWriter:
    """Write transactions on one connection kept between them, for one thread that writes many
    times a second (the ledger's group commit). Each transaction saves the pool's check-out
    and check-in and the session's connection set-up (an empty write transaction measured 73
    µs through the pool, 56 µs on a kept connection, 2 µs on the bare driver); on PostgreSQL
    the connection is in
    the driver's autocommit mode and ``BEGIN`` travels with the write lock's statement, one
    round trip fewer. The same transactions as :meth:`Database.write` (``sequenced``): a
    fresh session each, so nothing one loaded is seen by the next. The connection goes back
    to the pool after a failed transaction; after a second idle it is pinged first, and
    replaced if the database dropped it meanwhile. Used by one thread at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Connection | None = None
        self._used = 0.0

    @contextmanager
    def write(self, *, then: str | None = None) -> Iterator[Session]:
        conn = self._connection()
        done = False
        try:
            with (
                Session(bind=conn, expire_on_commit=False) as session,
                self._db._transaction(session, then, True, begin=self._autocommit),
            ):
                yield session
            done = True
        finally:
            self._used = time.monotonic()
            if not done:
                self.close()

    @property
    def can_skip_the_wait(self) -> bool:
        """Whether :meth:`raw` can be asked not to wait (``wait=False``): a SQLite file,
        whose writers queue on this process's lock and a file lock, both tried at once."""
        return self._db._queue is not None

    @contextmanager
    def raw(self, *, then: str, wait: bool = True) -> Iterator[RawWrite]:
        """A write transaction on the kept connection's driver, without a session (rows that
        need nothing of the ORM: the group commit's plain events). The write lock is taken
        and ``then`` read under it as :meth:`Database.write` does (PostgreSQL: with ``BEGIN``
        in one round trip); the body writes with :meth:`RawWrite.write`, whose statement
        carries the ``COMMIT``; an error rolls back. No callbacks run: such rows change no
        runtime state. ``wait=False`` (only where :attr:`can_skip_the_wait`): raise
        :class:`WriteLockBusy`, having done nothing, unless the lock is free at once."""
        db, queue = self._db, self._db._queue
        if not wait and queue is None:
            raise WriteLockBusy("only a SQLite file's writers can be tried without waiting")
        conn = self._connection()
        driver: Any = conn.connection.driver_connection
        # Plain calls, not nested context managers: this runs once per lone commit.
        if queue is not None:
            if wait:
                queue.__enter__()
            else:  # WriteLockBusy before anything was sent: the connection is as it was
                queue.take_at_once()
        done = False
        try:
            if db.dialect == "postgresql":
                row = fetch_last_on(driver, ["BEGIN", _PG_LOCK_LITERAL, then])
            else:
                driver.execute("BEGIN IMMEDIATE")
                row = driver.execute(then).fetchone()
            yield from _written(RawWrite(driver, db.dialect, row))
            done = True
        finally:
            self._used = time.monotonic()
            if not done:
                self.close()
            if queue is not None:
                queue.__exit__()

    @property
    def can_guard(self) -> bool:
        """Whether :meth:`raw_guarded` is available: PostgreSQL, where it saves a round trip."""
        return self._db.dialect == "postgresql"

    @contextmanager
    def raw_guarded(self, guard: str, params: Sequence[Any]) -> Iterator[RawWrite]:
        """PostgreSQL: :meth:`raw` without its first round trip, for a writer that knows what
        it would read there (the ledger's head it appended last, while nobody else appends).
        Nothing is read: the body builds on what it assumed, and :meth:`RawWrite.write` sends
        ``BEGIN``, the write lock, ``guard`` (with ``params``) — a statement that divides by
        zero unless the assumption holds under the lock — the rows and ``COMMIT`` in one
        round trip. :class:`GuardFailed` if it did not hold: rolled back, nothing written,
        the connection kept for the caller's next try."""
        if not self.can_guard:
            raise RuntimeError("only a PostgreSQL write can be guarded")
        conn = self._connection()
        driver: Any = conn.connection.driver_connection
        lead = [("BEGIN", ()), (_PG_LOCK_LITERAL, ()), (guard, tuple(params))]
        tx = RawWrite(driver, self._db.dialect, None, lead)
        with self._kept():
            try:
                yield from _written(tx)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) == _GUARD_FAILED and tx.sent:
                    raise GuardFailed(str(exc).strip()) from None
                raise

    @contextmanager
    def _kept(self) -> Iterator[None]:
        """The connection kept for the next transaction, unless the block failed (then it
        goes back to the pool, and a broken one is dropped) — but a :class:`GuardFailed`
        was rolled back cleanly: that connection is as good as before."""
        done = False
        try:
            yield
            done = True
        except GuardFailed:
            done = True
            raise
        finally:
            self._used = time.monotonic()
            if not done:
                self.close()

    @property
    def _autocommit(self) -> bool:
        return self._db.dialect == "postgresql"

    def _connection(self) -> Connection:
        if self._conn is not None and time.monotonic() - self._used >= _PING_AFTER_IDLE_SECONDS:
            # Idle long enough for a server restart or an idle timeout to have dropped it:
            # pinged (one round trip), and replaced if it is gone — not found out by a batch.
            try:
                dbapi = self._conn.connection.dbapi_connection
                assert dbapi is not None  # a checked-out connection has one
                self._db.engine.dialect.do_ping(dbapi)
            except Exception:
                log.info("the writer's connection was lost while idle: reconnecting")
                self._conn.invalidate()
                self.close()
        if self._conn is None:
            conn = self._db.engine.connect()
            if self._autocommit:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class RawWrite:
    """:meth:`PinnedWriter.raw`'s transaction: ``head``, the row read under the lock, and
    :meth:`write`, its last statement (the rows, then ``COMMIT``) — led, in a guarded write
    (:meth:`PinnedWriter.raw_guarded`), by the transaction's start and its guard."""

    def __init__(
        self, driver: Any, dialect: str, head: Any,
        lead: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:  # fmt: skip
        self.head, self.committed, self.sent = head, False, False
        self.driver, self.dialect, self._lead = driver, dialect, lead

    def write(self, inserts: Sequence[Insert]) -> None:
        self.sent = True
        write_tables(self.driver, self.dialect, inserts, commit=True, lead=self._lead)
        self.committed = True


class LoopWriter:
    """:meth:`PinnedWriter.raw_guarded` for an event loop (PostgreSQL): guarded writes on a
    connection of its own, kept between them, sent from the caller's own call and answered
    in a reader callback of the loop — no thread woken, no task, the loop never blocked.
    The connection stays in libpq's pipeline mode: a write's statements go as one pipeline
    (:func:`~tether.db.bulk.pipeline_statements`), each statement prepared once per
    connection and its arguments bound by the driver's adapters in text form, committed by
    its ``Sync`` as one implicit transaction and answered then (one round trip). Driven
    through libpq's asynchronous calls (``psycopg.pq``): the driver's async cursors cost
    ~60 µs more CPU per write here, and a task per write another loop turn
    (bench/README.md). Opened in the background (:meth:`ready`), never on a caller's path;
    a connection that failed, or sat idle long enough to have been dropped, is closed and
    opened again that way. One write at a time, on the loop it was opened on."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # psycopg.AsyncConnection: its pgconn is driven directly
        self._dump: Any = None  # the driver's adapters (a Transformer) of that connection
        self._prepared: dict[bytes, bytes] = {}  # what this connection prepared: SQL -> name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[None] | None = None
        self._used = 0.0
        # The write under way (however long the database takes): what to call once it is
        # answered, and the first failed statement's (SQLSTATE, message).
        self._done: Callable[[BaseException | None], None] | None = None
        self._failed: tuple[str, str] | None = None
        self._forgetting: tuple[str, str] | None = None  # a failed write's, while deallocating
        self._gap = False  # the last result read ended a statement's results
        self._fd = -1  # the socket watched while a write is under way

    def ready(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a write can go now on ``loop``; if not, the connection is (re)opened in
        the background for the next one."""
        conn = self._conn
        if self._done is not None:
            return False
        if (conn is not None and self._loop is loop and not conn.closed
                and time.monotonic() - self._used < _PING_AFTER_IDLE_SECONDS):  # fmt: skip
            return True
        if self._opening is None or self._opening.done():
            self.close()
            self._opening = loop.create_task(self._open(loop))
        return False

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        import psycopg  # PostgreSQL only
        from psycopg.adapt import Transformer

        url = make_url(self._db.url).set(drivername="postgresql")
        schema = self._db.schema
        try:
            conn = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True,
                options=f"-csearch_path={schema}" if schema else None,
            )  # fmt: skip
            conn.pgconn.enter_pipeline_mode()
        except Exception:  # the writer thread's connection reports the outage; try later
            log.info("the event loop's ledger connection could not open", exc_info=True)
            return
        self._dump, self._prepared = Transformer(conn), {}
        self._conn, self._loop, self._used = conn, loop, time.monotonic()

    def write_guarded(
        self, guard: str, params: Sequence[Any], inserts: Sequence[Insert],
        done: Callable[[BaseException | None], None],
    ) -> None:  # fmt: skip
        """Send the write lock, ``guard`` (see :meth:`PinnedWriter.raw_guarded`) and the rows
        now, as one pipeline: one implicit transaction, committed by its ``Sync`` (or rolled
        back, nothing written, if a statement failed), answered in one round trip. ``done``
        is called on the loop once the database answered: with None once committed; with
        :class:`GuardFailed` if the guard did not hold; with the driver's error for its
        SQLSTATE if another statement failed; with anything else (the connection lost, or
        closed) if nothing is known to be committed — the connection is then closed. Raises,
        nothing sent and ``done`` never called, if the write could not be sent (the
        connection is closed)."""
        assert self._conn is not None  # ready() said so
        assert self._loop is not None
        lead = [(_PG_LOCK_LITERAL, ()), (guard, params)]
        pgconn = self._conn.pgconn
        try:
            self._send(pgconn, pipeline_statements(inserts, lead=lead))
            unsent = pgconn.flush()  # 1: the rest when the socket takes it
        except BaseException:
            self.close()
            raise
        self._done, self._failed, self._gap = done, None, False
        self._fd = fd = pgconn.socket  # the descriptor watched (unreadable once lost)
        self._loop.add_reader(fd, self._readable)
        if unsent:
            self._loop.add_writer(fd, self._writable)

    def _send(self, pgconn: Any, statements: Sequence[tuple[bytes, Sequence[Any]]]) -> None:
        """Queue ``statements`` and the ``Sync`` that ends them: each prepared once per
        connection (even the lock's, which has no parameters: parsed and planned once, not
        per write), its arguments dumped as text by the driver's adapters."""
        from psycopg.adapt import PyFormat

        prepared = self._prepared
        for sql, args in statements:
            name = prepared.get(sql)
            if name is None and len(prepared) < _LOOP_PREPARED:
                name = prepared[sql] = f"tether_w{len(prepared)}".encode()
                pgconn.send_prepare(name, sql)
            values = self._dump.dump_sequence(args, [PyFormat.TEXT] * len(args)) if args else None
            if name is None:  # many shapes seen: this one parsed in place
                pgconn.send_query_params(sql, values)
            else:
                pgconn.send_query_prepared(name, values)
        pgconn.pipeline_sync()

    def _writable(self) -> None:
        try:
            if self._conn.pgconn.flush() == 0:
                assert self._loop is not None
                self._loop.remove_writer(self._fd)
        except Exception as exc:
            self._settle(exc, broken=True)

    def _readable(self) -> None:
        """Read what arrived; once the pipeline's ``Sync`` is answered, the write is
        settled."""
        from psycopg import pq

        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:  # the end of one statement's results
                    if self._gap:  # nothing more is coming (not expected before the Sync)
                        break
                    self._gap = True
                    continue
                self._gap = False
                status = result.status
                if status == pq.ExecStatus.PIPELINE_SYNC:
                    self._answered()
                    return
                if status == pq.ExecStatus.FATAL_ERROR and self._failed is None:
                    state = result.error_field(pq.DiagnosticField.SQLSTATE) or b""
                    message = (result.error_message or b"").decode(errors="replace")
                    self._failed = (state.decode(), message.strip())
        except Exception as exc:  # the connection lost: nothing known to be committed
            self._settle(exc, broken=True)

    def _answered(self) -> None:
        """The ``Sync`` answered: the write settled — a failed one (rolled back by that
        ``Sync``) once the statements it may or may not have prepared are forgotten, every
        prepared statement deallocated in another pipeline."""
        from psycopg import pq

        failed, self._failed = self._failed, None
        pgconn = self._conn.pgconn
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:  # no implicit transaction
            self._settle(RuntimeError("the event loop's ledger connection was left in a "
                                      "transaction"), broken=True)  # fmt: skip
            return
        forgetting, self._forgetting = self._forgetting, None
        if forgetting is not None:  # that other pipeline's Sync
            if failed is not None:
                self._settle(RuntimeError(f"the event loop's ledger connection could not "
                                          f"deallocate: {failed[1]}"), broken=True)  # fmt: skip
            else:
                self._settle(_error_of(*forgetting))
            return
        if failed is None:
            self._settle(None)
            return
        self._prepared.clear()
        try:
            pgconn.send_query_params(b"DEALLOCATE ALL", None)
            pgconn.pipeline_sync()
            unsent = pgconn.flush()
        except Exception as exc:
            self._settle(exc, broken=True)
            return
        self._forgetting, self._gap = failed, False
        if unsent and self._loop is not None:  # the rest when the socket takes it
            self._loop.add_writer(self._fd, self._writable)

    def _settle(self, failure: BaseException | None, *, broken: bool = False) -> None:
        """The write settled: the socket unwatched, the connection closed if ``broken``,
        then its ``done`` called with ``failure``."""
        done, self._done = self._done, None
        self._used = time.monotonic()
        self._unwatch()
        if broken:
            self.close()
        if done is not None:
            done(failure)

    def _unwatch(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    def close(self) -> None:
        """Close the connection (the driver's close is only the socket's: no loop needed). A
        write under way is settled as failed: nothing known to be committed."""
        done, self._done, self._forgetting = self._done, None, None
        if done is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._unwatch()
        conn, self._conn, self._loop, self._dump = self._conn, None, None, None
        if conn is not None:
            conn.pgconn.finish()
        if done is not None:
            done(ConnectionError("the event loop's ledger connection was closed mid-write"))


def _error_of(sqlstate: str, message: str) -> Exception:
    """A failed statement's error: :class:`GuardFailed` for a guard's, else the driver's
    for its SQLSTATE."""
    if sqlstate == _GUARD_FAILED:
        return GuardFailed(message)
    import psycopg

    try:
        error: type[Exception] = psycopg.errors.lookup(sqlstate)
    except KeyError:
        error = psycopg.DatabaseError
    return error(message)


def _written(tx: RawWrite) -> Iterator[RawWrite]:
    """The body of a raw transaction (``yield from`` in a context manager): ``tx`` given to
    it, rolled back if it raises or ends without :meth:`RawWrite.write`."""
    try:
        yield tx
    except BaseException:
        _roll_back(tx.driver, tx.dialect)
        raise
    if not tx.committed:
        _roll_back(tx.driver, tx.dialect)
        raise RuntimeError("a raw write transaction ended without its write")


def _roll_back(driver: Any, dialect: str) -> None:
    """End a failed raw transaction; the connection is given back (and, if broken, dropped)
    by the caller either way."""
    with contextlib.suppress(Exception):
        if dialect == "postgresql":
            driver.rollback()
        elif driver.in_transaction:
            driver.execute("ROLLBACK")


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is possible.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # A new file's pages (an existing file keeps its own): every durable commit writes
        # each page it changed to the WAL and syncs it, and a decision changes one leaf of
        # each of six trees (the event, its four indexes, its inputs) — half the bytes to
        # sync with 2 KiB pages than with SQLite's 4 KiB (bench/README.md, issue 21).
        cur.execute(f"PRAGMA page_size={_SQLITE_PAGE_BYTES}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # durable: fsync on every commit
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        # Each connection's own page cache (SQLite's default: 2 MiB, of every worker's memory
        # per connection); the kernel caches the file anyway (bench/README.md, "Memory").
        cur.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:  # on the driver: SQLAlchemy's statement set-up is most of it
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: str, connect_args: dict[str, Any]) -> Engine:
    """A pool that pings a connection before handing it out only if it sat idle for
    ``_PING_AFTER_IDLE_SECONDS`` (a server restart or an idle timeout dropped it meanwhile:
    the ping fails, and the pool reconnects every connection older than that). SQLAlchemy's
    ``pool_pre_ping`` pings on every checkout: a round trip, and a wake-up of a PostgreSQL
    process, three or four times a request on the busiest paths (a kill: its transaction,
    the local sync, the wait for the other workers), when a connection used a moment ago is
    as good as the statement it is about to run, whose failure invalidates the pool too."""
    engine = create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=20)

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < _PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:  # an empty statement fails only on a connection gone
            raise exc.InvalidatePoolError(f"connection lost while idle: {err}") from err

    return engine


class Database:
    """The deployment's database: SQLite (embedded default) or PostgreSQL (psycopg 3)."""

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._queue: _WriterQueue | None = None
        if self.dialect == "sqlite":
            self._writer = _sqlite_engine(url, immediate=True)
            self._reader = _sqlite_engine(url, immediate=False)
            if parsed.database and parsed.database != ":memory:":
                self._queue = _WriterQueue(f"{parsed.database}.writelock")
        elif self.dialect == "postgresql":
            connect_args: dict[str, Any] = {}
            if schema:
                connect_args["options"] = f"-csearch_path={schema}"
            self._writer = _postgres_engine(url, connect_args)
            self._reader = self._writer
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite or postgresql")
        self.schema = schema
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False)
        # PostgreSQL reads outside a transaction (see read()); SQLite's reads are in-process.
        self._statement_sessions = (
            sessionmaker(self._reader.execution_options(isolation_level="AUTOCOMMIT"),
                         expire_on_commit=False)
            if self.dialect == "postgresql" else self._read_sessions
        )  # fmt: skip
        # Run after a write transaction that changed runtime state commits (this process's
        # snapshot refreshes at once; other processes learn from the change feed), given what
        # the transaction left under ``session.info["tether.runtime_changed"]``.
        self.after_change: list[Callable[[object], None]] = []
        # Set on every session's ``info`` (the wiring's hand-over to a domain's rule that may
        # answer from memory instead of a query: tether.freeze.gate).
        self.session_info: dict[str, Any] = {}
        self._background: ThreadPoolExecutor | None = None
        self._background_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._writer

    @contextmanager
    def write(self, *, then: str | None = None, sequenced: bool = True) -> Iterator[Session]:
        """A transaction holding the write lock; commits on success, rolls back on error.

        ``then``: a fixed, parameterless query the caller runs first under the lock. On
        PostgreSQL it goes with the lock's statement, in the same round trip (a second
        statement of one simple query: under READ COMMITTED it reads what committed while
        the lock was awaited), its first row left in ``session.info[(READ_WITH_LOCK,
        then)]``; the lock is held from the first round trip to the commit, so one fewer is
        one fewer for every writer waiting behind it. On SQLite the caller reads it itself.

        ``sequenced=False``: rows that need no place in the deployment's order (no ledger
        event, no change-feed record: monitoring's exchange rows) — on PostgreSQL without the
        deployment-wide lock, so they never hold up the ledger's writer; on SQLite, which has
        one writer, as any other write."""
        with self._write_sessions() as session, self._transaction(session, then, sequenced):
            yield session

    def pinned(self) -> PinnedWriter:
        """A writer that keeps its connection, for one thread that writes many times a second."""
        return PinnedWriter(self)

    @contextmanager
    def _transaction(
        self, session: Session, then: str | None, sequenced: bool, *, begin: bool = False
    ) -> Iterator[None]:
        """:meth:`write`'s transaction on ``session``. ``begin``: the connection is in the
        driver's autocommit mode (PostgreSQL, :class:`PinnedWriter`) and the transaction's
        ``BEGIN`` goes with the write lock's statement, in its round trip."""
        session.info.update(self.session_info)
        session.info["tether.schema"] = self.schema
        with self._queue or nullcontext(), session.begin():
            remember_driver(session)  # begins it (SQLite: BEGIN IMMEDIATE)
            if self.dialect == "postgresql" and sequenced:  # the driver's cursor: hottest
                if then is None and not begin:
                    fetch_one_with(session, _PG_LOCK, (PG_WRITE_LOCK,))
                else:
                    first = ["BEGIN", _PG_LOCK_LITERAL] if begin else [_PG_LOCK_LITERAL]
                    row = fetch_last(session, first + ([then] if then is not None else []))
                    if then is not None:
                        session.info[(READ_WITH_LOCK, then)] = row
            yield
            for flush in session.info.pop(BEFORE_COMMIT, ()):
                flush(session)
        # Outside the lock: this process's runtime reads what just committed.
        if changed := session.info.pop("tether.runtime_changed", False):
            for callback in self.after_change:
                callback(changed)
        # What may only happen once the transaction is durable (a signed checkpoint leaves
        # the database here: had it left before, a rollback would make it a false witness).
        for callback in session.info.pop(AFTER_COMMIT, ()):
            callback()
        for work in session.info.pop(IN_BACKGROUND, ()):
            self._in_background(work)

    def _in_background(self, work: Callable[[], object]) -> None:
        with self._background_lock:
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="tether-db-after")
            self._background.submit(self._run, work)

    @staticmethod
    def _run(work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # what hands work here has a maintenance task that finishes it
            log.warning("background work after a commit failed", exc_info=True)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the background work handed over so far has run."""
        with self._background_lock:
            pool = self._background
        if pool is not None:
            pool.submit(lambda: None).result(timeout)

    @contextmanager
    def read(self, *, transaction: bool = True) -> Iterator[Session]:
        """A read-only session; never blocks writers. ``transaction=False``: on PostgreSQL
        each statement on its own, outside a transaction — what each sees is the same as in
        a READ COMMITTED transaction (a fresh snapshot per statement), without the ``BEGIN``
        and ``COMMIT`` round trips (the runtime's sync after every change, a writer's looks at
        where the other workers are); no server-side cursors (``yield_per``) then."""
        sessions = self._read_sessions if transaction else self._statement_sessions
        with sessions() as session, session.begin():
            session.info.update(self.session_info)
            yield session

    @contextmanager
    def offline(self) -> Iterator[Session]:
        """A session with no database behind it, for code that must not wait on one (an event
        loop's thread): the first statement it would run raises
        :class:`sqlalchemy.exc.UnboundExecutionError` instead — the caller then does the same
        work where waiting is allowed. What answers from memory (``session_info``) answers."""
        with Session(info=dict(self.session_info)) as session:
            yield session

    def ping(self) -> bool:
        try:
            with self._reader.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        with self._background_lock:
            pool, self._background = self._background, None
        if pool is not None:
            pool.shutdown(wait=True)  # what was handed over runs before the engines go
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()
