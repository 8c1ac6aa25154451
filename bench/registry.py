"""Registry list latency at scale: ``AgentService.list`` over 100k agents.

Setup bulk-inserts agents, their roles and extra supervisors with SQLAlchemy core inserts
(the service would write one audited transaction per agent, which is not what is measured
here). Owners and supervisors are real users created through ``UserService``. The mix:

- status: 70 % active, 15 % suspended, 10 % revoked, 5 % retired;
- risk tier: 50 % minimal, 35 % limited, 15 % high;
- owners: 2 % ``admin``, the rest spread evenly over 100 supervisors; 30 % of agents have one
  extra supervisor; ``sup-small`` owns 10 agents and supervises 10 more (a sparse view);
- roles: 1-3 per agent from 40 roles with Zipf-like popularity, plus ``breakglass.operator``
  on every 1000th agent (a rare role).

Each case calls ``AgentService.list`` (page size 50, as the API's default) and reports p50/p99
beside the same page's main ``SELECT`` run with the plain driver — the database's share of
the latency. ``--explain`` prints the query plans.

Run: ``python -m bench.registry [--quick] [--postgres URL] [--agents N] [--explain]``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import insert, text

from bench.common import (
    SQLITE,
    Env,
    Options,
    Progress,
    ResultTable,
    fmt_latency,
    fmt_ratio,
    note,
    open_env,
    parse_options,
    percentile,
    raw_postgres,
    raw_sqlite,
    sample_pair,
    write_json,
)
from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.agents.values import RiskTier, Status, spiffe_id
from tether.clock import to_micros
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text
from tether.pagination import decode_cursor, encode_cursor
from tether.principals import Principal, Role
from tether.tables import metadata

PAGE = 50
INSERT_BATCH = 5000
N_SUPERVISORS = 100
ROLES = [f"role.{k:02d}" for k in range(40)]
ROLE_WEIGHTS = [1 / (k + 1) for k in range(40)]
RARE_ROLE = "breakglass.operator"
STATUSES = [Status.ACTIVE, Status.SUSPENDED, Status.REVOKED, Status.RETIRED]
STATUS_WEIGHTS = [70, 15, 10, 5]
TIERS = [RiskTier.MINIMAL, RiskTier.LIMITED, RiskTier.HIGH]
TIER_WEIGHTS = [50, 35, 15]
AGENTS = metadata.tables[AgentRow.__tablename__]
AGENT_ROLES = metadata.tables[AgentRoleRow.__tablename__]
AGENT_SUPERVISORS = metadata.tables[AgentSupervisorRow.__tablename__]
COLUMNS = [c.name for c in AGENTS.columns]


@dataclass(frozen=True)
class Sizes:
    agents: int
    runs: int  # timed calls per case
    warmup: int


FULL = Sizes(agents=100_000, runs=200, warmup=10)
QUICK = Sizes(agents=5_000, runs=30, warmup=3)


# -- setup -------------------------------------------------------------------------------------
@dataclass
class Population:
    supervisors: list[Principal]
    small: Principal  # owns 10 agents, supervises 10 more
    deep_cursor: str  # after 90 % of the agents
    agents: int


def _users(env: Env) -> tuple[list[Principal], Principal]:
    progress = Progress("creating supervisors (UserService.create)", N_SUPERVISORS + 1)
    sups: list[Principal] = []
    for k in range(N_SUPERVISORS):
        user = env.services.users.create(env.admin, username=f"sup{k:03d}", role=Role.SUPERVISOR)
        sups.append(user.principal())
        progress.update(k + 1)
    small = env.services.users.create(env.admin, username="sup-small", role=Role.SUPERVISOR)
    progress.update(N_SUPERVISORS + 1)
    progress.finish()
    return sups, small.principal()


def populate(env: Env, count: int, *, seed: int = 7) -> Population:
    """Bulk-insert ``count`` agents (with roles and supervisors) in id (= creation) order."""
    sups, small = _users(env)
    sup_ids = [p.id for p in sups]
    rng = random.Random(seed)
    now_us = to_micros(env.services.clock.now())
    base_ms = now_us // 1000 - count  # one millisecond apart: ids sort in creation order
    domain = env.services.settings.trust_domain
    spread = max(count // 10, 1)
    progress = Progress("inserting agents", count)
    deep_cursor = ""
    for start in range(0, count, INSERT_BATCH):
        agents: list[dict[str, Any]] = []
        roles: list[dict[str, Any]] = []
        extra_sups: list[dict[str, Any]] = []
        for i in range(start, min(start + INSERT_BATCH, count)):
            agent_id = new_id(IdPrefix.AGENT, now_ms=base_ms + i)
            if i == count * 9 // 10:
                deep_cursor = encode_cursor(agent_id)
            if i % spread == spread // 3:
                owner = small.id
            elif rng.random() < 0.02:
                owner = env.admin.id
            else:
                owner = rng.choice(sup_ids)
            status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
            tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
            created_us = (base_ms + i) * 1000
            agents.append(_agent_values(i, agent_id, owner, status, tier, created_us, domain))
            picked = set(rng.choices(ROLES, ROLE_WEIGHTS, k=rng.randint(1, 3)))
            if i % 1000 == 500:
                picked.add(RARE_ROLE)
            roles += [{"agent_id": agent_id, "role": r} for r in sorted(picked)]
            if i % spread == (2 * spread) // 3:
                extra_sups.append({"agent_id": agent_id, "user_id": small.id})
            elif rng.random() < 0.3:
                sup = rng.choice(sup_ids)
                if sup != owner:
                    extra_sups.append({"agent_id": agent_id, "user_id": sup})
        with env.services.db.write() as s:
            s.execute(insert(AGENTS), agents)
            s.execute(insert(AGENT_ROLES), roles)
            if extra_sups:
                s.execute(insert(AGENT_SUPERVISORS), extra_sups)
        progress.update(start + len(agents))
    progress.finish()
    if env.backend != SQLITE:
        # autovacuum would get there soon after a bulk load; do it now so plans are stable.
        with env.services.db.engine.begin() as conn:
            for table in ("agents", "agent_roles", "agent_supervisors", "users"):
                conn.execute(text(f"ANALYZE {table}"))
    return Population(sups, small, deep_cursor, count)


def _agent_values(
    i: int, agent_id: str, owner: str, status: Status, tier: RiskTier, created_us: int, domain: str
) -> dict[str, Any]:
    """One ``agents`` row, as AgentService would have written it."""
    return {
        "id": agent_id,
        "spiffe_id": spiffe_id(domain, agent_id),
        "name": f"agent-{i:06d}",
        "owner_id": owner,
        "purpose": f"benchmark agent {i}: triages support tickets for team {i % 37}",
        "risk_tier": tier.value,
        "status": status.value,
        "status_reason": None if status is Status.ACTIVE else "benchmark",
        "attributes": canonical_text({"team": f"team-{i % 37}", "env": "prod"}),
        "parent_id": None,
        "lineage": "[]",
        "lineage_kind": None,
        "fingerprint": None,
        "fingerprint_digest": None,
        "created_at": created_us,
        "updated_at": created_us,
        "expires_at": None,
        "recertify_by": created_us + 180 * 86_400_000_000,
    }


# -- the cases ---------------------------------------------------------------------------------
@dataclass
class Case:
    label: str
    actor: Principal
    kwargs: dict[str, Any]  # for AgentService.list
    where: list[str] = field(default_factory=list)  # the equivalent raw SELECT ("?" params)
    params: list[Any] = field(default_factory=list)


def cases(env: Env, pop: Population) -> list[Case]:
    sup = pop.supervisors[0]
    role_in = "id IN (SELECT agent_id FROM agent_roles WHERE role = ?)"
    sup_in = "id IN (SELECT agent_id FROM agent_supervisors WHERE user_id = ?)"
    admin = env.admin
    deep_after = _decode(pop.deep_cursor)
    return [
        Case("no filter, first page", admin, {}),
        Case(
            "no filter, deep page (cursor at 90 %)",
            admin,
            {"cursor": pop.deep_cursor},
            ["id > ?"],
            [deep_after],
        ),
        Case("status=suspended", admin, {"status": "suspended"}, ["status = ?"], ["suspended"]),
        Case("status=retired", admin, {"status": "retired"}, ["status = ?"], ["retired"]),
        Case("owner=sup000 (by username)", admin, {"owner": sup.name}, ["owner_id = ?"], [sup.id]),
        Case("role=role.00 (most common)", admin, {"role": ROLES[0]}, [role_in], [ROLES[0]]),
        Case(f"role={RARE_ROLE} (rare)", admin, {"role": RARE_ROLE}, [role_in], [RARE_ROLE]),
        Case("risk_tier=high", admin, {"risk_tier": "high"}, ["risk_tier = ?"], ["high"]),
        Case(
            "status=active & risk_tier=high",
            admin,
            {"status": "active", "risk_tier": "high"},
            ["status = ?", "risk_tier = ?"],
            ["active", "high"],
        ),
        Case(
            "supervisor view: sup000 (visible_to)",
            sup,
            {},
            [f"(owner_id = ? OR {sup_in})"],
            [sup.id, sup.id],
        ),
        Case(
            "supervisor view: sup-small, 20 agents",
            pop.small,
            {},
            [f"(owner_id = ? OR {sup_in})"],
            [pop.small.id, pop.small.id],
        ),
    ]


def _decode(cursor: str) -> str:
    after = decode_cursor(cursor)
    assert after is not None
    return after


# -- raw driver baseline -----------------------------------------------------------------------
class RawQueries:
    """The page's main SELECT with the plain driver (autocommit reads)."""

    def __init__(self, env: Env) -> None:
        self.backend = env.backend
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        if env.backend == SQLITE:
            self._sqlite = raw_sqlite(env.sqlite_path)
        else:
            assert env.schema is not None
            self._pg = raw_postgres(env.url, env.schema, autocommit=True)

    def _sql(self, sql: str) -> str:
        return sql if self.backend == SQLITE else sql.replace("?", "%s")

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._sqlite is not None:
            return self._sqlite.execute(sql, params).fetchall()
        assert self._pg is not None
        return self._pg.execute(self._sql(sql), params).fetchall()

    def plan(self, sql: str, params: Sequence[Any]) -> list[str]:
        if self._sqlite is not None:
            rows = self._sqlite.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            return [str(r[-1]) for r in rows]
        assert self._pg is not None
        rows = self._pg.execute(
            self._sql(f"EXPLAIN (ANALYZE, BUFFERS OFF) {sql}"),
            params,
        ).fetchall()
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


@contextmanager
def raw_queries(env: Env) -> Iterator[RawQueries]:
    raw = RawQueries(env)
    try:
        yield raw
    finally:
        raw.close()


def page_sql(where: Sequence[str]) -> str:
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    # LIMIT is a bound parameter, as in the SQL SQLAlchemy emits for Tether (it matters to
    # PostgreSQL's generic plans once psycopg has prepared the statement).
    return f"SELECT {', '.join(COLUMNS)} FROM agents{cond} ORDER BY id LIMIT ?"


def count_sql(where: Sequence[str]) -> str:
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT count(*) FROM agents{cond}"


# -- measuring ---------------------------------------------------------------------------------
HEADERS = [
    "list(...) case",
    "matching",
    "rows",
    "Tether p50",
    "Tether p99",
    "raw SELECT p50",
    "raw SELECT p99",
    "Tether ÷ raw (p50)",
]


def measure(env: Env, pop: Population, sizes: Sizes, *, explain: bool) -> ResultTable:
    driver = "sqlite3" if env.backend == SQLITE else "psycopg"
    table = ResultTable(
        f"Registry list on {env.backend}, {pop.agents:,} agents — latency per call "
        "(lower is better)",
        HEADERS,
    )
    agents = env.services.agents
    with raw_queries(env) as raw:
        for case in cases(env, pop):
            note(f"[registry/{env.backend}] {case.label}")
            matching = raw.fetch(count_sql(case.where), case.params)[0][0]

            def call(case: Case = case) -> Any:
                return agents.list(case.actor, limit=PAGE, **case.kwargs)

            rows = len(call().items)
            sql = page_sql(case.where)
            params = [*case.params, PAGE + 1]

            def fetch(sql: str = sql, params: list[Any] = params) -> Any:
                return raw.fetch(sql, params)

            tether, base = sample_pair(call, fetch, runs=sizes.runs, warmup=sizes.warmup)
            _add(table, env.backend, case.label, matching, rows, tether, base)
            if explain:
                note(f"    {sql}  {params}")
                for line in raw.plan(sql, params):
                    note(f"      {line}")
    table.footnotes += [
        f"Tether = AgentService.list(actor, limit={PAGE}, ...): read transaction, owner lookup "
        "if filtered by owner, the page SELECT, then roles, supervisors and owner names for the "
        "page, and Agent values built. p50/p99 over "
        f"{sizes.runs} calls after {sizes.warmup} warm-up calls, alternating with the raw SELECT.",
        f"raw SELECT = the same page's main SELECT (limit {PAGE + 1}) with plain {driver}, "
        "fetched in full; 'matching' = how many agents the filter selects.",
        "supervisor view = a supervisor as actor (visible_to: owned OR supervised agents).",
    ]
    return table


def _add(
    table: ResultTable,
    backend: str,
    label: str,
    matching: int,
    rows: int,
    tether: list[float],
    base: list[float],
) -> None:
    t50, t99 = percentile(tether, 50), percentile(tether, 99)
    b50, b99 = percentile(base, 50), percentile(base, 99)
    table.rows.append(
        [
            label,
            f"{matching:,}",
            str(rows),
            fmt_latency(t50),
            fmt_latency(t99),
            fmt_latency(b50),
            fmt_latency(b99),
            fmt_ratio(t50 / b50),
        ]
    )
    table.records.append(
        {
            "backend": backend,
            "case": label,
            "matching": matching,
            "rows": rows,
            "tether_p50_s": t50,
            "tether_p99_s": t99,
            "raw_p50_s": b50,
            "raw_p99_s": b99,
        }
    )


def run(env: Env, sizes: Sizes, *, explain: bool = False) -> ResultTable:
    note(f"[registry/{env.backend}] populating {sizes.agents:,} agents")
    start = time.perf_counter()
    pop = populate(env, sizes.agents)
    note(f"[registry/{env.backend}] populated in {time.perf_counter() - start:.1f} s")
    return measure(env, pop, sizes, explain=explain)


def sizes_for(options: Options) -> Sizes:
    sizes = QUICK if options.quick else FULL
    agents: int | None = getattr(options.extra, "agents", None)
    if agents:
        sizes = Sizes(agents, sizes.runs, sizes.warmup)
    return sizes


def run_all(options: Options) -> list[ResultTable]:
    tables = []
    explain = bool(getattr(options.extra, "explain", False))
    for backend in options.backends:
        with open_env(options, backend, "registry") as env:
            table = run(env, sizes_for(options), explain=explain)
        table.print()
        tables.append(table)
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, help="registry size (default 100000)")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.registry",
        "Tether registry list latency",
        argv,
        add_arguments=add_arguments,
    )
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
