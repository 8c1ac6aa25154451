"""The compensation journal's cost per tool call (issue 17): the same write tool through
Tether's gateway with and without a compensation declared, same run, same client.

Per backend: the example upstream behind a real ``tether serve --workers 2`` twice — as
``plain`` (no rule: its ``create_ticket`` calls are journalled as irreversible) and as
``journalled`` (``create_ticket`` undone by ``close_ticket`` with ``ticket_id`` from
``{result.id}``: each call's undo derived from its result and written with its record). One
agent, one keep-alive client, the same JSON-RPC ``tools/call`` to both in alternating blocks;
p50/p99 of each and the difference (target: ≤ 0.3 ms).

Run: ``python -m bench.journal [--quick] [--postgres URL] [--no-sqlite]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import httpx2 as httpx

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    note,
    parse_options,
    percentile,
    run_each_backend,
)
from bench.gateway import ACCEPT, gateway_caller, upstream, wait_for_upstreams
from bench.tokens import open_deployment, tether_server

POLICIES = """
@id("tickets")
permit (principal, action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "create_ticket" };
"""
RULE = {"create_ticket": {"undo": "close_ticket", "args": {"ticket_id": "{result.id}"}}}


def _body(server: str, n: int) -> bytes:
    params = {"name": f"{server}.create_ticket", "arguments": {"title": f"bench {n}"}}
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                       "params": params}).encode()  # fmt: skip


def run_backend(options: Options, backend: str) -> ResultTable:
    tag = f"[journal/{backend}]"
    with open_deployment(options, backend) as dep, upstream(dep.workdir) as direct:
        bearer = gateway_caller(dep, POLICIES, "journal-caller")
        auth = {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"}
        journalled = {"name": "journalled", "url": direct, "auth": auth, "tools": RULE}
        upstreams = [{"name": "plain", "url": direct, "auth": auth}, journalled]
        env = {"TETHER_GATEWAY_UPSTREAMS": json.dumps(upstreams)}
        note(f"{tag} starting tether serve --workers 2 with the upstream behind /mcp twice")
        with tether_server(dep, 2, env) as server:
            wait_for_upstreams(server.url, {"plain", "journalled"})
            blocks, calls = (3, 200) if options.quick else (6, 500)
            note(f"{tag} {blocks} alternating blocks of {calls} create_ticket calls each")
            headers = {"Accept": ACCEPT, "Content-Type": "application/json",
                       "Authorization": f"Bearer {bearer}"}  # fmt: skip
            times: dict[str, list[float]] = {"plain": [], "journalled": []}
            n = 0
            with httpx.Client(timeout=30) as client:
                for _ in range(blocks):
                    for label, samples in times.items():
                        for i in range(50 + calls):  # 50 to warm the path, then measured
                            n += 1
                            t0 = time.perf_counter()
                            got = client.post(f"{server.url}/mcp", content=_body(label, n),
                                              headers=headers)  # fmt: skip
                            took = time.perf_counter() - t0
                            if got.status_code != 200 or '"isError":true' in got.text:
                                raise RuntimeError(f"{label}: {got.text[:300]}")
                            if i >= 50:
                                samples.append(took)
    table = ResultTable(
        f"The compensation journal on {backend}: create_ticket through the gateway with and "
        "without a compensation declared, sequential, one client (lower is better)",
        ["", "calls", "p50", "p99", "mean"],
    )  # fmt: skip
    plain, journalled = times["plain"], times["journalled"]
    for label, xs in (("no compensation (journalled irreversible)", plain),
                      ("undone by close_ticket({result.id})", journalled)):  # fmt: skip
        p50, p99, mean = percentile(xs, 50), percentile(xs, 99), sum(xs) / len(xs)
        table.rows.append([label, f"{len(xs):,}", fmt_latency(p50), fmt_latency(p99),
                           fmt_latency(mean)])  # fmt: skip
    added50 = percentile(journalled, 50) - percentile(plain, 50)
    added99 = percentile(journalled, 99) - percentile(plain, 99)
    added_mean = sum(journalled) / len(journalled) - sum(plain) / len(plain)
    table.rows.append(["added by the compensation", "", fmt_latency(added50),
                       fmt_latency(added99), fmt_latency(added_mean)])  # fmt: skip
    table.records.append({"benchmark": "journal", "backend": backend,
                          "plain_p50_s": percentile(plain, 50),
                          "journalled_p50_s": percentile(journalled, 50),
                          "added_p50_s": added50})  # fmt: skip
    table.footnotes.append(
        "Both upstream entries are the same example server; the journalled one derives each "
        "call's undo from its structured result and writes it (JSON) with the call's record "
        "and its digest and redacted copy in the call's ledger event. Target: ≤ 0.3 ms added."
    )
    return table


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options("python -m bench.journal", "The compensation journal's cost", argv)
    run_each_backend(options, lambda backend: run_backend(options, backend))


if __name__ == "__main__":
    main()
