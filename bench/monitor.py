"""Monitoring's cost per decision (issue 19): the same decisions with monitoring on (Tether's
defaults, ``MonitorConfig()``) and off (``MonitorConfig(enabled=False)``), same run.

Per backend, one deployment populated with the decision benchmark's world
(:func:`bench.decisions.populate`: 10,000 agents, the workload's 120 policies + Tether's 2).

**In process** (one table): two ``DecisionService`` objects on the deployment's one runtime,
committer and clock — the container's (the monitor given, as with the default
``MonitorConfig()``) and one built as the container builds it for ``enabled=False`` (no
monitor) — called on the same requests in alternating blocks (the order flips each block):

- ``_watched([ask])``, the evaluation path every recorded decision takes (``decide``,
  ``decide_many``, ``decide_then``) without the ledger write: the runtime checks, with
  monitoring ``Monitor.before`` (the request counted in its agent's window, the session's
  context, the principal's risk), Cedar, ``Monitor.after`` (the risk scored); without, plain
  ``evaluate``. The outcome memo off (Cedar decides every call), then on with requests seen
  before (the context carries the session's touches, so the memo keys differ);
- ``evaluate(ask)``, the unrecorded path (it only reads the session and the principal's risk);
- ``decide(ask)``: the same plus the durable group-commit ledger event, N concurrent asyncio
  tasks, alternating time blocks; while monitoring is on, a thread runs ``Monitor.sync``
  every ``sync_seconds`` as a server's worker does (publishing this worker's counts).

**Over HTTP** (one table): two ``tether serve --workers 2`` on the same data, side by side
for the whole phase — one with ``TETHER_MONITOR`` unset (on), one with ``{"enabled": false}``
(off) — loaded in turn, in short blocks, the order flipping each round (so that the machine's
slow and fast minutes fall on both alike; the idle one's background work runs in both
modes' blocks), each block ``GET /healthz`` then ``POST /access/v1/evaluation`` at the load
generator's maximum (``wrk`` when installed), after one warm-up per server,
the bootstrap admin's token, the decision bench's AuthZEN bodies (spread over many agents, so
that few agents' windows trip a default rule — the table counts the ``agent.risk_raised``
events — where a handful of agents each asking hundreds of times a second is what
``rate-flood`` is for). ``TETHER_DECISION_MEMO_SIZE=0`` on both, as in ``bench.decisions``:
the bodies repeat. What the in-process rows left in the database (behaviour counts, risk
rows) is deleted before the servers start.

Run: ``python -m bench.monitor [--quick] [--postgres URL] [--no-sqlite] [--agents N]
[--blocks B] [--calls N] [--rounds R] [--workers 2] [--connections 64] [--duration S]
[--loadgen auto|wrk|python] [--no-http] [--http-only] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from bench import decisions as dbench
from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    machine_line,
    note,
    parse_options,
    percentile,
    run_each_backend,
)
from bench.decision_workload import make_requests
from bench.loadgen import HttpRequest, LoadGen, LoadResult, process_children
from bench.tokens import Deployment, free_port, open_deployment, tether_server
from tether.audit.events import EventType
from tether.audit.models import EventRow
from tether.collector import settled
from tether.monitor.models import AgentRiskRow, MonitorSyncRow, MonitorTouchRow
from tether.monitor.rules import MonitorConfig, ThresholdConfig
from tether.policy.decide import DecisionService
from tether.policy.values import Ask, Decision

OFF_ENV = {"TETHER_MONITOR": MonitorConfig(enabled=False).model_dump_json(include={"enabled"})}
# On: the default rules, evaluated on every decision, with thresholds out of reach — the bench's
# random workload (about half its requests denied, each agent asked many times a minute) is
# what deny-burst rightly flags, and a run whose agents get stepped up or suspended measures
# approvals and suspensions, not watching. --respond keeps the shipped thresholds.
WATCH_ONLY = MonitorConfig(thresholds=[ThresholdConfig(score=1_000_000, level="x", action="alert")])
ON_ENV = {"TETHER_MONITOR": WATCH_ONLY.model_dump_json(include={"thresholds"})}
MEMO_OFF = {"TETHER_DECISION_MEMO_SIZE": "0"}
TARGET_ADDED_US = 10.0  # in process, per decision on the evaluation path
TARGET_FEWER = 0.05  # over HTTP, decisions/s


@dataclass(frozen=True)
class Sizes:
    agents: int
    requests: int  # distinct in-process requests, cycled
    blocks: int  # alternating in-process blocks
    calls: int  # timed calls per block and mode
    decide_blocks: int
    decide_seconds: float  # per decide block and mode
    decide_tasks: int
    http_requests: int  # distinct AuthZEN bodies, cycled
    rounds: int  # HTTP rounds (one block per server each)
    http_seconds: float  # per /healthz and per evaluation run
    http_warmup: float
    connections: int
    workers: int


FULL = Sizes(agents=10_000, requests=20_000, blocks=40, calls=1_500, decide_blocks=4,
             decide_seconds=3.0, decide_tasks=64, http_requests=20_000, rounds=8,
             http_seconds=5.0, http_warmup=3.0, connections=64, workers=2)  # fmt: skip
QUICK = Sizes(agents=2_000, requests=4_000, blocks=8, calls=1_000, decide_blocks=2,
              decide_seconds=1.0, decide_tasks=64, http_requests=2_000, rounds=2,
              http_seconds=3.0, http_warmup=1.5, connections=64, workers=2)  # fmt: skip


def sizes_for(options: Options) -> Sizes:
    s = QUICK if options.quick else FULL
    ns = options.extra
    over = {"agents": ns.agents, "blocks": ns.blocks, "calls": ns.calls, "rounds": ns.rounds,
            "workers": ns.workers, "connections": ns.connections,
            "http_seconds": ns.duration}  # fmt: skip
    return replace(s, **{k: v for k, v in over.items() if v})


def world_sizes(sizes: Sizes) -> dbench.Sizes:
    """What :func:`bench.decisions.populate` reads (agents, policies)."""
    return replace(dbench.FULL, agents=sizes.agents)


# -- in process --------------------------------------------------------------------------------
@dataclass
class Paired:
    """Per-call latencies (µs) of the same calls with monitoring off and on, alternating;
    each call tagged with whether its agent's window had a risk score then (before it)."""

    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)
    off_risky: list[bool] = field(default_factory=list)
    on_risky: list[bool] = field(default_factory=list)
    block_added: list[float] = field(default_factory=list)  # per block: p50 on - p50 off

    def figures(self) -> dict[str, Any]:
        calm_off = [x for x, r in zip(self.off, self.off_risky, strict=True) if not r]
        calm_on = [x for x, r in zip(self.on, self.on_risky, strict=True) if not r]
        return {
            "n_each": len(self.on),
            "off_p50_us": percentile(self.off, 50), "on_p50_us": percentile(self.on, 50),
            "off_p99_us": percentile(self.off, 99), "on_p99_us": percentile(self.on, 99),
            "off_mean_us": statistics.fmean(self.off), "on_mean_us": statistics.fmean(self.on),
            "added_p50_us": percentile(self.on, 50) - percentile(self.off, 50),
            "added_p99_us": percentile(self.on, 99) - percentile(self.off, 99),
            "added_mean_us": statistics.fmean(self.on) - statistics.fmean(self.off),
            "block_added_p50_us": self.block_added,
            "risky_share": sum(self.on_risky) / len(self.on_risky) if self.on_risky else 0.0,
            "calm_n": len(calm_on),
            "calm_off_p50_us": percentile(calm_off, 50), "calm_on_p50_us": percentile(calm_on, 50),
            "calm_off_p99_us": percentile(calm_off, 99), "calm_on_p99_us": percentile(calm_on, 99),
            "calm_added_p50_us": percentile(calm_on, 50) - percentile(calm_off, 50),
            "calm_added_mean_us": (statistics.fmean(calm_on) - statistics.fmean(calm_off))
            if calm_on and calm_off else math.nan,
        }  # fmt: skip


def alternate(
    off: Callable[[Ask], object], on: Callable[[Ask], object], asks: Sequence[Ask], *,
    blocks: int, calls: int, risky: Callable[[Ask], bool],
) -> Paired:  # fmt: skip
    """``calls`` calls of each per block on the same requests (block b: asks from b x calls,
    cycling), the order flipping each block, every call timed alone (perf_counter_ns); one
    untimed pass of each over every request first (slices compiled, windows and sessions
    made). ``risky(ask)``, asked before each call (untimed), tags it."""
    out = Paired()
    for fn in (off, on):
        for ask in asks:
            fn(ask)
    clock = time.perf_counter_ns
    n = len(asks)
    for b in range(blocks):
        both = [(off, out.off, out.off_risky), (on, out.on, out.on_risky)]
        p50s = {}
        for fn, samples, tags in both if b % 2 == 0 else both[::-1]:
            block: list[float] = []
            for i in range(b * calls, (b + 1) * calls):
                ask = asks[i % n]
                tags.append(risky(ask))
                t0 = clock()
                fn(ask)
                block.append((clock() - t0) / 1000)
            samples.extend(block)
            p50s[fn] = percentile(block, 50)
        out.block_added.append(p50s[on] - p50s[off])
    return out


class Syncer:
    """``Monitor.sync`` every ``interval`` in a thread, as a server's worker runs it, while
    ``active`` is set (monitoring off: a worker does not sync)."""

    def __init__(self, sync: Callable[[], None], interval: float) -> None:
        self.sync = sync
        self.interval = interval
        self.active = threading.Event()
        self.stop = threading.Event()
        self.times: list[float] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="bench-monitor-sync", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if not self.active.is_set():
                continue
            t0 = time.perf_counter()
            try:
                self.sync()
            except Exception as exc:  # reported, not fatal
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.times.append(time.perf_counter() - t0)

    def __enter__(self) -> Syncer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class DecideRun:
    latencies: list[float] = field(default_factory=list)  # seconds
    wall: float = 0.0
    cpu: float = 0.0
    effects: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "n": n, "wall_s": self.wall, "per_second": n / self.wall if self.wall else math.nan,
            "p50_us": percentile(self.latencies, 50) * 1e6,
            "p99_us": percentile(self.latencies, 99) * 1e6,
            "mean_us": statistics.fmean(self.latencies) * 1e6 if n else math.nan,
            "cpu_per_call_us": self.cpu / n * 1e6 if n else math.nan,
            "effects": dict(self.effects), "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else "",
        }  # fmt: skip


def decide_block(
    svc: DecisionService, asks: Sequence[Ask], *, tasks: int, seconds: float, offset: int,
    into: DecideRun | None,
) -> None:  # fmt: skip
    """``svc.decide`` from ``tasks`` asyncio tasks for ``seconds`` (as bench.decisions'
    run_decide); recorded into ``into`` (None: a warm-up)."""

    async def load() -> None:
        deadline = time.perf_counter() + seconds

        async def task(k: int) -> None:
            i = offset + k
            while time.perf_counter() < deadline:
                ask = asks[i % len(asks)]
                i += tasks
                t0 = time.perf_counter()
                try:
                    d: Decision = await svc.decide(ask)
                except Exception as exc:  # reported, not counted
                    if into is not None:
                        into.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if into is not None:
                    into.latencies.append(time.perf_counter() - t0)
                    into.effects[d.effect.value] += 1

        await asyncio.gather(*(task(k) for k in range(tasks)))

    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(load())
    if into is not None:
        into.wall += time.perf_counter() - t0
        into.cpu += time.process_time() - cpu0


def _activate(syncer: Syncer, mode: str) -> None:
    if mode == "on":
        syncer.active.set()
    else:
        syncer.active.clear()


def forget_behaviour(dep: Deployment) -> int:
    """Drop what the in-process phase left for the servers to merge — its workers' counts,
    pairs and touches, the agents' risk rows (with their step-ups) — so that the HTTP phase
    starts from windows of its own; the number of risk rows dropped."""
    with dep.services.db.write() as s:
        for model in (MonitorSyncRow, MonitorTouchRow):
            s.execute(delete(model))
        return s.execute(delete(AgentRiskRow)).rowcount or 0  # type: ignore[attr-defined]


def events_of(dep: Deployment, kind: EventType) -> int:
    with dep.services.db.read() as s:
        q = select(func.count()).select_from(EventRow).where(EventRow.type == kind)
        return s.scalar(q) or 0


def run_inprocess(dep: Deployment, world: dbench.World, sizes: Sizes) -> ResultTable:
    tag = f"[monitor/{dep.backend}]"
    svc = dep.services
    on = svc.decisions
    if on.monitor is None or not svc.settings.monitor.enabled:
        raise RuntimeError("the deployment's DecisionService has no monitor: TETHER_MONITOR set?")
    # As tether.container wires it for MonitorConfig(enabled=False): no monitor.
    off = DecisionService(on.runtime, on.committer, on.clock, on.approvals, None)
    load0 = os.getloadavg()[0]
    reqs = make_requests(sizes.requests, sizes.agents, seed=1,
                         policies=world_sizes(sizes).policies, world_seed=dbench.SEED)  # fmt: skip
    asks = [dbench.to_ask(world, r) for r in reqs]
    compiled = dbench._compiled(svc)
    capacity = compiled.memo_capacity
    responses = Counter[str]()

    def watched_on(ask: Ask) -> object:
        got = on._watched([ask])
        if got[0][1] is not None:
            responses[got[0][1].risk.action or "none"] += 1
        return got

    windows = svc.monitor.windows

    def risky(ask: Ask) -> bool:
        w = windows.get(ask.subject)
        return w is not None and w.risk.score > 0

    results: dict[str, Paired] = {}
    note(f"{tag} _watched([ask]), memo off: {sizes.blocks} alternating blocks of "
         f"{sizes.calls:,} calls per mode ({len(asks):,} requests)")  # fmt: skip
    compiled.set_memo_capacity(0)
    try:
        results["watched"] = alternate(lambda a: off._watched([a]), watched_on, asks,
                                       blocks=sizes.blocks, calls=sizes.calls,
                                       risky=risky)  # fmt: skip
        note(f"{tag} evaluate(ask), memo off")
        results["evaluate"] = alternate(off.evaluate, on.evaluate, asks, blocks=sizes.blocks,
                                        calls=sizes.calls, risky=risky)  # fmt: skip
    finally:
        compiled.set_memo_capacity(capacity)
    note(f"{tag} _watched([ask]), memo on, requests seen before")
    results["memo"] = alternate(lambda a: off._watched([a]), watched_on, asks,
                                blocks=sizes.blocks, calls=sizes.calls, risky=risky)  # fmt: skip
    same = sum(on._watched([a])[0][0].effect is off._watched([a])[0][0].effect for a in asks)

    policies = world_sizes(sizes).policies
    d_reqs = make_requests(sizes.requests, sizes.agents, seed=4, policies=policies,
                           world_seed=dbench.SEED)  # fmt: skip
    d_asks = [dbench.to_ask(world, r) for r in d_reqs]
    note(f"{tag} decide + durable ledger, {sizes.decide_tasks} tasks: {sizes.decide_blocks} "
         f"alternating blocks of {sizes.decide_seconds:g} s per mode")  # fmt: skip
    runs = {"off": DecideRun(), "on": DecideRun()}
    t0 = time.perf_counter()
    svc.monitor.sync()  # what the timed _watched calls left to publish, before timing decide
    first_sync = time.perf_counter() - t0
    risk0 = events_of(dep, EventType.AGENT_RISK_RAISED)
    compiled.set_memo_capacity(0)  # the asks cycle: every decision by Cedar, as run_decide
    try:
        with Syncer(svc.monitor.sync, svc.settings.monitor.sync_seconds) as syncer:
            for mode, service in (("off", off), ("on", on)):  # warm-up
                _activate(syncer, mode)
                decide_block(service, d_asks, tasks=sizes.decide_tasks,
                             seconds=min(1.0, sizes.decide_seconds), offset=0,
                             into=None)  # fmt: skip
            for b in range(sizes.decide_blocks):
                order = (("off", off), ("on", on))
                for mode, service in order if b % 2 == 0 else order[::-1]:
                    _activate(syncer, mode)
                    decide_block(service, d_asks, tasks=sizes.decide_tasks,
                                 seconds=sizes.decide_seconds, offset=b * 7919,
                                 into=runs[mode])  # fmt: skip
            syncer.active.clear()
    finally:
        compiled.set_memo_capacity(capacity)
    risk = events_of(dep, EventType.AGENT_RISK_RAISED) - risk0
    return inprocess_table(dep, sizes, results, runs, syncer, {
        "load_before": load0, "load_after": os.getloadavg()[0], "same_effect": same,
        "asks": len(asks), "responses_watched": dict(responses), "risk_raised_decide": risk,
        "first_sync_s": first_sync,
        "windows": len(windows), "sessions": len(svc.monitor.sessions),
        "levels": dict(Counter(w.risk.level for w in windows.values())),
    })  # fmt: skip


def _us(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.1f} µs" if abs(x) < 1000 else fmt_latency(x / 1e6)


def _signed(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + fmt_latency(abs(seconds))


def _signed_us(x: float) -> str:
    return ("+" if x >= 0 else "-") + _us(abs(x))


def inprocess_table(
    dep: Deployment, sizes: Sizes, results: dict[str, Paired], runs: dict[str, DecideRun],
    syncer: Syncer, notes: dict[str, Any],
) -> ResultTable:  # fmt: skip
    table = ResultTable(
        f"Monitoring's cost per decision in process on {dep.backend}, {sizes.agents:,} agents, "
        "120 + 2 policies — monitoring off vs on (defaults), same calls, alternating blocks",
        ["path", "calls each", "off p50", "on p50", "added p50", "off p99", "on p99",
         "added mean", "added p50 per block"],
    )  # fmt: skip
    labels = {
        "watched": "_watched([ask]): the recorded decisions' evaluation, memo off",
        "memo": "  same, memo on, requests seen before",
        "evaluate": "evaluate(ask): unrecorded (reads session and risk only), memo off",
    }
    for key, label in labels.items():
        f = results[key].figures()
        table.rows.append([
            label, f"{f['n_each']:,}", _us(f["off_p50_us"]), _us(f["on_p50_us"]),
            _signed_us(f["added_p50_us"]), _us(f["off_p99_us"]), _us(f["on_p99_us"]),
            _signed_us(f["added_mean_us"]),
            f"{_signed_us(min(f['block_added_p50_us']))} to "
            f"{_signed_us(max(f['block_added_p50_us']))}",
        ])  # fmt: skip
        if key == "watched":
            table.rows.append([
                "  same, calls whose agent had no risk score (the common case)",
                f"{f['calm_n']:,}", _us(f["calm_off_p50_us"]), _us(f["calm_on_p50_us"]),
                _signed_us(f["calm_added_p50_us"]), _us(f["calm_off_p99_us"]),
                _us(f["calm_on_p99_us"]), _signed_us(f["calm_added_mean_us"]), "-",
            ])  # fmt: skip
        table.records.append({"benchmark": f"monitor in process: {key}",
                              "backend": dep.backend, **f})  # fmt: skip
    d_off, d_on = runs["off"].figures(), runs["on"].figures()
    table.rows.append([
        f"decide(ask) + durable ledger, {sizes.decide_tasks} tasks", f"{d_on['n']:,}",
        _us(d_off["p50_us"]), _us(d_on["p50_us"]), _signed_us(d_on["p50_us"] - d_off["p50_us"]),
        _us(d_off["p99_us"]), _us(d_on["p99_us"]), _signed_us(d_on["mean_us"] - d_off["mean_us"]),
        "-",
    ])  # fmt: skip
    table.records.append({"benchmark": "monitor in process: decide", "backend": dep.backend,
                          "off": d_off, "on": d_on, "sync_s": syncer.times,
                          **notes})  # fmt: skip
    watched = results["watched"].figures()
    added = watched["added_p50_us"]
    met = "met" if added <= TARGET_ADDED_US else "NOT met"
    sync = syncer.times
    first = d_off["first_error"] or d_on["first_error"]
    first = f" (first: {first[:150]})" if first else ""
    sync_errors = (f"; sync errors {len(syncer.errors)}: {syncer.errors[0][:150]}"
                   if syncer.errors else "")  # fmt: skip
    table.footnotes += [
        f"target: ≤ {TARGET_ADDED_US:g} µs added per decision by monitoring on the evaluation "
        f"path (_watched, p50): {met} ({_signed_us(added)}; "
        f"{_signed_us(watched['calm_added_p50_us'])} where the agent had no risk score).",
        "off = a DecisionService without a monitor (as tether.container builds it for "
        "MonitorConfig(enabled=False)); on = the deployment's own, with the default "
        "rules (window 60 s in 10 s buckets, 8 rules; thresholds out of reach unless "
        "--respond, so that no agent of the random workload is stepped up mid-run). Both on the "
        "same runtime snapshot, committer and clock; each block runs the same requests through "
        "both, the order flipping each block, after one untimed pass of each over every "
        f"request. {notes['asks']:,} requests of the decision workload (bench.decisions' "
        "in-process mix, ~20 % delegated), cycled; each call timed alone (perf_counter_ns). "
        "'added p50 per block' = the range of the per-block differences of p50s.",
        f"decide: {sizes.decide_blocks} alternating blocks of {sizes.decide_seconds:g} s per "
        "mode after a warm-up of each, the outcome memo off; decisions/s off "
        f"{fmt_rate(d_off['per_second'])}, on {fmt_rate(d_on['per_second'])}; CPU per "
        f"decision (this process) off {_us(d_off['cpu_per_call_us'])}, on "
        f"{_us(d_on['cpu_per_call_us'])}; effects off {d_off['effects']}, on {d_on['effects']}; "
        f"errors {d_off['errors']} / {d_on['errors']}{first}. While on, Monitor.sync ran every "
        f"{dep.services.settings.monitor.sync_seconds:g} s in a thread (as in a server "
        f"worker): {len(sync)} syncs, p50 {fmt_latency(percentile(sync, 50))}, max "
        f"{fmt_latency(max(sync)) if sync else '-'}{sync_errors} (one untimed sync first, "
        f"publishing what the _watched rows left: {fmt_latency(notes['first_sync_s'])}).",
        f"same effect off and on (a final pass over every request): {notes['same_effect']:,} of "
        f"{notes['asks']:,}. Monitor responses: {notes['responses_watched'] or 'none'} returned "
        "by _watched (not recorded there); "
        f"{notes['risk_raised_decide']:,} agent.risk_raised events recorded by decide. The "
        f"monitor holds {notes['windows']:,} agent windows (risk levels at the end: "
        f"{notes['levels']}) and {notes['sessions']:,} sessions. The bench asks each agent "
        "many times a minute (every request in every block and mode), so agents denied "
        "often trip deny-burst (≥ 20 denies, ≥ 50 %) within the run: "
        f"{watched['risky_share']:.0%} of the timed _watched calls (on) had a risk score; "
        "those pay the rules' explanations and the principal's entity with its risk.",
        f"load average (1 min) {notes['load_before']:.2f} before, {notes['load_after']:.2f} "
        "after: other work on the machine shows in the p99s and the per-block spread.",
    ]
    return table


# -- over HTTP ---------------------------------------------------------------------------------
@dataclass
class Block:
    mode: str  # "off" | "on"
    round: int
    healthz: LoadResult
    evaluation: LoadResult
    replaced: int = 0  # workers the supervisor replaced during the block


def run_http(dep: Deployment, world: dbench.World, sizes: Sizes, kind: str) -> ResultTable:
    tag = f"[monitor/{dep.backend}]"
    admin_token = dep.services.settings.admin_token_path.read_text().strip()
    reqs = make_requests(sizes.http_requests, sizes.agents, seed=2,
                         policies=world_sizes(sizes).policies, world_seed=dbench.SEED)  # fmt: skip
    evaluations = [HttpRequest("POST", dbench.EVALUATION, f"Bearer {admin_token}",
                               dbench.authzen_body(world, r)) for r in reqs]  # fmt: skip
    health = [HttpRequest("GET", dbench.HEALTHZ, "", b"")]
    dep.services.runtime.stop()  # this process stays out of the servers' way
    dropped = forget_behaviour(dep)
    load0 = os.getloadavg()[0]
    risk0 = events_of(dep, EventType.AGENT_RISK_RAISED)
    blocks: list[Block] = []
    conns, secs = sizes.connections, sizes.http_seconds
    note(f"{tag} two servers side by side, monitoring off and on: tether serve --workers "
         f"{sizes.workers} each; {sizes.rounds} rounds of /healthz then evaluations, "
         f"{secs:g} s each, per server ({kind}, {conns} connections)")  # fmt: skip
    on_env = on_server_env()
    with (
        tether_server(dep, sizes.workers, MEMO_OFF | OFF_ENV) as off_server,
        tether_server(dep, sizes.workers, MEMO_OFF | on_env, port=free_port()) as on_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        servers = {"off": off_server, "on": on_server}
        gens = {}
        for mode, server in servers.items():
            (Path(tmp) / mode).mkdir()
            gens[mode] = LoadGen(server, Path(tmp) / mode, kind)
        children = {m: process_children(s.pid) for m, s in servers.items()}
        for mode, gen in gens.items():
            w = gen.max_rate(evaluations, connections=conns, seconds=sizes.http_warmup,
                             expect="decision")  # fmt: skip
            if w.ok == 0:
                raise RuntimeError(f"no decision answered during warm-up ({mode}): "
                                   f"{w.first_error}")  # fmt: skip
        for r in range(sizes.rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                gen = gens[mode]
                hz = gen.max_rate(health, connections=conns, seconds=secs, expect="status")
                ev = gen.max_rate(evaluations, connections=conns, seconds=secs,
                                  expect="decision")  # fmt: skip
                now = process_children(servers[mode].pid)
                replaced = len(children[mode] - now)
                children[mode] = now
                blocks.append(Block(mode, r, hz, ev, replaced))
                note(f"{tag}   round {r + 1}/{sizes.rounds} {mode}: {ev.rate:,.0f} decisions/s, "
                     f"/healthz {hz.rate:,.0f}/s"
                     + (f"; {replaced} worker(s) replaced by the supervisor meanwhile"
                        if replaced else ""))  # fmt: skip
    risk = events_of(dep, EventType.AGENT_RISK_RAISED) - risk0
    return http_table(dep, sizes, kind, blocks, {
        "load_before": load0, "load_after": os.getloadavg()[0], "risk_raised": risk,
        "risk_rows_dropped": dropped,
        "workers_replaced": {m: sum(b.replaced for b in blocks if b.mode == m)
                             for m in ("off", "on")},
    })  # fmt: skip


def http_table(
    dep: Deployment, sizes: Sizes, kind: str, blocks: list[Block], notes: dict[str, Any]
) -> ResultTable:
    table = ResultTable(
        f"Monitoring's cost over HTTP on {dep.backend}: POST {dbench.EVALUATION}, one "
        f"evaluation per request, `tether serve --workers {sizes.workers}`, {kind}, "
        f"{sizes.connections} connections — median of {sizes.rounds} rounds (higher is better)",
        ["monitoring", "decisions/s", "range", "p50", "p99", "/healthz/s", "÷ /healthz",
         "server CPU/decision", "allowed", "errors"],
    )  # fmt: skip
    by = {m: [b for b in blocks if b.mode == m] for m in ("off", "on")}
    for mode, label in (("off", 'off (TETHER_MONITOR={"enabled": false})'),
                        ("on", "on (default rules)")):  # fmt: skip
        bs = by[mode]
        rates = [b.evaluation.rate for b in bs]
        cpu = [b.evaluation.server_cpu / b.evaluation.ok for b in bs if b.evaluation.ok]
        answered = sum(b.evaluation.ok for b in bs)
        table.rows.append([
            label, fmt_rate(statistics.median(rates)), f"{min(rates):,.0f}-{max(rates):,.0f}",
            fmt_latency(statistics.median(b.evaluation.p50 for b in bs)),
            fmt_latency(statistics.median(b.evaluation.p99 for b in bs)),
            fmt_rate(statistics.median(b.healthz.rate for b in bs)),
            f"{statistics.median(b.evaluation.rate / b.healthz.rate for b in bs):.2f}",
            fmt_latency(statistics.median(cpu)) if cpu else "-",
            f"{sum(b.evaluation.allowed for b in bs) / answered:.0%}" if answered else "-",
            f"{sum(b.evaluation.errors + b.healthz.errors for b in bs):,}",
        ])  # fmt: skip
        table.records += [{
            "benchmark": "monitor over HTTP", "backend": dep.backend, "monitoring": mode,
            "round": b.round, "generator": b.evaluation.generator,
            "connections": b.evaluation.connections, "per_s": b.evaluation.rate,
            "p50_s": b.evaluation.p50, "p99_s": b.evaluation.p99,
            "healthz_per_s": b.healthz.rate, "answered": b.evaluation.ok,
            "allowed": b.evaluation.allowed, "errors": b.evaluation.errors,
            "server_cpu_s": b.evaluation.server_cpu, "first_error": b.evaluation.first_error,
        } for b in bs]  # fmt: skip
    # Paired by round: each round's on over the same round's off.
    pairs = [(o, n) for o in by["off"] for n in by["on"] if o.round == n.round]
    fewer = [1 - n.evaluation.rate / o.evaluation.rate for o, n in pairs]
    fewer_hz = [1 - (n.evaluation.rate / n.healthz.rate) / (o.evaluation.rate / o.healthz.rate)
                for o, n in pairs]  # fmt: skip
    cpu_added = [n.evaluation.server_cpu / n.evaluation.ok
                 - o.evaluation.server_cpu / o.evaluation.ok
                 for o, n in pairs if o.evaluation.ok and n.evaluation.ok]  # fmt: skip
    median_fewer = statistics.median(fewer)
    table.rows.append([
        "on vs off (paired by round)", f"{-median_fewer:+.1%}",
        f"{-max(fewer):+.1%} to {-min(fewer):+.1%}", "", "", "",
        f"{-statistics.median(fewer_hz):+.1%}",
        _signed(statistics.median(cpu_added)) if cpu_added else "-", "", "",
    ])  # fmt: skip
    table.records.append({"benchmark": "monitor over HTTP: on vs off", "backend": dep.backend,
                          "fewer": fewer, "fewer_vs_healthz": fewer_hz,
                          "server_cpu_added_s": cpu_added, **notes})  # fmt: skip
    met = "met" if median_fewer <= TARGET_FEWER else "NOT met"
    tripped = (" (monitor responses: some agents' windows tripped a rule, which changes their "
               "answers: compare with care)" if notes["risk_raised"] else "")  # fmt: skip
    table.footnotes += [
        f"target: ≤ {TARGET_FEWER:.0%} fewer decisions/s with monitoring on: {met} "
        f"({median_fewer:.1%} fewer, the median of the rounds' on ÷ off; ÷ /healthz: the same "
        f"with each block's rate over its own server's /healthz, {statistics.median(fewer_hz):.1%}"
        " fewer).",
        f"two `tether serve --workers {sizes.workers}` side by side for the whole phase (on: "
        'TETHER_MONITOR unset, the defaults; off: TETHER_MONITOR={"enabled": false}; both '
        "TETHER_DECISION_MEMO_SIZE=0: the bodies repeat, Cedar decides each), loaded in turn, "
        f"the order flipping each round: after a {sizes.http_warmup:g} s warm-up of evaluations "
        f"each, per round and server GET /healthz for {sizes.http_seconds:g} s, then the "
        f"evaluations for {sizes.http_seconds:g} s, closed loop at the generator's maximum. "
        "Every answer a decision event made durable by group commit before it is sent.",
        f"requests: {sizes.http_requests:,} AuthZEN bodies of the decision workload (no "
        "delegation), cycled, with the bootstrap admin's token (asks for any agent); "
        f"agent.risk_raised events during the HTTP runs: {notes['risk_raised']:,}{tripped}. "
        "Before the servers started, the behaviour the in-process rows left in the database "
        f"(counts, pairs, touches, {notes['risk_rows_dropped']:,} agents' risk rows) was "
        "deleted: the on server's windows are its own. CPU per decision = the server's "
        "process tree (/proc) over answered evaluations.",
        "per round, decisions/s off / on (÷ /healthz): "
        + "; ".join(
            f"{o.evaluation.rate:,.0f} ({o.evaluation.rate / o.healthz.rate:.2f}) / "
            f"{n.evaluation.rate:,.0f} ({n.evaluation.rate / n.healthz.rate:.2f})"
            for o, n in pairs
        )
        + f". Load average (1 min) {notes['load_before']:.2f} before the servers started, "
        f"{notes['load_after']:.2f} after. Workers the supervisor replaced during the "
        f"blocks (a worker that misses its health check for 5 s is killed and started "
        f"afresh): off {notes['workers_replaced']['off']}, on {notes['workers_replaced']['on']}"
        " — a block that lost one measures a restart, not monitoring.",
    ]
    failed = [b for b in blocks if b.evaluation.errors or b.healthz.errors]
    for b in failed[:2]:
        first = b.evaluation.first_error or b.healthz.first_error
        table.footnotes.append(f"errors, round {b.round + 1} {b.mode}: first: {first[:200]}")
    return table


# -- entry points ------------------------------------------------------------------------------
def run_backend(options: Options, backend: str) -> list[ResultTable]:
    sizes = sizes_for(options)
    ns = options.extra
    tag = f"[monitor/{backend}]"
    tables: list[ResultTable] = []
    note(f"{tag} bootstrapping a deployment")
    with open_deployment(options, backend) as dep:
        world = dbench.populate(dep, world_sizes(sizes))
        if ns.inprocess:
            dep.services.runtime.start()  # the poller keeps it current, as in a server
            settled()  # as a server's worker does once its start is over (tether.collector)
            try:
                tables.append(run_inprocess(dep, world, sizes))
            finally:
                dep.services.runtime.stop()
        if ns.http:
            kind = dbench.loadgen_kind(options)
            tables.append(run_http(dep, world, sizes, kind))
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, help="agents in the world (default 10000)")
    parser.add_argument("--respond", action="store_true",
                        help="on = the shipped thresholds too (agents of the random workload "
                        "get stepped up and suspended mid-run); default: rules watched, "
                        "thresholds out of reach")  # fmt: skip
    parser.add_argument("--blocks", type=int,
                        help="alternating in-process blocks (default 40)")  # fmt: skip
    parser.add_argument(
        "--calls", type=int, help="timed calls per in-process block and mode (default 1500)"
    )
    parser.add_argument("--rounds", type=int,
                        help="HTTP rounds, a block per server each (default 8)")  # fmt: skip
    parser.add_argument("--workers", type=int, help="server worker processes (default 2)")
    parser.add_argument("--connections", type=int,
                        help="HTTP connections of the load generator (default 64)")  # fmt: skip
    parser.add_argument(
        "--duration", type=float, help="seconds per HTTP run: /healthz, evaluations (default 5)"
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="HTTP load generator (default: wrk if installed)")  # fmt: skip
    parser.add_argument("--no-http", dest="http", action="store_false",
                        help="in-process figures only (no server)")  # fmt: skip
    parser.add_argument("--http-only", dest="inprocess", action="store_false",
                        help="skip the in-process table")  # fmt: skip
    parser.add_argument("--on-config", metavar="JSON", default="{}",
                        help='more monitoring settings for the "on" servers, e.g. '
                        '\'{"sync_seconds": 5}\'')  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.monitor",
        "Monitoring's cost per decision: in process and over HTTP, on vs off",
        argv,
        add_arguments=add_arguments,
    )
    note(machine_line(options))
    _RESPOND[0] = bool(getattr(options.extra, "respond", False))
    _ON_EXTRA.update(json.loads(options.extra.on_config))
    if not _RESPOND[0]:  # the in-process deployment's settings, as the servers' (ON_ENV)
        os.environ.update(ON_ENV)
    run_each_backend(options, lambda backend: run_backend(options, backend))


_RESPOND = [False]
_ON_EXTRA: dict[str, Any] = {}


def ns_respond() -> bool:
    return _RESPOND[0]


def on_server_env() -> dict[str, str]:
    """The "on" servers' TETHER_MONITOR: the defaults (thresholds out of reach unless
    --respond), with --on-config's settings."""
    config: dict[str, Any] = {} if ns_respond() else json.loads(ON_ENV["TETHER_MONITOR"])
    config.update(_ON_EXTRA)
    return {"TETHER_MONITOR": json.dumps(config)} if config else {}


if __name__ == "__main__":
    main()
