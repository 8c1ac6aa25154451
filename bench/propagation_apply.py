"""Applying a change to a worker's runtime snapshot at 100k agents, beside the old full copy.

A worker of another process learns of a change from the change feed and applies it:
``Runtime.sync()`` reads the feed since its position, then each section reads what changed.
Two followers of one deployment (each a :class:`~tether.runtime.snapshot.Runtime` with an
agents section and no after-commit hook, so they sync only when told) apply the same changes:

- **in place** — today's ``AgentSection``: the changed agents read in one batch, their views
  set in the map it holds;
- **full copy** — the section as it was before (issue 12, item 2): the same read, then the
  whole map copied (``dict(views)``), updated and swapped in; above 2,000 changed agents a
  full reload.

Cases: one agent changed (suspended, then resumed: each change a sync), and a burst of 1,000
agents killed through ``AgentService.kill`` (1,000 transactions) applied by one sync. Each
figure is the whole ``sync()`` (feed read and apply) and the section's ``apply`` alone; the
two followers alternate which goes first. Also the decision path's read, ``views.get``, on
the map after every in-place update beside a fresh copy of it, and ``dict(views)`` alone.

Then the push: how long after a commit in this process another worker process (a Runtime on
the same database, its poll at 10 s) has applied the change — woken by its pipe (SQLite) or
NOTIFY (PostgreSQL) — beside the same process told nothing, polling every 0.25 s as every
worker but the committing one did before.

Setup is :func:`bench.registry.populate` (the registry benchmark's mix of statuses, roles and
supervisors). Run: ``python -m bench.propagation_apply [--quick] [--postgres URL]
[--agents N]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from bench.common import (
    POSTGRESQL,
    Env,
    Options,
    ResultTable,
    fmt_latency,
    fmt_ratio,
    note,
    open_env,
    parse_options,
    percentile,
    write_json,
)
from bench.registry import populate
from tether.agents import directory
from tether.agents.schemas import AgentCreate
from tether.policy.entities import AgentView
from tether.policy.runtime import AgentSection, view_of
from tether.runtime.changes import Kind
from tether.runtime.snapshot import Runtime

BURST = 1_000
_OLD_FULL_RELOAD_AT = 2_000


@dataclass(frozen=True)
class Sizes:
    agents: int
    runs: int  # single-agent changes (each one sync per follower)
    bursts: int  # bursts of BURST kills
    gets: int  # views.get calls timed per sample
    pushes: int  # changes timed from commit to another process's apply


FULL = Sizes(agents=100_000, runs=100, bursts=6, gets=100_000, pushes=60)
QUICK = Sizes(agents=10_000, runs=30, bursts=4, gets=10_000, pushes=20)


class _CopyingAgentSection(AgentSection):
    """The agents' section before issue 12 item 2: a copy of the whole map per sync."""

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        ids = changed[Kind.AGENT.value]
        if len(ids) > _OLD_FULL_RELOAD_AT:
            self.load(s, now_us)
            return
        merged = dict(self.views)
        merged.update((r.id, view_of(r)) for r in directory.records(s, ids))
        self.views = merged


@dataclass
class _Timed:
    """A section, with the time of each ``apply``."""

    inner: AgentSection
    applies: list[float] = field(default_factory=list)

    @property
    def kinds(self) -> frozenset[str]:
        return self.inner.kinds

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def load(self, s: Session, now_us: int) -> None:
        self.inner.load(s, now_us)

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        start = time.perf_counter()
        self.inner.apply(s, changed, now_us)
        self.applies.append(time.perf_counter() - start)

    def purge(self, now_us: int) -> None:
        self.inner.purge(now_us)


@dataclass
class _Follower:
    label: str
    runtime: Runtime
    section: _Timed
    syncs: list[float] = field(default_factory=list)

    def sync(self) -> None:
        applied = len(self.section.applies)
        start = time.perf_counter()
        self.runtime.sync()
        self.syncs.append(time.perf_counter() - start)
        if len(self.section.applies) != applied + 1:
            raise AssertionError(f"{self.label}: {len(self.section.applies) - applied} applies")


def _follower(env: Env, label: str, section: AgentSection) -> _Follower:
    runtime = Runtime(env.services.db, env.services.clock)
    timed = _Timed(section)
    runtime.register(timed)
    env.services.db.after_change.remove(runtime.changed)
    start = time.perf_counter()
    runtime.load()
    note(f"[propagation/{env.backend}] {label}: loaded in {time.perf_counter() - start:.1f} s")
    return _Follower(label, runtime, timed)


def _both(warm: Runtime, followers: Sequence[_Follower], turn: int) -> None:
    """Each follower syncs once, after ``warm`` (untimed) has read the same changes, so
    neither pays for reading them first; who goes first alternates."""
    warm.sync()
    for f in followers if turn % 2 == 0 else reversed(followers):
        f.sync()


def _get_costs(maps: Sequence[Mapping[str, AgentView]], ids: list[str]) -> list[float]:
    """Seconds per ``get`` (the decision path's read) on each map: the best of seven rounds,
    the maps taking turns within each round."""
    best = [float("inf")] * len(maps)
    for _ in range(7):
        for n, views in enumerate(maps):
            get = views.get
            start = time.perf_counter()
            for i in ids:
                get(i)
            best[n] = min(best[n], (time.perf_counter() - start) / len(ids))
    return best


def _copy_cost(views: dict[str, AgentView], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        dict(views)
        out.append(time.perf_counter() - start)
    return out


HEADERS = [
    "case",
    "changed",
    "in place p50",
    "in place p99",
    "full copy p50",
    "full copy p99",
    "copy ÷ in place (p50)",
    "in place per changed agent",
]


def measure(env: Env, sizes: Sizes) -> ResultTable:
    services, admin = env.services, env.admin
    new = _follower(env, "in place", AgentSection())
    old = _follower(env, "full copy", _CopyingAgentSection())
    pair = [new, old]
    warm = _follower(env, "warm-up", AgentSection()).runtime
    views = new.section.inner.views
    rng = random.Random(11)
    active = [v.id for v in views.values() if v.status == "active"]
    rng.shuffle(active)

    note(f"[propagation/{env.backend}] {sizes.runs} single-agent changes")
    one = active.pop()
    for turn in range(sizes.runs + 4):  # four warm-up changes, then the timed ones
        if turn == 4:
            for f in pair:
                f.syncs.clear()
                f.section.applies.clear()
        if turn % 2 == 0:
            services.agents.suspend(admin, one, reason="bench")
        else:
            services.agents.resume(admin, one)
        _both(warm, pair, turn)
    single = {f.label: (list(f.syncs), list(f.section.applies)) for f in pair}

    bursts: dict[str, tuple[list[float], list[float]]] = {f.label: ([], []) for f in pair}
    for b in range(sizes.bursts):
        note(f"[propagation/{env.backend}] burst {b + 1}/{sizes.bursts}: {BURST:,} kills")
        for f in pair:
            f.syncs.clear()
            f.section.applies.clear()
        for _ in range(BURST):
            services.agents.kill(admin, active.pop(), reason="bench burst", cascade=False)
        gc.collect()  # both start from the same collector state (the kills left garbage)
        _both(warm, pair, b)
        for f in pair:
            bursts[f.label][0].extend(f.syncs)
            bursts[f.label][1].extend(f.section.applies)
    assert new.section.inner.views is views  # never copied: every change applied in place

    # Ids as a request brings them: equal strings, not the map's own key objects.
    sample = ["".join(i) for i in rng.sample(list(views), min(sizes.gets, len(views)))]
    gc.collect()
    copied = old.section.inner.views
    get_in_place, get_copy = _get_costs([views, copied], sample)
    copies = _copy_cost(views, 20)

    table = ResultTable(
        f"Applying changes on {env.backend}, {len(views):,} agents — seconds per sync "
        "(lower is better)",
        HEADERS,
    )
    for label, changed, runs in [
        ("sync(): one agent changed", 1, single),
        (f"sync(): {BURST:,} kills, one pass", BURST, bursts),
    ]:
        mine, theirs = runs["in place"], runs["full copy"]
        _add(table, env.backend, label, changed, mine[0], theirs[0])
        _add(table, env.backend, "  of which apply", changed, mine[1], theirs[1])
    table.rows.append(
        ["dict(views) alone (the copy)", "-", "-", "-",
         fmt_latency(percentile(copies, 50)), fmt_latency(percentile(copies, 99)), "-", "-"]
    )  # fmt: skip
    table.rows.append(
        ["views.get (decision path read)", "-", _ns(get_in_place), "-", _ns(get_copy), "-",
         fmt_ratio(get_copy / get_in_place), "-"]
    )  # fmt: skip
    table.records.append(
        {"backend": env.backend, "case": "views.get", "in_place_s": get_in_place,
         "full_copy_s": get_copy, "copy_p50_s": percentile(copies, 50)}
    )  # fmt: skip
    table.footnotes += [
        f"in place = AgentSection today; full copy = the section before (dict(views) copied, "
        f"updated and swapped in per sync; a full reload above {_OLD_FULL_RELOAD_AT:,}). Both "
        "follow the same deployment and apply the same changes, alternating who goes first, "
        "each after a third follower (untimed) read them, so that neither pays for cold "
        "caches.",
        f"one agent: {sizes.runs} changes (suspend, resume, …) through AgentService, each "
        f"followed by one sync per follower; p50/p99 over them. Bursts: {sizes.bursts} x "
        f"{BURST:,} AgentService.kill calls (one transaction each), then one sync per "
        "follower, which applied each burst in one pass (one apply, one batch of reads).",
        "sync() = the read transaction, the change feed since the follower's position and "
        "the section's apply; apply = reading the changed agents (one query on PostgreSQL, "
        "two on SQLite, whatever their number), building their views and setting them.",
        "views.get = one lookup by id (an equal string, as a request brings it) on the map "
        "the in-place section holds after every update, and on the map the full-copy section "
        f"holds after the same changes; best of 7 rounds of {len(sample):,} random ids, the "
        "two maps taking turns.",
    ]
    return table


def _ns(seconds: float) -> str:
    return f"{seconds * 1e9:.0f} ns"


def _add(
    table: ResultTable,
    backend: str,
    label: str,
    changed: int,
    mine: list[float],
    theirs: list[float],
) -> None:
    m50, m99 = percentile(mine, 50), percentile(mine, 99)
    t50, t99 = percentile(theirs, 50), percentile(theirs, 99)
    table.rows.append([
        label, f"{changed:,}", fmt_latency(m50), fmt_latency(m99), fmt_latency(t50),
        fmt_latency(t99), fmt_ratio(t50 / m50), fmt_latency(m50 / changed),
    ])  # fmt: skip
    table.records.append({
        "backend": backend, "case": label, "changed": changed, "in_place_p50_s": m50,
        "in_place_p99_s": m99, "full_copy_p50_s": t50, "full_copy_p99_s": t99,
        "samples": len(mine),
    })  # fmt: skip


# -- push: commit here, applied in another process -----------------------------------------------
# Another worker process: a Runtime on the same database that prints when its agents'
# section applied a change. "push": as deployed, its poll at 10 s; "poll": told nothing (no
# wake-up pipe, no LISTEN), its poll at the default 0.25 s — the propagation before pushes.
_OTHER_PROCESS = """
import sys, time
from pathlib import Path
from tether.config import Settings
from tether.container import build_services
from tether.policy.runtime import AgentSection
data, url, schema, mode = sys.argv[1:5]
settings = Settings(data_dir=Path(data), database_url=url, database_schema=schema or None,
                    runtime_poll_seconds=10 if mode == "push" else 0.25,
                    runtime_stale_seconds=600)
services = build_services(settings)
runtime = services.runtime
if mode == "poll":
    runtime.wakeups = None
    runtime._listen = lambda: None
section = next(s for s in runtime.sections if isinstance(s, AgentSection))
real = section.apply
def apply(*args):
    real(*args)
    print(time.monotonic(), flush=True)
section.apply = apply
runtime.load()
runtime.start()
print("ready", flush=True)
sys.stdin.read()
"""


def _other_process_lag(env: Env, mode: str, runs: int) -> list[float]:
    """Seconds from this process's commit (its after-commit hook) to the other process's
    apply of the change, for ``runs`` suspensions and resumptions of one agent."""
    services = env.services
    one = services.agents.create(env.admin, AgentCreate.model_validate(
        {"name": f"push-{mode}", "owner": "admin", "purpose": "push", "risk_tier": "minimal"}
    )).id  # fmt: skip
    args = [str(services.settings.data_dir), env.url, env.schema or "", mode]
    child = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, *args], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    committed: list[float] = []
    hook = services.runtime.changed

    def stamped(written: object) -> None:
        committed.append(time.monotonic())  # monotonic is one clock for every process
        hook(written)

    lags: list[float] = []
    pause = random.Random(5)
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the other process did not start")
        services.db.after_change[services.db.after_change.index(hook)] = stamped
        for n in range(runs):
            if n % 2 == 0:
                services.agents.suspend(env.admin, one, reason="push bench")
            else:
                services.agents.resume(env.admin, one)
            if not select.select([child.stdout], [], [], 30)[0]:
                raise RuntimeError("the other process never applied the change")
            lags.append(float(child.stdout.readline()) - committed[-1])
            time.sleep(pause.uniform(0.01, 0.26))  # not in step with the other's poll
    finally:
        if stamped in services.db.after_change:
            services.db.after_change[services.db.after_change.index(stamped)] = hook
        child.stdin.close()
        child.wait(timeout=30)
    return lags


def measure_push(env: Env, runs: int) -> ResultTable:
    note(f"[propagation/{env.backend}] commit -> applied in another process, {runs} changes")
    pushed = _other_process_lag(env, "push", runs)
    polled = _other_process_lag(env, "poll", runs)
    how = "NOTIFY" if env.backend == POSTGRESQL else "its wake-up pipe"
    table = ResultTable(
        f"Propagation on {env.backend}: a commit, applied by another worker process "
        "(lower is better)",
        ["other process learns by", "p50", "p90", "max"],
    )
    for label, lags in [(f"push ({how}; its poll at 10 s)", pushed),
                        ("poll only, every 0.25 s (before)", polled)]:  # fmt: skip
        table.rows.append([label, *(fmt_latency(percentile(lags, q)) for q in (50, 90, 100))])
        table.records.append({"backend": env.backend, "case": label,
                              "p50_s": percentile(lags, 50), "p90_s": percentile(lags, 90),
                              "max_s": max(lags)})  # fmt: skip
    table.footnotes.append(
        f"{runs} suspensions and resumptions of one agent through AgentService in this "
        "process, 10-260 ms apart (at random); from its after-commit hook to the other "
        "process's apply of the agent (CLOCK_MONOTONIC, one clock for both processes)."
    )
    return table


def run(env: Env, sizes: Sizes) -> list[ResultTable]:
    note(f"[propagation/{env.backend}] populating {sizes.agents:,} agents")
    start = time.perf_counter()
    populate(env, sizes.agents)
    note(f"[propagation/{env.backend}] populated in {time.perf_counter() - start:.1f} s")
    return [measure(env, sizes), measure_push(env, sizes.pushes)]


def sizes_for(options: Options) -> Sizes:
    sizes = QUICK if options.quick else FULL
    agents: int | None = getattr(options.extra, "agents", None)
    if agents:
        sizes = Sizes(agents, sizes.runs, sizes.bursts, sizes.gets, sizes.pushes)
    return sizes


def run_all(options: Options) -> list[ResultTable]:
    tables = []
    for backend in options.backends:
        with open_env(options, backend, "propagation") as env:
            found = run(env, sizes_for(options))
        for table in found:
            table.print()
        tables += found
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, help="registry size (default 100000)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.propagation_apply",
        "Applying runtime changes: in place beside the full copy",
        argv,
        add_arguments=add_arguments,
    )
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
