"""Secret reads: ``GET /v1/secrets/{name}/value`` for an authorized agent over HTTP, beside the
same server's AuthZEN rate for the same question and a plain AES-GCM decrypt floor.

Per backend: a real ``tether serve --workers 2`` subprocess (fresh SQLite file or PostgreSQL
schema) with ``TETHER_SECRET_READS_PER_MINUTE=0`` (the per-agent rate limit would otherwise
be what is measured); one agent with a bearer token, a policy permitting ``secret.read`` on
secrets labelled ``team``, a 40-byte secret. Each read is a Cedar decision recorded in the
ledger, the version's two AES-GCM layers opened, and a lease row with its ``secret.read``
event written by the group commit before the answer leaves; the AuthZEN row asks the same
decision (recorded, no lease). Loaded by ``wrk`` (8 connections) when installed.

With ``--postgres``, also the time to lease a fresh PostgreSQL login (``POST
/v1/secrets/db/{role}/lease``: the decision, the lease recorded, ``CREATE ROLE`` on the
database), one after another, each given back right away; the row's time includes giving it
back (a second request).

Run: ``python -m bench.secrets [--quick] [--postgres URL] [--no-sqlite]``.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import time
from collections.abc import Sequence
from typing import Any

import httpx2 as httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import (
    Options,
    ResultTable,
    fmt_latency,
    fmt_rate,
    fmt_ratio,
    note,
    parse_options,
    run_each_backend,
)
from bench.loadgen import HttpRequest, LoadGen, LoadResult
from bench.tokens import (
    Samples,
    basic_authorization,
    bench_agent,
    open_deployment,
    tether_server,
    time_calls,
)
from tether.sealing import unseal
from tether.secrets import envelope
from tether.secrets.service import SecretInput

POLICIES = """
@id("read-team-secrets")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("team") };
"""
NAME = "bench.api-key"
VALUE = b"k" * 40
HEADERS = ["benchmark", "per second", "p50", "p99", "server CPU per call", "÷ AuthZEN", "errors"]


def run_backend(options: Options, backend: str, seconds: float) -> ResultTable:
    tag = f"[secrets/{backend}]"
    with open_deployment(options, backend) as dep:
        svc = dep.services
        svc.policies.push(dep.admin, policies=POLICIES, schema=None, note=None)
        svc.secrets.put(dep.admin, NAME, SecretInput(VALUE, labels=["team"]))
        agent_id = bench_agent(dep, "secret-reader")
        _cred, secret = svc.credentials.create_api_key(dep.admin, agent_id)
        bearer = svc.oauth.token({"grant_type": "client_credentials"},
                                 basic_authorization(agent_id, secret))["access_token"]  # fmt: skip
        with svc.db.read() as s:
            row = svc.secrets.store.version(s, NAME, 1)
            assert row is not None
            key = svc.secrets.keyring.key(s, row.key_id)
            sealed = envelope.Sealed(row.key_id, row.data_key, row.ciphertext)
        env = {"TETHER_SECRET_READS_PER_MINUTE": "0"}
        note(f"{tag} starting tether serve --workers 2")
        with tether_server(dep, 2, env) as server:
            kind = "wrk" if shutil.which("wrk") else "python"
            gen = LoadGen(server, dep.workdir, kind)
            auth = f"Bearer {bearer}"
            read = [HttpRequest("GET", f"/v1/secrets/{NAME}/value", auth, b"")]
            properties = {"labels": ["team"], "broker_only": False}
            resource = {"type": "Secret", "id": NAME, "properties": properties}
            ask = {"subject": {"type": "agent", "id": agent_id},
                   "action": {"name": "secret.read"}, "resource": resource}  # fmt: skip
            evals = [HttpRequest("POST", "/access/v1/evaluation", auth, json.dumps(ask).encode())]
            health = [HttpRequest("GET", "/healthz", "", b"")]
            gen.max_rate(read, connections=8, seconds=1, expect='"lease_id"')  # warm-up
            gen.max_rate(evals, connections=8, seconds=1, expect="decision")
            logins = _login_times(options, dep, server.url, bearer, seconds)
            rows: list[tuple[str, LoadResult]] = []
            note(f"{tag} /healthz, AuthZEN and secret reads, alternating twice")
            for _ in range(2):
                healthz = gen.max_rate(health, connections=8, seconds=seconds, expect="ok")
                rows.append(("GET /healthz", healthz))
                rows.append(("POST /access/v1/evaluation (secret.read)", gen.max_rate(
                    evals, connections=8, seconds=seconds, expect="decision")))  # fmt: skip
                rows.append((f"GET /v1/secrets/{NAME}/value", gen.max_rate(
                    read, connections=8, seconds=seconds, expect='"lease_id"')))  # fmt: skip
        floors = _floors(key, sealed, seconds)
    table = ResultTable(
        f"Secret reads over HTTP on {backend} — {kind}, 8 connections, `tether serve --workers "
        "2` (higher is better)",
        HEADERS,
    )  # fmt: skip
    evals_rate = _mean([r.rate for label, r in rows if "evaluation" in label])
    for label, r in rows:
        cpu = r.server_cpu / r.ok if r.ok else math.nan
        table.rows.append([label, fmt_rate(r.rate, "/s"), fmt_latency(r.p50), fmt_latency(r.p99),
                           fmt_latency(cpu), fmt_ratio(r.rate / evals_rate),
                           f"{r.errors:,}"])  # fmt: skip
        table.records.append({"benchmark": label, "backend": backend, "per_s": r.rate,
                              "p50_s": r.p50, "p99_s": r.p99, "server_cpu_per_call_s": cpu,
                              "errors": r.errors, "first_error": r.first_error})  # fmt: skip
    if logins is not None:
        table.rows.append([
            "POST /v1/secrets/db/{role}/lease (a new PostgreSQL login), sequential",
            fmt_rate(logins.rate, "/s"), fmt_latency(logins.pct(50)), fmt_latency(logins.pct(99)),
            "", "", str(logins.failures),
        ])  # fmt: skip
        table.records.append({"benchmark": "db login lease", "backend": backend,
                              "per_s": logins.rate, "p50_s": logins.pct(50),
                              "p99_s": logins.pct(99)})  # fmt: skip
    for label, samples in floors:
        table.rows.append([label, fmt_rate(samples.rate, "/s"), fmt_latency(samples.pct(50)),
                           fmt_latency(samples.pct(99)), fmt_latency(samples.cpu_per_call), "",
                           str(samples.failures)])  # fmt: skip
        table.records.append({"benchmark": label, "backend": backend, "per_s": samples.rate,
                              "p50_s": samples.pct(50), "p99_s": samples.pct(99)})  # fmt: skip
    table.footnotes += [
        f"HTTP rows: {kind} (one thread), closed loop over 8 keep-alive connections, "
        f"{seconds:g} s each, measured twice in turn (healthz, AuthZEN, reads); every answer "
        "checked (200 with a lease id / a decision). ÷ AuthZEN = the row's rate over the mean "
        "of the two AuthZEN rows. CPU per call = the server's process tree (/proc), not the "
        "database's.",
        "A read: the bearer token verified, the per-agent limit (off here), the secret's "
        "metadata read, the Cedar decision (recorded by the group commit), the version read "
        "and its two AES-GCM layers opened, then the lease row and its secret.read event (a "
        "second group commit) before the answer: two durable commits, where AuthZEN has one.",
        "Floors, one thread in process: AES-GCM decrypt of the data key and of the value "
        "(cryptography's AESGCM, keys already in memory), and tether.secrets.envelope.decrypt "
        "(the same two, with Tether's sealed-value parsing).",
    ]
    return table


CREATION = (
    "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiry}}';"
    ' GRANT CONNECT ON DATABASE test TO "{{name}}";'
)


def _login_times(
    options: Options, dep: Any, url: str, bearer: str, seconds: float
) -> Samples | None:
    """Sequential database-login leases on the machine's PostgreSQL (``--postgres``), each
    given back right after (its role dropped in the background)."""
    if not options.postgres_url:
        return None
    svc = dep.services
    dsn = options.postgres_url.replace("postgresql+psycopg://", "postgresql://")
    svc.secrets.put(dep.admin, "bench-pg-admin", SecretInput(dsn.encode(), broker_only=True))
    svc.db_logins.put_connection(dep.admin, "bench", dsn_secret="bench-pg-admin")
    svc.db_logins.put_role(dep.admin, "bench-ro", connection="bench", creation=CREATION,
                           revocation=None, ttl_seconds=600)  # fmt: skip
    lease = '@id("lease") permit (principal, action == Action::"secret.lease", resource);'
    svc.policies.push(dep.admin, schema=None, note=None, policies=POLICIES + lease)
    samples = Samples()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bearer}"},
                      timeout=30) as http:  # fmt: skip
        deadline = time.perf_counter() + max(1.0, seconds / 2)
        for i in range(1_000):
            t0 = time.perf_counter()
            got = http.post("/v1/secrets/db/bench-ro/lease", json={})
            took = time.perf_counter() - t0
            if got.status_code != 201:
                raise RuntimeError(f"lease failed: {got.text[:200]}")
            if i:  # the first is a warm-up
                samples.latencies.append(took)
                samples.wall += took
            http.post(f"/v1/secrets/leases/{got.json()['lease_id']}/revoke", json={})
            if time.perf_counter() >= deadline and i >= 20:
                break
    return samples


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _floors(key: bytes, sealed: envelope.Sealed, seconds: float) -> list[tuple[str, Samples]]:
    data_key = unseal(key, sealed.data_key, aad=f"secret-data-key:{NAME}:1:{sealed.key_id}")
    raw_key = _raw(sealed.data_key)
    raw_value = _raw(sealed.ciphertext)
    aad_key = f"secret-data-key:{NAME}:1:{sealed.key_id}".encode()
    aad_value = f"secret:{NAME}:1".encode()
    outer, inner = AESGCM(key), AESGCM(data_key)

    def plain() -> object:
        AESGCM(outer.decrypt(raw_key[:12], raw_key[12:], aad_key))
        return inner.decrypt(raw_value[:12], raw_value[12:], aad_value)

    def tether_decrypt() -> object:
        return envelope.decrypt(key, sealed, NAME, 1)

    out: list[tuple[str, Samples]] = []
    for label, fn in (("floor: AES-GCM decrypt, data key + value (cryptography)", plain),
                      ("tether.secrets.envelope.decrypt", tether_decrypt)):  # fmt: skip
        samples = Samples()
        time_calls(fn, max(0.5, seconds / 4), samples)
        out.append((label, samples))
    return out


def _raw(sealed: str) -> bytes:
    body = sealed.partition(".")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options("python -m bench.secrets", "Tether secret reads over HTTP", argv)
    seconds = 2.0 if options.quick else 6.0
    run_each_backend(options, lambda backend: run_backend(options, backend, seconds))


if __name__ == "__main__":
    main()
