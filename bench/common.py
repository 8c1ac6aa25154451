"""Shared plumbing: command-line options, backends, services, raw drivers, timing and tables.

Services are built the way the tests build them: ``Settings(data_dir=…, database_url=…,
database_schema=…)``, :func:`tether.container.build_services`, :func:`tether.bootstrap.prepare`.
PostgreSQL runs get a fresh schema that is dropped afterwards, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Table, create_engine, text
from sqlalchemy.engine import make_url

from tether.bootstrap import prepare
from tether.config import Settings
from tether.container import Services, build_services
from tether.db import Base
from tether.principals import Principal

PG_ENV = "TETHER_BENCH_POSTGRES_URL"
SQLITE = "sqlite"
POSTGRESQL = "postgresql"


# -- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    quick: bool
    sqlite: bool
    postgres_url: str | None
    workdir: Path | None
    json_path: Path | None
    extra: argparse.Namespace

    @property
    def backends(self) -> list[str]:
        out = [SQLITE] if self.sqlite else []
        if self.postgres_url:
            out.append(POSTGRESQL)
        return out


def parse_options(
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Options:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get(PG_ENV) or None,
        help=f"also run on PostgreSQL at this SQLAlchemy URL (default: ${PG_ENV})",
    )
    parser.add_argument(
        "--no-sqlite", dest="sqlite", action="store_false", help="skip the SQLite run"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where SQLite files and keys go (default: a temporary directory; it must be on "
        "a real disk, not tmpfs, for durable figures to mean anything)",
    )
    parser.add_argument("--json", dest="json_path", type=Path, help="also write results here")
    if add_arguments is not None:
        add_arguments(parser)
    ns = parser.parse_args(argv)
    if not ns.sqlite and not ns.postgres:
        parser.error("nothing to run: --no-sqlite needs --postgres URL")
    return Options(
        quick=ns.quick,
        sqlite=ns.sqlite,
        postgres_url=ns.postgres,
        workdir=ns.workdir,
        json_path=ns.json_path,
        extra=ns,
    )


# -- environments ------------------------------------------------------------------------------
@dataclass
class Env:
    """One freshly bootstrapped Tether deployment on one backend."""

    backend: str
    services: Services
    admin: Principal
    data_dir: Path
    url: str
    schema: str | None

    @property
    def sqlite_path(self) -> Path:
        database = make_url(self.url).database
        assert database is not None
        return Path(database)


def _pg_admin_execute(url: str, sql: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@contextmanager
def pg_schema(url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL schema, dropped (with everything in it) on exit."""
    schema = f"{prefix}_{secrets.token_hex(5)}"
    _pg_admin_execute(url, f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        _pg_admin_execute(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux ``/proc/mounts``), if known."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


@contextmanager
def workspace(options: Options, label: str) -> Iterator[Path]:
    parent = options.workdir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"tether-bench-{label}-", dir=parent))
    if filesystem_type(path) in {"tmpfs", "ramfs"}:
        note(
            f"WARNING: {path} is on {filesystem_type(path)}: fsync costs nothing there, so "
            "SQLite 'durable' figures are not durable. Use --workdir on a real disk."
        )
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def open_env(options: Options, backend: str, label: str) -> Iterator[Env]:
    """Bootstrap a deployment in a fresh SQLite file or a fresh PostgreSQL schema."""
    with workspace(options, label) as tmp, database(options, backend, tmp) as (url, schema):
        settings = Settings(data_dir=tmp / "data", database_url=url, database_schema=schema)
        services = build_services(settings)
        try:
            prepare(services)
            token = settings.admin_token_path.read_text().strip()
            admin = services.users.authenticate(token)
            yield Env(backend, services, admin, tmp, url, schema)
        finally:
            services.close()


@contextmanager
def database(options: Options, backend: str, tmp: Path) -> Iterator[tuple[str, str | None]]:
    if backend == SQLITE:
        yield f"sqlite:///{tmp / 'tether.db'}", None
        return
    assert options.postgres_url is not None
    with pg_schema(options.postgres_url, "bench") as schema:
        yield options.postgres_url, schema


# -- raw drivers (the baselines) ---------------------------------------------------------------
def raw_sqlite(path: Path) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection configured like Tether's: WAL, synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def libpq_conninfo(url: str) -> str:
    """The libpq form of a ``postgresql+psycopg://`` SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def raw_postgres(url: str, schema: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A plain ``psycopg`` connection (default ``synchronous_commit=on``: durable commits)."""
    return psycopg.connect(
        libpq_conninfo(url), options=f"-csearch_path={schema}", autocommit=autocommit
    )


def create_tables(url: str, schema: str | None, tables: Sequence[Table]) -> None:
    """Create copies of Tether tables (same columns, keys and indexes) for a raw baseline."""
    connect_args: dict[str, Any] = {"options": f"-csearch_path={schema}"} if schema else {}
    engine = create_engine(url, connect_args=connect_args)
    try:
        Base.metadata.create_all(engine, tables=list(tables))
    finally:
        engine.dispose()


# -- timing ------------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def sample_pair(
    first: Callable[[], object], second: Callable[[], object], *, runs: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Latencies of ``runs`` calls of each, alternating, so both see the same noise."""
    for _ in range(warmup):
        first()
        second()
    out: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, samples in zip((first, second), out, strict=True):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return out


def fmt_latency(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_second: float, unit: str = "/s") -> str:
    if math.isnan(per_second):
        return "-"
    return f"{per_second:,.0f}{unit}"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


class Progress:
    """Progress for long setup on stderr: in place on a terminal, a line every ~2 s otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.start = time.perf_counter()
        self._last = self.start
        self._tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self._last < (0.25 if self._tty else 2.0) and done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (
            f"  {self.label}: {done:,}/{self.total:,} ({done / max(self.total, 1):.0%}, "
            f"{rate:,.0f}/s)"
        )
        if self._tty:
            sys.stderr.write(f"\r{line}\033[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        msg = f"  {self.label}: {self.total:,} done in {elapsed:.1f} s"
        sys.stderr.write(f"\r{msg}\033[K\n" if self._tty else msg + "\n")
        sys.stderr.flush()


def note(message: str) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


# -- results -----------------------------------------------------------------------------------
@dataclass
class ResultTable:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # machine-readable twin

    def render(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            # The first column is a label (left); figures line up on the right.
            out = [cells[0].ljust(widths[0])]
            out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "| " + " | ".join(out) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        parts = [f"\n### {self.title}\n", line(self.headers), rule]
        parts += [line(r) for r in self.rows]
        if self.footnotes:
            parts.append("")
            parts += [f"- {n}" for n in self.footnotes]
        return "\n".join(parts)

    def print(self) -> None:
        sys.stdout.write(self.render() + "\n")
        sys.stdout.flush()


def machine_line(options: Options | None = None) -> str:
    """Date, versions and hardware, for the record beside the figures."""
    parts = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
        f"{os.cpu_count()} CPUs ({platform.machine()})",
        python_speed(),
    ]
    if options is not None:
        where = options.workdir or Path(tempfile.gettempdir())
        parts.append(f"workdir on {filesystem_type(where) or 'unknown fs'}")
        if options.postgres_url:
            parts.append(postgres_version(options.postgres_url))
    return " · ".join(parts)


def postgres_version(url: str) -> str:
    try:
        with psycopg.connect(libpq_conninfo(url)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return "PostgreSQL (version unknown)"
    return f"PostgreSQL {row[0] if row else '?'}"


def write_json(path: Path, tables: Sequence[ResultTable], options: Options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine_line(options),
        "tables": [{"title": t.title, "records": t.records} for t in tables],
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def python_speed(steps: int = 1_000_000) -> str:
    """This machine's speed at plain Python, for the record beside the figures: the best of
    three runs of a loop of ``steps`` integer additions. The machines these benches run on
    differ several-fold from day to day (bench/README.md), and most figures scale with it;
    ratios to a baseline of the same run (``/healthz``, pycasbin, the driver) mostly do not."""
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(steps):
            total += i
        best = min(best, time.perf_counter() - start)
    return f"Python speed: {steps / 1e6:g}M loop steps in {best * 1e3:.0f} ms (best of 3)"


def run_each_backend(
    options: Options, run: Callable[[str], ResultTable | Sequence[ResultTable]]
) -> None:
    """``run`` on each backend asked for, its tables printed as they come, between the load
    average before and after (with the date); all of them as JSON when ``--json`` asks."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    note(f"started {started}, load average {os.getloadavg()[0]:.2f}, {python_speed()}")
    tables: list[ResultTable] = []
    for backend in options.backends:
        made = run(backend)
        for table in [made] if isinstance(made, ResultTable) else made:
            table.print()
            tables.append(table)
    note(f"ended, load average {os.getloadavg()[0]:.2f}")
    if options.json_path:
        write_json(options.json_path, tables, options)
