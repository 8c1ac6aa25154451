"""``tether demo`` — a fresh embedded deployment and a narrated story played on it (issue 18).

Tether (``tether serve --workers 2``, SQLite in a data dir of its own, free ports) and the
example MCP upstream (``examples/payments_tickets``) run as processes; everything the story
does goes through the HTTP API and the MCP gateway, as an operator and agents would: a
support org's refund and triage agents with scoped credentials, small refunds allowed and a
large one held for a human, a secret and a tool refused on the record, a kill measured as it
reaches the workers, the rollback of what the killed agent did, and the ledger verified.

The example upstream is not part of the installed package: the demo needs a source checkout
(the repository ``make run`` sets up), and says so otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.client import ApiClient, CliError
from tether.cli.demo_stage import (
    SCOPE,
    Agent,
    DemoFailed,
    Narrator,
    Stage,
    deployment,
    ms,
    repo_root,
    upstream_state,
)

if TYPE_CHECKING:
    pass

SUPERVISOR = "alice"
POLICIES = """
@id("refunds-read-payments")
permit (principal in Role::"refunds", action == Action::"tool.call", resource)
when { resource has tool
       && ["get_balance", "list_payments", "list_refunds"].contains(resource.tool) };

@id("small-refunds")
permit (principal in Role::"refunds", action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "refund" && context has args
       && context.args has amount && context.args.amount < 100 };

@id("large-refunds-need-a-human")
@approval("required")
permit (principal in Role::"refunds", action == Action::"tool.call", resource)
when { resource has tool && resource.tool == "refund" && context has args
       && context.args has amount && context.args.amount >= 100 };

@id("triage-tickets")
permit (principal in Role::"triage", action == Action::"tool.call", resource)
when { resource has tool
       && ["list_tickets", "get_ticket", "create_ticket", "close_ticket"].contains(resource.tool) };

@id("nobody-reads-the-payments-key")
forbid (principal, action == Action::"secret.read", resource == Secret::"payments-key");
"""
STEPS = 10
_PROPAGATION_BOUND = 10.0  # a kill some worker still ignores after this long fails the demo
_ASKS_AFTER_KILL = 20


def _check(holds: bool, what: str) -> None:
    if not holds:
        raise DemoFailed(what)


# -- the command ----------------------------------------------------------------------------


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave it running to explore, until Ctrl-C.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="A new or empty directory for it (default: a temporary one)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The story on stderr, its figures as JSON on stdout.")
    ] = False,
) -> None:
    """Start a fresh Tether (two workers, its own data dir) and the example MCP upstream, and
    play a support org's story through the API and the gateway: scoped credentials, an
    approval, denials on the record, a kill measured across workers, a rollback, the ledger
    verified. Needs a source checkout of Tether (the example upstream is in examples/)."""
    root = repo_root()
    temporary = data_dir is None
    where = Path(tempfile.mkdtemp(prefix="tether-demo-")) if data_dir is None else data_dir
    if not temporary:
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise CliError(f"--data-dir {where} is not empty — give a new or empty directory")
        where.mkdir(parents=True, exist_ok=True)
    tell = Narrator(sys.stderr if as_json else sys.stdout, steps=STEPS)
    done = False
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with deployment(where.resolve(), root) as stage:
            _play(stage, tell)
            done = True
            if as_json:
                print(json.dumps(tell.figures, indent=2), flush=True)
            if keep:
                _linger(stage, tell)
            else:
                gone = "its data dir removed" if temporary else f"its data dir kept in {where}"
                tell.say(f"Stopped now, {gone}; `tether demo --keep` leaves it running to "
                         "explore.")  # fmt: skip
    except KeyboardInterrupt:
        if not (keep and done):
            raise DemoFailed(f"interrupted: its processes are stopped, its data dir kept in "
                             f"{where}") from None  # fmt: skip
    except Exception as exc:  # the API's refusals, the SDK's and the transport's failures
        raise DemoFailed(f"{_first_line(exc)} (the logs are kept in {where})") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if temporary and done:
            shutil.rmtree(where, ignore_errors=True)


def _first_line(exc: Exception) -> str:
    """What went wrong, in one line: an API refusal without the CLI's hint of what to do
    next (which is about a command the user typed, not the demo's own calls)."""
    text = exc.message.partition(" — ")[0] if isinstance(exc, CliError) else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does: processes stopped


def _linger(stage: Stage, tell: Narrator) -> None:
    tell.say(f"Left running until Ctrl-C: {stage.url} (the API at /docs, the console at "
             f"/console); the CLI as admin: TETHER_URL={stage.url} "
             f"TETHER_DATA_DIR={stage.data_dir} tether agents list")  # fmt: skip
    while True:
        for proc, name in ((stage.server, "tether serve"), (stage.upstream_proc, "upstream")):
            if proc.poll() is not None:
                raise DemoFailed(f"{name} exited (status {proc.returncode})")
        time.sleep(1)


def _play(stage: Stage, tell: Narrator) -> None:
    tell.say("Tether demo: a support org's agents, governed end to end")
    ready = tell.since_start()
    tell.figures.update(url=stage.url, data_dir=str(stage.data_dir), ready_seconds=ready)
    tell.step(1, f"Tether serving at {stage.url} (2 workers, SQLite) beside the example "
                 f"payments-and-tickets MCP server; ready in {ready:.1f} s")  # fmt: skip
    tell.more(f"data dir {stage.data_dir}")
    admin = ApiClient(stage.url, stage.admin_token)
    _govern(stage, admin, tell)
    alice, refunds, triage = _people(stage, admin, tell)
    balance_before, _ = upstream_state(stage)
    tickets = _triage(triage, tell)
    _refunds(stage, alice, refunds, tell)
    _out_of_bounds(refunds, tickets[0], tell)
    offer = _kill(stage, alice, refunds, tell)
    _rollback(stage, alice, refunds, offer, balance_before, tell)
    username, password = _console_sign_in(admin)
    admin.post("/v1/audit/checkpoints")  # sign the head now (tether audit checkpoint)
    verified = admin.get("/v1/audit/verify")
    _check(verified["ok"] is True, f"the ledger did not verify: {verified.get('message')}")
    tell.figures["ledger_events"] = verified["checked"]
    tell.step(10, f"Ledger verified (tether audit verify): ok — {verified['checked']} events "
                  f"hash-chained, {verified['checkpoints_checked']} signed checkpoint(s); every "
                  "step above is on it")  # fmt: skip
    total = tell.since_start()
    tell.figures.update(seconds=round(total, 2), console=f"{stage.url}/console")
    tell.say("")
    tell.say(f"Done in {total:.1f} s. Console: {stage.url}/console — sign in as {username}, "
             f"password {password}")  # fmt: skip


def _govern(stage: Stage, admin: ApiClient, tell: Narrator) -> None:
    """The upstream's key as a broker-only secret, the policies, the gateway connected."""
    admin.request("PUT", "/v1/secrets/payments-key", json={"value": stage.key,
                                                           "broker_only": True})  # fmt: skip
    schema = admin.get("/v1/policies")["schema"].replace(
        "  on_behalf_of?: String,\n};",
        "  on_behalf_of?: String,\n  args?: { amount?: Long },\n};", 1,
    )  # fmt: skip
    pushed = admin.request("PUT", "/v1/policies", json={"policies": POLICIES, "schema": schema})
    started = time.perf_counter()
    _wait_for_upstream(stage)
    ids = [ln.split('"')[1] for ln in POLICIES.splitlines() if ln.startswith("@id(")]
    tell.step(2, f"Policy {pushed['version']} pushed: {', '.join(ids)}")
    tell.more("the upstream's API key stored as broker-only secret payments-key (never shown "
              f"to an agent); both workers' gateway connected with it in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip


def _wait_for_upstream(stage: Stage) -> None:
    """Each worker connects to the upstream on its own once the secret is there: wait until
    twenty answers in a row, each on a new connection (so from either worker), say it is up."""
    import httpx2 as httpx

    deadline = time.monotonic() + 30
    in_a_row = 0
    with httpx.Client(base_url=stage.url, timeout=5,
                      limits=httpx.Limits(max_keepalive_connections=0)) as http:  # fmt: skip
        while in_a_row < 20:
            _check(stage.upstream_proc.poll() is None, "the example upstream exited")
            _check(time.monotonic() < deadline, "the gateway never connected to the upstream")
            upstreams = http.get("/readyz").json().get("upstreams", [])
            up = any(u["name"] == "payments" and u["up"] for u in upstreams)
            in_a_row = in_a_row + 1 if up else 0
            if not up:
                time.sleep(0.1)


def _people(stage: Stage, admin: ApiClient, tell: Narrator) -> tuple[ApiClient, Agent, Agent]:
    """A supervisor, and the two agents she owns with API keys and gateway tokens."""
    from tether.sdk import AgentClient

    admin.post("/v1/users", {"username": SUPERVISOR, "role": "supervisor",
                             "email": f"{SUPERVISOR}@support.example"})  # fmt: skip
    token = admin.post(f"/v1/users/{SUPERVISOR}/tokens", {"name": "demo"})["token"]
    alice = ApiClient(stage.url, token)
    agents = []
    for name, role, purpose in (("refund-agent", "refunds", "issue customer refunds"),
                                ("triage-agent", "triage", "triage support tickets")):  # fmt: skip
        made = alice.post("/v1/agents", {"name": name, "owner": SUPERVISOR, "purpose": purpose,
                                         "risk_tier": "limited", "roles": [role],
                                         "scopes": [SCOPE]})  # fmt: skip
        key = alice.post(f"/v1/agents/{made['id']}/credentials",
                         {"type": "api_key", "scopes": [SCOPE], "expires_in": 86_400})  # fmt: skip
        secret = key["client_secret"]
        agents.append(Agent(
            name, made["id"], stage.url, AgentClient(stage.url, made["id"], client_secret=secret),
            AgentClient(stage.url, made["id"], client_secret=secret, resource=f"{stage.url}/mcp"),
        ))  # fmt: skip
    refunds, triage = agents
    tell.step(3, f"Supervisor {SUPERVISOR} registered refund-agent {refunds.id} (role refunds) "
                 f"and triage-agent {triage.id} (role triage)")  # fmt: skip
    tell.more(f"each has an API key (scope {SCOPE}, 24 h) and a short-lived token for the "
              f"gateway only (audience {stage.url}/mcp)")  # fmt: skip
    for agent in agents:
        tell.more(f"{agent.name} sees the tools policy may let it call: "
                  f"{', '.join(t.removeprefix('payments.') for t in agent.tools())}")  # fmt: skip
    return alice, refunds, triage


def _triage(triage: Agent, tell: Narrator) -> list[str]:
    opened = [triage.call("create_ticket", title=title) for title in
              ("Refund for order 1017", "Card charged twice")]  # fmt: skip
    _check(all(c.ok for c in opened), f"triage-agent could not open a ticket: {opened}")
    ids = [str(c.body["id"]) for c in opened]
    times = " and ".join(ms(c.seconds) for c in opened)
    tell.step(4, f"triage-agent opened tickets {' and '.join(ids)} through the MCP gateway "
                 f"(calls of {times})")  # fmt: skip
    return ids


def _refunds(stage: Stage, alice: ApiClient, refunds: Agent, tell: Narrator) -> None:
    small = refunds.call("refund", payment_id="pay_2", amount=40)
    _check(small.ok, f"the small refund was refused: {small.body}")
    p50 = _decision_p50(stage, refunds.id)
    tell.figures.update(small_refund_ms=round(small.seconds * 1000, 2),
                        decision_p50_ms=round(p50 * 1000, 2))  # fmt: skip
    tell.step(5, f"refund-agent refunds 40 of pay_2: allowed, refund {small.body['id']} in "
                 f"{ms(small.seconds)} (decision, upstream call and record)")  # fmt: skip
    tell.more(f"decision latency: {ms(p50)} p50 over 20 AuthZEN asks")
    big = refunds.call("refund", payment_id="pay_1", amount=400)
    _check(not big.ok and big.body.get("error") == "approval_required",
           f"the large refund was not held for approval: {big.body}")  # fmt: skip
    approval = big.body["approval_id"]
    tell.figures["approval_id"] = approval
    tell.step(6, f"refund-agent refunds 400 of pay_1: held for a human — approval {approval}")
    _approve_from_the_cli(stage, alice, approval)
    again = refunds.call("refund", payment_id="pay_1", amount=400)
    _check(again.ok, f"the approved refund was refused: {again.body}")
    tell.more(f"{SUPERVISOR} approved it from the CLI (tether approvals approve {approval}; the "
              f"console can too); the identical call then went through: refund "
              f"{again.body['id']}")  # fmt: skip


def _approve_from_the_cli(stage: Stage, alice: ApiClient, approval: str) -> None:
    """``tether approvals approve`` as the supervisor runs it, with her token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_URL=stage.url, TETHER_TOKEN=alice.token or "")
    ran = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "tether", "approvals", "approve", approval, "--json",
         "--note", "customer verified"],
        cwd=stage.data_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    _check(ran.returncode == 0, f"tether approvals approve failed: {ran.stderr.strip()}")
    status = json.loads(ran.stdout)["status"]
    _check(status == "approved", f"the approval is {status} after tether approvals approve")


def _decision_p50(stage: Stage, agent_id: str) -> float:
    import httpx2 as httpx

    admin = {"Authorization": f"Bearer {stage.admin_token}"}
    with httpx.Client(base_url=stage.url, timeout=10, headers=admin) as http:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            got = http.post("/access/v1/evaluation", json=_ask(agent_id))
            times.append(time.perf_counter() - started)
            _check(got.status_code == 200 and got.json()["decision"] is True,
                   f"AuthZEN did not allow refund-agent a balance: {got.text[:200]}")  # fmt: skip
    return statistics.median(times)


def _ask(agent_id: str) -> dict[str, Any]:
    return {"subject": {"type": "agent", "id": agent_id}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "payments.get_balance",
                         "properties": {"server": "payments", "tool": "get_balance"}}}  # fmt: skip


def _out_of_bounds(refunds: Agent, ticket: str, tell: Narrator) -> None:
    from tether.sdk import SecretError

    try:
        refunds.api.secret("payments-key")
    except SecretError as exc:
        _check(exc.code == "access_denied", f"the secret read was refused as {exc.code}")
        reasons = ", ".join(exc.details.get("reasons") or []) or "no permit"
        tell.step(7, f"refund-agent reads secret payments-key: denied ({reasons}), on the "
                     f"record as decision {exc.details.get('event_id')}")  # fmt: skip
    else:
        raise DemoFailed("refund-agent read the payments key")
    closed = refunds.call("close_ticket", ticket_id=ticket)
    _check(not closed.ok and closed.body.get("error") == "access_denied",
           f"refund-agent closed a ticket: {closed.body}")  # fmt: skip
    tell.more(f"refund-agent calls payments.close_ticket on {ticket}: refused, not its tool "
              "(a tool.called event, outcome refused)")  # fmt: skip


def _kill(stage: Stage, alice: ApiClient, refunds: Agent, tell: Narrator) -> dict[str, Any]:
    """The kill, as asks about the agent on new connections (either worker answers) see it."""
    import httpx2 as httpx

    seen: list[tuple[float, float, bool, list[str]]] = []  # asked, answered, allowed, why
    failures: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=stage.url, timeout=10,
                          headers={"Authorization": f"Bearer {stage.admin_token}"},
                          limits=httpx.Limits(max_keepalive_connections=0)) as http:  # fmt: skip
            while not stop.is_set():
                try:
                    # When it was asked, not answered: an ask sent before the kill returned
                    # may be decided before the kill took effect, and rightly allowed.
                    asked = time.perf_counter()
                    got = http.post("/access/v1/evaluation", json=_ask(refunds.id)).json()
                    seen.append((asked, time.perf_counter(), bool(got["decision"]),
                                 got["context"]["reasons"]))  # fmt: skip
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    failures.append(str(exc) or type(exc).__name__)
                    return

    poller = threading.Thread(target=ask, daemon=True)
    poller.start()
    try:
        _until(lambda: len(seen) >= 3 or bool(failures), "the decision poller never answered")
        sent = time.perf_counter()
        killed = alice.post(f"/v1/agents/{refunds.id}/kill", {"reason": "refunds out of policy"})
        returned = time.perf_counter()
        _until(lambda: sum(a[0] > returned for a in seen) >= _ASKS_AFTER_KILL or bool(failures),
               "too few decisions after the kill")  # fmt: skip
    finally:
        stop.set()
        poller.join(15)
    _check(not failures, f"a decision failed: {failures[:1]}")
    after = [allowed for asked, _, allowed, _ in seen if asked > returned]
    _check(not any(after), f"{sum(after)} of {len(after)} decisions asked after the kill "
           "returned allowed it")  # fmt: skip
    _, denied_at, _, reasons = min((a for a in seen if not a[2]), key=lambda a: a[1])
    first_denied = denied_at - sent
    kill_seconds = returned - sent
    tell.figures.update(kill_ms=round(kill_seconds * 1000, 2),
                        propagation_ms=round(first_denied * 1000, 2))  # fmt: skip
    tell.step(8, f"{SUPERVISOR} kills refund-agent: the kill answered in {ms(kill_seconds)} "
                 f"(it returns once both workers applied it)")  # fmt: skip
    tell.more(f"kill propagation: the first denial ({', '.join(reasons)}) came "
              f"{ms(first_denied)} after the kill was sent; all {len(after)} decisions asked "
              "after it returned, each on a new connection (either worker), denied")  # fmt: skip
    door = _gateway_status(stage, refunds)
    _check(door == 401, f"the killed agent's gateway token got {door}")
    offer = killed.get("rollback") or {}
    _check(offer.get("reversible_actions", 0) >= 1, f"the kill offered no rollback: {offer}")
    tell.more(f"its gateway token is refused at the door (401); the kill offers a rollback of "
              f"{offer['reversible_actions']} reversible call(s): {offer['command']}")  # fmt: skip
    return dict(offer)


def _until(holds: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _PROPAGATION_BOUND
    while not holds():
        _check(time.monotonic() < deadline, what)
        time.sleep(0.005)


def _gateway_status(stage: Stage, agent: Agent) -> int:
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {agent.gateway.access_token()}",
               "Accept": "application/json, text/event-stream"}  # fmt: skip
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    return httpx.post(f"{stage.url}/mcp", json=listing, headers=headers, timeout=10).status_code


def _rollback(
    stage: Stage, alice: ApiClient, refunds: Agent, offer: dict[str, Any],
    balance_before: int, tell: Narrator,
) -> None:  # fmt: skip
    path = offer["request"]["path"]  # the offer's own request: the same window
    window = {k: v for k, v in offer["request"]["body"].items() if k != "dry_run"}
    balance_after, _ = upstream_state(stage)
    plan = alice.post(path, {**window, "dry_run": True})
    tell.step(9, f"Rollback plan for refund-agent (newest first), {plan['summary']['undo']} "
                 "to undo:")  # fmt: skip
    for s in plan["steps"]:
        undo = s.get("undo") or {}
        tell.more(f"  {s['tool']:<18} {s['plan']:<12} {undo.get('tool', s.get('note') or '')} "
                  f"{json.dumps(undo.get('arguments', {}))}")  # fmt: skip
    started = time.perf_counter()
    report = alice.post(path, {**window, "on_failure": "stop"})
    took = time.perf_counter() - started
    undone = report["summary"]["outcome_undone"]
    _check(report["status"] == "done" and undone == plan["summary"]["undo"],
           f"the rollback ended {report['status']} with {undone} undone")  # fmt: skip
    balance_now, statuses = upstream_state(stage)
    _check(balance_now == balance_before, f"ops holds {balance_now}, not {balance_before}")
    tell.figures.update(rollback_undone=undone, rollback_ms=round(took * 1000, 2))
    tell.more(f"rollback {report['rollback_id']}: {undone} undone in {ms(took)}, each undo "
              f"decided and recorded; the upstream (asked directly): ops balance "
              f"{balance_before} -> {balance_after} -> {balance_now}, refunds "
              f"{', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}")  # fmt: skip


def _console_sign_in(admin: ApiClient) -> tuple[str, str]:
    """The supervisor's console sign-in: a generated password set for her, as ``tether users
    set-password alice --generate`` does (``PUT /v1/users/{user}/password``)."""
    password = secrets.token_urlsafe(12)
    admin.request("PUT", f"/v1/users/{SUPERVISOR}/password", json={"password": password})
    return SUPERVISOR, password
