"""Baselines for the policy decision benchmark: plain ``cedarpy`` and ``pycasbin``.

Each baseline decides the same requests (:mod:`bench.decision_workload`) and returns a dict of
figures — ``n``, ``p50_us``, ``p99_us``, ``mean_us``, ``per_second``, ``allowed``, ``denied``
— so that ``bench/decisions.py`` can print Tether's decision latency beside them:

- **naive cedarpy**: ``cedarpy.is_authorized(request, policies_text, entities_text)``, the
  policies and the entities (``json.dumps`` done once, outside the timed calls) passed as text
  on every call, so Cedar parses both and computes the role closure every time;
- **cedarpy with handles**: ``PolicySet.from_str`` and ``Entities.from_json_str`` parsed once,
  then ``cedarpy.is_authorized(request, policy_set, entities)`` per call — plain cedarpy done
  right, the floor under any Cedar-based decision point in Python;
- **pycasbin**: an RBAC model with a ``g`` rule per agent→role and a ``p`` rule per
  role-based permit, ``Enforcer.enforce(agent, "Type::id", action)`` per call; also a
  ``FastEnforcer`` with its policies indexed by (object, action). It expresses only the
  role-based part of the Cedar policies (see :func:`bench.decision_workload.casbin_enforcer`);
  the run checks that on that part both engines agree.

Run: ``python -m bench.decisions_baselines [--quick] [--agents N] [--policies N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import cedarpy

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    fmt_ratio,
    machine_line,
    note,
    parse_options,
    percentile,
    write_json,
)
from bench.decision_workload import (
    PolicySpec,
    casbin_enforcer,
    casbin_request,
    check,
    make_entities,
    make_requests,
    policy_specs,
    render,
)

Request = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    agents: int
    policies: int
    runs: int  # timed calls per fast row (handles, casbin)
    naive_runs: int  # timed calls for naive cedarpy (~15 ms per call per 1k entities)
    warmup: int
    agree_sample: int  # requests on which casbin and Cedar are compared


FULL = Sizes(agents=10_000, policies=120, runs=5000, naive_runs=200, warmup=20, agree_sample=5000)
QUICK = Sizes(agents=1_000, policies=120, runs=1000, naive_runs=100, warmup=5, agree_sample=1000)


# -- timing ------------------------------------------------------------------------------------
def time_calls(
    fn: Callable[[T], bool],
    requests: Sequence[T],
    n: int,
    *,
    warmup: int = 10,
    decisions: list[bool] | None = None,
) -> dict[str, Any]:
    """Call ``fn`` on ``requests`` in turn (cycling) ``n`` times after ``warmup`` untimed calls;
    ``fn`` returns whether the request was allowed (appended to ``decisions`` if given). Each
    call is timed alone (``time.perf_counter_ns``); percentiles are nearest-rank
    (:func:`bench.common.percentile`), the rate is calls over their summed times."""
    for i in range(warmup):
        fn(requests[i % len(requests)])
    samples: list[float] = []
    allowed = _timed(fn, requests, 0, n, samples, decisions)
    return figures_of(samples, allowed)


def _timed(
    fn: Callable[[T], bool], requests: Sequence[T], start: int, count: int,
    samples: list[float], decisions: list[bool] | None = None,
) -> int:  # fmt: skip
    """``count`` calls from ``requests[start]`` on (cycling), each timed alone into
    ``samples``; how many were allowed."""
    allowed = 0
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        request = requests[i % len(requests)]
        begin = clock()
        ok = fn(request)
        samples.append((clock() - begin) / 1000)
        allowed += bool(ok)
        if decisions is not None:
            decisions.append(bool(ok))
    return allowed


def figures_of(samples: list[float], allowed: int) -> dict[str, Any]:
    n = len(samples)
    total_s = sum(samples) / 1e6
    return {
        "n": n,
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "mean_us": sum(samples) / n if n else float("nan"),
        "per_second": n / total_s if total_s > 0 else float("nan"),
        "allowed": allowed,
        "denied": n - allowed,
    }


@dataclass(frozen=True)
class Case:
    """One engine in :func:`alternating`: ``before`` runs (untimed) before each of its blocks."""

    fn: Callable[[Any], bool]
    requests: Sequence[Any]
    before: Callable[[], None] | None = None


def alternating(cases: Sequence[Case], n: int, *, blocks: int = 20) -> list[dict[str, Any]]:
    """``n`` timed calls per case in ``blocks`` blocks, the cases taking turns block by block
    (the order reversed every other round), so a machine that slows down or speeds up
    mid-run weighs on every case alike; each case's figures over all its blocks."""
    samples: list[list[float]] = [[] for _ in cases]
    allowed = [0] * len(cases)
    per_block = max(1, n // blocks)
    for b in range(blocks):
        order = range(len(cases)) if b % 2 == 0 else reversed(range(len(cases)))
        for c in order:
            case = cases[c]
            if case.before is not None:
                case.before()
            allowed[c] += _timed(case.fn, case.requests, b * per_block, per_block, samples[c])
    return [figures_of(s, a) for s, a in zip(samples, allowed, strict=True)]


# -- the baselines -----------------------------------------------------------------------------
def naive_cedarpy(
    policies_text: str,
    entities: list[dict[str, Any]],
    requests: Sequence[Request],
    n: int = 200,
    *,
    warmup: int = 3,
    decisions: list[bool] | None = None,
) -> dict[str, Any]:
    """``cedarpy.is_authorized(request, policies_text, entities_text)``: both re-parsed on
    every call. ``json.dumps(entities)`` is done once, before timing."""
    entities_text = json.dumps(entities)

    def decide(request: Request) -> bool:
        return cedarpy.is_authorized(request, policies_text, entities_text).allowed

    return time_calls(decide, requests, n, warmup=warmup, decisions=decisions)


def handles_cedarpy(
    policies_text: str,
    entities: list[dict[str, Any]],
    requests: Sequence[Request],
    n: int,
    *,
    warmup: int = 10,
) -> dict[str, Any]:
    """``cedarpy.is_authorized(request, policy_set, entities_handle)`` with the handles parsed
    once, before timing; the parse times are in ``parse_policies_ms``/``parse_entities_ms``."""
    start = time.perf_counter()
    policy_set = cedarpy.PolicySet.from_str(policies_text)
    parsed_policies = time.perf_counter()
    handle = cedarpy.Entities.from_json_str(json.dumps(entities))
    parsed_entities = time.perf_counter()

    def decide(request: Request) -> bool:
        return cedarpy.is_authorized(request, policy_set, handle).allowed

    figures = time_calls(decide, requests, n, warmup=warmup)
    figures["parse_policies_ms"] = (parsed_policies - start) * 1e3
    figures["parse_entities_ms"] = (parsed_entities - parsed_policies) * 1e3
    return figures


def casbin_baseline(
    entities: list[dict[str, Any]],
    specs: list[PolicySpec],
    requests: Sequence[Request],
    n: int,
    *,
    fast: bool = False,
    warmup: int = 10,
) -> dict[str, Any]:
    """pycasbin ``enforce(agent, "Type::id", action)`` on the RBAC twin of the role-based
    policies (``fast``: a ``FastEnforcer`` indexed by object and action). The requests are
    mapped to casbin arguments before timing; building the enforcer (``build_ms``) is not
    timed per call."""
    decide, args, build_ms = casbin_case(entities, specs, requests, fast=fast)
    figures = time_calls(decide, args, n, warmup=warmup)
    figures["build_ms"] = build_ms
    return figures


def casbin_case(
    entities: list[dict[str, Any]], specs: list[PolicySpec], requests: Sequence[Request], *,
    fast: bool = False,
) -> tuple[Callable[[tuple[str, str, str]], bool], list[tuple[str, str, str]], float]:  # fmt: skip
    """pycasbin's decision function, the requests as its arguments, and the build time (ms)."""
    start = time.perf_counter()
    enforcer = casbin_enforcer(entities, specs, fast=fast)
    built = time.perf_counter()

    def decide(sub_obj_act: tuple[str, str, str]) -> bool:
        return bool(enforcer.enforce(*sub_obj_act))

    return decide, [casbin_request(r) for r in requests], (built - start) * 1e3


def agreement(
    entities: list[dict[str, Any]],
    specs: list[PolicySpec],
    requests: Sequence[Request],
) -> dict[str, Any]:
    """Compare pycasbin with Cedar on ``requests``: against Cedar with only the role-based
    policies (the part casbin expresses; expect 100 %) and against the full policy set."""
    handle = cedarpy.Entities.from_json_str(json.dumps(entities))
    rbac_only = cedarpy.PolicySet.from_str(render([s for s in specs if s.rbac]))
    full = cedarpy.PolicySet.from_str(render(specs))
    enforcer = casbin_enforcer(entities, specs)
    cas = [bool(enforcer.enforce(*casbin_request(r))) for r in requests]
    rbac = [r.allowed for r in cedarpy.is_authorized_batch(list(requests), rbac_only, handle)]
    cedar = [r.allowed for r in cedarpy.is_authorized_batch(list(requests), full, handle)]
    n = len(requests)
    return {
        "n": n,
        "casbin_allowed": sum(cas),
        "cedar_rbac_allowed": sum(rbac),
        "cedar_full_allowed": sum(cedar),
        "agree_rbac": sum(a == b for a, b in zip(cas, rbac, strict=True)) / n,
        "agree_full": sum(a == b for a, b in zip(cas, cedar, strict=True)) / n,
    }


# -- the table ---------------------------------------------------------------------------------
HEADERS = ["decision engine", "calls", "p50", "p99", "decisions/s", "allowed / denied", "÷ handles"]


def row(label: str, figures: dict[str, Any], floor: dict[str, Any] | None = None) -> list[str]:
    """A table row for ``figures`` (from :func:`time_calls`); "÷ handles" is its p50 over the
    p50 of ``floor`` (plain cedarpy with handles)."""
    ratio = figures["p50_us"] / floor["p50_us"] if floor else float("nan")
    return [
        label,
        f"{figures['n']:,}",
        fmt_latency(figures["p50_us"] / 1e6),
        fmt_latency(figures["p99_us"] / 1e6),
        fmt_rate(figures["per_second"]),
        f"{figures['allowed']:,} / {figures['denied']:,}",
        fmt_ratio(ratio),
    ]


def run(sizes: Sizes, *, seed: int = 7) -> ResultTable:
    started = time.perf_counter()
    specs = policy_specs(sizes.policies, seed)
    policies_text = render(specs)
    entities = make_entities(sizes.agents, seed=seed)
    check(policies_text, entities)
    count = max(sizes.runs, sizes.agree_sample)
    requests = make_requests(count, sizes.agents, seed=1, policies=sizes.policies, world_seed=seed)
    # naive calls are few: draw them across the whole request list, not only its head.
    naive_requests = random.Random(2).sample(requests, min(len(requests), sizes.naive_runs))
    note(
        f"[decisions] {sizes.agents:,} agents, {len(entities):,} entities, {len(specs)} policies "
        f"({sum(s.rbac for s in specs)} role-based), {count:,} requests; "
        f"built and validated in {time.perf_counter() - started:.1f} s"
    )
    note("[decisions] cedarpy with PolicySet/Entities handles")
    handles = handles_cedarpy(policies_text, entities, requests, sizes.runs, warmup=sizes.warmup)
    note(f"[decisions] naive cedarpy, {sizes.naive_runs} calls")
    naive_decisions: list[bool] = []
    naive = naive_cedarpy(
        policies_text, entities, naive_requests, sizes.naive_runs, decisions=naive_decisions
    )
    handle_decisions = _cedar_decisions(policies_text, entities, naive_requests)
    same = sum(a == b for a, b in zip(naive_decisions, handle_decisions, strict=True))
    note("[decisions] pycasbin Enforcer / FastEnforcer")
    cas = casbin_baseline(entities, specs, requests, sizes.runs, warmup=sizes.warmup)
    fast = casbin_baseline(entities, specs, requests, sizes.runs, fast=True, warmup=sizes.warmup)
    note("[decisions] casbin vs Cedar agreement")
    agree = agreement(entities, specs, requests[: sizes.agree_sample])

    table = ResultTable(
        f"Policy decisions, {sizes.agents:,} agents, {len(specs)} policies — latency per "
        "decision, in process, 1 thread (lower is better)",
        HEADERS,
    )
    table.rows += [
        row("cedarpy, handles parsed once", handles, handles),
        row("naive cedarpy (policies + entities as text)", naive, handles),
        row("pycasbin Enforcer (RBAC part only)", cas, handles),
        row("pycasbin FastEnforcer (RBAC part only)", fast, handles),
    ]
    table.footnotes += [
        f"handles: PolicySet.from_str {handles['parse_policies_ms']:.1f} ms and "
        f"Entities.from_json_str {handles['parse_entities_ms']:.0f} ms, once, not timed; "
        f"{sizes.runs:,} calls after {sizes.warmup} warm-ups, requests as {{type, id}} dicts, "
        "no schema passed per call.",
        f"naive: the same call with the policy text and json.dumps(entities) (dumped once); "
        f"{sizes.naive_runs} calls on a sample of the requests; same decision as with "
        f"handles on {same} of {len(naive_requests)}.",
        f"pycasbin {_casbin_version()}: {agree['casbin_allowed']:,} allowed of {agree['n']:,} "
        "on the agreement sample; build (g + p rules, role links) "
        f"{cas['build_ms']:.0f} ms / FastEnforcer {fast['build_ms']:.0f} ms, not timed.",
        f"casbin = Cedar with only the {sum(s.rbac for s in specs)} role-based policies on "
        f"{agree['agree_rbac']:.2%} of {agree['n']:,} requests; = full Cedar on "
        f"{agree['agree_full']:.2%} (full Cedar allows {agree['cedar_full_allowed']:,}, "
        f"role-based only {agree['cedar_rbac_allowed']:,}): ABAC permits, forbids and "
        "conditions are not in the casbin model.",
        "÷ handles = p50 over the p50 of cedarpy with handles.",
    ]
    table.records += [
        {"engine": "cedarpy_handles", **handles},
        {"engine": "cedarpy_naive", **naive},
        {"engine": "casbin", **cas},
        {"engine": "casbin_fast", **fast},
        {"engine": "agreement", **agree},
    ]
    return table


def _cedar_decisions(
    policies_text: str, entities: list[dict[str, Any]], requests: Sequence[Request]
) -> list[bool]:
    policy_set = cedarpy.PolicySet.from_str(policies_text)
    handle = cedarpy.Entities.from_json_str(json.dumps(entities))
    return [r.allowed for r in cedarpy.is_authorized_batch(list(requests), policy_set, handle)]


def _casbin_version() -> str:
    from importlib.metadata import version

    return version("casbin")


def sizes_for(options: Options) -> Sizes:
    sizes = QUICK if options.quick else FULL
    agents: int | None = getattr(options.extra, "agents", None)
    policies: int | None = getattr(options.extra, "policies", None)
    if agents:
        sizes = Sizes(agents, sizes.policies, *_tail(sizes))
    if policies:
        sizes = Sizes(sizes.agents, policies, *_tail(sizes))
    return sizes


def _tail(sizes: Sizes) -> tuple[int, int, int, int]:
    return sizes.runs, sizes.naive_runs, sizes.warmup, sizes.agree_sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, help="agents in the entity store (default 10000)")
    parser.add_argument("--policies", type=int, help="policies in the set (default 120)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.decisions_baselines",
        "Policy decision baselines: naive and handle-based cedarpy, pycasbin "
        "(the database options do not apply)",
        argv,
        add_arguments=add_arguments,
    )
    note(machine_line())
    table = run(sizes_for(options))
    table.print()
    if options.json_path:
        write_json(options.json_path, [table], options)


if __name__ == "__main__":
    main()
