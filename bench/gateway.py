"""The MCP gateway's cost per tool call: the example upstream called directly and through
Tether's gateway, same run, same client, over HTTP; and tool calls/s through the gateway.

Per backend: the example payments-and-tickets MCP server (``examples/payments_tickets``,
stateless streamable HTTP with JSON answers, one uvicorn process, its API key required) and a
real ``tether serve --workers 2`` (fresh SQLite file or PostgreSQL schema) with the upstream
configured behind ``/mcp`` (the key injected from a broker-only secret). One agent with a
token for the gateway's resource URI; a policy permitting ``payments.get_balance``.

- Latency: one client (httpx2, one keep-alive connection to each) sends the same JSON-RPC
  ``tools/call`` (``get_balance``) to the upstream and to the gateway, in alternating blocks;
  p50/p99 of each and the difference. Through the gateway a call is: the token verified, a
  Cedar decision recorded durably, the call relayed to the upstream on the worker's persistent
  connection,
  the call's ``tool.called`` event (digests, redacted copies) made durable, then the answer.
- Throughput: ``wrk`` (when installed) on the gateway's ``tools/call``, 16 and 64
  connections, beside the same server's ``/healthz`` and the upstream alone.

Run: ``python -m bench.gateway [--quick] [--postgres URL] [--no-sqlite]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2 as httpx
from tests.serverproc import free_port

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    fmt_ratio,
    note,
    parse_options,
    percentile,
    run_each_backend,
)
from bench.hotpath import profile_workers
from bench.loadgen import HttpRequest, LoadGen, LoadResult
from bench.tokens import (
    Deployment,
    basic_authorization,
    bench_agent,
    open_deployment,
    tether_server,
)
from tether.monitor_config import DEFAULT_RULES
from tether.secrets.service import SecretInput

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-upstream-key-5d1c"
POLICIES = """
@id("balances")
permit (principal, action == Action::"tool.call", resource == Tool::"payments.get_balance");
"""
ACCEPT = "application/json, text/event-stream"
HEADERS = ["", "per s", "p50", "p99", "server CPU/call", "÷ /healthz", "errors"]


def _call(tool: str, n: int = 1) -> bytes:
    params = {"name": tool, "arguments": {"account": "ops"}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
    ).encode()


@contextlib.contextmanager
def upstream(workdir: Path) -> Iterator[str]:
    port = free_port()
    with (workdir / "upstream.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "examples.payments_tickets.server", "--port", str(port),
             "--api-key", KEY],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url, content=_call("get_balance"), timeout=1,
                           headers={"Accept": ACCEPT, "Content-Type": "application/json",
                                    "X-Api-Key": KEY})  # fmt: skip
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the example upstream did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# Monitoring on, as deployed, but without the rules a single agent calling flat out trips by
# design (thousands of calls a minute: rate-flood, rate-spike), which would otherwise turn the
# bench's calls into approval requests after the first few thousand.
ONE_BUSY_AGENT = json.dumps({"rules": [
    r.model_dump() for r in DEFAULT_RULES if r.name not in ("rate-flood", "rate-spike")
]})  # fmt: skip


def wait_for_upstreams(url: str, names: set[str], tries: int = 20) -> None:
    """Until ``tries`` answers in a row, each on a fresh connection (either worker), say every
    upstream named is up."""
    deadline, in_a_row = time.monotonic() + 60, 0
    while in_a_row < tries:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway never connected to {', '.join(sorted(names))}")
        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        up = names <= {u["name"] for u in ready.get("upstreams", []) if u["up"]}
        in_a_row = in_a_row + 1 if up else 0
        if not up:
            time.sleep(0.1)


def gateway_caller(dep: Deployment, policies: str, name: str) -> str:
    """``policies`` in force, the upstream's key stored as a broker-only secret, and a new
    agent's access token for the gateway's resource URI."""
    svc = dep.services
    svc.policies.push(dep.admin, policies=policies, schema=None, note=None)
    svc.secrets.put(dep.admin, "payments-key", SecretInput(KEY.encode(), broker_only=True))
    return gateway_agent(dep, name)[1]


def gateway_agent(dep: Deployment, name: str) -> tuple[str, str]:
    """Another new agent (the policies and the key already in place): its id and its access
    token for the gateway's resource URI."""
    svc = dep.services
    agent_id = bench_agent(dep, name)
    _cred, secret = svc.credentials.create_api_key(dep.admin, agent_id)
    form = {"grant_type": "client_credentials",
            "resource": f"http://127.0.0.1:{dep.port}/mcp"}  # fmt: skip
    token = svc.oauth.token(form, basic_authorization(agent_id, secret))["access_token"]
    return agent_id, str(token)


def _latencies(
    direct: str, gateway: str, bearer: str, *, blocks: int, calls: int
) -> tuple[list[float], list[float]]:
    """Alternating blocks of ``calls`` sequential calls: upstream, gateway, upstream…"""
    plain = {"Accept": ACCEPT, "Content-Type": "application/json"}
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with httpx.Client(timeout=30) as up, httpx.Client(timeout=30) as gw:
        targets = {
            "direct": (up, direct, {**plain, "X-Api-Key": KEY}, "payments_balance"),
            "gateway": (gw, gateway, {**plain, "Authorization": f"Bearer {bearer}"}, "gw"),
        }
        for _ in range(blocks):
            for label, (client, url, headers, _tag) in targets.items():
                tool = "get_balance" if label == "direct" else "payments.get_balance"
                body = _call(tool)
                for _ in range(50):  # warm the connection and the path
                    client.post(url, content=body, headers=headers)
                for _ in range(calls):
                    t0 = time.perf_counter()
                    got = client.post(url, content=body, headers=headers)
                    times[label].append(time.perf_counter() - t0)
                    if got.status_code != 200 or '"balance' not in got.text:
                        raise RuntimeError(f"{label}: {got.status_code} {got.text[:300]}")
    return times["direct"], times["gateway"]


def _guessed(url: str) -> str:
    """The group commits built on a guessed head (PostgreSQL's one round trip), from the
    server's /metrics: how many held, and how many another writer moved."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counts = dict.fromkeys(("held", "moved"), 0.0)
    for line in text.splitlines():
        if line.startswith("tether_ledger_group_commit_guessed_total{"):
            head = line.split('head="', 1)[1].split('"', 1)[0]
            counts[head] = counts.get(head, 0.0) + float(line.rsplit(" ", 1)[1])
    held, moved = counts["held"], counts["moved"]
    return f"commits on a guessed head so far: {held:,.0f} held, {moved:,.0f} moved"


def run_backend(options: Options, backend: str, seconds: float) -> list[ResultTable]:
    tag = f"[gateway/{backend}]"
    with open_deployment(options, backend) as dep, upstream(dep.workdir) as direct:
        bearer = gateway_caller(dep, POLICIES, "gateway-caller")
        upstreams = [
            {
                "name": "payments",
                "url": direct,
                "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"},
            }
        ]
        env = {"TETHER_GATEWAY_UPSTREAMS": json.dumps(upstreams),
               "TETHER_MONITOR": ONE_BUSY_AGENT}  # fmt: skip
        note(f"{tag} starting tether serve --workers 2 with the upstream behind /mcp")
        with tether_server(dep, 2, env) as server:
            wait_for_upstreams(server.url, {"payments"})
            blocks, calls = (3, 200) if options.quick else (6, 500)
            note(f"{tag} latency: {blocks} alternating blocks of {calls} calls each")
            d, g = _latencies(direct, f"{server.url}/mcp", bearer, blocks=blocks, calls=calls)
            note(f"{tag} {_guessed(server.url)}")
            kind = "wrk" if shutil.which("wrk") else "python"
            gen = LoadGen(server, dep.workdir, kind)
            call = _call("payments.get_balance")
            through = [HttpRequest("POST", "/mcp", f"Bearer {bearer}", call, accept=ACCEPT)]
            health = [HttpRequest("GET", "/healthz", "", b"")]
            gen.max_rate(through, connections=16, seconds=1, expect='"balance')  # warm-up
            if options.extra.profile:
                profile_workers(server.pid, gen, through, options.extra.profile, tag, 16,
                                '"balance')  # fmt: skip
            rows: list[tuple[str, LoadResult]] = []
            note(f"{tag} throughput: /healthz and tools/call, 16 and 64 connections, twice")
            for _ in range(2):
                for conns in (16, 64):
                    rows.append((f"GET /healthz, {conns} conn.", gen.max_rate(
                        health, connections=conns, seconds=seconds, expect="ok")))  # fmt: skip
                    calls_rate = gen.max_rate(
                        through, connections=conns, seconds=seconds, expect='"balance'
                    )
                    rows.append((f"tools/call through /mcp, {conns} conn.", calls_rate))
    latency = ResultTable(
        f"Tool-call latency on {backend}: the example upstream directly vs through Tether's "
        "gateway (`tether serve --workers 2`), sequential, one keep-alive client (lower is "
        "better)",
        ["", "calls", "p50", "p99", "mean"],
    )  # fmt: skip
    for label, xs in (("upstream directly", d), ("through the gateway", g)):
        p50, p99, mean = percentile(xs, 50), percentile(xs, 99), sum(xs) / len(xs)
        latency.rows.append([label, f"{len(xs):,}", fmt_latency(p50), fmt_latency(p99),
                             fmt_latency(mean)])  # fmt: skip
    added50 = percentile(g, 50) - percentile(d, 50)
    added99 = percentile(g, 99) - percentile(d, 99)
    latency.rows.append(["added by the gateway", "", fmt_latency(added50), fmt_latency(added99),
                         fmt_latency(sum(g) / len(g) - sum(d) / len(d))])  # fmt: skip
    latency.records.append({"benchmark": "gateway latency", "backend": backend,
                            "direct_p50_s": percentile(d, 50), "direct_p99_s": percentile(d, 99),
                            "gateway_p50_s": percentile(g, 50), "gateway_p99_s": percentile(g, 99),
                            "added_p50_s": added50, "added_p99_s": added99})  # fmt: skip
    latency.footnotes += [
        "Same JSON-RPC tools/call (get_balance) to both, alternating blocks; each block after "
        "50 warm-up calls. Through the gateway: token verified, the decision recorded durably, "
        "the call relayed on the worker's persistent upstream connection, the call's tool.called "
        "event durable, then the answer (two group commits on the path).",
    ]
    rate = ResultTable(
        f"Tool calls/s through the gateway on {backend} — {kind}, `tether serve --workers 2` "
        "(higher is better)",
        HEADERS,
    )  # fmt: skip
    for label, r in rows:
        health_rate = _mean([h.rate for lab, h in rows if lab.startswith("GET /healthz")
                             and lab.endswith(label.rsplit(", ", 1)[1])])  # fmt: skip
        cpu = r.server_cpu / r.ok if r.ok else math.nan
        rate.rows.append([label, fmt_rate(r.rate, "/s"), fmt_latency(r.p50),
                          fmt_latency(r.p99), fmt_latency(cpu), fmt_ratio(r.rate / health_rate),
                          f"{r.errors:,}"])  # fmt: skip
        rate.records.append({"benchmark": label, "backend": backend, "per_s": r.rate,
                             "p50_s": r.p50, "p99_s": r.p99, "server_cpu_per_call_s": cpu,
                             "errors": r.errors, "first_error": r.first_error})  # fmt: skip
    rate.footnotes += [
        f"{kind} (one thread), closed loop, {seconds:g} s per row, every answer checked (200 "
        "with the balance). CPU per call: Tether's process tree (the upstream's and the "
        "database's not counted). ÷ /healthz: the mean /healthz rate at the same connections.",
    ]
    return [latency, rate]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(argv: Sequence[str] | None = None) -> None:
    def profile_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--profile", type=float, default=0.0, metavar="S",
                            help="first, py-spy (on PATH) on every worker for S seconds of "
                            "tools/call at 16 connections")  # fmt: skip

    options = parse_options("python -m bench.gateway", "Tether's MCP gateway per tool call",
                            argv, add_arguments=profile_option)  # fmt: skip
    seconds = 2.0 if options.quick else 5.0
    run_each_backend(options, lambda backend: run_backend(options, backend, seconds))


if __name__ == "__main__":
    main()
