"""A mixed soak: 80 % AuthZEN evaluations, 15 % token requests, 5 % agent reads at a fixed
rate against ``tether serve --workers 2``, minute by minute.

Per minute (a fixed-rate run of the Python generator, latency from each request's scheduled
send, so a stall shows in full): requests answered, errors, p50 / p99 / max, and the server's
resident memory (its whole process tree, ``/proc``) at the minute's end — flat after warm-up
is the target. After the last minute the ledger is verified end to end (``AuditService.verify``)
and its new events counted against what was answered: one ``decision`` event per evaluation
and one ``token.issued`` per token, none missing.

The mix cycles through 20 requests (16 evaluations by 8 agents, each asking about itself with
its own bearer token; 3 ``client_credentials`` requests by 3 other agents with API keys; 1
``GET /v1/agents/{id}`` as the admin), so every minute has exactly these proportions.

Run: ``python -m bench.soak [--quick] [--postgres URL] [--no-sqlite] [--minutes N]
[--rate R]``; ``--quick`` is 5 "minutes" of 12 s. PostgreSQL is what issue 14 asks for;
without ``--postgres`` / ``$TETHER_BENCH_POSTGRES_URL`` it runs on SQLite only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import httpx2 as httpx
import jwt as pyjwt

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    note,
    parse_options,
    write_json,
)
from bench.loadgen import HttpRequest, LoadGen, LoadResult
from bench.tokens import (
    BODY,
    FORM_TYPE,
    Deployment,
    Server,
    make_clients,
    open_deployment,
    tether_server,
)
from tether.audit.events import EventType
from tether.principals import SYSTEM

HEADERS = ["minute", "answered", "rate", "p50", "p99", "max", "send p99", "errors", "server RSS"]
TTL = 3600  # the evaluators' bearer tokens outlive the soak


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants (Linux ``/proc``); 0 if unreadable."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
            status = entry.joinpath("status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat[stat.rfind(")") + 2 :].split()[1])
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [p for p, parent in parents.items() if parent == pid]
    return total


def mix(dep: Deployment, server: Server) -> list[HttpRequest]:
    """The 20 requests the soak cycles through (see the module's docstring)."""
    admin = dep.services.settings.admin_token_path.read_text().strip()
    auths = make_clients(dep, 11)
    evaluators, token_clients = auths[:8], auths[8:]
    evals: list[HttpRequest] = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for authorization in evaluators:
            answer = http.post(
                "/oauth/token", content=BODY,
                headers={"Authorization": authorization, "Content-Type": FORM_TYPE},
            )  # fmt: skip
            answer.raise_for_status()
            token = answer.json()["access_token"]
            agent_id = str(pyjwt.decode(token, options={"verify_signature": False})["sub"])
            ask = {"subject": {"type": "agent", "id": agent_id},
                   "action": {"name": "tool.call"},
                   "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
            body = json.dumps(ask).encode()
            evals += [HttpRequest("POST", "/access/v1/evaluation", f"Bearer {token}", body)] * 2
    tokens = [HttpRequest("POST", "/oauth/token", a, BODY, FORM_TYPE) for a in token_clients]
    read = HttpRequest("GET", f"/v1/agents/{_sub_of(evals[0])}", f"Bearer {admin}", b"")
    # interleaved: 4 evaluations, a token request, ... (16 + 3 + 1)
    out: list[HttpRequest] = []
    for i in range(4):
        out += evals[4 * i : 4 * i + 4]
        out.append(tokens[i] if i < 3 else read)
    return out


def _sub_of(request: HttpRequest) -> str:
    return str(json.loads(request.body)["subject"]["id"])


def _events(dep: Deployment) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in dep.services.audit.export(SYSTEM):
        counts[event.type] = counts.get(event.type, 0) + 1
    return counts


def run_soak(
    options: Options, backend: str, minutes: int, seconds: float, rate: int
) -> ResultTable:
    tag = f"[soak/{backend}]"
    with open_deployment(options, backend) as dep:
        env = {"TETHER_TOKEN_TTL_SECONDS": str(TTL), "TETHER_TOKEN_TTL_MAX_SECONDS": str(TTL)}
        with tether_server(dep, 2, env) as server:
            reqs = mix(dep, server)
            before = _events(dep)
            gen = LoadGen(server, dep.workdir, "python")
            note(f"{tag} warm-up: 10 s at {rate}/s")
            gen.fixed_rate(reqs, rate=rate, connections=16, seconds=10, expect="")
            results: list[tuple[LoadResult, int]] = []
            warm = _events(dep)
            for m in range(minutes):
                r = gen.fixed_rate(reqs, rate=rate, connections=16, seconds=seconds, expect="")
                rss = tree_rss(server.pid)
                results.append((r, rss))
                mib = rss / 2**20
                note(f"{tag} minute {m + 1}/{minutes}: {r.ok:,} answered, p99 "
                     f"{fmt_latency(r.p99)}, errors {r.errors}, RSS {mib:.0f} MiB")  # fmt: skip
            after = _events(dep)
            verified = dep.services.audit.verify(SYSTEM)
    answered = sum(r.ok for r, _ in results)
    new = {k: after.get(k, 0) - warm.get(k, 0) for k in after}
    evals = answered * 16 // 20
    tokens = answered * 3 // 20
    decisions = new.get(EventType.DECISION.value, 0)
    issued = new.get(EventType.TOKEN_ISSUED.value, 0)
    title = (f"Mixed soak on {backend} — {rate} requests/s (80 % AuthZEN, 15 % tokens, 5 % "
             f"agent reads), 2 workers, {minutes} x {seconds:g} s")  # fmt: skip
    table = ResultTable(title, HEADERS)
    for i, (r, rss) in enumerate(results):
        table.rows.append([
            str(i + 1), f"{r.ok:,}", fmt_rate(r.rate, "/s"), fmt_latency(r.p50),
            fmt_latency(r.p99), fmt_latency(r.max), fmt_latency(r.send_delay_p99),
            f"{r.errors:,}", f"{rss / 2**20:.0f} MiB",
        ])  # fmt: skip
        table.records.append({
            "backend": backend, "minute": i + 1, "ok": r.ok, "per_s": r.rate, "p50_s": r.p50,
            "p99_s": r.p99, "max_s": r.max, "send_delay_p99_s": r.send_delay_p99,
            "errors": r.errors, "first_error": r.first_error,
            "rss_bytes": rss,
        })  # fmt: skip
    worst = max((r.p99 for r, _ in results), default=math.nan)
    chain = (f"ok, {verified.checked:,} events" if verified.ok
             else f"FAILED: {verified.message}")  # fmt: skip
    rss_values = [rss for _, rss in results]
    table.footnotes += [
        f"worst minute p99 {fmt_latency(worst)} (target ≤ 25 ms every minute); errors "
        f"{sum(r.errors for r, _ in results):,}; server RSS first / last minute "
        f"{rss_values[0] / 2**20:.0f} / {rss_values[-1] / 2**20:.0f} MiB (after a 10 s warm-up).",
        f"ledger: verified whole ({chain}); over "
        f"the measured minutes {decisions:,} decision events for ~{evals:,} evaluations "
        f"answered and {issued:,} token.issued for ~{tokens:,} tokens (each exact when the "
        "answered count is a multiple of 20: the mix is cycled in order).",
        f"events before the soak {sum(before.values()):,}; the warm-up's and set-up's are not "
        "counted. Latency from each request's scheduled send (no coordinated omission), 16 "
        "connections, the Python generator in its own process on the same 2 CPUs; send p99: "
        "how late requests left the generator after their scheduled time (its own stalls, or "
        "all 16 connections still waiting on answers).",
    ]
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=int, default=5, help="minutes of soak (default 5)")
    parser.add_argument("--rate", type=int, default=300, help="requests/s (default 300)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.soak", "Tether mixed soak", argv, add_arguments=add_arguments
    )
    minutes = int(getattr(options.extra, "minutes", 5))
    rate = int(getattr(options.extra, "rate", 300))
    seconds = 12.0 if options.quick else 60.0
    tables = []
    for backend in options.backends:
        table = run_soak(options, backend, minutes, seconds, rate)
        table.print()
        tables.append(table)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
