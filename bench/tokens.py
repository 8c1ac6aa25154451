"""Token throughput: issuance at ``POST /oauth/token`` and verification with the SDK.

Issuance, per backend: a real ``tether serve --workers 2`` subprocess on a free port with its
own data dir and a fresh SQLite file or PostgreSQL schema (``TETHER_DATABASE_SCHEMA``, dropped
afterwards). N client threads (default 8), each with its own keep-alive httpx2 client and its
own agent and API key, post ``client_credentials`` requests authenticated with
``client_secret_basic`` for a fixed time. Reported: tokens/s over the wall time, per-request
p50/p99, and the server processes' CPU per token (read from ``/proc``). Beside it, in the same
run, in the pauses between load rounds (the server idle):

- ``OAuthService.token`` in-process, one thread: the same issuance (client authentication,
  token row, ledger event, signature, durable commits) without HTTP or concurrency;
- the ES256 sign floor, one thread: ``joserfc.jwt.encode`` of the same header and claims with
  the same key, and ``cryptography``'s ECDSA P-256 sign of the same JWS signing input.

Verification, once, on a token the first backend's server issued:
``tether.sdk.verify_access_token`` (``JWKSCache.from_static`` over the server's JWKS, fixed
``now``) beside PyJWT ``jwt.decode`` with the same key, audience and issuer, and the raw
``cryptography`` ECDSA verify of the same signature; one thread, alternating in blocks.

Run: ``python -m bench.tokens [--quick] [--postgres URL] [--clients N] [--workers N]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx2 as httpx
import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from bench.common import (
    SQLITE,
    Options,
    ResultTable,
    database,
    fmt_latency,
    fmt_rate,
    fmt_ratio,
    note,
    parse_options,
    percentile,
    workspace,
    write_json,
)
from bench.loadgen import HttpRequest, LoadGen, LoadResult, process_tree_cpu
from tether.agents.schemas import AgentCreate
from tether.bootstrap import prepare
from tether.config import Settings
from tether.container import Services, build_services
from tether.credentials.clients import ASSERTION_TYPE
from tether.credentials.models import AccessTokenRow
from tether.principals import Principal
from tether.sdk import JWKSCache, verify_access_token


@dataclass(frozen=True)
class Sizes:
    clients: int  # concurrent client threads, one agent + API key + keep-alive client each
    workers: int  # `tether serve --workers`
    rounds: int  # load rounds; the single-thread rows run after each one
    load_seconds: float  # HTTP load per round
    inproc_seconds: float  # in-process issuance per round
    floor_seconds: float  # each sign baseline per round
    verify_rounds: int
    verify_seconds: float  # each verifier per round
    http_seconds: float = 3.0  # each wrk / fixed-rate row


FULL = Sizes(8, 2, rounds=4, load_seconds=5.0, inproc_seconds=1.5, floor_seconds=0.5,
             verify_rounds=5, verify_seconds=0.6, http_seconds=8.0)  # fmt: skip
QUICK = Sizes(8, 2, rounds=2, load_seconds=2.0, inproc_seconds=0.5, floor_seconds=0.2,
              verify_rounds=2, verify_seconds=0.3)  # fmt: skip
WARMUP_REQUESTS = 5  # per client (and in-process) before the first round
BODY = b"grant_type=client_credentials"
FORM_TYPE = "application/x-www-form-urlencoded"
SCOPES = ["read", "write"]


# -- measurements ------------------------------------------------------------------------------
@dataclass
class Samples:
    """Calls timed one by one; ``wall`` is the rate's denominator, ``cpu`` the CPU spent."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    failures: int = 0
    first_failure: str = ""

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall > 0 else math.nan

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / self.count if self.count else math.nan

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)


def time_calls(fn: Callable[[], object], seconds: float, samples: Samples) -> None:
    """Call ``fn`` for about ``seconds``, one thread; rate = calls over their summed times."""
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        samples.latencies.append(t1 - t0)
        samples.wall += t1 - t0
        if t1 >= deadline:
            break
    samples.cpu += time.process_time() - cpu0


# -- a deployment and its server ---------------------------------------------------------------
@dataclass
class Deployment:
    """A bootstrapped deployment (in-process services) that a server subprocess shares."""

    backend: str
    services: Services
    admin: Principal
    workdir: Path
    url: str
    schema: str | None
    port: int

    @property
    def base_url(self) -> str:
        return self.services.settings.base_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def open_deployment(options: Options, backend: str) -> Iterator[Deployment]:
    """Bootstrap a deployment whose issuer is the URL its server will listen on."""
    with workspace(options, "tokens") as raw_tmp:
        tmp = raw_tmp.resolve()  # the server runs in another working directory
        port = free_port()
        with database(options, backend, tmp) as (url, schema):
            settings = Settings(
                data_dir=tmp / "data", database_url=url, database_schema=schema,
                host="127.0.0.1", port=port, public_url=None,
            )  # fmt: skip
            services = build_services(settings)
            try:
                prepare(services)
                token = settings.admin_token_path.read_text().strip()
                admin = services.users.authenticate(token)
                yield Deployment(backend, services, admin, tmp, url, schema, port)
            finally:
                services.close()


@dataclass
class Server:
    url: str
    pid: int


@contextmanager
def tether_server(
    dep: Deployment,
    workers: int,
    extra_env: dict[str, str] | None = None,
    *,
    data_dir: Path | None = None,
    port: int | None = None,
) -> Iterator[Server]:
    """``python -m tether serve --workers N`` on the deployment; stopped on exit. Another
    node of the same deployment: its own ``data_dir`` (holding the deployment's keys) and
    ``port``, with ``TETHER_PUBLIC_URL`` in ``extra_env``."""
    settings = dep.services.settings
    port = port or dep.port
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TETHER_DATA_DIR=str(data_dir or settings.data_dir),
        TETHER_DATABASE_URL=dep.url,
        TETHER_HOST="127.0.0.1",
        TETHER_PORT=str(port),
        TETHER_LOG_LEVEL="warning",
    )
    if dep.schema:
        env["TETHER_DATABASE_SCHEMA"] = dep.schema
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    log_path = dep.workdir / ("server.log" if port == dep.port else f"server-{port}.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", "--workers", str(workers)],
            cwd=dep.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_ready(proc, url, log_path)
            yield Server(url, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tether serve exited:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"tether serve not ready:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


def basic_authorization(client_id: str, secret: str) -> str:
    """``client_secret_basic``: both parts form-encoded first (RFC 6749 §2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def bench_agent(dep: Deployment, name: str) -> str:
    """A new active agent (minimal risk, scopes ``read write``); its id."""
    return dep.services.agents.create(dep.admin, AgentCreate(
        name=name, owner="admin", purpose="token benchmark", risk_tier="minimal", scopes=SCOPES,
    )).id  # fmt: skip


def make_clients(dep: Deployment, count: int) -> list[str]:
    """``count`` active agents with one API key each; their Authorization header values."""
    headers = []
    for i in range(count):
        agent_id = bench_agent(dep, f"token-bench-{i}")
        _cred, secret = dep.services.credentials.create_api_key(dep.admin, agent_id)
        headers.append(basic_authorization(agent_id, secret))
    return headers


# -- issuance over HTTP ------------------------------------------------------------------------
class LoadClients:
    """One keep-alive httpx2 client per thread, each authenticating as its own agent."""

    def __init__(self, base_url: str, authorizations: list[str]) -> None:
        self.clients = [
            httpx.Client(
                base_url=base_url,
                timeout=30.0,
                headers={"Authorization": auth, "Content-Type": FORM_TYPE},
            )
            for auth in authorizations
        ]

    def close(self) -> None:
        for c in self.clients:
            c.close()

    @staticmethod
    def request(client: httpx.Client) -> str:
        """One token request; the access token, or raises with what went wrong."""
        response = client.post("/oauth/token", content=BODY)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        return str(response.json()["access_token"])

    def warm_up(self, per_client: int) -> str:
        """Untimed requests from every client in parallel; one of the tokens."""
        tokens: list[str] = []

        def run(client: httpx.Client) -> None:
            for _ in range(per_client):
                tokens.append(self.request(client))

        self._parallel(run)
        if len(tokens) != per_client * len(self.clients):
            raise RuntimeError("warm-up requests failed; see the errors above")
        return tokens[-1]

    def load(self, seconds: float, samples: Samples, server_pid: int) -> None:
        """Every client posts back to back for ``seconds``; adds to ``samples``."""
        per_thread: list[list[float]] = [[] for _ in self.clients]
        failures: list[str] = []
        start_box = [0.0]
        barrier = threading.Barrier(len(self.clients) + 1)

        def run(i: int, client: httpx.Client) -> None:
            barrier.wait()
            deadline = start_box[0] + seconds
            out = per_thread[i]
            while True:
                t0 = time.perf_counter()
                try:
                    self.request(client)
                except (RuntimeError, httpx.HTTPError, ValueError, KeyError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    t1 = time.perf_counter()
                else:
                    t1 = time.perf_counter()
                    out.append(t1 - t0)
                if t1 >= deadline:
                    break

        threads = [
            threading.Thread(target=run, args=(i, c), daemon=True)
            for i, c in enumerate(self.clients)
        ]
        for t in threads:
            t.start()
        server_cpu0 = process_tree_cpu(server_pid)
        start_box[0] = time.perf_counter()
        barrier.wait()
        for t in threads:
            t.join()
        samples.wall += time.perf_counter() - start_box[0]
        samples.cpu += process_tree_cpu(server_pid) - server_cpu0
        for lat in per_thread:
            samples.latencies += lat
        samples.failures += len(failures)
        if failures and not samples.first_failure:
            samples.first_failure = failures[0]

    def _parallel(self, fn: Callable[[httpx.Client], None]) -> None:
        errors: list[BaseException] = []

        def guarded(client: httpx.Client) -> None:
            try:
                fn(client)
            except Exception as exc:  # reported below, after every thread ended
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(c,)) for c in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"token request failed: {errors[0]}") from errors[0]


# -- the ES256 floors --------------------------------------------------------------------------
def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass(frozen=True)
class TokenParts:
    """A compact JWS split up: header and claims as issued, signing input, raw signature."""

    token: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @classmethod
    def of(cls, token: str) -> TokenParts:
        h, p, s = token.split(".")
        header = json.loads(b64url_decode(h))
        claims = json.loads(b64url_decode(p))
        return cls(token, header, claims, f"{h}.{p}".encode("ascii"), b64url_decode(s))

    @property
    def der_signature(self) -> bytes:
        """The JWS ``r || s`` signature (RFC 7518 §3.4) in the DER form ``cryptography`` takes."""
        half = len(self.signature) // 2
        r = int.from_bytes(self.signature[:half], "big")
        s = int.from_bytes(self.signature[half:], "big")
        return encode_dss_signature(r, s)


def sign_floors(
    dep: Deployment, parts: TokenParts
) -> tuple[Callable[[], str], Callable[[], bytes]]:
    """joserfc ``jwt.encode`` and the bare ECDSA sign, with the key the server signs with."""
    key = dep.services.signing_keys.signer()
    if not isinstance(key, ECKey) or str(key.kid) != parts.header.get("kid"):
        raise RuntimeError("the server signs with another key than the deployment's active one")
    private = key.private_key
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise TypeError("the active signing key is not an ECDSA private key")
    header, claims, alg = parts.header, parts.claims, [str(parts.header["alg"])]
    signing_input, ecdsa = parts.signing_input, ec.ECDSA(hashes.SHA256())

    def jose_sign() -> str:
        return jose_jwt.encode(header, claims, key, algorithms=alg)

    def raw_sign() -> bytes:
        return private.sign(signing_input, ecdsa)

    return jose_sign, raw_sign


# -- tables ------------------------------------------------------------------------------------
ISSUE_HEADERS = ["benchmark", "per second", "p50", "p99", "CPU per token", "cost ÷ joserfc sign"]
HTTP_HEADERS = ["benchmark", "per second", "p50", "p99", "server CPU per call", "ratio",
                "errors"]  # fmt: skip
VERIFY_HEADERS = ["benchmark", "per second", "p50", "p99", "÷ PyJWT", "÷ ECDSA verify"]


def _row(
    table: ResultTable,
    label: str,
    s: Samples,
    ratios: Sequence[Samples],
    *,
    cpu: bool = False,
    cost: bool = False,
    **extra: Any,
) -> None:
    """A row: rate, p50, p99, CPU per call if ``cpu``, then for each of ``ratios`` the rate
    over its rate, or with ``cost`` the time per call over its time per call."""
    cells = [label, fmt_rate(s.rate, "/s"), fmt_latency(s.pct(50)), fmt_latency(s.pct(99))]
    if cpu:
        cells.append(fmt_latency(s.cpu_per_call))
    for r in ratios:
        cells.append(fmt_ratio(r.rate / s.rate if cost else s.rate / r.rate))
    table.rows.append(cells)
    table.records.append({
        "benchmark": label, "per_s": s.rate, "count": s.count, "seconds": s.wall,
        "p50_s": s.pct(50), "p99_s": s.pct(99), "cpu_per_call_s": s.cpu_per_call,
        "failures": s.failures, **extra,
    })  # fmt: skip


# -- the runs ----------------------------------------------------------------------------------
def run_issuance(dep: Deployment, server: Server, sizes: Sizes) -> tuple[ResultTable, TokenParts]:
    """Token issuance on one backend; returns its table and a fresh token for verifying."""
    tag = f"[tokens/{dep.backend}]"
    note(f"{tag} creating {sizes.clients + 1} agents with an API key each")
    auths = make_clients(dep, sizes.clients + 1)
    inproc_auth = auths.pop()
    oauth = dep.services.oauth

    form = {"grant_type": "client_credentials"}

    def inproc() -> object:
        return oauth.token(dict(form), inproc_auth)

    def auth_only() -> object:
        return oauth.authenticate_client(dict(form), inproc_auth)

    http, local, auth, jose, raw = Samples(), Samples(), Samples(), Samples(), Samples()
    clients = LoadClients(server.url, auths)
    try:
        note(f"{tag} warm-up: {WARMUP_REQUESTS} requests per client")
        parts = TokenParts.of(clients.warm_up(WARMUP_REQUESTS))
        jose_sign, raw_sign = sign_floors(dep, parts)
        for _ in range(WARMUP_REQUESTS):
            inproc()
            auth_only()
            jose_sign()
            raw_sign()
        client_cpu = 0.0
        for r in range(sizes.rounds):
            note(
                f"{tag} round {r + 1}/{sizes.rounds}: {sizes.clients} clients for "
                f"{sizes.load_seconds:g} s over HTTP, then the single-thread rows"
            )
            cpu0 = time.process_time()
            clients.load(sizes.load_seconds, http, server.pid)
            client_cpu += time.process_time() - cpu0
            time_calls(inproc, sizes.inproc_seconds, local)
            time_calls(auth_only, sizes.inproc_seconds, auth)
            time_calls(jose_sign, sizes.floor_seconds, jose)
            time_calls(raw_sign, sizes.floor_seconds, raw)
        if http.count == 0:
            raise RuntimeError(f"no token request succeeded: {http.first_failure}")
        fresh = TokenParts.of(LoadClients.request(clients.clients[0]))
    finally:
        clients.close()

    issued = WARMUP_REQUESTS * (len(auths) + 1) + http.count + local.count + 1
    with dep.services.db.read() as s:
        rows = s.scalar(select(func.count()).select_from(AccessTokenRow)) or 0
    if rows != issued:
        note(f"{tag} WARNING: {rows} access_tokens rows, expected {issued}")

    title = f"Token issuance on {dep.backend} — client_credentials, tokens/s (higher is better)"
    table = ResultTable(title, ISSUE_HEADERS)
    base: dict[str, Any] = {"backend": dep.backend, "cpu": True, "cost": True}
    _row(table, f"POST /oauth/token over HTTP: {sizes.clients} clients, {sizes.workers} "
         "workers", http, [jose], **base,
         client_cpu_per_call_s=client_cpu / http.count)  # fmt: skip
    _row(table, "OAuthService.token in-process, 1 thread", local, [jose], **base)
    _row(table, "  of which: client auth (authenticate_client)", auth, [jose], **base)
    _row(table, "baseline: joserfc jwt.encode ES256, 1 thread", jose, [jose], **base)
    _row(table, "baseline: cryptography ECDSA P-256 sign, 1 thread", raw, [jose], **base)
    driver = "WAL, synchronous=FULL" if dep.backend == SQLITE else "synchronous_commit=on"
    table.footnotes += [
        f"HTTP = a `tether serve --workers {sizes.workers}` subprocess; {sizes.clients} client "
        "threads in this process, each with its own agent, API key (client_secret_basic) and "
        "keep-alive httpx2 connection, posting back to back. tokens/s = successful requests "
        "over the wall time; p50/p99 per request; CPU per token = the Tether server "
        "processes' CPU (/proc; not PostgreSQL's). The load generator itself used "
        f"{fmt_latency(client_cpu / http.count)} CPU per token on the same machine.",
        "Every issuance: client authentication by reading only (measured alone in the 'of "
        "which' row, with the key's last_used_at written at most once a minute), the ES256 "
        "signature, then the token row and its token.issued ledger event in one group-commit "
        f"job (many issuances per durable transaction under Tether's global write lock; "
        f"{driver}); the token is returned once that committed. 1-thread rows: CPU = this "
        "process's (not PostgreSQL's); with one thread there is nothing to batch with.",
        "baselines = the signature alone, one thread: joserfc jwt.encode of the same header "
        "and claims with the server's key, and cryptography's ECDSA sign of the same signing "
        "input. cost ÷ joserfc sign = the row's time per token (1 / rate) over joserfc's.",
        f"measured: {sizes.rounds} rounds of {sizes.load_seconds:g} s HTTP load, each "
        f"followed by {sizes.inproc_seconds:g} s per in-process row and "
        f"{sizes.floor_seconds:g} s per sign baseline (server idle); {http.count:,} tokens "
        f"over HTTP, {local.count:,} in-process.",
    ]
    if http.failures:
        table.footnotes.append(
            f"{http.failures:,} requests failed (not counted); first: {http.first_failure}"
        )
    return table, fresh


def run_verify(parts: TokenParts, jwks: dict[str, Any], issuer: str, sizes: Sizes) -> ResultTable:
    """SDK verification beside PyJWT and the bare ECDSA verify; one thread, alternating."""
    note("[tokens] verification: SDK, PyJWT, ECDSA verify")
    token, claims = parts.token, parts.claims
    audience, now = str(claims["aud"]), int(claims["iat"])
    cache = JWKSCache.from_static(jwks)
    jwk = next(k for k in jwks["keys"] if k.get("kid") == parts.header["kid"])
    public = ECKey.import_key(jwk).public_key
    signing_input, der, ecdsa = parts.signing_input, parts.der_signature, ec.ECDSA(hashes.SHA256())
    require = ["exp", "iat", "iss", "aud", "sub", "jti"]

    def sdk() -> object:
        return verify_access_token(token, issuer=issuer, audience=audience, jwks=cache, now=now)

    def pyjwt_decode() -> object:
        return pyjwt.decode(
            token, public, algorithms=["ES256"], audience=audience, issuer=issuer,
            options={"require": require},
        )  # fmt: skip

    def raw_verify() -> None:
        public.verify(der, signing_input, ecdsa)

    # Once, untimed: all three accept this token (each raises otherwise).
    checked = verify_access_token(token, issuer=issuer, audience=audience, jwks=cache, now=now)
    if checked.sub != claims["sub"]:
        raise RuntimeError("the SDK verified the token with another subject")
    pyjwt_decode()
    raw_verify()

    fns = {"sdk": sdk, "pyjwt": pyjwt_decode, "raw": raw_verify}
    samples = {name: Samples() for name in fns}
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(sizes.verify_rounds):
        for name, fn in fns.items():
            time_calls(fn, sizes.verify_seconds, samples[name])

    ref = [samples["pyjwt"], samples["raw"]]
    table = ResultTable("Token verification (ES256), 1 thread — verifications/s", VERIFY_HEADERS)
    _row(table, "tether.sdk.verify_access_token", samples["sdk"], ref)
    _row(table, "PyJWT jwt.decode (same key, aud, iss)", samples["pyjwt"], ref)
    _row(table, "baseline: cryptography ECDSA P-256 verify", samples["raw"], ref)
    table.footnotes += [
        "SDK = verify_access_token with JWKSCache.from_static(the server's JWKS) and now = "
        "the token's iat: JWS parse, header checks (typ at+jwt, alg allow-list, kid, crit), "
        "key lookup, signature, iss/aud/exp/nbf/iat and required claims, typed claims.",
        "PyJWT = jwt.decode(token, the public key, algorithms=['ES256'], audience, issuer, "
        f"require={require}); no typ check, key given directly (no JWKS lookup).",
        "ECDSA verify = cryptography's verify of the same signature over the same signing "
        "input (signature converted to DER beforehand): the floor under both.",
        f"measured: {sizes.verify_rounds} rounds of {sizes.verify_seconds:g} s each, "
        "alternating, after 50 warm-up calls; rate = calls over their summed times.",
    ]
    return table


# -- over HTTP with a separate load generator --------------------------------------------------
EVAL_PAIRS = 3  # evaluations alone / under token load, alternating
FIXED_RATE = 300  # tokens/s for the fixed-rate rows


def keyed_clients(dep: Deployment, count: int) -> list[tuple[str, ECKey]]:
    """``count`` active agents with one registered P-256 key each (``private_key_jwt``)."""
    out = []
    for i in range(count):
        agent_id = bench_agent(dep, f"token-bench-key-{i}")
        key = ECKey.generate_key("P-256")
        dep.services.credentials.create_public_key(dep.admin, agent_id,
                                                   jwk=key.as_dict(private=False))  # fmt: skip
        out.append((agent_id, key))
    return out


def assertion_requests(
    dep: Deployment, clients: list[tuple[str, ECKey]], count: int
) -> list[HttpRequest]:
    """``count`` token requests, each with an assertion of its own (a jti is single-use)."""
    aud = f"{dep.base_url}/oauth/token"
    now = int(time.time())
    reqs = []
    for i in range(count):
        agent_id, key = clients[i % len(clients)]
        claims = {"iss": agent_id, "sub": agent_id, "aud": aud, "iat": now, "exp": now + 600,
                  "jti": f"bench-{i}-{os.urandom(6).hex()}"}  # fmt: skip
        signed = jose_jwt.encode({"alg": "ES256"}, claims, key)
        body = (f"grant_type=client_credentials&client_assertion_type={quote_plus(ASSERTION_TYPE)}"
                f"&client_assertion={signed}").encode()  # fmt: skip
        reqs.append(HttpRequest("POST", "/oauth/token", "", body, FORM_TYPE))
    return reqs


def run_http(dep: Deployment, server: Server, sizes: Sizes, workdir: Path) -> ResultTable:
    """Issuance and evaluations over HTTP, loaded by ``wrk`` (a C load generator: the
    server, not the client, is measured), beside the same server's ``/healthz``."""
    tag = f"[tokens/{dep.backend}]"
    kind = "wrk" if shutil.which("wrk") else "python"
    many = max(32, sizes.clients)
    note(f"{tag} HTTP rows with {kind}: {many} API-key clients, 8 key-holding clients")
    basic = [HttpRequest("POST", "/oauth/token", a, BODY, FORM_TYPE)
             for a in make_clients(dep, many)]  # fmt: skip
    keyed = keyed_clients(dep, 8)
    seconds = sizes.http_seconds
    assertions = assertion_requests(dep, keyed, int(3000 * seconds) + 500)
    health = [HttpRequest("GET", "/healthz", "", b"")]
    agent_id = bench_agent(dep, "token-bench-evaluator")
    _cred, secret = dep.services.credentials.create_api_key(dep.admin, agent_id)
    bearer = dep.services.oauth.token(
        {"grant_type": "client_credentials"}, basic_authorization(agent_id, secret)
    )["access_token"]
    ask = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": "tool.call"},
           "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
    evals = [HttpRequest("POST", "/access/v1/evaluation", f"Bearer {bearer}",
                         json.dumps(ask).encode())]  # fmt: skip
    (workdir / "a").mkdir(exist_ok=True)
    (workdir / "b").mkdir(exist_ok=True)
    gen = LoadGen(server, workdir / "a", kind)
    side = LoadGen(server, workdir / "b", "python")
    # warm-up: every client once, and the server's caches
    gen.max_rate(basic, connections=8, seconds=1, expect="access_token")

    results: list[tuple[str, LoadResult]] = []
    hz = gen.max_rate(health, connections=8, seconds=seconds, expect="ok")
    results.append(("GET /healthz, 8 connections (the same server's ceiling)", hz))
    for conns in (8, 32):
        note(f"{tag} client_credentials (client_secret_basic), {conns} connections")
        results.append((f"client_credentials, client_secret_basic, {conns} connections",
                        gen.max_rate(basic[:conns], connections=conns, seconds=seconds,
                                     expect="access_token")))  # fmt: skip
    note(f"{tag} client_credentials (private_key_jwt), 8 connections")
    results.append(("client_credentials, private_key_jwt, 8 connections",
                    gen.max_rate(assertions, connections=8, seconds=seconds,
                                 expect="access_token")))  # fmt: skip
    note(f"{tag} client_credentials at a fixed {FIXED_RATE}/s")
    results.append((f"client_credentials at a fixed {FIXED_RATE}/s, 8 connections",
                    side.fixed_rate(basic[:8], rate=FIXED_RATE, connections=8, seconds=seconds,
                                    expect="access_token")))  # fmt: skip
    note(f"{tag} AuthZEN evaluations alone, then under {FIXED_RATE} tokens/s, "
         f"{EVAL_PAIRS} times")  # fmt: skip
    pairs: list[tuple[LoadResult, LoadResult, LoadResult | None]] = []
    for _ in range(EVAL_PAIRS):  # alternating: the machine's drift hits both alike
        alone = gen.max_rate(evals, connections=8, seconds=seconds, expect="decision")
        beside: list[LoadResult] = []

        def issue_beside(out: list[LoadResult]) -> None:
            out.append(side.fixed_rate(basic[:8], rate=FIXED_RATE, connections=8,
                                       seconds=seconds + 1, expect="access_token"))  # fmt: skip

        loader = threading.Thread(target=issue_beside, args=(beside,))
        loader.start()
        time.sleep(0.5)
        under = gen.max_rate(evals, connections=8, seconds=seconds, expect="decision")
        loader.join()
        pairs.append((alone, under, beside[0] if beside else None))
    pair_ratios = [under.rate / alone.rate for alone, under, _ in pairs]
    # The pair with the median ratio stands for the rest (all ratios in a footnote).
    alone, under, tokens_row = pairs[sorted(range(len(pairs)), key=pair_ratios.__getitem__)[
        len(pairs) // 2]]  # fmt: skip
    results.append(("POST /access/v1/evaluation alone, 8 connections", alone))
    results.append((f"POST /access/v1/evaluation while {FIXED_RATE} tokens/s are issued", under))
    if tokens_row is not None:
        results.append((f"  the {FIXED_RATE} tokens/s beside it", tokens_row))

    title = (f"Token issuance over HTTP on {dep.backend} — {kind}, `tether serve --workers "
             f"{sizes.workers}` (higher is better)")  # fmt: skip
    table = ResultTable(title, HTTP_HEADERS)
    for label, r in results:
        cpu = r.server_cpu / r.ok if r.ok else math.nan
        ratio = r.rate / hz.rate if "healthz" not in label else 1.0
        if "evaluation while" in label:
            ratio = r.rate / alone.rate
        table.rows.append([
            label, fmt_rate(r.rate, "/s"), fmt_latency(r.p50), fmt_latency(r.p99),
            fmt_latency(cpu), fmt_ratio(ratio), f"{r.errors:,}",
        ])  # fmt: skip
        table.records.append({
            "benchmark": label, "backend": dep.backend, "generator": r.generator,
            "mode": r.mode, "connections": r.connections, "per_s": r.rate, "ok": r.ok,
            "p50_s": r.p50, "p99_s": r.p99, "max_s": r.max, "server_cpu_per_call_s": cpu,
            "ratio": ratio, "errors": r.errors, "first_error": r.first_error,
        })  # fmt: skip
    table.footnotes += [
        f"max-rate rows: {kind} (one thread) for {seconds:g} s per row, closed loop over the "
        "given connections, every answer checked (200 and an access_token / a decision); "
        f"fixed-rate rows: the Python generator sends {FIXED_RATE} requests/s on schedule, "
        "latency from each request's scheduled send (no coordinated omission). CPU per call "
        "= the server's process tree (/proc), not PostgreSQL's, not the generator's.",
        "ratio: a token row's rate over /healthz's on the same server in the same run (the "
        "figure that carries across machines; target ≥ 0.15); the evaluation row under token "
        f"load: its rate over the evaluation row alone (target ≥ 0.70); the two rows are "
        f"the median of {EVAL_PAIRS} alternating pairs (alone, then under load) by that ratio: "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + ".",
        f"client_secret_basic: {many} agents with an API key each, cycled; private_key_jwt: "
        "8 agents with a registered P-256 key, every request a new ES256 assertion (unique "
        "jti, prepared beforehand); evaluation: one agent asking about itself with its own "
        "bearer token (no DPoP). The two rows measured together share the server's CPU "
        "figure (both loads' CPU over each row's calls).",
    ]
    failed = [(label, r.first_error) for label, r in results if r.errors]
    for label, first in failed:
        table.footnotes.append(f"errors in '{label}': first: {first}")
    return table


def sizes_for(options: Options) -> Sizes:
    sizes = QUICK if options.quick else FULL
    clients: int | None = getattr(options.extra, "clients", None)
    workers: int | None = getattr(options.extra, "workers", None)
    return Sizes(
        clients or sizes.clients, workers or sizes.workers, sizes.rounds, sizes.load_seconds,
        sizes.inproc_seconds, sizes.floor_seconds, sizes.verify_rounds, sizes.verify_seconds,
        sizes.http_seconds,
    )  # fmt: skip


def run_all(options: Options) -> list[ResultTable]:
    sizes = sizes_for(options)
    tables: list[ResultTable] = []
    verify: ResultTable | None = None
    for backend in options.backends:
        tag = f"[tokens/{backend}]"
        note(f"{tag} bootstrapping a deployment")
        with open_deployment(options, backend) as dep:
            note(f"{tag} starting tether serve --workers {sizes.workers} on port {dep.port}")
            start = time.perf_counter()
            with tether_server(dep, sizes.workers) as server:
                note(f"{tag} server ready in {time.perf_counter() - start:.1f} s")
                table, fresh = run_issuance(dep, server, sizes)
                table.print()
                tables.append(table)
                http = run_http(dep, server, sizes, dep.workdir)
                http.print()
                tables.append(http)
                if verify is None:  # once, while the token is fresh; printed last
                    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
                    verify = run_verify(fresh, jwks, server.url, sizes)
    if verify is not None:
        verify.print()
        tables.append(verify)
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, help="concurrent client threads (default 8)")
    parser.add_argument("--workers", type=int, help="server worker processes (default 2)")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench.tokens",
        "Tether token issuance and verification throughput",
        argv,
        add_arguments=add_arguments,
    )
    tables = run_all(options)
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
