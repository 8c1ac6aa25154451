"""The compliance report (issue 20, item 5), on both backends: a seeded history — agents,
approvals granted and denied, a kill with its cascade, a suspension, a freeze, risk raised,
a recertification — and the report over it. Every figure equals what the ledger holds,
counted here with SQL of its own; the PDF renders (poppler's pdftoppm) and its text shows the
figures; ``report verify`` passes on the JSON, the HTML and the PDF untouched, and fails
naming the figure on an edited one, on a tampered checkpoint, online and offline against an
export; a period in the future is a 422 naming ``to``; a supervisor is refused."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from tests.conftest import Api, admin_client, assert_error, bearer
from tests.pdp import env_of, push_policies
from tests.serverproc import free_port, run_cli, served_in_thread
from tests.test_approvals import POLICIES, decide, pending, write
from tether.api.app import create_app
from tether.audit.events import EventType, NewEvent
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services
from tether.governance.report_verify import load

REPORT = "/v1/reports/compliance"
VERIFY = "/v1/reports/compliance/verify"


def _seed(services: Services, api: Api) -> dict[str, Any]:
    """The history the report is about; returns the period around it and who is who."""
    sup = api.user("rep-sup")
    auditor = api.user("rep-auditor", role="auditor")
    start = datetime.now(UTC)
    with env_of(services, api.client) as e:
        push_policies(api.client, POLICIES)
        payer = api.agent(name="payer", risk_tier="high", purpose="pays invoices")
        granted = pending(e, write(payer["id"]))
        assert decide(e, granted, "approve", note="fine").status_code == 200
        denied = pending(e, write(payer["id"], context={"amount": 9999, "currency": "EUR"}))
        assert decide(e, denied, "deny", note="too much").status_code == 200
    helper = api.agent(name="helper", owner=sup["id"], purpose="files tickets")
    child = api.agent(name="helper-child", parent=helper["id"])
    api.ok(helper["id"], "kill", reason="out of policy")
    other = api.agent(name="other", risk_tier="limited")
    api.ok(other["id"], "suspend", reason="looks odd")
    api.ok(other["id"], "recertify", note="still needed")
    assert api.client.post("/v1/freeze", json={"reason": "incident 42"}).status_code in (200, 201)
    assert api.client.request("DELETE", "/v1/freeze", json={}).status_code == 200
    # Monitoring's record of raised risk, as its response path appends it (tether.monitor).
    with services.db.write() as s:
        services.ledger.append(
            s,
            [
                NewEvent(
                    EventType.AGENT_RISK_RAISED,
                    "system",
                    agent_id=payer["id"],
                    details={"score": 150, "level": "critical", "response": "suspend"},
                ),
                NewEvent(
                    EventType.AGENT_RISK_RAISED,
                    "system",
                    agent_id=other["id"],
                    details={"score": 60, "level": "elevated", "response": "alert"},
                ),
            ],
            now=datetime.now(UTC),
        )
    end = datetime.now(UTC)
    return {
        "sup": sup,
        "auditor": auditor,
        "from": to_rfc3339(start),
        "to": to_rfc3339(end),
        "killed": {helper["id"], child["id"]},
    }


def _build(api: Api, period: dict[str, Any], fmt: str = "json", token: str | None = None) -> Any:
    params = {"from": period["from"], "to": period["to"], "format": fmt}
    got = api.client.get(REPORT, params=params, headers=bearer(token) if token else None)
    assert got.status_code == 200, got.text
    return got


def _figures(envelope: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for s in envelope["report"]["sections"] for f in s["figures"]}


def _sql_count(services: Services, source: dict[str, Any]) -> int | float:
    """The figure's query, answered with SQL on the ledger table (not the report's code)."""
    where, params = ["seq BETWEEN :a AND :b"], {"a": source["seq_from"], "b": source["seq_to"]}
    if source.get("types"):
        where.append("type IN :types")
        params["types"] = tuple(source["types"])
    if source.get("type_prefix"):
        where.append("type LIKE :prefix")
        params["prefix"] = source["type_prefix"] + "%"
    query = text(
        f"SELECT type, actor, agent_id, decision, policy_version, resource, details "
        f"FROM audit_events WHERE {' AND '.join(where)}"
    )
    if "types" in params:
        from sqlalchemy import bindparam

        query = query.bindparams(bindparam("types", expanding=True))
    with services.db.read() as s:
        rows = [dict(r._mapping) for r in s.execute(query, params)]
    for row in rows:
        row["details"] = json.loads(row["details"])
        row["resource"] = json.loads(row["resource"] or "null") or {}
    for path, value in (source.get("where") or {}).items():
        head, _, rest = path.partition(".")
        rows = [
            r for r in rows if (r["details"].get(rest) if head == "details" else r[head]) == value
        ]
    measure = source["measure"]
    if measure == "count":
        return len(rows)
    kind, _, path = measure.partition(":")
    if kind in ("median", "max"):
        numbers = sorted(r["details"][path.removeprefix("details.")] for r in rows)
        if not numbers:
            return 0
        if kind == "max":
            return numbers[-1]
        half = len(numbers) // 2
        return numbers[half] if len(numbers) % 2 else (numbers[half - 1] + numbers[half]) / 2
    if kind == "open":
        assert path == "resource.id", path
        due = datetime.fromisoformat(source["due_by"]["at"].replace("Z", "+00:00"))
        opened = {
            r["resource"]["id"]
            for r in rows
            if r["type"] == source["types"][0]
            and datetime.fromisoformat(r["details"]["due"].replace("Z", "+00:00")) <= due
        }
        closed = {r["resource"]["id"] for r in rows if r["type"] != source["types"][0]}
        return len(opened - closed)
    assert measure.startswith("distinct:"), measure
    path = measure.removeprefix("distinct:")
    head, _, rest = path.partition(".")
    values = {r["details"].get(rest) if head == "details" else r[head] for r in rows}
    return len(values - {None})


def _verify(api: Api, envelope: Any, token: str | None = None) -> dict[str, Any]:
    got = api.client.post(VERIFY, json=envelope, headers=bearer(token) if token else None)
    assert got.status_code == 200, got.text
    return dict(got.json())


def test_every_figure_is_the_ledgers_and_verify_catches_edits(services: Services, api: Api) -> None:
    seeded = _seed(services, api)
    envelope = _build(api, seeded, token=seeded["auditor"]["token"]).json()
    figures = _figures(envelope)
    for fid, fig in figures.items():
        assert fig["value"] == _sql_count(services, fig["source"]), fid
    expected = {
        "oversight.approvals.requested": 2,
        "oversight.approvals.granted": 1,
        "oversight.approvals.denied": 1,
        "oversight.kills": 2,
        "oversight.kill_switches": 1,
        "oversight.suspensions": 1,
        "oversight.freezes": 1,
        "oversight.freezes_lifted": 1,
        "incidents.risk_raised": 2,
        "incidents.risk_suspend": 1,
        "incidents.risk_alert": 1,
        "reviews.recertified": 1,
        "inventory.registered": 4,
        "oversight.approvers": 1,
        # One worker: nothing propagated elsewhere, nothing measured (test_propagation_*).
        "oversight.propagation.kills.measured": 0,
        "oversight.propagation.kills.max_seconds": 0,
        "oversight.propagation.freezes.measured": 0,
    }
    assert {k: figures[k]["value"] for k in expected} == expected
    ledger = envelope["report"]["ledger"]
    assert figures["logging.events"]["value"] == ledger["seq_to"] - ledger["seq_from"] + 1
    # The range is the period's: the events just outside it are stamped outside it.
    with services.db.read() as s:
        times = dict(
            s.execute(
                text("SELECT seq, time FROM audit_events WHERE seq IN (:a, :b)"),
                {"a": ledger["seq_from"] - 1, "b": ledger["seq_to"] + 1},
            ).all()
        )
        built = s.execute(
            text("SELECT seq, details FROM audit_events WHERE type = 'report.built'")
        ).all()
    start = datetime.fromisoformat(seeded["from"].replace("Z", "+00:00"))
    assert times[ledger["seq_from"] - 1] < int(start.timestamp() * 1_000_000)
    # The report.built event holds the digest; the embedded checkpoint covers it.
    assert [json.loads(d)["sha256"] for _, d in built] == [envelope["binding"]["sha256"]]
    assert envelope["binding"]["event"]["seq"] == built[0][0] <= envelope["checkpoint"]["size"]
    sections = {s["id"]: s for s in envelope["report"]["sections"]}
    register = sections["inventory"]["register"]
    assert register["agents"] == len(api.agents())
    assert sections["logging"]["verification"]["ok"] is True
    killed = {r[3] for r in sections["oversight"]["tables"][0]["rows"] if r[2] == "agent.killed"}
    assert killed == seeded["killed"]

    assert _verify(api, envelope)["ok"] is True
    assert _verify(api, envelope, seeded["auditor"]["token"])["figures_checked"] == len(figures)

    edited = json.loads(json.dumps(envelope))
    for fig in _figures(edited).values():
        if fig["id"] == "oversight.approvals.denied":
            fig["value"] = 0
    verdict = _verify(api, edited)
    assert verdict["ok"] is False
    assert "oversight.approvals.denied" in {p["about"] for p in verdict["problems"]}
    assert "binding" in {p["about"] for p in verdict["problems"]}

    tampered = json.loads(json.dumps(envelope))
    sig = tampered["checkpoint"]["signature"]
    tampered["checkpoint"]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    verdict = _verify(api, tampered)
    assert verdict["ok"] is False
    assert [p["about"] for p in verdict["problems"]] == ["checkpoint"]
    moved = json.loads(json.dumps(envelope))
    moved["checkpoint"]["head_hash"] = "0" * 64
    assert "checkpoint" in {p["about"] for p in _verify(api, moved)["problems"]}


def test_html_and_pdf_carry_the_report_and_render(
    services: Services, api: Api, tmp_path: Path
) -> None:
    seeded = _seed(services, api)
    html = _build(api, seeded, "html").content
    assert b'<script type="application/json" id="tether-report">' in html
    assert _verify(api, load(html))["ok"] is True

    pdf_response = _build(api, seeded, "pdf")
    assert pdf_response.headers["content-type"] == "application/pdf"
    assert pdf_response.headers["content-disposition"].endswith('.pdf"')
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(pdf_response.content)
    envelope = load(pdf.read_bytes())
    assert _verify(api, envelope)["ok"] is True

    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
        check=True,
        timeout=60,
    )
    (png,) = tmp_path.glob("page*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    shown = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    for fid, fig in _figures(envelope).items():
        assert fig["value"] == _sql_count(services, fig["source"]), fid
        row = re.search(r"(?<![\w.])" + re.escape(fid) + r"\s+(\d+(?:\.\d+)?)\s", shown)
        assert row is not None, fid
        assert float(row.group(1)) == pytest.approx(fig["value"], abs=1e-6), fid


def test_cli_verifies_all_formats_online_and_offline(
    services: Services, api: Api, tmp_path: Path
) -> None:
    seeded = _seed(services, api)
    port = free_port()
    env = {
        "TETHER_URL": f"http://127.0.0.1:{port}",
        "TETHER_TOKEN": seeded["auditor"]["token"],
        "TETHER_DATA_DIR": str(tmp_path / "cli-data"),
    }
    key = tmp_path / "ledger.pem"
    key.write_bytes(services.ledger.signer.public_pem())
    with served_in_thread(create_app(services), port):
        files = {}
        for fmt in ("json", "html", "pdf"):
            files[fmt] = tmp_path / f"report.{fmt}"
            done = run_cli(
                "report",
                "build",
                "--from",
                seeded["from"],
                "--to",
                seeded["to"],
                "--format",
                fmt,
                "--out",
                str(files[fmt]),
                env=env,
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
        export = tmp_path / "ledger.jsonl"
        assert run_cli("audit", "export", "-o", str(export), env=env).returncode == 0
        for fmt, path in files.items():
            done = run_cli("report", "verify", str(path), env=env)
            assert done.returncode == 0, (fmt, done.stdout, done.stderr)
            assert done.stdout.startswith("ok: "), done.stdout
            offline = run_cli(
                "report",
                "verify",
                str(path),
                "--against",
                str(export),
                "--public-key",
                str(key),
                env={"TETHER_URL": "http://127.0.0.1:9"},
            )
            assert offline.returncode == 0, (fmt, offline.stdout, offline.stderr)
            assert "the export" in offline.stdout

        doc = json.loads(files["json"].read_bytes())
        for section in doc["report"]["sections"]:
            for fig in section["figures"]:
                if fig["id"] == "oversight.kills":
                    fig["value"] += 1
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps(doc))
        online = run_cli("report", "verify", str(edited), env=env)
        offline = run_cli(
            "report",
            "verify",
            str(edited),
            "--against",
            str(export),
            "--public-key",
            str(key),
            env=env,
        )
        for done in (online, offline):
            assert done.returncode == 1, done.stdout
            assert "FAILED oversight.kills: figure oversight.kills says 3" in done.stdout
            assert "Traceback" not in done.stderr
        # An export edited at one event of the range: the chain breaks before any figure counts.
        lines = export.read_text().splitlines()
        seq_from = doc["report"]["ledger"]["seq_from"]
        index = next(i for i, ln in enumerate(lines) if json.loads(ln)["seq"] == seq_from + 1)
        lines[index] = lines[index].replace('"actor":"', '"actor":"x', 1)
        (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
        broken = run_cli(
            "report",
            "verify",
            str(files["pdf"]),
            "--against",
            str(tmp_path / "bad.jsonl"),
            "--public-key",
            str(key),
            env=env,
        )
        assert broken.returncode == 1
        assert "FAILED ledger" in broken.stdout
        keyless = run_cli("report", "verify", str(files["json"]), "--against", str(export), env=env)
        assert keyless.returncode != 0
        assert "--public-key" in keyless.stderr


def test_bad_periods_and_who_may(services: Services, api: Api) -> None:
    sup = api.user("rep-sup2")
    auditor = api.user("rep-aud2", role="auditor")
    now = datetime.now(UTC)
    future = to_rfc3339(now + timedelta(days=1))
    error = assert_error(api.client.get(REPORT, params={"from": "2026-01-01", "to": future}), 422)
    assert error["details"]["field"] == "to"
    error = assert_error(
        api.client.get(REPORT, params={"from": to_rfc3339(now), "to": "2020-01-01"}), 422
    )
    assert error["details"]["field"] == "from"
    error = assert_error(
        api.client.get(REPORT, params={"from": "yesterday", "to": "2020-01-01"}), 422
    )
    assert error["details"]["field"] == "from"
    posted = api.client.post(
        "/v1/reports", json={"period": {"from": "2020-01-01", "to": future}, "format": "json"}
    )
    assert assert_error(posted, 422)["details"]["field"] == "to"
    ok = {"from": "2020-01-01", "to": to_rfc3339(now)}
    assert_error(api.client.get(REPORT, params=ok, headers=bearer(sup["token"])), 403)
    assert_error(api.client.post(VERIFY, json={}, headers=bearer(sup["token"])), 403)
    assert api.client.get(REPORT, params=ok, headers=bearer(auditor["token"])).status_code == 200
    posted = api.client.post("/v1/reports", json={"period": ok, "format": "json"})
    assert posted.status_code == 200, posted.text
    # a body that is no report is a verdict: not ok, about the report
    for body in ({"kind": "x"}, {}):
        verdict = api.client.post(VERIFY, json=body)
        assert verdict.status_code == 200, verdict.text
        assert verdict.json()["ok"] is False
        assert verdict.json()["problems"][0]["about"] == "report"
    # a period whose time leaves years 1-9999 in UTC: 422 naming it, not a 500
    early = {"from": "0001-01-01T00:00:00+01:00", "to": ok["to"]}
    assert assert_error(api.client.get(REPORT, params=early), 422)["details"]["field"] == "from"


def test_propagation_of_kills_and_freezes_is_measured_and_reported(
    make_services: Callable[..., Services],
) -> None:
    """Two workers on one database (two apps, each its runtime started): a kill, a suspension
    and a freeze made through one each record, once the call returned, how long the other
    took to apply it; the report shows them and verify recounts them."""
    one, two = make_services(), make_services()
    token = one.settings.admin_token_path.read_text().strip()
    start = datetime.now(UTC)
    with TestClient(create_app(one)) as a, TestClient(create_app(two)):
        a.headers.update(bearer(token))
        api = Api(a)
        root = api.agent(name="root", roles=["ops"])
        api.agent(name="leaf", parent=root["id"])
        other = api.agent(name="other")
        killed = api.ok(root["id"], "kill", reason="compromised")
        api.ok(other["id"], "suspend", reason="odd")
        assert a.post("/v1/freeze", json={"reason": "incident"}).status_code in (200, 201)
        events = api.events()
        by_seq = {e["seq"]: e for e in events}
        measured = [e for e in events if e["type"] == "runtime.propagated"]
        assert [m["details"]["change"] for m in measured] == [
            "agent.killed", "agent.suspended", "freeze.started"]  # fmt: skip
        for m in measured:
            details = m["details"]
            change = by_seq[details["event_seq"]]
            assert change["type"] == details["change"]
            assert m["seq"] > change["seq"]
            assert details["seconds"] >= 0
            assert details["confirmed"] is True
            assert details["workers"] >= 1  # the other app's runtime
        assert measured[0]["details"]["agents"] == len(killed["revoked"]) == 2
        assert by_seq[measured[0]["details"]["event_seq"]]["agent_id"] == root["id"]

        period = {"from": to_rfc3339(start), "to": to_rfc3339(datetime.now(UTC))}
        got = a.get(REPORT, params=period)
        assert got.status_code == 200, got.text
        envelope = got.json()
        figures = _figures(envelope)
        for fid, fig in figures.items():
            assert fig["value"] == _sql_count(one, fig["source"]), fid
        for kind in ("kills", "suspensions", "freezes"):
            parts = ("measured", "median_seconds", "max_seconds", "unconfirmed")
            fig = {k: figures[f"oversight.propagation.{kind}.{k}"]["value"] for k in parts}
            assert (fig["measured"], fig["unconfirmed"]) == (1, 0), kind
            assert 0 <= fig["median_seconds"] == fig["max_seconds"], kind
        verdict = a.post(VERIFY, json=envelope).json()
        assert verdict["ok"] is True, verdict

        edited = json.loads(json.dumps(envelope))
        for fig in _figures(edited).values():
            if fig["id"] == "oversight.propagation.kills.max_seconds":
                fig["value"] += 0.5
        verdict = a.post(VERIFY, json=edited).json()
        assert verdict["ok"] is False
        about = {p["about"] for p in verdict["problems"]}
        assert "oversight.propagation.kills.max_seconds" in about


def test_reviews_done_and_overdue_come_from_the_reviews_service_and_verify(
    make_services: Callable[..., Services],
) -> None:
    """Access reviews in the report: started, done on time and late, and overdue at the
    period's end (one started before the period) — the figures are the reviews service's
    (ReviewService.period) and recount from review.started/review.closed."""
    clock = FrozenClock(datetime.now(UTC) - timedelta(days=30))
    svc = make_services(clock=clock, key_rotation_days=1000)
    with admin_client(svc) as client:
        api = Api(client)
        api.agent(name="reviewed", roles=["ops"])  # a line to answer: it stays open

        def start(due_in: timedelta) -> str:
            got = client.post("/v1/reviews", json={"due": to_rfc3339(clock.now() + due_in)})
            assert got.status_code == 201, got.text
            return str(got.json()["id"])

        def close(review: str) -> None:
            got = client.post(f"/v1/reviews/{review}/close", json={"note": "done"})
            assert got.status_code == 200, got.text

        early = start(timedelta(hours=1))  # before the period, overdue at its end
        clock.advance(600)
        begin = clock.now()
        clock.advance(60)
        on_time, late = start(timedelta(days=1)), start(timedelta(days=2))
        start(timedelta(days=20))  # open, not due yet
        clock.advance(3600)
        close(on_time)
        clock.advance(3 * 86_400)
        close(late)
        overdue = start(timedelta(hours=1))
        clock.advance(2 * 3600)
        end = clock.now()
        got = client.get(REPORT, params={"from": to_rfc3339(begin), "to": to_rfc3339(end)})
        assert got.status_code == 200, got.text
        envelope = got.json()
        figures = _figures(envelope)
        for fid, fig in figures.items():
            assert fig["value"] == _sql_count(svc, fig["source"]), fid
        period = svc.reviews.period(begin, end)
        expected = {
            "reviews.started": len(period.started),
            "reviews.done": len(period.done),
            "reviews.done_on_time": sum(r.on_time for r in period.done),
            "reviews.done_late": sum(not r.on_time for r in period.done),
            "reviews.overdue": len(period.overdue),
        }
        assert expected == {
            "reviews.started": 4,
            "reviews.done": 2,
            "reviews.done_on_time": 1,
            "reviews.done_late": 1,
            "reviews.overdue": 2,
        }
        assert {k: figures[k]["value"] for k in expected} == expected
        assert {r.id for r in period.overdue} == {early, overdue}
        # The overdue count reads from the early review's start, before the period's range;
        # the report's retention hold keeps that far.
        source = figures["reviews.overdue"]["source"]
        assert source["seq_from"] < envelope["report"]["ledger"]["seq_from"]
        (record,) = client.get("/v1/reports").json()
        assert record["held_from_seq"] == source["seq_from"]
        sections = {s["id"]: s for s in envelope["report"]["sections"]}
        table = sections["reviews"]["tables"][0]
        assert {(r[0], r[1]) for r in table["rows"]} == {
            (early, "overdue"), (overdue, "overdue"), (on_time, "done on time"),
            (late, "done late")}  # fmt: skip
        assert client.post(VERIFY, json=envelope).json()["ok"] is True
        edited = json.loads(json.dumps(envelope))
        for fig in _figures(edited).values():
            if fig["id"] == "reviews.overdue":
                fig["value"] = 0
        verdict = client.post(VERIFY, json=edited).json()
        assert "reviews.overdue" in {p["about"] for p in verdict["problems"]}
