"""No secret value leaks (issue 15): after a run against a real server that stores values
(from stdin, from a file, over the API), reads them as an agent, leases, renews and revokes,
mints a database login for the agent, and rotates the master key, none of the values (nor
the login's password) — nor their base64 — is in the SQLite file
(and its WAL), the PostgreSQL schema's dump, the server's log (info level, the access log
included) or the ledger's export. The CLI refuses a value given as an argument.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS, PG_URL, backend_for, bearer
from tests.serverproc import running_server

pytestmark = pytest.mark.slow

POLICIES = """
@id("read-team-secrets")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("team") };

@id("lease-logins")
permit (principal, action == Action::"secret.lease", resource);
"""
CREATION = "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiry}}';"


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    out = [raw]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw)
        out += [text, text.rstrip(b"=")]
    return out


def _cli(
    env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], env=env, cwd=cwd, input=stdin,
        capture_output=True, text=True, timeout=60, check=False,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, str, dict[str, str], str]]:
    with backend_for(request.param, tmp_path) as backend, running_server(
        backend, tmp_path, extra_env={"TETHER_LOG_LEVEL": "info"}
    ) as (url, env):  # fmt: skip
        yield tmp_path, url, env, backend.url + (f"#{backend.schema}" if backend.schema else "")


def test_values_appear_nowhere_but_in_an_agents_read(
    served: tuple[Path, str, dict[str, str], str],
) -> None:
    if not PG_URL:  # database logins are minted on the machine's PostgreSQL
        pytest.skip("TETHER_TEST_POSTGRES_URL is empty: PostgreSQL half disabled explicitly")
    cwd, url, env, where = served
    admin = (cwd / ".tether" / "admin.token").read_text().strip()
    values = {name: f"leak-{name}-{secrets.token_hex(16)}"
              for name in ("stdin", "file", "api", "broker", "rotated")}  # fmt: skip

    refused = _cli(env, cwd, "secrets", "put", "argv-secret", values["api"])
    assert refused.returncode != 0
    assert "never pass a secret's value as an argument" in refused.stderr + refused.stdout
    stored = _cli(env, cwd, "secrets", "put", "from-stdin", "--label", "team",
                  stdin=values["stdin"] + "\n")  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    value_file = cwd / "value.txt"
    value_file.write_text(values["file"])
    stored = _cli(env, cwd, "secrets", "put", "from-file", "--file", str(value_file),
                  "--label", "team")  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    value_file.unlink()

    with httpx.Client(base_url=url, headers=bearer(admin), timeout=30) as http:
        assert http.put("/v1/policies", json={"policies": POLICIES}).status_code == 200
        for name, extra in (("over-api", {}), ("broker", {"broker_only": True}),
                            ("rotated", {})):  # fmt: skip
            value = values["api" if name == "over-api" else name]
            body = {"value": value, "labels": ["team"], **extra}
            put = http.put(f"/v1/secrets/{name}", json=body)
            assert put.status_code == 201, put.text
        agent = http.post(
            "/v1/agents",
            json={
                "name": "leaky",
                "owner": "admin",
                "purpose": "leak test",
                "risk_tier": "minimal",
            },
        )
        agent_id = agent.json()["id"]
        cred = http.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"}).json()
        got = httpx.post(f"{url}/oauth/token", data={
            "grant_type": "client_credentials", "client_id": agent_id,
            "client_secret": cred["client_secret"],
        })  # fmt: skip
        access = got.json()["access_token"]
        with httpx.Client(base_url=url, headers=bearer(access), timeout=30) as as_agent:
            read = {n: as_agent.get(f"/v1/secrets/{n}/value") for n in
                    ("from-stdin", "from-file", "over-api", "broker", "rotated")}  # fmt: skip
            assert read["from-stdin"].json()["value"] == values["stdin"]  # newline dropped
            assert read["from-file"].json()["value"] == values["file"]
            assert read["over-api"].json()["value"] == values["api"]
            assert read["broker"].status_code == 403
            lease = read["over-api"].json()["lease_id"]
            assert as_agent.post(f"/v1/secrets/leases/{lease}/renew").status_code == 200
        # a database login minted for the agent: its password must leak nowhere either
        dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        admin_dsn = http.put("/v1/secrets/pg-admin", json={"value": dsn, "broker_only": True})
        assert admin_dsn.status_code == 201, admin_dsn.text
        made = http.put("/v1/secrets/db/connections/main", json={"dsn_secret": "pg-admin"})
        assert made.status_code == 200, made.text
        made = http.put("/v1/secrets/db/roles/ro", json={"connection": "main",
                                                         "creation": CREATION})  # fmt: skip
        assert made.status_code == 200, made.text
        minted = httpx.post(f"{url}/v1/secrets/db/ro/lease", headers=bearer(access), json={})
        assert minted.status_code == 201, minted.text
        values["login"] = minted.json()["password"]
        ended = http.post(f"/v1/secrets/leases/{minted.json()['lease_id']}/revoke", json={})
        assert ended.status_code == 200, ended.text
        assert http.post("/v1/secrets/rotate-master-key").status_code == 200
        assert http.post(f"/v1/secrets/leases/{lease}/revoke", json={}).status_code == 200
        rotated = http.put("/v1/secrets/rotated", json={"value": values["rotated"] + "-2"})
        assert rotated.status_code == 200
        export = http.get("/v1/audit/export", params={"format": "jsonl"}).content
        assert b"secret.read" in export  # the reads are on the record, their values are not
    listed = _cli(env, cwd, "secrets", "list", "--json")
    assert listed.returncode == 0, listed.stderr

    places: dict[str, bytes] = {
        "the ledger export": export,
        "the server log": (cwd / "server.log").read_bytes(),
        "the CLI's output": (listed.stdout + listed.stderr).encode(),
    }
    if where.startswith("sqlite"):
        database = Path(where.split("///", 1)[1].split("?", 1)[0])
        for path in [*database.parent.glob(database.name + "*"), *(cwd / ".tether").glob("*")]:
            if path.is_file():
                places[f"the file {path.name}"] = path.read_bytes()
        assert any(b"secret_versions" in blob for blob in places.values()), sorted(places)
    else:
        url_part, _, schema = where.partition("#")
        dsn = url_part.replace("postgresql+psycopg://", "postgresql://")
        dump = subprocess.run(["pg_dump", "--data-only", "--schema", schema, dsn],
                              capture_output=True, timeout=120, check=True)  # fmt: skip
        assert b"secret_versions" in dump.stdout
        places["the PostgreSQL dump"] = dump.stdout
    for name, value in values.items():
        for form in _forms(value) + _forms(value + "-2"):
            for place, blob in places.items():
                assert form not in blob, f"the {name} value ({form!r}) is in {place}"
