"""Rollback speed (issue 17): steps/s undoing an agent's calls on the example upstream, beside
the same undo calls made straight on the upstream and through the gateway, same run.

Per backend: the example upstream behind a real ``tether serve --workers 2``, ``create_ticket``
undone by ``delete_ticket`` with ``ticket_id`` from ``{result.id}``. Each round a fresh agent
makes N ``create_ticket`` calls through the gateway (one keep-alive client, sequential), then
the bootstrap admin, over the HTTP API:

- the dry run, ``POST /v1/agents/{id}/rollback {"dry_run": true}``: the plan of the N calls,
  newest first, nothing written;
- the rollback, the same without ``dry_run``: a start (lease, plan, ``rollback.started``),
  then per call, newest first, the operator's ``tool.undo`` decision and the call's claim
  (one commit), ``delete_ticket`` on the upstream over the gateway's link, the
  ``rollback.step`` event and the call's undo state (one more commit); a finish. One request,
  answered with the report once every step is on the record: steps/s = N / its seconds.

Baselines in the same round, each on N tickets of its own: ``delete_ticket`` straight on the
upstream (the raw JSON-RPC POST the gateway sends; the floor), and ``delete_ticket`` through
the gateway as another agent's ordinary tool calls (each decided, relayed and recorded: two
commits, like a step; what a rollback adds over a plain gateway call). The three undo runs
rotate their order from round to round; medians over the rounds. Every round checks the plan
(N to undo), the report (status ``done``, ``outcome_undone`` = N) and that the upstream holds
no ticket after each run.

Run: ``python -m bench.rollback [--quick] [--postgres URL] [--no-sqlite] [--calls N]
[--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    note,
    parse_options,
    run_each_backend,
)
from bench.gateway import ACCEPT, KEY, gateway_agent, gateway_caller, upstream, wait_for_upstreams
from bench.tokens import Deployment, open_deployment, tether_server

POLICIES = """
@id("tickets")
permit (principal, action == Action::"tool.call", resource)
when { resource has tool &&
       (resource.tool == "create_ticket" || resource.tool == "delete_ticket") };
"""
RULE = {"create_ticket": {"undo": "delete_ticket", "args": {"ticket_id": "{result.id}"}}}
RUNS = ("rollback", "direct", "gateway")  # the three undo runs, rotated round to round


class Mcp:
    """JSON-RPC ``tools/call`` POSTs to one MCP endpoint on one keep-alive client."""

    def __init__(self, client: httpx.Client, url: str, headers: dict[str, str], prefix: str):
        self.client, self.url, self.prefix = client, url, prefix
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json", **headers}
        self.n = 0

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """The call's structured result; an error (HTTP, JSON-RPC or tool) raises."""
        self.n += 1
        params = {"name": self.prefix + tool, "arguments": arguments}
        body = json.dumps({"jsonrpc": "2.0", "id": self.n, "method": "tools/call",
                           "params": params})  # fmt: skip
        got = self.client.post(self.url, content=body.encode(), headers=self.headers)
        answer = got.json() if got.status_code == 200 else {}
        result = answer.get("result") or {}
        if got.status_code != 200 or result.get("isError") or "structuredContent" not in result:
            raise RuntimeError(f"{self.prefix}{tool}: {got.status_code} {got.text[:300]}")
        return result["structuredContent"]

    def create(self, n: int, label: str) -> tuple[float, list[str]]:
        """``n`` tickets: the seconds it took and their ids."""
        t0 = time.perf_counter()
        ids = [str(self.call("create_ticket", {"title": f"{label} {i}"})["id"]) for i in range(n)]
        return time.perf_counter() - t0, ids

    def delete(self, ids: Sequence[str]) -> float:
        t0 = time.perf_counter()
        for ticket_id in ids:
            self.call("delete_ticket", {"ticket_id": ticket_id})
        return time.perf_counter() - t0


@dataclass
class Stage:
    dep: Deployment
    server: str
    admin: httpx.Client  # the bootstrap admin's token, on Tether's API
    direct: Mcp  # the upstream itself, its key
    undoer: Mcp  # an agent deleting tickets through the gateway
    client: httpx.Client
    calls: int


def _empty(stage: Stage, after: str) -> None:
    left = stage.direct.call("list_tickets", {})["result"]
    if left:
        raise RuntimeError(f"after {after}: {len(left)} tickets left on the upstream")


def _rollback(stage: Stage, r: int, out: dict[str, list[float]]) -> None:
    n = stage.calls
    agent_id, token = gateway_agent(stage.dep, f"rollback-bench-{r}")
    agent = Mcp(stage.client, f"{stage.server}/mcp", {"Authorization": f"Bearer {token}"},
                "payments.")  # fmt: skip
    took, _ids = agent.create(n, f"round {r}")
    out["create"].append(took)
    path = f"/v1/agents/{agent_id}/rollback"
    t0 = time.perf_counter()
    plan = stage.admin.post(path, json={"dry_run": True})
    out["plan"].append(time.perf_counter() - t0)
    if plan.status_code != 200 or plan.json()["summary"].get("undo") != n:
        raise RuntimeError(f"dry run: {plan.status_code} {plan.text[:300]}")
    t0 = time.perf_counter()
    done = stage.admin.post(path, json={})
    out["rollback"].append(time.perf_counter() - t0)
    report = done.json() if done.status_code == 200 else {}
    if report.get("status") != "done" or report["summary"].get("outcome_undone") != n:
        raise RuntimeError(f"rollback: {done.status_code} {done.text[:300]}")
    _empty(stage, f"rollback round {r}")


def _direct(stage: Stage, r: int, out: dict[str, list[float]]) -> None:
    _took, ids = stage.direct.create(stage.calls, f"direct {r}")
    out["direct"].append(stage.direct.delete(list(reversed(ids))))
    _empty(stage, f"direct deletes round {r}")


def _gateway(stage: Stage, r: int, out: dict[str, list[float]]) -> None:
    _took, ids = stage.direct.create(stage.calls, f"gateway {r}")
    out["gateway"].append(stage.undoer.delete(list(reversed(ids))))
    _empty(stage, f"gateway deletes round {r}")


def run_backend(options: Options, backend: str) -> ResultTable:
    tag = f"[rollback/{backend}]"
    calls: int = options.extra.calls or (50 if options.quick else 200)
    rounds: int = options.extra.rounds or (3 if options.quick else 5)
    times: dict[str, list[float]] = {k: [] for k in ("create", "plan", *RUNS)}
    with open_deployment(options, backend) as dep, upstream(dep.workdir) as direct_url:
        undoer_token = gateway_caller(dep, POLICIES, "rollback-bench-undoer")
        auth = {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"}
        upstreams = [{"name": "payments", "url": direct_url, "auth": auth, "tools": RULE}]
        env = {"TETHER_GATEWAY_UPSTREAMS": json.dumps(upstreams)}
        note(f"{tag} starting tether serve --workers 2 with the upstream behind /mcp")
        with tether_server(dep, 2, env) as server:
            wait_for_upstreams(server.url, {"payments"})
            admin_token = dep.services.settings.admin_token_path.read_text().strip()
            with (
                httpx.Client(timeout=600) as client,
                httpx.Client(base_url=server.url, timeout=600,
                             headers={"Authorization": f"Bearer {admin_token}"}) as admin,
            ):  # fmt: skip
                stage = Stage(
                    dep, server.url, admin, Mcp(client, direct_url, {"X-Api-Key": KEY}, ""),
                    Mcp(client, f"{server.url}/mcp",
                        {"Authorization": f"Bearer {undoer_token}"}, "payments."),
                    client, calls,
                )  # fmt: skip
                note(f"{tag} warming up: 20 calls each way")
                for mcp in (stage.direct, stage.undoer):
                    mcp.delete(stage.direct.create(20, "warm-up")[1])
                _empty(stage, "the warm-up")
                note(f"{tag} {rounds} rounds of {calls} calls: rollback (with its dry run), "
                     "direct deletes, deletes through the gateway, in rotating order")  # fmt: skip
                runs = {"rollback": _rollback, "direct": _direct, "gateway": _gateway}
                for r in range(rounds):
                    for label in RUNS[r % 3 :] + RUNS[: r % 3]:
                        runs[label](stage, r, times)
                    note(f"{tag} round {r + 1}: rollback {calls / times['rollback'][-1]:,.0f} "
                         f"steps/s, direct {calls / times['direct'][-1]:,.0f}/s, gateway "
                         f"{calls / times['gateway'][-1]:,.0f}/s; checked")  # fmt: skip
    return _table(backend, calls, rounds, times)


def _table(backend: str, calls: int, rounds: int, times: dict[str, list[float]]) -> ResultTable:
    table = ResultTable(
        f"Rollback speed on {backend}: {calls} create_ticket calls undone by delete_ticket, "
        f"sequential, median of {rounds} rounds (higher per s is better)",
        ["", "per s", "per call", "range (rounds)", "÷ direct"],
    )  # fmt: skip
    rows = (
        ("delete_ticket on the upstream directly (the floor)", "direct"),
        ("delete_ticket through the gateway (an agent's call)", "gateway"),
        ("rollback, POST …/rollback: steps", "rollback"),
        ("dry run, POST …/rollback dry_run: calls planned", "plan"),
        ("(the agent's create_ticket through the gateway)", "create"),
    )
    for label, key in rows:
        median = statistics.median(times[key])
        rates = [calls / t for t in times[key]]
        # Paired: each round's rate over the same round's direct rate, then the median.
        ratio = statistics.median(d / t for d, t in zip(times["direct"], times[key], strict=True))
        table.rows.append([label, fmt_rate(calls / median), fmt_latency(median / calls),
                           f"{min(rates):,.0f}-{max(rates):,.0f}/s",
                           "-" if key == "plan" else f"{ratio:.2f}x"])  # fmt: skip
        table.records.append({"benchmark": f"rollback: {key}", "backend": backend,
                              "calls": calls, "rounds": rounds, "per_s": calls / median,
                              "per_call_s": median / calls, "seconds": times[key]})  # fmt: skip
    for label, more, less in (("added per call by the gateway over the upstream", "gateway",
                               "direct"),
                              ("added per step by the rollback over a gateway call", "rollback",
                               "gateway")):  # fmt: skip
        added = [(m - x) / calls for m, x in zip(times[more], times[less], strict=True)]
        table.rows.append([label, "", _signed(statistics.median(added)),
                           f"{_signed(min(added))} to {_signed(max(added))}", ""])  # fmt: skip
        table.records.append({"benchmark": f"rollback: {more} - {less}", "backend": backend,
                              "added_per_call_s": statistics.median(added)})  # fmt: skip
    table.footnotes += [
        "A step: the operator's tool.undo decision with the call's claim (one commit), "
        "delete_ticket on the upstream over the gateway's link, the rollback.step event and the "
        "call's undo state (one commit). A gateway call: the decision (one commit), the call "
        "relayed, its tool.called event and row (one commit). Rollback per s counts the whole "
        "request (its start and finish too) for N steps; the dry run plans N calls in one "
        "request.",
        "÷ direct and the added rows are paired: each round against the same round's runs, "
        "then the median over rounds (the three undo runs rotate their order).",
        "Each round: the plan said N to undo, the report status done with outcome_undone = N, "
        "and no ticket left on the upstream after each run.",
    ]
    return table


def _signed(seconds: float) -> str:
    return ("-" if seconds < 0 else "+") + fmt_latency(abs(seconds))


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=None,
                        help="calls per round (default 200; 50 with --quick)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per backend (default 5; 3 with --quick)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options("python -m bench.rollback", "Rollback speed (steps/s)", argv,
                            add_arguments=_arguments)  # fmt: skip
    run_each_backend(options, lambda backend: run_backend(options, backend))


if __name__ == "__main__":
    main()
