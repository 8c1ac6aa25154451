"""Kill propagation: how soon a kill made through one node is enforced by another, by a
resource server following the revocation feed, and what the kill call itself costs.

Per backend, two ``tether serve`` processes on one database (a fresh SQLite file or
PostgreSQL schema) are two nodes of one deployment: each its own port and data dir (holding
the deployment's keys), one public URL (the issuer). Kills go through node A; node B answers
decisions at a fixed rate throughout (bench.decisions' Python generator, in a process of its
own: the admin's AuthZEN evaluations about 50 other agents). Per kill:

1. an agent, an API key and an access token, made in process on the same database;
2. node B must first allow the agent's own decision (``tool.call``, with its token), and a
   :class:`~tether.sdk.revocations.RevocationFollower` following node B's feed must not
   refuse the token;
3. a probe thread asks node B that decision back to back (keep-alive connections), and a
   watcher thread asks the follower about the token's verified claims every 0.5 ms;
4. ``POST /v1/agents/{id}/kill`` on node A. Measured from the call's start and from its
   return: the first answer of node B that denies (401 or ``decision: false``) after which
   it never allows again (the answer's arrival, so one probe round trip is included), and the
   follower's first refusal.

Then kills of an agent with 1,000 descendants holding 10,000 live tokens (built beforehand
with bulk inserts, their change-feed rows written so both nodes know them), one a second
under the same load. Beside them, in the same run: node B's decisions about other agents
with no kill running (their p50/p99 during the kills shows whether a kill stalls them), the
probe's own round trip, PostgreSQL's NOTIFY → LISTEN on plain connections (the floor under
any push between nodes), and what a resource server would otherwise rely on: the nodes' poll
interval and the access-token TTL.

Since a node's write returns only once every live worker of every node applied it (bounded by
``TETHER_RUNTIME_PROPAGATION_WAIT_SECONDS``, default 1 s), the kill call includes node B's
apply; ``--propagation-wait 0`` measures the call without that wait.

Run: ``python -m bench.propagation [--quick] [--postgres URL] [--no-sqlite] [--kills N]
[--big-kills N] [--kill-load-rate R] [--workers N] [--propagation-wait S] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import orjson
import psycopg
from sqlalchemy import insert

from bench.common import (
    POSTGRESQL,
    Options,
    ResultTable,
    libpq_conninfo,
    machine_line,
    note,
    parse_options,
    percentile,
    write_json,
)
from bench.loadgen import HttpRequest, LoadGen, LoadResult
from bench.tokens import (
    Deployment,
    Server,
    basic_authorization,
    free_port,
    open_deployment,
    tether_server,
)
from tether.agents.models import AgentRow
from tether.agents.schemas import AgentCreate
from tether.agents.values import spiffe_id
from tether.clock import to_micros
from tether.credentials.models import AccessTokenRow
from tether.ids import IdPrefix, new_id
from tether.keyfiles import LEDGER_KEY_FILE, MASTER_KEY_FILE
from tether.runtime import changes
from tether.sdk import (
    AccessTokenClaims,
    InvalidToken,
    JWKSCache,
    RevocationFollower,
    verify_access_token,
)

ALLOW = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
EVALUATION = "/access/v1/evaluation"
WAIT = 5.0  # seconds: the most any step waits before it counts as failed
TAIL = 0.02  # seconds of denials the probe still reads after the first one


@dataclass(frozen=True)
class Sizes:
    kills: int  # single-agent kills, each followed on node B and at the SDK
    big_kills: int  # kills of an agent with `descendants` below it
    descendants: int
    tokens: int  # live tokens over the big kill's agents
    rate: int  # decisions/s against node B, throughout
    connections: int  # the load generator's
    baseline_seconds: float  # node B's decisions with no kill running
    workers: int  # per node
    wait: float | None = None  # TETHER_RUNTIME_PROPAGATION_WAIT_SECONDS (None: the default)


FULL = Sizes(kills=200, big_kills=10, descendants=1000, tokens=10_000, rate=500,
             connections=16, baseline_seconds=10.0, workers=1)  # fmt: skip
QUICK = Sizes(kills=30, big_kills=3, descendants=1000, tokens=10_000, rate=300,
              connections=8, baseline_seconds=3.0, workers=1)  # fmt: skip


# -- the two nodes -----------------------------------------------------------------------------
@dataclass
class Nodes:
    dep: Deployment
    a: Server
    b: Server
    admin_token: str
    background: list[str]  # agents node B's load asks about


@contextmanager
def two_nodes(options: Options, backend: str, sizes: Sizes) -> Iterator[Nodes]:
    tag = f"[propagation/{backend}]"
    note(f"{tag} bootstrapping a deployment")
    with open_deployment(options, backend) as dep:
        svc = dep.services
        svc.policies.push(dep.admin, policies=ALLOW, schema=None, note="bench.propagation")
        background = [svc.agents.create(dep.admin, _spec(f"background-{i}")).id for i in range(50)]
        b_dir = dep.workdir / "node-b"
        b_dir.mkdir(mode=0o700)
        for name in (MASTER_KEY_FILE, LEDGER_KEY_FILE):
            shutil.copy2(svc.settings.data_dir / name, b_dir / name)
        note(f"{tag} starting node A and node B, --workers {sizes.workers} each")
        env = {} if sizes.wait is None else {
            "TETHER_RUNTIME_PROPAGATION_WAIT_SECONDS": f"{sizes.wait:g}"}  # fmt: skip
        with (
            tether_server(dep, sizes.workers, env) as a,
            tether_server(dep, sizes.workers, {**env, "TETHER_PUBLIC_URL": dep.base_url},
                          data_dir=b_dir, port=free_port()) as b,
        ):  # fmt: skip
            token = svc.settings.admin_token_path.read_text().strip()
            yield Nodes(dep, a, b, token, background)


def _spec(name: str, parent: str | None = None) -> AgentCreate:
    return AgentCreate(name=name, owner="admin", purpose="propagation benchmark",
                       risk_tier="minimal", scopes=["read"], parent=parent)  # fmt: skip


def _ask(agent_id: str) -> bytes:
    return orjson.dumps({"subject": {"type": "agent", "id": agent_id},
                         "action": {"name": "tool.call"},
                         "resource": {"type": "Tool", "id": "search"}})  # fmt: skip


def _allowed(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.json().get("decision") is True


def _until(check: Callable[[], bool], timeout: float = WAIT, every: float = 0.001) -> bool:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            return False
        time.sleep(every)
    return True


# -- decisions at load on node B ---------------------------------------------------------------
class Load:
    """bench.decisions' open-loop generator against node B, from start until :meth:`stop`."""

    def __init__(self, nodes: Nodes, sizes: Sizes, workdir: Path) -> None:
        auth = f"Bearer {nodes.admin_token}"
        self.reqs = [HttpRequest("POST", EVALUATION, auth, _ask(a)) for a in nodes.background]
        self.gen = LoadGen(nodes.b, workdir, "python")
        self.sizes = sizes
        self.stop_file = workdir / "load.stop"
        self.result: LoadResult | None = None
        self._thread: threading.Thread | None = None

    def run_for(self, seconds: float) -> LoadResult:
        return self.gen.fixed_rate(self.reqs, rate=self.sizes.rate,
                                   connections=self.sizes.connections, seconds=seconds,
                                   expect="decision")  # fmt: skip

    @contextmanager
    def running(self) -> Iterator[Load]:
        self.stop_file.unlink(missing_ok=True)

        def run() -> None:
            self.result = self.gen.fixed_rate(self.reqs, rate=self.sizes.rate,
                                              connections=self.sizes.connections,
                                              seconds=3600.0, expect="decision",
                                              stop=self.stop_file)  # fmt: skip

        self._thread = threading.Thread(target=run, name="load", daemon=True)
        self._thread.start()
        time.sleep(1.0)  # the generator's process is up and sending
        try:
            yield self
        finally:
            self.stop_file.touch()
            self._thread.join(timeout=60)


# -- one kill ----------------------------------------------------------------------------------
@dataclass
class Probe:
    """Node B asked about one agent back to back, on its own keep-alive connections."""

    clients: list[httpx.Client]
    body: bytes
    headers: dict[str, str]
    answers: list[tuple[float, float, bool]] = field(default_factory=list)  # sent, got, allowed
    first: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.perf_counter() + WAIT
        denied_since: float | None = None
        k = 0
        while True:
            client = self.clients[k % len(self.clients)]
            k += 1
            sent = time.perf_counter()
            allowed = _allowed(client.post(EVALUATION, content=self.body, headers=self.headers))
            got = time.perf_counter()
            self.answers.append((sent, got, allowed))
            self.first.set()
            denied_since = None if allowed else (denied_since or got)
            if (denied_since is not None and got - denied_since >= TAIL) or got > deadline:
                return

    def denied_at(self) -> float:
        """When the last run of denials began (NaN if the last answer allowed)."""
        at = math.nan
        for _sent, got, allowed in reversed(self.answers):
            if allowed:
                break
            at = got
        return at

    def allowed_after(self, t: float) -> int:
        return sum(1 for sent, _got, allowed in self.answers if allowed and sent >= t)


@dataclass
class Watch:
    """A resource server's check of a verified token against the revocation feed."""

    follower: RevocationFollower
    claims: AccessTokenClaims
    refused_at: float = math.nan
    stale: int = 0

    def run(self) -> None:
        deadline = time.perf_counter() + WAIT
        while time.perf_counter() < deadline:
            try:
                if self.follower(self.claims):
                    self.refused_at = time.perf_counter()
                    return
            except InvalidToken:  # the feed was not current: not what is measured
                self.stale += 1
            time.sleep(0.0005)


@dataclass
class Kills:
    call: list[float] = field(default_factory=list)
    node_start: list[float] = field(default_factory=list)
    node_return: list[float] = field(default_factory=list)
    sdk_start: list[float] = field(default_factory=list)
    sdk_return: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)  # node B's allowed answers, no kill
    allowed_after_return: int = 0  # probe answers sent after the return that still allowed
    kills_allowed_after_return: int = 0
    denied_401: int = 0
    failures: list[str] = field(default_factory=list)
    stale: int = 0
    quiet_call: list[float] = field(default_factory=list)  # no probe, no follower check
    big_call: list[float] = field(default_factory=list)
    big_revoked: int = 0
    big_tokens: int = 0


class Bench:
    def __init__(self, nodes: Nodes, sizes: Sizes) -> None:
        self.nodes = nodes
        self.sizes = sizes
        self.svc = nodes.dep.services
        self.issuer = nodes.dep.base_url
        admin = {"Authorization": f"Bearer {nodes.admin_token}"}
        self.a = httpx.Client(base_url=nodes.a.url, headers=admin, timeout=30)
        self.b = [httpx.Client(base_url=nodes.b.url, timeout=30)
                  for _ in range(2 * sizes.workers)]  # fmt: skip
        jwks = httpx.get(f"{nodes.b.url}/.well-known/jwks.json", timeout=10).json()
        self.jwks = JWKSCache.from_static(jwks)
        self.follower = RevocationFollower(nodes.b.url, nodes.admin_token, max_staleness=10.0)
        self.out = Kills()

    def close(self) -> None:
        self.follower.close()
        for c in [self.a, *self.b]:
            c.close()

    def start(self) -> None:
        self.follower.start()
        if not self.follower.wait_current(WAIT):
            raise RuntimeError("the revocation follower did not get current on node B")

    def _agent(self, i: int) -> tuple[str, str, AccessTokenClaims]:
        svc, admin = self.svc, self.nodes.dep.admin
        agent = svc.agents.create(admin, _spec(f"victim-{i}"))
        _cred, secret = svc.credentials.create_api_key(admin, agent.id)
        auth = basic_authorization(agent.id, secret)
        token = str(svc.oauth.token({"grant_type": "client_credentials"}, auth)["access_token"])
        claims = verify_access_token(token, issuer=self.issuer, audience=self.issuer,
                                     jwks=self.jwks)  # fmt: skip
        return agent.id, token, claims

    def round_trips(self, seconds: float) -> None:
        """The probe's round trip on node B (an allowed decision), one every 10 ms."""
        agent_id, access, _claims = self._agent(-1)
        headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
        body = _ask(agent_id)
        if not _until(lambda: _allowed(self.b[0].post(EVALUATION, content=body,
                                                      headers=headers))):  # fmt: skip
            raise RuntimeError("node B never allowed the probe's agent")
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            if _allowed(self.b[0].post(EVALUATION, content=body, headers=headers)):
                self.out.rtt.append(time.perf_counter() - sent)
            time.sleep(0.01)

    def one_kill(self, i: int) -> None:
        agent_id, token, claims = self._agent(i)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = _ask(agent_id)
        if not _until(lambda: all(_allowed(c.post(EVALUATION, content=body, headers=headers))
                                  for c in self.b)):  # fmt: skip
            self.out.failures.append(f"{agent_id}: node B never allowed it before the kill")
            return
        if self.follower(claims):
            self.out.failures.append(f"{agent_id}: the follower refused it before the kill")
            return
        probe, watch = Probe(self.b, body, headers), Watch(self.follower, claims)
        threads = [threading.Thread(target=probe.run), threading.Thread(target=watch.run)]
        for t in threads:
            t.start()
        probe.first.wait(WAIT)
        t0 = time.perf_counter()
        r = self.a.post(f"/v1/agents/{agent_id}/kill", json={"reason": "bench"})
        t1 = time.perf_counter()
        for t in threads:
            t.join()
        if r.status_code != 200:
            self.out.failures.append(f"kill {agent_id}: HTTP {r.status_code} {r.text[:200]}")
            return
        out = self.out
        out.call.append(t1 - t0)
        out.stale += watch.stale
        late = probe.allowed_after(t1)
        out.allowed_after_return += late
        out.kills_allowed_after_return += bool(late)
        denied = probe.denied_at()
        if math.isnan(denied):
            out.failures.append(f"{agent_id}: node B still allowed it {WAIT:g} s after")
        else:
            out.node_start.append(denied - t0)
            out.node_return.append(denied - t1)
        if math.isnan(watch.refused_at):
            out.failures.append(f"{agent_id}: the follower did not refuse it in {WAIT:g} s")
        else:
            out.sdk_start.append(watch.refused_at - t0)
            out.sdk_return.append(watch.refused_at - t1)
        final = self.b[0].post(EVALUATION, content=body, headers=headers)
        out.denied_401 += final.status_code == 401

    def quiet_kill(self, i: int) -> None:
        """A kill of one agent (with a token) alone: nobody probing meanwhile."""
        agent_id, _token, _claims = self._agent(i)
        time.sleep(0.02)  # both nodes have heard of it
        t0 = time.perf_counter()
        r = self.a.post(f"/v1/agents/{agent_id}/kill", json={"reason": "bench"})
        t1 = time.perf_counter()
        if r.status_code != 200:
            self.out.failures.append(f"kill {agent_id}: HTTP {r.status_code} {r.text[:200]}")
            return
        self.out.quiet_call.append(t1 - t0)

    # -- kills of a large family -----------------------------------------------------------
    def family(self, rng: random.Random) -> str:
        """An agent with ``descendants`` below it (a random tree, ~log depth) and ``tokens``
        live access tokens spread over all of them; both nodes are told through the feed."""
        svc, admin, sizes = self.svc, self.nodes.dep.admin, self.sizes
        root = svc.agents.create(admin, _spec("family-root"))
        now_us = to_micros(svc.clock.now())
        ids, rows = [root.id], []
        for i in range(sizes.descendants):
            agent_id = new_id(IdPrefix.AGENT)
            parent = ids[rng.randrange(len(ids))]
            rows.append({
                "id": agent_id, "spiffe_id": spiffe_id(svc.settings.trust_domain, agent_id),
                "name": f"family-{i}", "owner_id": admin.id, "purpose": "propagation benchmark",
                "risk_tier": "minimal", "status": "active", "status_reason": None,
                "attributes": "{}", "scopes": '["read"]', "parent_id": parent,
                "lineage": "[]", "lineage_kind": "spawned", "fingerprint": None,
                "fingerprint_digest": None, "created_at": now_us, "updated_at": now_us,
                "expires_at": None, "recertify_by": None,
            })  # fmt: skip
            ids.append(agent_id)
        hour_us = 3600 * 1_000_000
        tokens = [{"jti": secrets.token_urlsafe(16), "agent_id": ids[i % len(ids)],
                   "client_id": ids[i % len(ids)], "issued_at": now_us,
                   "expires_at": now_us + hour_us, "revoked_at": None}
                  for i in range(sizes.tokens)]  # fmt: skip
        with svc.db.write() as s:
            s.execute(insert(AgentRow), rows)
            s.execute(insert(AccessTokenRow), tokens)
            changes.record(s, changes.Kind.AGENT, ids[1:], now_us=now_us)
        return root.id

    def big_kill(self, root: str) -> None:
        t0 = time.perf_counter()
        r = self.a.post(f"/v1/agents/{root}/kill", json={"reason": "bench"})
        t1 = time.perf_counter()
        if r.status_code != 200:
            self.out.failures.append(f"kill {root}: HTTP {r.status_code} {r.text[:200]}")
            return
        body = r.json()
        self.out.big_call.append(t1 - t0)
        self.out.big_revoked = len(body["revoked"])
        self.out.big_tokens = body["cut_off"]["tokens"]


def notify_floor(url: str, schema: str | None, n: int) -> list[float]:
    """PostgreSQL NOTIFY on one plain connection until a LISTENing one has it."""
    del schema  # channels are per database
    conninfo = libpq_conninfo(url)
    channel = f"bench_{secrets.token_hex(4)}"
    out: list[float] = []
    with psycopg.connect(conninfo, autocommit=True) as listener, \
            psycopg.connect(conninfo, autocommit=True) as notifier:  # fmt: skip
        listener.execute(f"LISTEN {channel}")
        for _ in range(n):
            t0 = time.perf_counter()
            notifier.execute(f"NOTIFY {channel}")
            for _note in listener.notifies(timeout=WAIT, stop_after=1):
                out.append(time.perf_counter() - t0)
    return out


# -- the table ---------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "NOT met")


def table_for(
    backend: str, sizes: Sizes, out: Kills, loads: dict[str, LoadResult | None],
    floor: list[float], poll: float, ttl: int, wait: float | None,
) -> ResultTable:  # fmt: skip
    waits = "" if wait is None else f", propagation wait {wait:g} s"
    title = (f"Kill propagation on {'PostgreSQL' if backend == POSTGRESQL else 'SQLite'}: two "
             f"nodes (--workers {sizes.workers} each{waits}), node B deciding "
             f"{sizes.rate}/s")  # fmt: skip
    table = ResultTable(title, ["measurement", "p50", "p99", "max", "n", "target", ""])

    def row(label: str, xs: Sequence[float], target: str = "",
            ok: Callable[[float, float], bool] | None = None) -> None:  # fmt: skip
        p50, p99 = percentile(xs, 50), percentile(xs, 99)
        top = max(xs) if xs else math.nan
        verdict = ok(p50, p99) if ok is not None and xs else None
        table.rows.append([label, _ms(p50), _ms(p99), _ms(top), str(len(xs)), target,
                           _met(verdict)])  # fmt: skip
        table.records.append({"backend": backend, "measurement": label, "p50_s": p50,
                              "p99_s": p99, "max_s": top, "n": len(xs), "target": target,
                              "met": verdict})  # fmt: skip

    def load_row(label: str, result: LoadResult | None) -> None:
        if result is None:
            return
        table.rows.append([label, _ms(result.p50), _ms(result.p99), _ms(result.max),
                           str(result.ok), "", ""])  # fmt: skip
        table.records.append({"backend": backend, "measurement": label, "p50_s": result.p50,
                              "p99_s": result.p99, "max_s": result.max, "n": result.ok,
                              "rate": result.rate, "errors": result.errors})  # fmt: skip

    row("node B denies the killed agent, after the kill call returned", out.node_return,
        "p99 ≤ 25 ms", lambda _a, p99: p99 <= 0.025)  # fmt: skip
    row("node B denies the killed agent, from the kill call's start", out.node_start)
    row("SDK follower of node B's feed refuses its token, after the return", out.sdk_return,
        "p99 ≤ 250 ms", lambda _a, p99: p99 <= 0.25)  # fmt: skip
    row("SDK follower of node B's feed refuses its token, from the start", out.sdk_start)
    row("kill call (POST …/kill on node A), 1 agent, 1 token", out.quiet_call, "p50 ≤ 20 ms",
        lambda p50, _b: p50 <= 0.020)  # fmt: skip
    row("kill call, 1 agent, 1 token, while node B is probed (the kills above)", out.call,
        "p50 ≤ 20 ms", lambda p50, _b: p50 <= 0.020)  # fmt: skip
    row(f"kill call, 1 agent + {sizes.descendants:,} descendants, {sizes.tokens:,} tokens",
        out.big_call, "≪ 1 s", lambda _a, p99: p99 < 1.0)  # fmt: skip
    load_row("decisions on node B (other agents), no kill running", loads["baseline"])
    load_row("decisions on node B (other agents), during the 1-agent kills", loads["kills"])
    load_row("decisions on node B (other agents), during the big kills", loads["big"])
    row("baseline: probe round trip on node B (an allowed decision, no kill)", out.rtt)
    if floor:
        row("baseline: PostgreSQL NOTIFY → LISTEN, plain psycopg", floor)
    table.rows.append(["otherwise: node poll interval (TETHER_RUNTIME_POLL_SECONDS)",
                       _ms(poll), "", "", "", "", ""])  # fmt: skip
    table.rows.append(["otherwise: access token TTL (TETHER_TOKEN_TTL_SECONDS)",
                       f"{ttl} s", "", "", "", "", ""])  # fmt: skip
    table.records.append({"backend": backend, "poll_interval_s": poll, "token_ttl_s": ttl})
    notes = [
        f"{len(out.call)} kills of one agent followed on node B, {len(out.quiet_call)} more "
        f"alone (the kill call row), then {len(out.big_call)} of a family "
        f"({out.big_revoked:,} agents revoked, {out.big_tokens:,} tokens cut off each), all "
        f"while a load generator process sent {sizes.rate} decisions/s to node B "
        f"({sizes.connections} connections, open loop: latency from each request's "
        "scheduled time).",
        "node B denies = the arrival of its first denying answer (401 or decision false) "
        "after which it never allowed again, to the probe (back-to-back requests with the "
        "agent's own token; one round trip included); negative: before the kill call's "
        "answer reached the caller. SDK = RevocationFollower on node B's stream, asked every "
        "0.5 ms about the token's claims (verified once beforehand).",
        f"probe answers that still allowed, sent after the kill call returned: "
        f"{out.allowed_after_return} (in {out.kills_allowed_after_return} of {len(out.call)} "
        f"kills); node B's last answer a 401 (token revoked) in {out.denied_401} kills, "
        "else decision false (agent not active); follower answers refused as stale: "
        f"{out.stale}.",
        "otherwise = what a resource server or node relies on without this path: a node "
        "without NOTIFY (SQLite, or its LISTEN connection down) learns within a poll; a "
        "resource server verifying offline without the feed honours a killed agent's token "
        "until it expires.",
    ]
    if out.failures:
        notes.append(f"FAILURES ({len(out.failures)}): " + "; ".join(out.failures[:5]))
    for name, result in loads.items():
        if result is not None and result.errors:
            notes.append(f"load '{name}': {result.errors} errors ({result.first_error})")
    table.footnotes = notes
    return table


# -- running -----------------------------------------------------------------------------------
def run_backend(options: Options, backend: str, sizes: Sizes) -> ResultTable:
    tag = f"[propagation/{backend}]"
    with two_nodes(options, backend, sizes) as nodes:
        dep = nodes.dep
        bench = Bench(nodes, sizes)
        loads: dict[str, LoadResult | None] = {"baseline": None, "kills": None, "big": None}
        floor: list[float] = []
        previous = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # the probe, watcher and kill threads share one GIL
        try:
            bench.start()
            if backend == POSTGRESQL and options.postgres_url:
                floor = notify_floor(options.postgres_url, dep.schema, 200)
            load = Load(nodes, sizes, dep.workdir)
            load.run_for(2.0)  # warm-up (discarded)
            note(f"{tag} node B at {sizes.rate}/s with no kill: {sizes.baseline_seconds:g} s")
            with load.running():
                bench.round_trips(sizes.baseline_seconds)
            loads["baseline"] = load.result
            note(f"{tag} {sizes.kills} kills of one agent under load")
            with load.running():
                for i in range(sizes.kills):
                    bench.one_kill(i)
                for i in range(sizes.kills // 2):
                    bench.quiet_kill(sizes.kills + i)
            loads["kills"] = load.result
            note(f"{tag} building {sizes.big_kills} families of {sizes.descendants:,} "
                 f"descendants and {sizes.tokens:,} tokens")  # fmt: skip
            rng = random.Random(7)
            roots = [bench.family(rng) for _ in range(sizes.big_kills)]
            time.sleep(2.0)  # both nodes have loaded the families
            note(f"{tag} {sizes.big_kills} kills of a family under load, one a second")
            with load.running():
                for root in roots:
                    bench.big_kill(root)
                    time.sleep(1.0)
            loads["big"] = load.result
        finally:
            sys.setswitchinterval(previous)
            bench.close()
        settings = dep.services.settings
        # A node's write returns once every worker applied it, bounded by this (0: no wait);
        # older trees have no such setting.
        default = getattr(settings, "runtime_propagation_wait_seconds", None)
        wait = sizes.wait if sizes.wait is not None else default
        return table_for(backend, sizes, bench.out, loads, floor,
                         settings.runtime_poll_seconds, settings.token_ttl_seconds,
                         wait)  # fmt: skip


def sizes_for(options: Options) -> Sizes:
    s = QUICK if options.quick else FULL
    ns = options.extra
    over = {"kills": getattr(ns, "kills", None), "big_kills": getattr(ns, "big_kills", None),
            "rate": getattr(ns, "kill_load_rate", None),
            "workers": getattr(ns, "workers", None)}  # fmt: skip
    values = {k: v for k, v in over.items() if v}
    if getattr(ns, "propagation_wait", None) is not None:
        values["wait"] = ns.propagation_wait
    return Sizes(**{**s.__dict__, **values})


def run_all(options: Options) -> list[ResultTable]:
    sizes = sizes_for(options)
    tables = []
    for backend in options.backends:
        table = run_backend(options, backend, sizes)
        table.print()
        tables.append(table)
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument("--workers", type=int, help="server worker processes (per node)")
    parser.add_argument("--kills", type=int, help="single-agent kills (default 200)")
    parser.add_argument("--big-kills", type=int, help="kills of a 1,000-agent family (10)")
    parser.add_argument("--propagation-wait", type=float, metavar="S",
                        help="TETHER_RUNTIME_PROPAGATION_WAIT_SECONDS of both nodes "
                             "(0: a write does not wait for every worker)")  # fmt: skip
    parser.add_argument("--kill-load-rate", type=int,
                        help="decisions/s node B answers meanwhile (default 500)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.propagation",
        "Tether kill propagation: node to node, to an SDK resource server, and the kill call",
        argv,
        add_arguments=add_arguments,
    )
    note(machine_line(options))
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
