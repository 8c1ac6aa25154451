"""The inventory export (the AI system register): exactly the agents each role may see, with
the right columns in CSV and JSON, lineage and fingerprint; refusals; the ledger event with
the body's digest; formula cells neutralised; pages streamed; the CLI writing a file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Api, assert_error, bearer
from tests.pdp import credential, env_of, token
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.agents.inventory import COLUMNS, neutralise
from tether.api.app import create_app
from tether.container import Services

FINGERPRINT = {"model": "gpt-5", "model_version": "2026-01", "prompt_sha256": "ab" * 32}


def _export(client: TestClient, fmt: str, token: str | None = None) -> Any:
    headers = bearer(token) if token else None
    return client.get("/v1/agents/export", params={"format": fmt}, headers=headers)


def _csv_rows(body: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(body, newline=""))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return list(reader)


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    """Two supervisors; agents owned by each and by admin, one supervised across, a clone."""
    sup, other = api.user("inv-sup"), api.user("inv-other")
    auditor = api.user("inv-auditor", role="auditor")
    mine = api.agent(name="mine", owner=sup["id"], risk_tier="high", fingerprint=FINGERPRINT,
                     roles=["reader", "writer"], scopes=["docs:read"],
                     attributes={"team": "payments"})  # fmt: skip
    watched = api.agent(name="watched", owner=other["id"], supervisors=[sup["id"]])
    theirs = api.agent(name="theirs", owner=other["id"])
    admins = api.agent(name="admins")
    clone = api.ok(mine["id"], "clone", name="mine-canary")
    return {"sup": sup, "other": other, "auditor": auditor, "mine": mine, "watched": watched,
            "theirs": theirs, "admins": admins, "clone": clone}  # fmt: skip


def test_csv_has_exactly_what_each_role_may_see(api: Api, world: dict[str, Any]) -> None:
    everyone = {a["id"] for a in api.agents()}
    sup_sees = {world[k]["id"] for k in ("mine", "watched", "clone")}
    for who, expected in [(None, everyone), (world["auditor"]["token"], everyone),
                          (world["sup"]["token"], sup_sees)]:  # fmt: skip
        got = _export(api.client, "csv", who)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("text/csv")
        disposition = got.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="tether-inventory-')
        assert disposition.endswith('.csv"')
        rows = _csv_rows(got.text)
        assert [r["id"] for r in rows] == sorted(expected)

    rows = {r["id"]: r for r in _csv_rows(_export(api.client, "csv").text)}
    mine, clone = api.get(world["mine"]["id"]), rows[world["clone"]["id"]]
    row = rows[mine["id"]]
    assert row["name"] == "mine"
    assert row["spiffe_id"] == mine["spiffe_id"]
    assert (row["owner_id"], row["owner_username"]) == (world["sup"]["id"], "inv-sup")
    assert (row["risk_tier"], row["status"]) == ("high", "active")
    assert row["roles"] == "reader;writer"
    assert row["scopes"] == "docs:read"
    assert row["fingerprint_digest"] == mine["fingerprint"]["digest"]
    assert row["fingerprint_digest"].startswith("sha256:")
    assert row["fingerprint_model"] == "gpt-5"
    assert row["fingerprint_tools_sha256"] == ""
    assert json.loads(row["attributes"]) == {"team": "payments"}
    assert row["created_at"] == mine["created_at"]
    assert row["recertify_by"] == mine["recertify_by"]
    assert (row["lineage_kind"], row["lineage"]) == ("", "")
    assert (clone["lineage_kind"], clone["lineage"]) == ("cloned", mine["id"])
    assert clone["fingerprint_digest"] == mine["fingerprint"]["digest"]
    assert rows[world["watched"]["id"]]["supervisors"] == world["sup"]["id"]


def test_json_has_the_same_agents_with_nested_fields(api: Api, world: dict[str, Any]) -> None:
    got = _export(api.client, "json", world["sup"]["token"])
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("application/json")
    assert got.headers["content-disposition"].endswith('.json"')
    doc = got.json()
    agents = {a["id"]: a for a in doc["agents"]}
    assert doc["count"] == len(agents) == 3
    assert set(agents) == {world[k]["id"] for k in ("mine", "watched", "clone")}
    mine = api.get(world["mine"]["id"])
    entry = agents[mine["id"]]
    assert entry["owner"] == {"id": world["sup"]["id"], "username": "inv-sup"}
    assert entry["fingerprint"] == mine["fingerprint"]
    assert entry["lineage"] == {"kind": None, "ancestors": []}
    assert agents[world["clone"]["id"]]["lineage"] == {"kind": "cloned", "ancestors": [mine["id"]]}
    assert entry["credentials"] == 0
    assert entry["attributes"] == {"team": "payments"}
    assert {k: entry[k] for k in ("purpose", "risk_tier", "status", "roles", "scopes",
                                  "supervisors", "expires_at", "recertify_by", "created_at")} == {
        k: mine[k] for k in ("purpose", "risk_tier", "status", "roles", "scopes", "supervisors",
                             "expires_at", "recertify_by", "created_at")
    }  # fmt: skip


def test_credentials_are_counted_and_the_export_is_recorded(services: Services, api: Api) -> None:
    agent = api.agent(name="holder")
    with env_of(services, api.client) as e:
        credential(e, agent["id"])
        credential(e, agent["id"])
    got = _export(api.client, "json")
    assert got.status_code == 200, got.text
    counts = {a["id"]: a["credentials"] for a in got.json()["agents"]}
    assert counts[agent["id"]] == 2
    event = api.events(type="inventory.exported")[-1]
    assert event["actor"].startswith("user:")
    assert event["details"] == {
        "format": "json",
        "agents": len(counts),
        "bytes": len(got.content),
        "sha256": hashlib.sha256(got.content).hexdigest(),
    }

    got = _export(api.client, "csv")
    event = api.events(type="inventory.exported")[-1]
    assert event["details"]["format"] == "csv"
    assert event["details"]["agents"] == len(counts)
    assert event["details"]["sha256"] == hashlib.sha256(got.content).hexdigest()


def test_refusals(services: Services, api: Api) -> None:
    agent = api.agent(name="caller")
    before = api.events(type="inventory.exported")
    with env_of(services, api.client) as e:
        agent_token = token(e, credential(e, agent["id"]))
    assert_error(_export(api.client, "csv", agent_token), 403, "forbidden")
    error = assert_error(_export(api.client, "xml"), 422)
    assert error["details"].get("field") == "format" or "format" in error["message"], error
    assert api.events(type="inventory.exported") == before


def test_formula_cells_are_neutralised(api: Api) -> None:
    names = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "plain"]
    made = {api.agent(name=n, purpose=f"{n} purpose")["id"]: n for n in names}
    rows = {r["id"]: r for r in _csv_rows(_export(api.client, "csv").text)}
    for agent_id, name in made.items():
        expected = name if name == "plain" else "'" + name
        assert rows[agent_id]["name"] == expected
        assert rows[agent_id]["purpose"] == expected + " purpose"
    assert neutralise("\tx") == "'\tx"
    assert neutralise("a=b") == "a=b"
    doc = _export(api.client, "json").json()  # JSON is data, not a spreadsheet: as stored
    assert {a["name"] for a in doc["agents"]} >= set(names)


def test_many_pages_stream_in_order(services: Services, api: Api) -> None:
    services.inventory.page_size = 3
    ids = sorted(api.agent(name=f"p{i}", purpose="line one\nline two")["id"] for i in range(8))
    rows = _csv_rows(_export(api.client, "csv").text)
    got = [r["id"] for r in rows]
    assert got == sorted(got)
    assert set(ids) <= set(got)
    assert {r["purpose"] for r in rows if r["id"] in ids} == {"line one\nline two"}
    doc = _export(api.client, "json").json()
    assert [a["id"] for a in doc["agents"]] == got
    assert doc["count"] == len(got)


def test_the_agents_route_does_not_take_export_for_an_id(api: Api) -> None:
    agent = api.agent(name="routed")
    assert api.client.get(f"/v1/agents/{agent['id']}").status_code == 200
    assert api.client.get("/v1/agents/export").status_code == 200


def test_the_cli_writes_a_file(services: Services, api: Api, tmp_path: Path) -> None:
    api.agent(name="=cmd|' /C calc'!A0")
    port = free_port()
    env = {"TETHER_URL": f"http://127.0.0.1:{port}",
           "TETHER_TOKEN": services.settings.admin_token_path.read_text().strip(),
           "TETHER_DATA_DIR": str(tmp_path / "cli-data")}  # fmt: skip
    out = tmp_path / "register.csv"
    with served_in_thread(create_app(services), port):
        done = run_cli("inventory", "export", "--format", "csv", "--output", str(out),
                       env=env, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        body = out.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        assert digest in done.stderr
        rows = _csv_rows(body.decode())
        assert "'=cmd|' /C calc'!A0" in {r["name"] for r in rows}
        assert api.events(type="inventory.exported")[-1]["details"]["sha256"] == digest

        refused = run_cli("inventory", "export", "--output", str(tmp_path / "no.csv"),
                          env={**env, "TETHER_TOKEN": "not-a-token"}, cwd=tmp_path)  # fmt: skip
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert "HTTP 401" in refused.stderr
        assert not (tmp_path / "no.csv").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".no.csv")] == []


def test_other_methods_on_export_are_not_allowed(api: Api) -> None:
    for method in ("PATCH", "POST", "DELETE", "PUT"):
        error = assert_error(api.client.request(method, "/v1/agents/export", json={}), 405)
        assert error["details"]["allowed_methods"] == ["GET"], error
    assert api.client.patch("/v1/agents/agt_missing", json={}).status_code == 404
