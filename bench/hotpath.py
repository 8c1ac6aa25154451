"""The decision hot path over HTTP against the server's own floor (issue 21): AuthZEN single
evaluations beside ``GET /healthz`` on the same server, alternating, at several connection
counts, and sequentially (one connection, closed loop).

Per backend, one deployment populated with the decision benchmark's world
(:func:`bench.decisions.populate`: 10,000 agents, the workload's 120 policies + Tether's 2),
one ``tether serve --workers 2`` on it (``TETHER_DECISION_MEMO_SIZE=0``: the bodies repeat,
Cedar decides each), the bootstrap admin's token, the decision bench's AuthZEN bodies. After a
warm-up, for each connection count (16 and 64 by default) ``rounds`` rounds of a ``/healthz``
block and an evaluation block (``wrk``, ``seconds`` each, the order flipping each round), then
the same with one connection (sequential: each request sent when the previous one was
answered). Each round's evaluations/s over the same round's ``/healthz``/s is one ratio; the
table gives their median, the server's CPU per request (its process tree, ``/proc``) and the
p50s. Targets (issue 21): evaluations ≥ 0.6x ``/healthz`` on SQLite, ≥ 0.5x on PostgreSQL;
sequential p50 ≤ 2x ``/healthz``'s.

``--memory``: instead, the 100,000-agent lines — a deployment with 100,000 agents (``--agents``),
``runtime.load()`` timed in this process (best of three), then ``tether serve --workers 2``
and each worker's resident memory (``/proc``, VmRSS) once ready and idle, and again after
``--load-seconds`` (60) of evaluations at the generator's maximum. Targets (issue 21): a
worker ≤ 250 MB idle and after the load; a full runtime load ≤ 2 s.

Run: ``python -m bench.hotpath [--quick] [--postgres URL] [--no-sqlite] [--rounds R]
[--duration S] [--conns 16,64] [--memory [--agents 100000] [--load-seconds 60]]
[--json FILE]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import decisions as dbench
from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    machine_line,
    note,
    parse_options,
    run_each_backend,
)
from bench.decision_workload import make_requests
from bench.loadgen import HttpRequest, LoadGen, LoadResult, process_children
from bench.tokens import Deployment, open_deployment, tether_server
from tether import collector

MEMO_OFF = {"TETHER_DECISION_MEMO_SIZE": "0"}
_GC_DEFAULTS = gc.get_threshold()
MEMORY_AGENTS = 100_000
TARGET_RATIO = {"sqlite": 0.6, "postgresql": 0.5}  # evaluations/s ÷ /healthz/s, at least
TARGET_SEQUENTIAL = 2.0  # evaluation p50 ÷ /healthz p50, at most


@dataclass(frozen=True)
class Sizes:
    agents: int
    requests: int
    rounds: int
    seconds: float
    warmup: float
    conns: tuple[int, ...]
    workers: int


FULL = Sizes(agents=10_000, requests=20_000, rounds=4, seconds=5.0, warmup=5.0,
             conns=(16, 64), workers=2)  # fmt: skip
QUICK = Sizes(agents=2_000, requests=2_000, rounds=2, seconds=2.0, warmup=2.0,
              conns=(16, 64), workers=2)  # fmt: skip


def sizes_for(options: Options) -> Sizes:
    s = QUICK if options.quick else FULL
    ns = options.extra
    if ns.rounds:
        s = replace(s, rounds=ns.rounds)
    if ns.duration:
        s = replace(s, seconds=ns.duration)
    if ns.conns:
        s = replace(s, conns=tuple(int(c) for c in ns.conns.split(",")))
    return s


@dataclass
class Pair:
    conns: int
    round: int
    healthz: LoadResult
    evaluation: LoadResult


def run_backend(options: Options, backend: str) -> ResultTable:
    sizes = sizes_for(options)
    tag = f"[hotpath/{backend}]"
    ns = options.extra
    if ns.memory:
        sizes = replace(sizes, agents=ns.agents or MEMORY_AGENTS)
    note(f"{tag} bootstrapping a deployment ({sizes.agents:,} agents)")
    with open_deployment(options, backend) as dep:
        world = dbench.populate(dep, replace(dbench.FULL, agents=sizes.agents))
        if ns.memory:
            return run_memory(dep, world, sizes, ns.load_seconds)
        dep.services.runtime.stop()  # this process stays out of the server's way
        return run_http(dep, world, sizes, ns.profile)


def server_env() -> dict[str, str]:
    """More settings for the server, for experiments: ``TETHER_BENCH_SERVER_ENV`` as JSON."""
    return dict(json.loads(os.environ.get("TETHER_BENCH_SERVER_ENV") or "{}"))


def worker_rss(server_pid: int) -> list[int]:
    """Each of the supervisor's children's resident bytes (VmRSS): the workers, and
    multiprocessing's small resource tracker (~12 MiB)."""
    return list(worker_rss_by_pid(server_pid).values())


def worker_rss_by_pid(server_pid: int) -> dict[int, int]:
    out = {}
    for pid in sorted(process_children(server_pid)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out[pid] = int(line.split()[1]) * 1024
    return out


def run_memory(dep: Deployment, world: dbench.World, sizes: Sizes, seconds: float) -> ResultTable:
    tag = f"[hotpath/{dep.backend}]"
    loads = []
    collector.starting()  # as a worker loads it: the collector set as during a start
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        dep.services.runtime.load()
        loads.append(time.perf_counter() - t0)
    gc.set_threshold(*_GC_DEFAULTS)
    dep.services.runtime.stop()
    note(f"{tag} runtime.load() of {sizes.agents:,} agents: "
         + ", ".join(f"{x:.2f} s" for x in loads))  # fmt: skip
    admin = dep.services.settings.admin_token_path.read_text().strip()
    reqs = make_requests(20_000, sizes.agents, seed=2, policies=dbench.FULL.policies,
                         world_seed=dbench.SEED)  # fmt: skip
    evaluations = [HttpRequest("POST", dbench.EVALUATION, f"Bearer {admin}",
                               dbench.authzen_body(world, r)) for r in reqs]  # fmt: skip
    load0 = os.getloadavg()[0]
    with (
        tether_server(dep, sizes.workers, {**MEMO_OFF, **server_env()}) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        time.sleep(5)  # both workers loaded (the first answered /readyz) and settled
        idle = worker_rss(server.pid)
        note(f"{tag} workers idle: " + ", ".join(f"{b / 2**20:.0f} MiB" for b in idle))
        gen = LoadGen(server, Path(tmp), "wrk")
        note(f"{tag} {seconds:g} s of evaluations, 64 connections")
        r = gen.max_rate(evaluations, connections=64, seconds=seconds, expect="decision")
        loaded = worker_rss(server.pid)
        note(f"{tag} workers after the load: "
             + ", ".join(f"{b / 2**20:.0f} MiB" for b in loaded))  # fmt: skip
    table = ResultTable(
        f"The runtime at {sizes.agents:,} agents on {dep.backend}: load time and each "
        f"worker's resident memory (`tether serve --workers {sizes.workers}`)",
        ["what", "figure", "target"],
    )
    mib = [b / 2**20 for b in (*idle, *loaded)]
    table.rows += [
        ["runtime.load(), in process (best of 3)", f"{min(loads):.2f} s", "≤ 2 s"],
        ["worker RSS, idle", ", ".join(f"{b / 2**20:.0f} MiB" for b in idle), "≤ 250 MB"],
        [f"worker RSS after {seconds:g} s of evaluations ({r.rate:,.0f}/s, {r.errors} errors)",
         ", ".join(f"{b / 2**20:.0f} MiB" for b in loaded), "≤ 250 MB"],
    ]  # fmt: skip
    table.records.append({"benchmark": "hot path memory", "backend": dep.backend,
                          "agents": sizes.agents, "load_s": loads, "idle_rss": idle,
                          "loaded_rss": loaded, "per_s": r.rate, "errors": r.errors})  # fmt: skip
    met_load = min(loads) <= 2.0
    met_rss = all(m * 2**20 <= 250e6 for m in mib)
    table.footnotes += [
        f"targets (issue 21): full runtime load ≤ 2 s: {'met' if met_load else 'NOT met'}; "
        f"each worker ≤ 250 MB idle and after the load: {'met' if met_rss else 'NOT met'}.",
        f"load average (1 min) {load0:.2f} before the server started, "
        f"{os.getloadavg()[0]:.2f} after.",
    ]
    return table


def profile_workers(
    server_pid: int, gen: LoadGen, evaluations: list[HttpRequest], seconds: float,
    tag: str, conns: int = 64, expect: str = "decision",
) -> None:  # fmt: skip
    """py-spy on every worker while wrk loads the server with evaluations (``conns``
    connections) for ``seconds``: the top functions of their samples together, by own
    samples and by total, printed; the raw profiles kept (one file per worker)."""
    rss = worker_rss_by_pid(server_pid)
    workers = [pid for pid, b in rss.items() if b > 40 * 2**20]  # not the resource tracker
    base = Path(tempfile.gettempdir()) / f"tether-hotpath-profile-{tag.strip('[]').split('/')[-1]}"
    outs = [base.with_name(f"{base.name}-{pid}.txt") for pid in workers]
    spies = [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
                "--rate",
                "250",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(workers, outs, strict=True)
    ]
    gen.max_rate(evaluations, connections=conns, seconds=seconds + 1, expect=expect)
    for spy in spies:
        spy.wait(timeout=60)
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for out in outs:
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    note(f"{tag} py-spy, workers {', '.join(map(str, workers))}, {samples:,} samples over "
         f"{seconds:g} s, {conns} connection(s) (own time: the function itself; total: it and "
         f"what it called); raw: {', '.join(map(str, outs))}")  # fmt: skip
    for label, counts in (("own", own), ("total", total)):
        for frame, n in counts.most_common(25):
            note(f"{tag}   {label:5} {n / max(1, samples):6.1%}  {frame[:150]}")


def run_http(
    dep: Deployment, world: dbench.World, sizes: Sizes, profile: float = 0.0
) -> ResultTable:
    tag = f"[hotpath/{dep.backend}]"
    admin = dep.services.settings.admin_token_path.read_text().strip()
    reqs = make_requests(sizes.requests, sizes.agents, seed=2, policies=dbench.FULL.policies,
                         world_seed=dbench.SEED)  # fmt: skip
    evaluations = [HttpRequest("POST", dbench.EVALUATION, f"Bearer {admin}",
                               dbench.authzen_body(world, r)) for r in reqs]  # fmt: skip
    health = [HttpRequest("GET", dbench.HEALTHZ, "", b"")]
    load0 = os.getloadavg()[0]
    pairs: list[Pair] = []
    with (
        tether_server(dep, sizes.workers, {**MEMO_OFF, **server_env()}) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        gen = LoadGen(server, Path(tmp), "wrk")
        note(f"{tag} warm-up {sizes.warmup:g} s")
        w = gen.max_rate(evaluations, connections=64, seconds=sizes.warmup, expect="decision")
        if w.ok == 0:
            raise RuntimeError(f"no decision answered during warm-up: {w.first_error}")
        if profile:
            conns = int(os.environ.get("TETHER_BENCH_PROFILE_CONNS", "64"))
            profile_workers(server.pid, gen, evaluations, profile, tag, conns)
        for conns in (*sizes.conns, 1):
            for r in range(sizes.rounds):
                got: dict[str, LoadResult] = {}
                order = (("healthz", health, "status"), ("evaluation", evaluations, "decision"))
                for what, rs, expect in order if r % 2 == 0 else order[::-1]:
                    got[what] = gen.max_rate(rs, connections=conns, seconds=sizes.seconds,
                                             expect=expect)  # fmt: skip
                pair = Pair(conns, r, got["healthz"], got["evaluation"])
                pairs.append(pair)
                ev, hz = (_split(pair.evaluation, sizes.workers),
                          _split(pair.healthz, sizes.workers))  # fmt: skip
                note(f"{tag}   {conns} connection(s), round {r + 1}/{sizes.rounds}: "
                     f"{pair.evaluation.rate:,.0f} evaluations/s{ev}, /healthz "
                     f"{pair.healthz.rate:,.0f}/s{hz}")  # fmt: skip
    return table_of(dep, sizes, pairs, load0)


def _split(result: LoadResult, workers: int) -> str:
    """How the block's connections fell between the workers (a worker without any as 0),
    for its note; nothing for one connection, or when it could not be read."""
    if result.connections < 2 or not result.split:
        return ""
    counts = (*result.split, *[0] * (workers - len(result.split)))
    return f" (workers {' / '.join(map(str, counts))})"


def table_of(dep: Deployment, sizes: Sizes, pairs: list[Pair], load0: float) -> ResultTable:
    table = ResultTable(
        f"AuthZEN single evaluations beside the same server's /healthz on {dep.backend}: "
        f"`tether serve --workers {sizes.workers}`, wrk, {sizes.agents:,} agents, 120 + 2 "
        f"policies, memo off — median of {sizes.rounds} alternating rounds",
        ["connections", "evaluations/s", "/healthz/s", "÷ /healthz (rounds)", "eval p50",
         "/healthz p50", "p50 ÷", "server CPU per evaluation", "per /healthz", "errors"],
    )  # fmt: skip
    verdicts: list[str] = []
    for conns in (*sizes.conns, 1):
        ps = [p for p in pairs if p.conns == conns]
        ratios = [p.evaluation.rate / p.healthz.rate for p in ps if p.healthz.rate]
        ev50 = statistics.median(p.evaluation.p50 for p in ps)
        hz50 = statistics.median(p.healthz.p50 for p in ps)
        cpu_ev = statistics.median(p.evaluation.server_cpu / p.evaluation.ok
                                   for p in ps if p.evaluation.ok)  # fmt: skip
        cpu_hz = statistics.median(p.healthz.server_cpu / p.healthz.ok for p in ps if p.healthz.ok)
        errors = sum(p.evaluation.errors + p.healthz.errors for p in ps)
        ratio = statistics.median(ratios)
        table.rows.append([
            "1 (sequential)" if conns == 1 else str(conns),
            fmt_rate(statistics.median(p.evaluation.rate for p in ps)),
            fmt_rate(statistics.median(p.healthz.rate for p in ps)),
            f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
            fmt_latency(ev50), fmt_latency(hz50), f"{ev50 / hz50:.2f}x",
            fmt_latency(cpu_ev), fmt_latency(cpu_hz), f"{errors:,}",
        ])  # fmt: skip
        table.records += [{
            "benchmark": "hot path", "backend": dep.backend, "connections": p.conns,
            "round": p.round, "evaluations_per_s": p.evaluation.rate,
            "healthz_per_s": p.healthz.rate, "evaluation_p50_s": p.evaluation.p50,
            "healthz_p50_s": p.healthz.p50, "evaluation_server_cpu_s": p.evaluation.server_cpu,
            "evaluations": p.evaluation.ok, "healthz_server_cpu_s": p.healthz.server_cpu,
            "healthz": p.healthz.ok, "errors": p.evaluation.errors + p.healthz.errors,
        } for p in ps]  # fmt: skip
        if conns == 1:
            met = ev50 / hz50 <= TARGET_SEQUENTIAL
            verdicts.append(f"sequential p50 ≤ {TARGET_SEQUENTIAL:g}x /healthz's: "
                            f"{'met' if met else 'NOT met'} ({ev50 / hz50:.2f}x)")  # fmt: skip
        else:
            want = TARGET_RATIO.get(dep.backend, 0.6)
            verdicts.append(f"{conns} connections, ≥ {want:g}x /healthz: "
                            f"{'met' if ratio >= want else 'NOT met'} ({ratio:.2f}x)")  # fmt: skip
    table.footnotes += [
        "targets (issue 21): " + "; ".join(verdicts) + ".",
        "one server for the whole table; per connection count, rounds of a /healthz block and "
        f"an evaluation block ({sizes.seconds:g} s each, wrk, closed loop, the order flipping "
        "each round); ÷ /healthz = each round's evaluations/s over its /healthz/s, the median "
        "and range over the rounds. Every evaluation's answer waits for its decision event to "
        "be durable (group commit). CPU = the server's process tree (/proc) over answered "
        "requests.",
        f"load average (1 min) {load0:.2f} before the server started, "
        f"{os.getloadavg()[0]:.2f} after.",
    ]
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="alternating rounds per connection count")
    parser.add_argument("--duration", type=float, help="seconds per block (default 5)")
    parser.add_argument("--conns", help="connection counts besides 1, e.g. 16,64 (default)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="the 100,000-agent lines instead: load time, worker RSS",
    )
    parser.add_argument("--agents", type=int, help="agents for --memory (default 100000)")
    parser.add_argument(
        "--profile", type=float, default=0.0, metavar="S",
        help="first, py-spy (on PATH) on one worker for S seconds of evaluations",
    )  # fmt: skip
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=60.0,
        help="seconds of evaluations before the second RSS reading (--memory)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.hotpath",
        "AuthZEN evaluations over HTTP beside the same server's /healthz (issue 21)",
        argv,
        add_arguments=add_arguments,
    )
    note(machine_line(options))
    run_each_backend(options, lambda backend: run_backend(options, backend))


if __name__ == "__main__":
    main()
