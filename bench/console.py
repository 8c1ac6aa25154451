"""Console page speed (issue 18): each page's server time with 10,000 agents, beside the API.

Per backend, a fresh deployment (as the other benches) holding:

- 10,000 agents with roles, owners and extra supervisors, bulk-inserted as
  :func:`bench.registry.populate` does (100 supervisors through ``UserService``), then
  ``runtime.load()``;
- a ledger of ``--decisions`` decision events (default 20,000, all in the last hour, which
  the overview counts) and 1,000 ``tool.called`` events, round-robin over every 7th active
  agent (~1,000 of them: the agent page's agent has ~21), appended through ``Ledger.append``
  1,000 a transaction, and a signed checkpoint;
- 20 open approvals (``@approval("required")`` on ``tool.write``, asked over AuthZEN), 10
  secrets, 5 policy versions.

Then, in process (Starlette's ``TestClient`` on the real app, lifespan run), the bootstrap
admin signs in with a password and each console page is requested in turn, round after
round, beside two API baselines in the same rounds: ``GET /healthz`` and ``GET
/v1/agents?limit=50`` (bearer token). **Server time** is taken inside the ASGI stack, from the
request's arrival to the last byte of its response (the client's own overhead excluded);
median, p95 and max over the rounds, after warm-up rounds. The target: every page under
300 ms.

Run: ``python -m bench.console [--postgres URL] [--no-sqlite] [--agents N] [--decisions N]
[--rounds R] [--profile PATH]`` (``--profile``: cProfile the slowest page's endpoint, top 30
functions).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.routing import Match
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench.common import (
    Env,
    Options,
    Progress,
    ResultTable,
    fmt_latency,
    machine_line,
    note,
    open_env,
    parse_options,
    percentile,
    write_json,
)
from bench.registry import populate
from tether.agents.models import AgentRow
from tether.api.app import create_app
from tether.audit.events import EventType, NewEvent

PASSWORD = "bench console password"
TARGET_S = 0.300
BATCH = 1000
FILTER = "status=suspended&risk_tier=high"
POLICIES = """
@id("tools")
permit (principal, action == Action::"tool.call", resource);

@id("writes-need-a-human")
@approval("required")
permit (principal, action == Action::"tool.write", resource);
"""


@dataclass(frozen=True)
class Sizes:
    agents: int
    decisions: int
    rounds: int
    warmup: int


FULL = Sizes(agents=10_000, decisions=20_000, rounds=20, warmup=3)
QUICK = Sizes(agents=2_000, decisions=2_000, rounds=5, warmup=1)


class Timed:
    """ASGI middleware: the server time of the last request (arrival to its last byte)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.last = float("nan")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.last = time.perf_counter() - start

        await self.app(scope, receive, timed)


# -- the deployment's contents -----------------------------------------------------------------
def _decision(agent_id: str, i: int, version: str) -> NewEvent:
    """A decision event shaped like DecisionService's (``tether.policy.decide``)."""
    allowed = i % 7 != 0
    return NewEvent(
        EventType.DECISION, f"agent:{agent_id}", agent_id=agent_id, action="tool.call",
        resource={"type": "Tool", "id": f"tool-{i % 23}"},
        decision="allow" if allowed else "deny",
        reasons=("tools",) if allowed else ("tether.default-deny",), policy_version=version,
        details={"caller": "user:bench", "stage": "policy",
                 "request_digest": f"{i:064x}", "context_digest": f"{i * 7:064x}"},
    )  # fmt: skip


def _call(agent_id: str, i: int) -> NewEvent:
    return NewEvent(
        EventType.TOOL_CALLED, f"agent:{agent_id}", agent_id=agent_id, action="tool.call",
        resource={"type": "Tool", "id": f"tickets.create_ticket-{i % 5}"}, outcome="success",
        details={"server": "tickets", "tool": "create_ticket", "reversible": True},
    )  # fmt: skip


def fill(env: Env, client: TestClient, admin: dict[str, str], sizes: Sizes) -> tuple[str, int]:
    """Everything but the agents (already there): policies, approvals, secrets, the ledger;
    the agent whose page is measured, and how many events it has."""
    svc = env.services
    for k in range(4):  # 5 versions: v1..v4 then the one in force
        pushed = client.put("/v1/policies", headers=admin,
                            json={"policies": POLICIES + f"\n// revision {k}\n"})  # fmt: skip
        assert pushed.status_code == 200, pushed.text
    pushed = client.put("/v1/policies", json={"policies": POLICIES}, headers=admin)
    assert pushed.status_code == 200, pushed.text
    version = pushed.json()["version"]
    with svc.db.read() as s:
        active = list(s.scalars(select(AgentRow.id).where(AgentRow.status == "active")
                                .order_by(AgentRow.id)))  # fmt: skip
    for agent_id in active[:20]:
        body = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": "tool.write"},
                "resource": {"type": "Tool", "id": "ledger-db"}, "context": {}}  # fmt: skip
        held = client.post("/access/v1/evaluation", json=body, headers=admin)
        assert held.json()["context"]["decision"] == "approval_required", held.text
    for k in range(10):
        stored = client.put(f"/v1/secrets/bench-{k}", json={"value": f"v{k}"}, headers=admin)
        assert stored.status_code == 201, stored.text
    got = client.put("/v1/users/admin/password", json={"password": PASSWORD}, headers=admin)
    assert got.status_code == 204, got.text
    # The ledger: decisions and tool calls spread round-robin over every 7th active agent,
    # in transactions of BATCH.
    busy = active[::7]
    progress = Progress("appending decision and tool-call events", sizes.decisions + 1000)
    events = [_decision(busy[i % len(busy)], i, version) for i in range(sizes.decisions)]
    events += [_call(busy[i % len(busy)], i) for i in range(1000)]
    for start in range(0, len(events), BATCH):
        with svc.db.write() as s:
            svc.ledger.append(s, events[start : start + BATCH], now=svc.clock.now())
        progress.update(start + BATCH)
    progress.finish()
    made = client.post("/v1/audit/checkpoints", headers=admin)
    assert made.status_code in (200, 201), made.text
    return busy[0], sum(e.agent_id == busy[0] for e in events)


def sign_in(client: TestClient) -> None:
    page = client.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    form = {"csrf": token.group(1), "username": "admin", "password": PASSWORD,
            "next": "/console"}  # fmt: skip
    signed = client.post("/console/sign-in", data=form)
    assert signed.status_code == 303, signed.text


# -- measuring ---------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    path: str
    api: bool = False  # a baseline: sent with the admin's bearer token


def rows(agent_id: str) -> list[Row]:
    return [
        Row("/console (overview)", "/console"),
        Row("/console/agents", "/console/agents"),
        Row("/console/agents?status=suspended&risk_tier=high", f"/console/agents?{FILTER}"),
        Row("/console/agents/{id}", f"/console/agents/{agent_id}"),
        Row("/console/approvals (20 open)", "/console/approvals"),
        Row("/console/activity", "/console/activity"),
        Row("/console/policies", "/console/policies"),
        Row("/console/ledger", "/console/ledger"),
        Row("/console/secrets", "/console/secrets"),
        Row("/console/gateway", "/console/gateway"),
        Row("baseline: GET /healthz", "/healthz", api=True),
        Row("baseline: GET /v1/agents?limit=50", "/v1/agents?limit=50", api=True),
    ]


def measure(env: Env, options: Options, sizes: Sizes, profile: str | None) -> ResultTable:
    svc = env.services
    note(f"[console/{env.backend}] populating {sizes.agents:,} agents")
    populate(env, sizes.agents)
    svc.runtime.load()
    timed = Timed(create_app(svc))
    token = svc.settings.admin_token_path.read_text().strip()
    admin = {"Authorization": f"Bearer {token}"}
    with TestClient(timed, follow_redirects=False) as client:
        agent_id, agent_events = fill(env, client, admin, sizes)
        with svc.db.read() as s:
            events = svc.ledger.store.count(s)
        sign_in(client)
        cases = rows(agent_id)
        samples: dict[str, list[float]] = {r.label: [] for r in cases}
        sizes_kb: dict[str, float] = {}
        load_before = os.getloadavg()[0]
        started = datetime.now(UTC)
        for n in range(sizes.warmup + sizes.rounds):
            for row in cases:
                got = client.get(row.path, headers=admin if row.api else None)
                assert got.status_code == 200, (row.path, got.status_code, got.text[:300])
                if n >= sizes.warmup:
                    samples[row.label].append(timed.last)
                sizes_kb[row.label] = len(got.content) / 1024
        load_after = os.getloadavg()[0]
        if profile:
            pages = [r for r in cases if not r.api]
            slowest = max(pages, key=lambda r: percentile(samples[r.label], 50))
            _profile(timed.app, client, slowest, profile)
    title = (f"Console pages on {env.backend}, {sizes.agents:,} agents, {events:,} ledger "
             f"events — server time per request (lower is better)")  # fmt: skip
    table = ResultTable(title, ["page", "KB", "p50", "p95", "max", "under 300 ms (p95)"])
    for row in cases:
        got = samples[row.label]
        p50, p95, top = percentile(got, 50), percentile(got, 95), max(got)
        ok = "—" if row.api else ("yes" if p95 < TARGET_S else "NO")
        table.rows.append([row.label, f"{sizes_kb[row.label]:.1f}", fmt_latency(p50),
                           fmt_latency(p95), fmt_latency(top), ok])  # fmt: skip
        table.records.append({"backend": env.backend, "page": row.path, "p50_s": p50,
                              "p95_s": p95, "max_s": top, "kb": sizes_kb[row.label]})  # fmt: skip
    table.footnotes += [
        f"Load average (1 min) {load_before:.2f} before the rounds, {load_after:.2f} after; "
        f"{started:%H:%M:%S} UTC; {machine_line(options)}.",
        "Server time: from the request's arrival in the ASGI app to its last byte, measured "
        f"in process (TestClient, one request at a time); {sizes.rounds} rounds after "
        f"{sizes.warmup} warm-up, each round every row once, in order.",
        "Console pages as the bootstrap admin signed in with a password (session cookie); the "
        "baselines with its bearer token. The ledger's decisions are all in the last hour.",
        f"The agent page: an active agent with {agent_events} events (decisions and tool "
        "calls) on the record.",
    ]
    return table


def _profile(app: Any, client: TestClient, row: Row, path: str) -> None:
    """cProfile ``row``'s endpoint, called in this thread (the app would run it on a worker
    thread, out of the profiler's sight) with the signed-in session's cookies, 5 times."""
    target, _, query = row.path.partition("?")
    cookies = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": target, "raw_path": target.encode(),
        "query_string": query.encode(), "root_path": "", "scheme": "http", "app": app,
        "http_version": "1.1", "server": ("testserver", 80), "client": ("testclient", 50000),
        "headers": [(b"host", b"testserver"), (b"cookie", cookies.encode())],
    }  # fmt: skip
    for route in app.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            break
    else:
        raise RuntimeError(f"no route for {row.path}")
    profiler = cProfile.Profile()
    for _ in range(5):
        request = Request({**scope, **child})
        profiler.runcall(route.endpoint, request, **child.get("path_params", {}))
    profiler.dump_stats(path)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    note(f"profile of {row.path} (5 calls of its endpoint; also in {path}):\n{out.getvalue()}")


def sizes_for(options: Options) -> Sizes:
    base = QUICK if options.quick else FULL
    extra = options.extra
    return Sizes(
        agents=getattr(extra, "agents", None) or base.agents,
        decisions=getattr(extra, "decisions", None) or base.decisions,
        rounds=getattr(extra, "rounds", None) or base.rounds,
        warmup=base.warmup,
    )


def run_all(options: Options) -> list[ResultTable]:
    tables = []
    profile: str | None = getattr(options.extra, "profile", None)
    for backend in options.backends:
        with open_env(options, backend, "console") as env:
            where = f"{profile}.{backend}" if profile else None
            table = measure(env, options, sizes_for(options), where)
        table.print()
        tables.append(table)
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, help="agents (default 10000)")
    parser.add_argument("--decisions", type=int, help="decision events (default 20000)")
    parser.add_argument("--rounds", type=int, help="timed requests per page (default 20)")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the slowest page")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.console", "Tether console page speed", argv, add_arguments=add_arguments
    )
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
