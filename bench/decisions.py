"""Policy decisions: in-process latency beside cedarpy and pycasbin; AuthZEN over HTTP.

One deployment per backend (``Settings(data_dir=tmp)``, ``build_services``, ``prepare``, as the
other benches), populated with the decision workload of :mod:`bench.decision_workload`:

- 100 owners (``UserService.create``) and 10,000 agents bulk-inserted as real ``agents`` /
  ``agent_roles`` rows (status, risk tier, owner, 1-3 roles ``r00``..``r39``, ``team``/``env``
  attributes), then ``services.runtime.load()``;
- the workload's 120 policies pushed with ``services.policies.push`` under the workload's
  schema adapted to Tether's model (:data:`TETHER_SCHEMA`: Tether's Agent attributes, tags and
  context, plus the workload's Tool/Dataset attributes and ``context.amount``); Tether's two
  base policies are in force above them, so every engine below decides the same 122 policies.

**In process** (one table): ``DecisionService.evaluate(Ask)`` per call — runtime checks and
Cedar, no ledger — p50/p99 on the workload's requests (cold: first call per request; warm:
afterwards), beside plain ``cedarpy`` with handles, naive ``cedarpy`` (policies and entities
as text on every call) and pycasbin on the same requests, policies and entities
(:mod:`bench.decisions_baselines`); and ``DecisionService.decide`` — the same plus the durable
group-commit ledger write — with N concurrent asyncio tasks (decisions/s), per backend. The
run checks that Tether and plain cedarpy agree on every Cedar-decided request.

**Over HTTP** (one table per backend): ``tether serve --workers 2`` on the same data; a load
generator in a separate process — ``wrk`` with a Lua script when installed, else a Python
asyncio raw-socket HTTP/1.1 client — posts ``/access/v1/evaluation`` with an admin user token
and with agent access tokens (``client_credentials`` at ``/oauth/token``): (a) as fast as it
can over many keep-alive connections, (b) open-loop at a fixed 1,000 req/s with latency taken
from each request's scheduled send time (no coordinated omission). ``GET /healthz`` with the
same generator is the floor.

Run: ``python -m bench.decisions [--quick] [--postgres URL] [--json FILE] [--workers 2]
[--connections N] [--duration S] [--rate R] [--loadgen auto|wrk|python] [--profile N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cedarpy
import httpx2 as httpx
import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select

from bench import decisions_baselines as baselines
from bench.common import (
    SQLITE,
    Options,
    Progress,
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
    USERS,
    AgentProfile,
    PolicySpec,
    ToolProfile,
    agent_profiles,
    dataset_classification,
    make_entities,
    make_requests,
    policy_specs,
    render,
    tool_profiles,
    user_id,
)
from bench.loadgen import HttpRequest, LoadGen, LoadResult
from bench.tokens import (
    Deployment,
    Server,
    basic_authorization,
    open_deployment,
    tether_server,
)
from tether.agents.models import AgentRoleRow, AgentRow
from tether.agents.values import spiffe_id
from tether.api import deps as api_deps
from tether.audit.events import EventType
from tether.audit.models import EventRow
from tether.clock import to_micros
from tether.container import Services
from tether.credentials.bearer import Caller
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text
from tether.policy import engine, source
from tether.policy.engine import CompiledPolicies
from tether.policy.service import BASE_POLICIES, BASE_POLICIES_TEXT
from tether.policy.values import Ask, Decision, Effect
from tether.principals import Role
from tether.tables import metadata

SEED = 7
INSERT_BATCH = 5000
EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
BATCH = 10  # evaluations per request in the AuthZEN batch row
HEALTHZ = "/healthz"
REPO = Path(__file__).resolve().parents[1]

# The workload's schema (bench.decision_workload.SCHEMA) in Tether's model: the Agent keeps
# every attribute Tether builds (status, risk_tier, owner, purpose, name; roles as parents;
# registry attributes as tags), the context is Tether's (chain, delegated, on_behalf_of) plus
# the workload's amount, and the resources keep the workload's attributes — required, since
# the policies read them without `has` — which the requests send as resource properties.
TETHER_SCHEMA = """\
type TetherContext = {
  chain: Set<String>,
  delegated: Bool,
  on_behalf_of?: String,
  amount?: Long,
};

entity Role;
entity User;
entity Agent in [Role] {
  status: String,
  risk_tier: String,
  owner: String,
  purpose: String,
  name: String,
} tags String;
entity Tool { server: String, mutating: Bool, sensitivity: Long };
entity Secret;
entity Dataset { classification: String };

action "mutating";
action "tool.call" appliesTo { principal: [Agent], resource: [Tool], context: TetherContext };
action "tool.write" in ["mutating"] appliesTo {
  principal: [Agent], resource: [Tool], context: TetherContext
};
action "secret.read" appliesTo { principal: [Agent], resource: [Secret], context: TetherContext };
action "dataset.read" appliesTo { principal: [Agent], resource: [Dataset], context: TetherContext };
action "dataset.write" in ["mutating"] appliesTo {
  principal: [Agent], resource: [Dataset], context: TetherContext
};
"""


@dataclass(frozen=True)
class Sizes:
    agents: int
    policies: int
    requests: int  # distinct in-process requests drawn from the workload
    eval_runs: int  # timed warm evaluate calls, and calls per fast baseline
    naive_runs: int  # naive cedarpy re-parses ~10k entities per call: ~0.25 s each
    decide_tasks: int  # concurrent asyncio tasks calling decide
    decide_seconds: float
    http_requests: int  # distinct request bodies per HTTP variant
    http_seconds: float  # per max-throughput run
    http_warmup: float  # per variant, before the first measured run
    rate: int  # fixed-rate target, requests/s
    fixed_seconds: float
    connections: int
    agent_clients: int  # agents with an API key and an access token
    workers: int
    blocks: int = 20  # alternating blocks of the in-process comparison


FULL = Sizes(agents=10_000, policies=120, requests=20_000, eval_runs=20_000, naive_runs=40,
             decide_tasks=64, decide_seconds=6.0, http_requests=5_000, http_seconds=10.0,
             http_warmup=3.0, rate=1000, fixed_seconds=10.0, connections=64, agent_clients=32,
             workers=2)  # fmt: skip
QUICK = Sizes(agents=2_000, policies=120, requests=2_000, eval_runs=2_000, naive_runs=10,
              decide_tasks=64, decide_seconds=2.0, http_requests=2_000, http_seconds=3.0,
              http_warmup=1.5, rate=1000, fixed_seconds=3.0, connections=64, agent_clients=8,
              workers=2, blocks=10)  # fmt: skip


# -- the world in Tether -----------------------------------------------------------------------
@dataclass
class World:
    """The workload loaded into one deployment, and how its names map to Tether's ids."""

    specs: list[PolicySpec]
    policies_text: str  # the workload's policies, as pushed
    version: str
    profiles: list[AgentProfile]
    ids: dict[str, str]  # workload agent id -> Tether agent id
    users: dict[str, str]  # workload user id -> Tether user id
    tools: dict[str, ToolProfile]

    @property
    def by_id(self) -> dict[str, AgentProfile]:
        return {p.id: p for p in self.profiles}


AGENTS = metadata.tables[AgentRow.__tablename__]
AGENT_ROLES = metadata.tables[AgentRoleRow.__tablename__]


def _compiled(svc: Services) -> CompiledPolicies:
    """The worker's compiled policy version (loading the runtime first if it is not yet)."""
    svc.runtime.ensure_current()
    compiled = svc.decisions.runtime.policies
    assert compiled is not None
    return compiled


def populate(dep: Deployment, sizes: Sizes) -> World:
    """Owners through UserService, agents bulk-inserted, the policies pushed, runtime loaded."""
    svc = dep.services
    specs = policy_specs(sizes.policies, SEED)
    text = render(specs)
    pushed = svc.policies.push(dep.admin, policies=text, schema=TETHER_SCHEMA,
                               note="decision benchmark")  # fmt: skip
    users: dict[str, str] = {}
    progress = Progress("creating owners (UserService.create)", USERS)
    for j in range(USERS):
        user = svc.users.create(dep.admin, username=f"owner-{j:03d}", role=Role.SUPERVISOR)
        users[user_id(j)] = user.id
        progress.update(j + 1)
    progress.finish()

    profiles = agent_profiles(sizes.agents, seed=SEED)
    now_us = to_micros(svc.clock.now())
    base_ms = now_us // 1000 - len(profiles)
    domain = svc.settings.trust_domain
    ids: dict[str, str] = {}
    progress = Progress("inserting agents", len(profiles))
    for start in range(0, len(profiles), INSERT_BATCH):
        agents: list[dict[str, Any]] = []
        roles: list[dict[str, Any]] = []
        for i in range(start, min(start + INSERT_BATCH, len(profiles))):
            p = profiles[i]
            agent_id = new_id(IdPrefix.AGENT, now_ms=base_ms + i)
            ids[p.id] = agent_id
            created_us = (base_ms + i) * 1000
            agents.append({
                "id": agent_id, "spiffe_id": spiffe_id(domain, agent_id),
                "name": f"bench-{p.id}", "owner_id": users[p.owner],
                "purpose": f"benchmark agent {i}: triages support tickets",
                "risk_tier": p.risk_tier, "status": p.status,
                "status_reason": None if p.status == "active" else "benchmark",
                "attributes": canonical_text(dict(p.tags)), "scopes": "[]",
                "parent_id": None, "lineage": "[]", "lineage_kind": None,
                "fingerprint": None, "fingerprint_digest": None,
                "created_at": created_us, "updated_at": created_us, "expires_at": None,
                "recertify_by": created_us + 180 * 86_400_000_000,
            })  # fmt: skip
            roles += [{"agent_id": agent_id, "role": r} for r in p.roles]
        with svc.db.write() as s:
            s.execute(insert(AGENTS), agents)
            s.execute(insert(AGENT_ROLES), roles)
        progress.update(start + len(agents))
    progress.finish()
    t0 = time.perf_counter()
    svc.runtime.load()
    loaded = len(svc.decisions.runtime.agents)
    compiled = _compiled(svc)
    note(f"  runtime.load(): {loaded:,} agents, policy {compiled.version} "
         f"({len(compiled.policies)} policies with the base) in "
         f"{time.perf_counter() - t0:.2f} s")  # fmt: skip
    if loaded != len(profiles) or compiled.version != pushed.version:
        raise RuntimeError("the runtime did not load the benchmark's agents and policies")
    tools = {t.id: t for t in tool_profiles(seed=SEED)}
    return World(specs, text, pushed.version, profiles, ids, users, tools)


def properties(world: World, rtype: str, rid: str) -> dict[str, Any]:
    """A resource's attributes, sent as the request's resource properties."""
    if rtype == "Tool":
        t = world.tools[rid]
        return {"server": t.server, "mutating": t.mutating, "sensitivity": t.sensitivity}
    if rtype == "Dataset":
        return {"classification": dataset_classification(int(rid[1:]))}
    return {}


def to_ask(world: World, req: dict[str, Any], *, delegation: bool = True) -> Ask:
    """A workload request as Tether's Ask. A delegated request acts for a human: the chain is
    (that human, the agent), on_behalf_of the human when the workload names one."""
    ctx = req["context"]
    extra = {"amount": ctx["amount"]} if "amount" in ctx else {}
    agent = world.ids[req["principal"]["id"]]
    rtype, rid = req["resource"]["type"], req["resource"]["id"]
    chain: tuple[str, ...] = ()
    on_behalf_of = None
    if delegation and ctx.get("delegated"):
        human = ctx.get("on_behalf_of") or world.by_id[req["principal"]["id"]].owner
        chain = (world.users[human], agent)
        if "on_behalf_of" in ctx:
            on_behalf_of = world.users[ctx["on_behalf_of"]]
    return Ask(agent, req["action"]["id"], rtype, rid, properties(world, rtype, rid), extra,
               chain, on_behalf_of, caller="bench")  # fmt: skip


def cedar_request(ask: Ask) -> dict[str, Any]:
    """The same request for plain cedarpy: the context Tether builds (chain, delegated,
    on_behalf_of, the caller's fields)."""
    ctx: dict[str, Any] = dict(ask.context)
    ctx["chain"] = list(ask.full_chain)
    ctx["delegated"] = len(ask.full_chain) > 1
    if ask.on_behalf_of is not None:
        ctx["on_behalf_of"] = ask.on_behalf_of
    return {
        "principal": {"type": "Agent", "id": ask.subject},
        "action": {"type": "Action", "id": ask.action},
        "resource": {"type": ask.resource_type, "id": ask.resource_id},
        "context": ctx,
    }


def cedar_entities(svc: Services) -> list[dict[str, Any]]:
    """Every entity plain cedarpy needs for the same decisions: the agents exactly as Tether
    builds them (runtime snapshot), the workload's tools, secrets and datasets (the attributes
    the requests send as properties), and the actions with their groups."""
    agents = [orjson.loads(v.entity) for v in svc.decisions.runtime.agents.values()]
    rest = [
        e for e in make_entities(0, seed=SEED)
        if e["uid"]["type"] not in ("User", "Role", "Agent")
    ]  # fmt: skip
    return agents + rest


# -- in process --------------------------------------------------------------------------------
@dataclass
class InProcess:
    """Figures for the one in-process table; ``decide`` gets a row per backend."""

    evaluate: dict[str, Any] = field(default_factory=dict)  # warm, memo off: a new request
    repeated: dict[str, Any] = field(default_factory=dict)  # warm, memo on: a repeated one
    cold: dict[str, Any] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)
    naive: dict[str, Any] = field(default_factory=dict)
    casbin: dict[str, Any] = field(default_factory=dict)
    casbin_fast: dict[str, Any] = field(default_factory=dict)
    delta: dict[str, Any] = field(default_factory=dict)  # cedarpy alone: the entity delta
    authorize: dict[str, Any] = field(default_factory=dict)  # cedarpy alone: on the slice
    agree: dict[str, Any] = field(default_factory=dict)
    casbin_agree: dict[str, Any] = field(default_factory=dict)
    decide: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def run_evaluate(dep: Deployment, world: World, sizes: Sizes, out: InProcess) -> None:
    svc = dep.services
    out.notes["load_before"] = os.getloadavg()[0]
    reqs = make_requests(sizes.requests, sizes.agents, seed=1, policies=sizes.policies,
                         world_seed=SEED)  # fmt: skip
    asks = [to_ask(world, r) for r in reqs]
    requests = [cedar_request(a) for a in asks]
    policies_text = BASE_POLICIES_TEXT + "\n" + world.policies_text
    entities = cedar_entities(svc)
    evaluate = svc.decisions.evaluate

    def tether(ask: Ask) -> bool:
        return evaluate(ask).allowed

    note(f"[decisions] Tether evaluate: {len(asks):,} requests, first calls (cold), then "
         f"{sizes.eval_runs:,} warm calls without and with the outcome memo")  # fmt: skip
    compiled = _compiled(svc)
    capacity = compiled.memo_capacity
    out.cold = baselines.time_calls(tether, asks, len(asks), warmup=0)
    # In alternating blocks, the order turning: a request never seen before (slices warm,
    # the memo off), the same requests again (each answered from the memo, filled by an
    # untimed pass first), and pycasbin's FastEnforcer on the same requests.
    for ask in asks:
        tether(ask)
    fast, fast_args, fast_build = baselines.casbin_case(entities, world.specs, requests,
                                                        fast=True)  # fmt: skip
    for args in fast_args[:200]:
        fast(args)

    def memo(on: bool) -> Callable[[], None]:
        def switch() -> None:  # the attribute, not set_memo_capacity: that forgets
            compiled.memo_capacity = capacity if on else 0

        return switch

    direct_before = compiled.direct_answers
    out.evaluate, out.repeated, out.casbin_fast = baselines.alternating(
        [baselines.Case(tether, asks, memo(False)), baselines.Case(tether, asks, memo(True)),
         baselines.Case(fast, fast_args)],
        sizes.eval_runs, blocks=sizes.blocks,
    )  # fmt: skip
    compiled.memo_capacity = capacity
    out.casbin_fast["build_ms"] = fast_build
    out.notes["direct_share"] = (compiled.direct_answers - direct_before) / max(1, sizes.eval_runs)
    out.notes["blocks"] = sizes.blocks
    out.notes["slice_keys"] = len(getattr(compiled, "_slices", ()))
    out.notes["slice_sets"] = len(getattr(compiled, "_by_ids", ()))
    # The cedarpy calls an evaluate makes for a new request, timed alone on the same
    # Cedar-decided requests, as the engine makes them: the resource's entity added to the
    # principal's cached handle (only where the request's slice reads it), and is_authorized
    # on the slice (the context only where the slice reads it) — the floor under evaluate's
    # Cedar part. (From the engine's internals; if they change, these rows are skipped.)
    deltas: list[tuple[cedarpy.Entities, str]] = []
    prepared: list[tuple[dict[str, Any], cedarpy.PolicySet, cedarpy.Entities]] = []
    try:
        for ask in asks:
            if evaluate(ask).stage != "cedar":
                continue
            c = svc.decisions.cedar_request(ask)
            sl = compiled._slice(c)
            if sl.empty:  # an empty slice is a deny without Cedar
                continue
            handle = compiled._principal_entities(c.principal_entity)
            if engine._needs_resource(sl.reads, c):
                deltas.append((handle, f"[{c.resource_entity}]"))
                handle = handle.with_added_json_str(deltas[-1][1])
            context = sl.reads.context or engine._ESCAPE in c.context
            prepared.append((engine._request(c, context=context), sl.policy_set, handle))
    except (AttributeError, TypeError) as exc:
        note(f"[decisions] cedarpy-alone rows skipped: the engine changed ({exc})")
    else:
        out.delta = baselines.time_calls(
            lambda d: bool(d[0].with_added_json_str(d[1])), deltas, sizes.eval_runs, warmup=200
        )
        out.authorize = baselines.time_calls(
            lambda p: engine._authorize(*p).allowed, prepared, sizes.eval_runs, warmup=200
        )
        out.notes["cedar_decided"] = len(prepared)
        out.notes["with_resource"] = len(deltas)
        out.notes["with_context"] = sum("context" in p[0] for p in prepared)
    out.notes["runtime_refused"] = sum(evaluate(a).stage == "runtime" for a in asks)
    out.notes["effects"] = dict(Counter(evaluate(a).effect.value for a in asks))

    note("[decisions] cedarpy with handles (same 122 policies, same entities and requests)")
    out.handles = baselines.handles_cedarpy(policies_text, entities, requests, sizes.eval_runs,
                                            warmup=200)  # fmt: skip
    note("[decisions] pycasbin Enforcer / FastEnforcer (role-based policies only)")
    out.casbin = baselines.casbin_baseline(entities, world.specs, requests, sizes.eval_runs,
                                           warmup=200)  # fmt: skip
    note(f"[decisions] naive cedarpy: {sizes.naive_runs} calls")
    sample = random.Random(2).sample(requests, min(len(requests), sizes.naive_runs))
    naive_decisions: list[bool] = []
    out.naive = baselines.naive_cedarpy(policies_text, entities, sample, sizes.naive_runs,
                                        warmup=1, decisions=naive_decisions)  # fmt: skip
    by_request = {orjson.dumps(r): a for r, a in zip(requests, asks, strict=True)}
    out.notes["naive_same"] = sum(
        evaluate(by_request[orjson.dumps(r)]).allowed == d
        for r, d in zip(sample, naive_decisions, strict=True)
    )
    note("[decisions] agreement: Tether evaluate vs plain cedarpy, every request")
    out.agree = agreement(svc, world, asks, requests, policies_text, entities)
    out.casbin_agree = baselines.agreement(entities, world.specs, requests[:5000])
    out.notes["load_after"] = os.getloadavg()[0]


def agreement(
    svc: Services, world: World, asks: Sequence[Ask], requests: list[dict[str, Any]],
    policies_text: str, entities: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Tether's decision vs plain cedarpy's on the same requests, policies and entities.

    Cedar's verdict is compared with Tether's (allow = Tether allows, or asks for approval
    because an ``@approval`` permit allowed); the three-way effect is compared with what
    Tether's approval rules make of Cedar's answer (an allow through an approval permit, or a
    deny by approval forbids alone that the rest would allow, asks for approval); the reasons
    (determining policy ids) are compared as sets."""
    policies = [*BASE_POLICIES, *source.parse(world.policies_text)]
    ids = [p.id for p in policies]
    approval_ids = {p.id for p in policies if p.approval}
    approval_forbids = {p.id for p in policies if p.approval and p.effect == "forbid"}
    full = cedarpy.PolicySet.from_str(policies_text)
    lifted = cedarpy.PolicySet.from_str(
        "\n".join(p.text for p in policies if p.id not in approval_forbids)
    )
    handle = cedarpy.Entities.from_json_str(json.dumps(entities))
    results = cedarpy.is_authorized_batch(requests, full, handle)
    counts = Counter[str]()
    mismatches: list[str] = []
    for ask, request, res in zip(asks, requests, results, strict=True):
        d = svc.decisions.evaluate(ask)
        reasons = {ids[int(r.removeprefix("policy"))] for r in res.diagnostics.reasons}
        if res.allowed:
            expect = Effect.APPROVAL_REQUIRED if reasons & approval_ids else Effect.ALLOW
        elif reasons and reasons <= approval_forbids and \
                cedarpy.is_authorized(request, lifted, handle).allowed:  # fmt: skip
            expect = Effect.APPROVAL_REQUIRED
        else:
            expect = Effect.DENY
        stage = "cedar" if d.stage == "cedar" else "runtime"
        counts[f"{stage}_n"] += 1
        # Cedar allowed unless a forbid decided: approval through an approval forbid (alone,
        # the rest allowing) is a Cedar deny that Tether turns into approval_required.
        tether_allows = d.effect is Effect.ALLOW or (
            d.effect is Effect.APPROVAL_REQUIRED and not set(d.reasons) & approval_forbids
        )
        counts[f"{stage}_verdict"] += tether_allows == res.allowed
        counts[f"{stage}_effect"] += d.effect is expect
        if stage == "cedar":
            counts["cedar_reasons"] += set(d.reasons) == reasons or (
                d.effect is Effect.APPROVAL_REQUIRED and set(d.reasons) >= reasons
            )
        if stage == "cedar" and (d.effect is not expect or tether_allows != res.allowed):
            mismatches.append(f"{request}: Tether {d.effect.value} {d.reasons}, "
                              f"cedarpy {res.allowed} {sorted(reasons)}")  # fmt: skip
    cedar_n = counts["cedar_n"]
    out = {
        "n": len(asks), "cedar_decided": cedar_n, "runtime_refused": counts["runtime_n"],
        "verdict": counts["cedar_verdict"] / cedar_n if cedar_n else math.nan,
        "effect": counts["cedar_effect"] / cedar_n if cedar_n else math.nan,
        "reasons": counts["cedar_reasons"] / cedar_n if cedar_n else math.nan,
        "runtime_verdict": counts["runtime_verdict"] / counts["runtime_n"]
        if counts["runtime_n"] else math.nan,
        "mismatches": mismatches[:5],
    }  # fmt: skip
    if mismatches:
        note(f"[decisions] WARNING: {len(mismatches)} Cedar-decided requests disagree; first: "
             f"{mismatches[0]}")  # fmt: skip
    return out


def _batch_stats() -> tuple[float, float]:
    s = REGISTRY.get_sample_value("tether_ledger_group_commit_batch_size_sum") or 0.0
    c = REGISTRY.get_sample_value("tether_ledger_group_commit_batch_size_count") or 0.0
    return s, c


def run_decide(
    dep: Deployment, world: World, sizes: Sizes, *, approvals: bool = True
) -> dict[str, Any]:
    """``DecisionService.decide`` from N concurrent asyncio tasks for a fixed time: evaluate,
    then the durable group-commit write of its ledger event before the answer."""
    svc = dep.services
    reqs = make_requests(sizes.requests, sizes.agents, seed=4, policies=sizes.policies,
                         world_seed=SEED)  # fmt: skip
    asks = [to_ask(world, r) for r in reqs]
    if not approvals:
        asks = [a for a in asks if svc.decisions.evaluate(a).effect is not Effect.APPROVAL_REQUIRED]
    latencies: list[float] = []
    effects = Counter[str]()
    errors: list[str] = []
    with svc.db.read() as s:
        before = s.scalar(select(func.count()).select_from(EventRow)) or 0
    batch0 = _batch_stats()
    compiled = _compiled(svc)
    capacity = compiled.memo_capacity
    compiled.set_memo_capacity(0)  # the asks cycle: every decision by Cedar, not the memo

    async def load(seconds: float, record: bool) -> float:
        start = time.perf_counter()
        deadline = start + seconds
        decide = svc.decisions.decide

        async def task(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                ask = asks[i % len(asks)]
                i += sizes.decide_tasks
                t0 = time.perf_counter()
                try:
                    d: Decision = await decide(ask)
                except Exception as exc:  # reported, not counted
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if record:
                    latencies.append(time.perf_counter() - t0)
                    effects[d.effect.value] += 1
                    if d.event_id is None:
                        errors.append(f"no event id: {d}")

        await asyncio.gather(*(task(k) for k in range(sizes.decide_tasks)))
        return time.perf_counter() - start

    asyncio.run(load(min(1.0, sizes.decide_seconds / 3), False))  # warm-up
    batch0 = _batch_stats()
    cpu0 = time.process_time()
    wall = asyncio.run(load(sizes.decide_seconds, True))
    cpu = time.process_time() - cpu0
    batch1 = _batch_stats()
    compiled.set_memo_capacity(capacity)
    with svc.db.read() as s:
        after = s.scalar(select(func.count()).select_from(EventRow)) or 0
    n = len(latencies)
    commits = batch1[1] - batch0[1]
    return {
        "n": n, "wall_s": wall, "per_second": n / wall if wall else math.nan,
        "p50_us": percentile(latencies, 50) * 1e6, "p99_us": percentile(latencies, 99) * 1e6,
        "allowed": effects.get("allow", 0), "denied": n - effects.get("allow", 0),
        "effects": dict(effects), "errors": len(errors), "first_error": errors[0] if errors else "",
        "cpu_per_call_us": cpu / n * 1e6 if n else math.nan,
        "events_per_commit": (batch1[0] - batch0[0]) / commits if commits else math.nan,
        "ledger_events_total": after - before, "tasks": sizes.decide_tasks,
        "approvals": approvals,
    }  # fmt: skip


def inprocess_table(ip: InProcess, sizes: Sizes, backends: Sequence[str]) -> ResultTable:
    h = ip.handles
    table = ResultTable(
        f"Policy decisions in process, {sizes.agents:,} agents, {sizes.policies} + 2 base "
        "policies — latency per decision (lower is better)",
        ["decision engine", "calls", "p50", "p99", "decisions/s", "allowed / denied",
         "p50 ÷ handles"],
    )  # fmt: skip
    table.rows += [
        baselines.row("Tether DecisionService.evaluate, new request, 1 thread", ip.evaluate, h),
        baselines.row("  same, repeated request (outcome memo)", ip.repeated, h),
        baselines.row("  same, first call per request (slice cache cold)", ip.cold, h),
    ]
    if ip.delta:
        table.rows += [
            _part_row(
                "  cedarpy alone: with_added_json_str (the resource, where read)", ip.delta, h
            ),
            _part_row("  cedarpy alone: is_authorized on the request's slice", ip.authorize, h),
        ]
    for backend in backends:
        for key, label in ((backend, "full mix"), (f"{backend}/no-approval", "no approvals")):
            d = ip.decide.get(key)
            if d:
                cells = baselines.row(f"Tether decide + durable ledger, {d['tasks']} tasks, "
                                      f"{backend} ({label})", d)  # fmt: skip
                table.rows.append(cells)
    table.rows += [
        baselines.row("cedarpy, handles parsed once, 1 thread", h, h),
        baselines.row("naive cedarpy (policies + entities as text)", ip.naive, h),
        baselines.row("pycasbin Enforcer (RBAC part only)", ip.casbin, h),
        baselines.row("pycasbin FastEnforcer (RBAC part only)", ip.casbin_fast, h),
    ]
    a, ca, n = ip.agree, ip.casbin_agree, ip.notes
    eff = ", ".join(f"{k} {v:,}" for k, v in sorted(n["effects"].items()))
    table.footnotes += [
        f"targets (issue 21): a new request's p50 ≤ 0.8x pycasbin FastEnforcer's on the same "
        f"requests: {'' if ip.evaluate['p50_us'] <= 0.8 * ip.casbin_fast['p50_us'] else 'NOT '}"
        f"met ({fmt_latency(ip.evaluate['p50_us'] / 1e6)} = "
        f"{ip.evaluate['p50_us'] / ip.casbin_fast['p50_us']:.2f}x "
        f"{fmt_latency(ip.casbin_fast['p50_us'] / 1e6)}); a memo hit ≤ 10 µs: "
        f"{'met' if ip.repeated['p50_us'] <= 10 else 'NOT met'} "
        f"({fmt_latency(ip.repeated['p50_us'] / 1e6)}). These three rows were timed in "
        f"{n['blocks']} alternating blocks in the same run; "
        f"{n['direct_share']:.0%} of the new requests were decided in Python "
        "(tether.policy.direct: every policy of the slice plain), the rest by Cedar.",
        f"same inputs for every engine: the workload's {sizes.policies} policies + Tether's 2 "
        f"base policies; {sizes.requests:,} requests (60 % on duty, ~20 % delegated); "
        f"entities = the {sizes.agents:,} agents as Tether's runtime builds them + 200 tools, 50 "
        "secrets, 50 datasets + the action groups. Tether's effects on them: "
        f"{eff} ({n['runtime_refused']:,} refused before Cedar: agent not active).",
        f"evaluate = runtime checks + the request's slice of the policies decided (in Python "
        "when all its policies are plain, else by Cedar on its pre-parsed policy set), no "
        "ledger; new request = slices compiled, the outcome memo off (decided every call); "
        "repeated = the same requests with the memo on (each answered from it after the "
        "runtime checks); "
        f"cold = the first call for each request ({n['slice_keys']:,} slice keys, "
        f"{n['slice_sets']:,} distinct policy subsets compiled during it). Timed one call at a "
        "time (perf_counter_ns); decisions/s = calls over their summed times. 'cedarpy "
        "alone' = the cedarpy calls evaluate makes for a new request, timed alone as the "
        "engine makes them: the resource's entity added to the principal's cached handle "
        f"(on the {n.get('with_resource', 0):,} of {n.get('cedar_decided', 0):,} "
        "Cedar-decided requests whose slice reads the resource) and is_authorized on the "
        f"request's slice (with the context on the {n.get('with_context', 0):,} whose slice "
        "reads it) — the floor under evaluate's Cedar part; the rest of evaluate is Tether's "
        "Python.",
        f"agreement, Tether evaluate vs cedarpy with handles (same policies, entities, "
        f"requests): allow/deny {a['verdict']:.2%}, three-way effect {a['effect']:.2%}, reasons "
        f"{a['reasons']:.2%} on {a['cedar_decided']:,} Cedar-decided requests; on the "
        f"{a['runtime_refused']:,} Tether refused before Cedar, Cedar's verdict (deny, "
        f"tether.active-only) agrees on {a['runtime_verdict']:.2%}. Naive cedarpy = Tether on "
        f"{n['naive_same']} of {ip.naive['n']} sampled calls.",
        "decide = evaluate (outcome memo off) + the decision event made durable by group "
        "commit before the answer (SQLite WAL synchronous=FULL / PostgreSQL "
        "synchronous_commit=on), N asyncio tasks in this process; decisions/s over the wall "
        "time, p50/p99 per decide call. approval_required answers run the approval checkpoint "
        "(read, open or use an approval) as a job inside the same group commit; 'no approvals' "
        "drops those requests.",
        f"naive cedarpy: policies text + json.dumps(entities) per call, {ip.naive['n']} calls; "
        f"handles: PolicySet.from_str {h['parse_policies_ms']:.1f} ms, Entities.from_json_str "
        f"{h['parse_entities_ms']:.0f} ms once. pycasbin: RBAC twin of the "
        f"{sum(s.rbac for s in ip_specs(sizes))} role-based permits, = Cedar-RBAC-only on "
        f"{ca['agree_rbac']:.2%}, = full Cedar on {ca['agree_full']:.2%} of {ca['n']:,}.",
        f"load average (1 min) {n['load_before']:.1f} before the evaluate and baseline rows, "
        f"{n['load_after']:.1f} after: other work on this shared machine shows in the p99s.",
    ]
    for key, d in ip.decide.items():
        extra = ", ".join(f"{k} {v:,}" for k, v in sorted(d["effects"].items()))
        table.footnotes.append(
            f"decide {key}: {d['n']:,} decisions in {d['wall_s']:.1f} s ({extra}); "
            f"{d['events_per_commit']:.1f} events per group commit; CPU "
            f"{fmt_latency(d['cpu_per_call_us'] / 1e6)} per decision (this process); "
            f"errors {d['errors']}" + (f" (first: {d['first_error'][:150]})" if d["errors"] else "")
        )
    table.records += [
        {"engine": "tether_evaluate", **ip.evaluate},
        {"engine": "tether_evaluate_repeated", **ip.repeated},
        {"engine": "tether_evaluate_cold", **ip.cold},
        {"engine": "cedarpy_alone_entity_delta", **ip.delta},
        {"engine": "cedarpy_alone_is_authorized_slice", **ip.authorize},
        *({"engine": f"tether_decide_{k}", **v} for k, v in ip.decide.items()),
        {"engine": "cedarpy_handles", **ip.handles},
        {"engine": "cedarpy_naive", **ip.naive},
        {"engine": "casbin", **ip.casbin},
        {"engine": "casbin_fast", **ip.casbin_fast},
        {"engine": "agreement_tether_cedarpy", **ip.agree},
        {"engine": "agreement_casbin_cedarpy", **ip.casbin_agree},
        {"engine": "notes", **ip.notes},
    ]
    return table


def _part_row(label: str, figures: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    """A row for a part of evaluate: no decision of its own to count."""
    cells = baselines.row(label, figures, floor)
    cells[5] = "-"
    return cells


def ip_specs(sizes: Sizes) -> list[PolicySpec]:
    return policy_specs(sizes.policies, SEED)


# -- over HTTP ---------------------------------------------------------------------------------
def authzen_body(world: World, req: dict[str, Any]) -> bytes:
    """The workload request as an AuthZEN evaluation. The caller cannot set chain, delegated
    or on_behalf_of (Tether sets them from the token), so these requests are not delegated."""
    rtype, rid = req["resource"]["type"], req["resource"]["id"]
    ctx = {"amount": req["context"]["amount"]} if "amount" in req["context"] else {}
    return orjson.dumps({
        "subject": {"type": "agent", "id": world.ids[req["principal"]["id"]]},
        "action": {"name": req["action"]["id"]},
        "resource": {"type": rtype, "id": rid, "properties": properties(world, rtype, rid)},
        "context": ctx,
    })  # fmt: skip


def authzen_batch(world: World, reqs: Sequence[dict[str, Any]]) -> bytes:
    """Several workload requests as one AuthZEN ``evaluations`` call (no defaults shared)."""
    items = [orjson.loads(authzen_body(world, r)) for r in reqs]
    return orjson.dumps({"evaluations": items})


def agent_requests(
    dep: Deployment, server: Server, world: World, sizes: Sizes, secrets: dict[str, str]
) -> list[HttpRequest]:
    """Requests of the agents that hold a key, each with its own access token (an agent may
    only ask about itself)."""
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for wid, secret in secrets.items():
            tid = world.ids[wid]
            r = client.post("/oauth/token", content=b"grant_type=client_credentials", headers={
                "Authorization": basic_authorization(tid, secret),
                "Content-Type": "application/x-www-form-urlencoded",
            })  # fmt: skip
            if r.status_code != 200:
                raise RuntimeError(f"token request failed: {r.status_code} {r.text[:300]}")
            tokens[wid] = r.json()["access_token"]
    reqs = make_requests(sizes.http_requests, sizes.agents, seed=3, policies=sizes.policies,
                         world_seed=SEED, principals=list(secrets))  # fmt: skip
    return [
        HttpRequest("POST", EVALUATION, f"Bearer {tokens[r['principal']['id']]}",
                    authzen_body(world, r))
        for r in reqs
    ]  # fmt: skip


def key_holders(dep: Deployment, world: World, count: int) -> dict[str, str]:
    """``count`` active agents with an API key each (workload id -> secret)."""
    chosen = [p for p in world.profiles if p.status == "active"][:count]
    out = {}
    for p in chosen:
        _cred, secret = dep.services.credentials.create_api_key(dep.admin, world.ids[p.id])
        out[p.id] = secret
    return out


def decision_events(dep: Deployment) -> int:
    with dep.services.db.read() as s:
        return s.scalar(
            select(func.count()).select_from(EventRow).where(EventRow.type == EventType.DECISION)
        ) or 0  # fmt: skip


HTTP_HEADERS = ["load", "caller", "conns", "answered", "decisions/s", "p50", "p99", "max",
                "errors", "allowed", "server CPU/decision", "loadgen CPU/decision",
                "÷ /healthz"]  # fmt: skip


def run_http(
    dep: Deployment, world: World, sizes: Sizes, options: Options, loadgen_kind: str
) -> ResultTable:
    tag = f"[decisions/{dep.backend}]"
    secrets = key_holders(dep, world, sizes.agent_clients)
    admin_token = dep.services.settings.admin_token_path.read_text().strip()
    reqs = make_requests(sizes.http_requests, sizes.agents, seed=2, policies=sizes.policies,
                         world_seed=SEED)  # fmt: skip
    admin = [HttpRequest("POST", EVALUATION, f"Bearer {admin_token}", authzen_body(world, r))
             for r in reqs]  # fmt: skip
    batch = [
        HttpRequest("POST", EVALUATIONS, f"Bearer {admin_token}",
                    authzen_batch(world, reqs[i : i + BATCH]))
        for i in range(0, len(reqs) - BATCH + 1, BATCH)
    ]  # fmt: skip
    health = [HttpRequest("GET", HEALTHZ, "", b"")]
    dep.services.runtime.stop()  # this process stays out of the server's way
    note(f"{tag} starting tether serve --workers {sizes.workers}")
    t0 = time.perf_counter()
    events0 = decision_events(dep)
    load0 = os.getloadavg()[0]
    results: list[tuple[str, str, LoadResult]] = []
    # Every request is decided by Cedar: the HTTP bodies repeat (a few thousand, cycled), so
    # with the outcome memo on they would measure memo hits, not decisions.
    memo_off = {"TETHER_DECISION_MEMO_SIZE": "0"}
    with (
        tether_server(dep, sizes.workers, memo_off) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        note(f"{tag} server ready in {time.perf_counter() - t0:.1f} s; load generator: "
             f"{loadgen_kind}")  # fmt: skip
        agent = agent_requests(dep, server, world, sizes, secrets)
        gen = LoadGen(server, Path(tmp), loadgen_kind)
        conns = sizes.connections
        for label, rs in (("admin", admin), ("agent", agent)):
            note(f"{tag} warm-up {label}: {sizes.http_warmup:g} s")
            w = gen.max_rate(rs, connections=conns, seconds=sizes.http_warmup, expect="decision")
            if w.ok == 0:
                raise RuntimeError(f"no decision answered during warm-up: {w.first_error}")
        variants = (
            ("GET /healthz", "-", health, "status"),
            (f"POST {EVALUATION}", "admin user token", admin, "decision"),
            (f"POST {EVALUATION}", f"{len(secrets)} agent access tokens", agent, "decision"),
        )
        batched = (f"POST {EVALUATIONS}", f"admin user token, {BATCH} per request", batch,
                   "decision")  # fmt: skip
        for what, caller, rs, expect in (*variants, batched):
            note(f"{tag} max throughput: {what} ({caller}), {conns} connections, "
                 f"{sizes.http_seconds:g} s")  # fmt: skip
            r = gen.max_rate(rs, connections=conns, seconds=sizes.http_seconds, expect=expect)
            if rs is batch:
                r.per_request = BATCH
            results.append((what, caller, r))
        for what, caller, rs, expect in variants:
            note(f"{tag} fixed {sizes.rate:,} req/s: {what} ({caller}), {sizes.fixed_seconds:g} s")
            r = gen.fixed_rate(rs, rate=sizes.rate, connections=conns,
                               seconds=sizes.fixed_seconds, expect=expect)  # fmt: skip
            results.append((what, caller, r))
        # Where the target rate is more than the server sustains, its p99 is the backlog's:
        # also the latency at half the throughput just measured, a load it does sustain.
        peak = min(r.rate for w, _, r in results if w.endswith(EVALUATION) and r.mode == "max")
        half = max(50, int(peak / 2 / 50) * 50)
        if half < sizes.rate:
            for what, caller, rs, expect in variants[1:]:
                note(f"{tag} fixed {half:,} req/s (half the max): {what} ({caller}), "
                     f"{sizes.fixed_seconds:g} s")  # fmt: skip
                r = gen.fixed_rate(rs, rate=half, connections=conns,
                                   seconds=sizes.fixed_seconds, expect=expect)  # fmt: skip
                results.append((what, caller, r))
    events = decision_events(dep) - events0
    table = http_table(dep, sizes, results, events, loadgen_kind)
    table.footnotes.append(
        f"load average (1 min) {load0:.1f} before the server started, {os.getloadavg()[0]:.1f} "
        "after the runs: other work on this shared machine takes CPU from both server and "
        "load generator."
    )
    return table


def http_table(
    dep: Deployment, sizes: Sizes, results: list[tuple[str, str, LoadResult]], events: int,
    loadgen_kind: str,
) -> ResultTable:  # fmt: skip
    table = ResultTable(
        f"AuthZEN decisions over HTTP on {dep.backend}, {sizes.workers} workers, durable ledger "
        f"— {sizes.agents:,} agents, {sizes.policies} + 2 policies",
        HTTP_HEADERS,
    )
    floors = {r.mode: r for what, _, r in results if what == "GET /healthz"}
    for what, caller, r in results:
        load = (f"max, {r.generator}" if r.mode == "max" else
                f"fixed {r.target_rate:,.0f}/s, {r.generator}")  # fmt: skip
        floor = floors.get(r.mode)
        n = r.decisions  # = answered requests, except for the batch row
        table.rows.append([
            f"{what} · {load}", caller, str(r.connections), f"{r.ok:,}",
            fmt_rate(r.rate * r.per_request), fmt_latency(r.p50), fmt_latency(r.p99),
            fmt_latency(r.max), f"{r.errors:,}",
            f"{r.allowed / n:.0%}" if n and what != "GET /healthz" else "-",
            fmt_latency(r.server_cpu / n) if n else "-",
            fmt_latency(r.gen_cpu / n) if n else "-",
            fmt_ratio(r.rate * r.per_request / floor.rate) if floor and floor.rate else "-",
        ])  # fmt: skip
        table.records.append({
            "backend": dep.backend, "what": what, "caller": caller, "mode": r.mode,
            "generator": r.generator, "connections": r.connections, "seconds": r.seconds,
            "answered": r.ok, "per_s": r.rate, "p50_s": r.p50, "p99_s": r.p99, "max_s": r.max,
            "non200": r.non200, "bad_body": r.bad_body, "socket_errors": r.socket_errors,
            "unanswered": r.unanswered, "first_error": r.first_error, "allowed": r.allowed,
            "server_cpu_s": r.server_cpu, "loadgen_cpu_s": r.gen_cpu,
            "target_rate": r.target_rate, "send_delay_p99_s": r.send_delay_p99,
            "decisions_per_request": r.per_request, "decisions_per_s": r.rate * r.per_request,
        })  # fmt: skip
    best = max((r.rate for w, _, r in results if w.endswith(EVALUATION) and r.mode == "max"),
               default=math.nan)  # fmt: skip
    batched = [r for w, _, r in results if w.endswith(EVALUATIONS)]
    fixed = [
        r for w, _, r in results
        if w != "GET /healthz" and r.mode == "fixed" and r.target_rate == sizes.rate
    ]  # fmt: skip
    half = [
        r for w, _, r in results
        if w != "GET /healthz" and r.mode == "fixed" and r.target_rate != sizes.rate
    ]  # fmt: skip
    table.footnotes += [
        f"target: ≥ 3,000 decisions/s over HTTP: {'met' if best >= 3000 else 'NOT met'} "
        f"(best {fmt_rate(best)} with one evaluation per request"
        + (
            f"; {fmt_rate(batched[0].rate * BATCH)} in AuthZEN batches of {BATCH}"
            if batched
            else ""
        )
        + f"). At a fixed {sizes.rate:,} req/s: p99 "
        + ", ".join(fmt_latency(r.p99) for r in fixed)
        + " (admin, agent)"
        + (
            f"; at {half[0].target_rate:,.0f} req/s (half the max): p99 "
            + ", ".join(fmt_latency(r.p99) for r in half)
            if half
            else ""
        )
        + ".",
        f"server = `tether serve --workers {sizes.workers}` (uvicorn, httptools, uvloop); every "
        "answer is a decision event made durable by group commit before it is sent "
        f"({'WAL, synchronous=FULL' if dep.backend == SQLITE else 'synchronous_commit=on'}); "
        "TETHER_DECISION_MEMO_SIZE=0: Cedar decides every request (the bodies repeat, and "
        "would otherwise be answered from the outcome memo). "
        f"Ledger: {events:,} decision events written during the HTTP runs (warm-ups included).",
        f"load generator in its own process on the same 2 CPUs: {loadgen_kind}"
        + (
            " (1 thread, Lua script: pre-formatted requests, status and body checked)"
            if loadgen_kind == "wrk"
            else " (Python asyncio raw sockets)"
        )
        + " for 'max' — closed loop, latency from send; Python asyncio raw sockets for "
        "'fixed' — open loop, each request scheduled at i / rate and its latency taken from "
        "that time (queueing for a free connection included: no coordinated omission).",
        f"requests: {sizes.http_requests:,} distinct AuthZEN bodies per caller (the workload's "
        "mix without delegation, which only a token can carry), cycled; admin = the bootstrap "
        f"admin's user token (asks for any agent); agent = {sizes.agent_clients} active agents, "
        "each with an API key and a client_credentials access token, asking about itself; "
        f"batch = the admin's requests {BATCH} at a time in one POST {EVALUATIONS} (answered = "
        f"HTTP requests, decisions/s = {BATCH} x their rate, p50/p99 per HTTP request). "
        "errors = non-200 + 200 without 'decision' + socket errors + unanswered; allowed = "
        'share of decisions with "decision": true.',
        f"warm-up: {sizes.http_warmup:g} s per caller before the runs; max runs "
        f"{sizes.http_seconds:g} s, fixed runs {sizes.fixed_seconds:g} s each. CPU per decision "
        "= the server process tree's (/proc) and the load generator's (rusage), over decisions "
        "(= requests except in the batch row).",
    ]
    cpu = [(what, caller, r) for what, caller, r in results
           if r.mode == "max" and what != "GET /healthz" and r.ok]  # fmt: skip
    if cpu:
        table.footnotes.append(
            "CPU-bound ceiling on this machine's 2 CPUs if nothing else ran: 2 s / (server + "
            "load generator CPU per decision) = " + ", ".join(
                f"{2 / ((r.server_cpu + r.gen_cpu) / r.decisions):,.0f}/s ({caller})"
                for _, caller, r in cpu
            ) + "."
        )  # fmt: skip
    for what, caller, r in results:
        if r.mode == "fixed" and r.rate < 0.95 * r.target_rate:
            table.footnotes.append(
                f"{what} ({caller}): the server could not sustain {r.target_rate:,.0f}/s "
                f"(achieved {fmt_rate(r.rate)} = answers over the time to the last answer); "
                "its latencies are mostly the backlog's queueing."
            )
        if r.errors:
            table.footnotes.append(
                f"{what} ({caller}, {r.mode}): {r.non200:,} non-200, {r.bad_body:,} without "
                f"decision, {r.socket_errors:,} socket errors, {r.unanswered:,} unanswered; "
                f"first: {r.first_error[:200]}"
            )
        if r.mode == "fixed" and not math.isnan(r.send_delay_p99):
            table.footnotes.append(
                f"{what} ({caller}, fixed): p99 wait from scheduled time to send "
                f"{fmt_latency(r.send_delay_p99)} (generator lag + waiting for a free connection)"
            )
    return table


# -- profile -----------------------------------------------------------------------------------
AREAS = [  # first match wins; matched against "file:function" (builtins: "~:<method …>")
    ("cedarpy (Rust)", ("cedarpy",)),
    ("SQLite / psycopg driver", ("sqlite3", "psycopg")),
    ("tether.policy.engine", ("tether/policy/engine",)),
    ("tether.policy.decide", ("tether/policy/decide",)),
    (
        "tether auth (bearer, deps, users)",
        ("tether/credentials", "tether/api/deps", "tether/users", "joserfc"),
    ),
    ("tether.audit (events, ledger)", ("tether/audit", "tether/ids", "tether/jsonutil")),
    ("tether.api (routes, middleware) + tether.fields", ("tether/api", "tether/fields")),
    ("anyio (sync deps run in the threadpool)", ("anyio",)),
    ("fastapi", ("fastapi",)),
    ("starlette", ("starlette",)),
    ("pydantic", ("pydantic",)),
    ("prometheus_client", ("prometheus_client",)),
    ("sqlalchemy", ("sqlalchemy",)),
    ("orjson / json / hashlib", ("orjson", "json", "hashlib", "sha256")),
    ("asyncio", ("asyncio",)),
    ("threads, locks, sockets", ("threading", "_thread", "queue", "concurrent", "_socket", "lock")),
]
IDLE = ("epoll", "select.select")  # the event loop waiting: not work


def _area(filename: str, name: str) -> str:
    key = f"{filename}:{name}"
    for label, needles in AREAS:
        if any(n in key for n in needles):
            return label
    return "other (dataclasses, typing, builtins…)"


async def _services_async(request: Request) -> Services:
    """What-if for the profile: ``tether.api.deps.services`` as ``async def`` (FastAPI runs a
    plain ``def`` dependency in the threadpool)."""
    svc: Services = request.app.state.services
    return svc


async def _caller_async(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(api_deps._bearer)],
) -> Caller:
    """What-if for the profile: ``tether.api.deps.caller`` as ``async def``."""
    return api_deps.caller(request, creds)


class AsgiDriver:
    """Calls the ASGI app directly (no uvicorn, no sockets) with ``concurrency`` tasks."""

    def __init__(self, app: Any, port: int, concurrency: int = 32) -> None:
        self.app = app
        self.port = port
        self.concurrency = concurrency

    async def one(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
                  body: bytes) -> int:  # fmt: skip
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", self.port),
        }  # fmt: skip
        sent = False
        status = [0]

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]

        await self.app(scope, receive, send)
        return status[0]

    def run(
        self, items: Sequence[tuple[str, str, list[tuple[bytes, bytes]], bytes]], n: int,
        prof: cProfile.Profile | None = None,
    ) -> tuple[list[int], float, float]:  # fmt: skip
        """``n`` requests cycling over ``items``: (statuses, wall s, process CPU s)."""

        async def drive() -> list[int]:
            statuses: list[int] = []
            it = iter(range(n))

            async def worker() -> None:
                for i in it:
                    statuses.append(await self.one(*items[i % len(items)]))

            if prof is not None:
                prof.enable()
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            if prof is not None:
                prof.disable()
            return statuses

        cpu0, t0 = time.process_time(), time.perf_counter()
        statuses = asyncio.run(drive())
        return statuses, time.perf_counter() - t0, time.process_time() - cpu0


class CommitMeter:
    """Wraps the group committer's ``_commit`` (the writer thread's one batch): counts batches
    and events and sums the writer thread's CPU (``time.thread_time``); optionally profiles."""

    def __init__(self, svc: Services) -> None:
        self.committer = svc.committer
        self.original = svc.committer._commit
        self.cpu = 0.0
        self.events = 0
        self.batches = 0
        self.prof: cProfile.Profile | None = None

    def __enter__(self) -> CommitMeter:
        def measured(batch: Any) -> None:
            t0 = time.thread_time()
            if self.prof is not None:
                self.prof.enable()
            try:
                self.original(batch)
            finally:
                if self.prof is not None:
                    self.prof.disable()
                self.cpu += time.thread_time() - t0
                self.events += len(batch)
                self.batches += 1

        self.committer._commit = measured  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.committer._commit = self.original  # type: ignore[method-assign]

    def summary(self) -> str:
        if not self.events:
            return ""
        return (f"; writer thread {self.cpu / self.events * 1e6:.0f} µs CPU per event, "
                f"{self.events / self.batches:.1f} events per commit")  # fmt: skip


def profile_asgi(dep: Deployment, world: World, sizes: Sizes, count: int) -> str:
    """Where an AuthZEN request's CPU goes, in this process, through the ASGI app (no uvicorn,
    no sockets), 32 concurrent, admin token: first a ladder of unprofiled costs (CPU per
    request), then cProfile of the event-loop thread and of the group-commit thread."""
    from tether.api.app import create_app

    svc = dep.services
    svc.runtime.start()
    _compiled(svc).set_memo_capacity(0)  # as the HTTP runs: Cedar decides each one
    app = create_app(svc)
    driver = AsgiDriver(app, dep.port)
    admin_token = svc.settings.admin_token_path.read_text().strip()
    reqs = make_requests(max(count, 1000), sizes.agents, seed=5, policies=sizes.policies,
                         world_seed=SEED)  # fmt: skip
    host = f"127.0.0.1:{dep.port}".encode()
    auth = [(b"host", host), (b"authorization", f"Bearer {admin_token}".encode()),
            (b"content-type", b"application/json")]  # fmt: skip
    evaluations = [("POST", EVALUATION, auth, authzen_body(world, r)) for r in reqs]
    health = [("GET", HEALTHZ, [(b"host", host)], b"")]
    asks = [to_ask(world, r, delegation=False) for r in reqs]

    driver.run(evaluations, min(count, 2000))  # warm: slices, caches, first-call costs
    driver.run(health, 500)
    ladder: list[tuple[str, float, float, str]] = []  # label, req/s, CPU µs/req, extra

    def rung(label: str, items: Sequence[Any], n: int) -> None:
        with CommitMeter(svc) as meter:
            statuses, wall, cpu = driver.run(items, n)
        bad = sum(x != 200 for x in statuses)
        extra = meter.summary() + (f"; {bad} non-200" if bad else "")
        ladder.append((label, n / wall, cpu / n * 1e6, extra))

    real_decide = svc.decisions.decide
    stub = Decision(Effect.DENY, ("bench.stub",), world.version, event_id="evt_stub")

    async def stub_decide(ask: Ask) -> Decision:
        del ask
        return stub

    rung("GET /healthz (FastAPI + Tether's two middlewares, nothing else)", health, count)
    svc.decisions.decide = stub_decide  # type: ignore[method-assign]
    try:
        rung(f"POST {EVALUATION}, decide() stubbed: HTTP layer only (body, auth, models)",
             evaluations, count)  # fmt: skip
    finally:
        svc.decisions.decide = real_decide  # type: ignore[method-assign]
    rung(f"POST {EVALUATION} (as served)", evaluations, count)
    app.dependency_overrides[api_deps.services] = _services_async
    app.dependency_overrides[api_deps.caller] = _caller_async
    rung("  same, what-if: deps.services / deps.caller as async def (no threadpool hop)",
         evaluations, count)  # fmt: skip
    app.dependency_overrides.clear()

    async def decide_all() -> None:
        it = iter(range(count))

        async def worker() -> None:
            for i in it:
                await svc.decisions.decide(asks[i % len(asks)])

        await asyncio.gather(*(worker() for _ in range(32)))

    with CommitMeter(svc) as meter:
        cpu0, t0 = time.process_time(), time.perf_counter()
        asyncio.run(decide_all())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    ladder.append(("DecisionService.decide alone, 32 tasks (evaluate + event + group commit)",
                   count / wall, cpu / count * 1e6, meter.summary()))  # fmt: skip
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(count):
        svc.decisions.evaluate(asks[i % len(asks)])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    ladder.append(("DecisionService.evaluate alone (runtime checks + Cedar)", count / wall,
                   cpu / count * 1e6, ""))  # fmt: skip

    # The event loop: wall-clock profiler (cheap; its idle waits are left out below). The
    # writer thread: a CPU-time profiler (time.thread_time), so fsync waits cost nothing.
    loop_prof = cProfile.Profile()
    with CommitMeter(svc) as meter:
        meter.prof = commit_prof = cProfile.Profile(time.thread_time)
        try:
            statuses, wall, cpu = driver.run(evaluations, count, loop_prof)
        finally:
            svc.runtime.stop()
    bad = sum(x != 200 for x in statuses)
    lines = [
        f"\n### Profile: POST {EVALUATION} through the ASGI app in process ({dep.backend}, "
        f"admin token, 32 concurrent, {count:,} requests per line)\n",
        "Unprofiled, CPU of this process (event loop + threadpool + group-commit thread) per "
        "request:",
    ]
    for label, rate, cpu_us, extra in ladder:
        lines.append(f"  {cpu_us:7.0f} µs CPU  {rate:7,.0f}/s  {label}{extra}")
    lines.append(
        f"\ncProfile of the same POST loop: {count / wall:,.0f} req/s, "
        f"{cpu / count * 1e6:.0f} µs CPU per request with the profiler, which inflates "
        f"Python-heavy code most: read the shares, not the µs; non-200: {bad}. cProfile "
        "counts every resumption of a coroutine as a call."
    )
    for title, prof in (
        ("event-loop thread (request handling)", loop_prof),
        ("group-commit thread (ledger writes)", commit_prof),
    ):
        # (file, line, function) -> (calls, self time, cumulative time), idle waits left out
        raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        entries = [
            (fn, ln, name, nc, tt, ct)
            for (fn, ln, name), (_cc, nc, tt, ct, _callers) in raw.items()
            if not any(i in name for i in IDLE)
        ]
        total = sum(e[4] for e in entries)
        by_area = Counter[str]()
        for fn, _ln, name, _nc, tt, _ct in entries:
            by_area[_area(fn, name)] += tt
        kind = "wall time, idle waits left out" if prof is loop_prof else "thread CPU time"
        lines.append(
            f"\n{title}: {total / count * 1e6:.0f} µs per request profiled ({kind}), "
            "by area (self time):"
        )
        for area, tt in by_area.most_common():
            lines.append(f"  {tt / total:6.1%}  {tt / count * 1e6:7.1f} µs  {area}")
        lines.append("  top functions by self time:")
        for fn, ln, name, nc, tt, ct in sorted(entries, key=lambda e: -e[4])[:22]:
            short = fn.split("site-packages/")[-1].split("src/")[-1]
            lines.append(
                f"  {tt / total:6.1%}  {tt / count * 1e6:6.1f} µs  cum {ct / count * 1e6:7.1f} µs"
                f"  {nc / count:5.1f}/req  {short}:{ln}({name})"
            )
        lines.append("  cumulative time of the costliest tether functions (µs per request):")
        ours = [e for e in entries if "tether/" in e[0]]
        for fn, ln, name, nc, _tt, ct in sorted(ours, key=lambda e: -e[5])[:25]:
            short = fn.split("src/")[-1]
            lines.append(f"  {ct / count * 1e6:8.1f}  {nc / count:5.2f}/req  {short}:{ln}({name})")
    return "\n".join(lines) + "\n"


# -- entry points ------------------------------------------------------------------------------
def sizes_for(options: Options) -> Sizes:
    s = QUICK if options.quick else FULL
    ns = options.extra
    over = {
        "workers": getattr(ns, "workers", None), "connections": getattr(ns, "connections", None),
        "http_seconds": getattr(ns, "duration", None), "rate": getattr(ns, "rate", None),
        "agents": getattr(ns, "agents_decisions", None),
    }  # fmt: skip
    values = {k: v for k, v in over.items() if v}
    if "http_seconds" in values:
        values["fixed_seconds"] = values["http_seconds"]
    return Sizes(**{**s.__dict__, **values})


def loadgen_kind(options: Options) -> str:
    wanted = getattr(options.extra, "loadgen", "auto") or "auto"
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    return wanted


def run_all(options: Options) -> list[ResultTable]:
    sizes = sizes_for(options)
    kind = loadgen_kind(options)
    profile_n: int = getattr(options.extra, "profile", 0) or 0
    ip = InProcess()
    http_tables: list[ResultTable] = []
    for backend in options.backends:
        tag = f"[decisions/{backend}]"
        note(f"{tag} bootstrapping a deployment")
        with open_deployment(options, backend) as dep:
            world = populate(dep, sizes)
            dep.services.runtime.start()  # the poller keeps it current, as in a server
            inprocess = getattr(options.extra, "inprocess", True)
            if inprocess and not ip.evaluate:
                run_evaluate(dep, world, sizes, ip)
            for approvals in (True, False) if inprocess else ():
                what = "" if approvals else ", no approvals"
                note(f"{tag} decide + ledger: {sizes.decide_tasks} tasks, "
                     f"{sizes.decide_seconds:g} s{what}")  # fmt: skip
                key = backend if approvals else f"{backend}/no-approval"
                ip.decide[key] = run_decide(dep, world, sizes, approvals=approvals)
            if profile_n:
                report = profile_asgi(dep, world, sizes, profile_n)
                sys.stdout.write(report)
                sys.stdout.flush()
            dep.services.runtime.stop()
            if getattr(options.extra, "http", True):
                table = run_http(dep, world, sizes, options, kind)
                table.print()
                http_tables.append(table)
    if not ip.evaluate:
        return http_tables
    table = inprocess_table(ip, sizes, options.backends)
    table.print()
    return [table, *http_tables]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this bench (``--workers`` is shared with bench.tokens when run together)."""
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument("--workers", type=int, help="server worker processes (default 2)")
    parser.add_argument("--connections", type=int,
                        help="HTTP connections of the load generator (default 64)")  # fmt: skip
    parser.add_argument("--duration", type=float,
                        help="seconds per HTTP run, max and fixed-rate (default 10)")  # fmt: skip
    parser.add_argument("--rate", type=int, help="fixed-rate target, req/s (default 1000)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="max-throughput generator (default: wrk if installed)")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N AuthZEN requests through the ASGI app")  # fmt: skip
    parser.add_argument("--no-http", dest="http", action="store_false",
                        help="in-process figures only (no server)")  # fmt: skip
    parser.add_argument("--http-only", dest="inprocess", action="store_false",
                        help="skip the in-process table (setup and HTTP only)")  # fmt: skip
    parser.add_argument("--decision-agents", dest="agents_decisions", type=int,
                        help="agents in the decision bench (default 10000)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.decisions",
        "Tether policy decisions: in process beside cedarpy and pycasbin, and AuthZEN over HTTP",
        argv,
        add_arguments=add_arguments,
    )
    note(machine_line(options))
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
