"""Ledger retention (issue 20, item 4): events older than the retention period pruned with a
signed checkpoint at the cut; verification starts there (service, API, CLI, an export offline)
and still catches an edit just after the cut or a forged cut; never below six months; holds
kept; a dry run changes nothing; admins only; the maintenance task prunes daily."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, text

from tests.conftest import BOOTSTRAP_EVENTS, Api, admin_client, assert_error, bearer
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.audit.chain import Event, Problem, event_hash
from tether.audit.checkpoint_file import CheckpointFile
from tether.audit.models import CutRow
from tether.audit.offline import verify_export
from tether.audit.retention import LedgerNotVerified
from tether.audit.signing import LedgerVerifier
from tether.clock import FrozenClock, to_micros
from tether.config import load_settings
from tether.container import Services
from tether.errors import ConfigurationError, Forbidden, ValidationFailed
from tether.jsonutil import canonical
from tether.policy.models import DecisionInputRow
from tether.policy.values import Ask
from tether.principals import SYSTEM, Principal, Role

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
OLD_AGENTS = 6  # created at START, with the bootstrap's events: what a prune takes
OLD = BOOTSTRAP_EVENTS + OLD_AGENTS  # events 1..OLD are old
NEW_AGENTS = 3  # created 200 days later: kept
KEEP = 184  # days: the least the rule allows
READ_POLICY = '@id("read") permit (principal, action == Action::"resource.read", resource);'


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _agents(svc: Services, n: int, prefix: str) -> None:
    for i in range(n):
        spec = {"name": f"{prefix}-{i}", "owner": "admin", "purpose": "p", "risk_tier": "minimal"}
        svc.agents.create(SYSTEM, AgentCreate.model_validate(spec))


def _ledger(make: Callable[..., Services], clock: FrozenClock, **settings: Any) -> Services:
    """Events 1..OLD at START, then NEW_AGENTS events 200 days later; a checkpoint every 5."""
    # Keys rotating as the clock jumps (a served app's maintenance) would add events.
    svc = make(clock=clock, checkpoint_every_events=5, key_rotation_days=1000, **settings)
    _agents(svc, OLD_AGENTS, "old")
    clock.advance(200 * 86_400)
    _agents(svc, NEW_AGENTS, "new")
    return svc


def _events(svc: Services) -> list[Event]:
    with svc.db.read() as s:
        return list(svc.ledger.store.stream(s))


def _cuts(svc: Services) -> list[tuple[int, str, int]]:
    with svc.db.read() as s:
        return [(c.size, c.head_hash, c.pruned) for c in s.scalars(select(CutRow))]


def _sql(svc: Services, statement: str, **params: Any) -> None:
    """Tamper with the database behind Tether's back."""
    with svc.db.engine.begin() as conn:
        conn.execute(text(statement), params)


@pytest.fixture
def pruned(make_services: Callable[..., Services], clock: FrozenClock) -> Services:
    svc = _ledger(make_services, clock)
    before = _events(svc)
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert (report.pruned, report.first_seq, report.last_seq) == (OLD, 1, OLD)
    assert report.head_hash == before[OLD - 1].hash
    return svc


def test_prune_keeps_a_signed_checkpoint_at_the_cut_and_records_itself(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = _ledger(make_services, clock)
    before = _events(svc)
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert report.pruned == OLD
    assert report.held_by is None
    assert report.cutoff_us == to_micros(clock.now() - timedelta(days=KEEP))
    cut = report.checkpoint
    assert cut is not None
    assert (cut.size, cut.head_hash) == (OLD, before[OLD - 1].hash)
    assert svc.ledger.signer.check(cut)
    after = _events(svc)
    assert [e.seq for e in after] == [e.seq for e in before[OLD:]] + [len(before) + 1]
    assert after[0].prev_hash == cut.head_hash  # the first kept event follows the cut
    assert [(e.seq, e.hash) for e in after[:-1]] == [(e.seq, e.hash) for e in before[OLD:]]
    event = after[-1]
    assert (event.type, event.actor, event.id) == ("ledger.pruned", "system", report.event_id)
    details = event.details
    assert details["pruned"] == OLD
    assert (details["first_seq"], details["last_seq"]) == (1, OLD)
    assert details["retention_days"] == KEEP
    assert details["checkpoint"] == cut.to_json()
    assert _cuts(svc) == [(OLD, cut.head_hash, OLD)]
    # The cut is in the checkpoint file too, as every signed checkpoint is.
    assert cut in CheckpointFile(svc.settings.checkpoint_file_path).read().checkpoints
    # Nothing more is due: a second prune does nothing and records nothing.
    again = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert (again.pruned, again.checkpoint, again.event_id) == (0, None, None)
    assert len(_events(svc)) == len(after)


def test_verify_passes_after_a_prune_in_the_service_the_api_and_the_cli(
    pruned: Services, tmp_path: Path
) -> None:
    result = pruned.audit.verify(SYSTEM)
    assert result.ok, result.message
    assert result.cut is not None
    assert result.cut.size == OLD
    assert result.checked == NEW_AGENTS + 1  # and the ledger.pruned event
    with admin_client(pruned) as client:
        body = client.get("/v1/audit/verify").json()
    assert body["ok"] is True, body
    assert body["cut"]["size"] == OLD
    assert body["checked"] == NEW_AGENTS + 1
    port = free_port()
    env = {"TETHER_URL": f"http://127.0.0.1:{port}",
           "TETHER_TOKEN": pruned.settings.admin_token_path.read_text().strip(),
           "TETHER_DATA_DIR": str(tmp_path / "cli-data")}  # fmt: skip
    with served_in_thread(create_app(pruned), port):
        done = run_cli("audit", "verify", env=env, cwd=tmp_path)
        as_json = run_cli("audit", "verify", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: ")
    assert f"events 1..{OLD} were pruned" in done.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout)["cut"]["size"] == OLD


def test_an_edit_of_the_event_just_after_the_cut_is_caught(pruned: Services) -> None:
    first = OLD + 1
    _sql(pruned, "UPDATE audit_events SET details = :d WHERE seq = :s",
         d='{"name":"forged"}', s=first)  # fmt: skip
    result = pruned.audit.verify(SYSTEM)
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (Problem.EDITED, first)


def test_an_event_after_the_cut_re_linked_and_re_hashed_is_caught(pruned: Services) -> None:
    """A forger who edits the first kept event and recomputes its hash from another
    ``prev_hash`` (so that it is self-consistent) still cannot make it follow the cut."""
    (first,) = pruned.audit.events(SYSTEM, limit=1).items
    forged = replace(first, details={"name": "forged"}, prev_hash="1" * 64)
    _sql(pruned, "UPDATE audit_events SET details = :d, prev_hash = :p, hash = :h WHERE seq = :s",
         d=canonical(forged.details).decode(), p=forged.prev_hash,
         h=event_hash(forged.prev_hash, forged.body()), s=first.seq)  # fmt: skip
    result = pruned.audit.verify(SYSTEM)
    assert not result.ok
    assert result.first_bad_seq == OLD + 1
    assert result.problem in (Problem.EDITED, Problem.CHAIN_REWRITTEN_BEFORE)


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("UPDATE audit_cuts SET head_hash = :h", Problem.CUT_INVALID),  # a forged head
        ("UPDATE audit_cuts SET signature = 'AAAA'", Problem.CUT_INVALID),
        ("UPDATE audit_cuts SET time = time + 1", Problem.CUT_INVALID),
        ("DELETE FROM audit_cuts", Problem.MISSING),  # pruned without a cut: just deleted
        ("UPDATE audit_cuts SET size = size - 1", Problem.MISSING),
    ],
)
def test_a_forged_or_edited_checkpoint_at_the_cut_is_caught(
    pruned: Services, statement: str, problem: Problem
) -> None:
    _sql(pruned, statement, **({"h": "2" * 64} if ":h" in statement else {}))
    result = pruned.audit.verify(SYSTEM)
    assert not result.ok
    assert result.problem == problem, result.message
    with admin_client(pruned) as client:
        body = client.get("/v1/audit/verify").json()
    assert (body["ok"], body["problem"]) == (False, str(problem))


def test_events_deleted_after_the_cut_are_caught(pruned: Services) -> None:
    _sql(pruned, "DELETE FROM audit_events WHERE seq = :s", s=OLD + 1)
    result = pruned.audit.verify(SYSTEM)
    assert not result.ok
    assert result.problem == Problem.MISSING
    assert result.first_bad_seq == 1  # no cut vouches for where the ledger now starts


def test_a_retention_below_six_months_is_refused_and_nothing_is_pruned(
    make_services: Callable[..., Services],
    clock: FrozenClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = _ledger(make_services, clock)
    before = _events(svc)
    with pytest.raises(ValidationFailed) as refused:
        svc.retention.prune(SYSTEM, retention_days=KEEP - 1)
    assert refused.value.details["field"] == "retention_days"
    with pytest.raises(ValidationFailed) as none:  # no period configured, none given
        svc.retention.prune(SYSTEM)
    assert none.value.details["field"] == "retention_days"
    with admin_client(svc) as client:
        for body in ({"retention_days": 30}, {"retention_days": KEEP - 1}, {}, {"dry_run": True}):
            error = assert_error(client.post("/v1/audit/prune", json=body), 422, "validation_error")
            assert error["details"]["field"] == "retention_days", error
        assert "six months" in client.post("/v1/audit/prune", json={"retention_days": 1}).text
    port = free_port()
    env = {"TETHER_URL": f"http://127.0.0.1:{port}",
           "TETHER_TOKEN": svc.settings.admin_token_path.read_text().strip(),
           "TETHER_DATA_DIR": str(tmp_path / "cli-data")}  # fmt: skip
    with served_in_thread(create_app(svc), port):
        done = run_cli("audit", "prune", "--retention-days", "90", env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "retention_days" in done.stderr
    assert "at least 184 days" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    after = _events(svc)  # the served app's maintenance may have rotated keys meanwhile
    assert after[: len(before)] == before
    assert "ledger.pruned" not in {e.type for e in after}
    assert _cuts(svc) == []
    # Configured below the minimum: the server does not start, naming the setting.
    monkeypatch.setenv("TETHER_LEDGER_RETENTION_DAYS", "90")
    with pytest.raises(ConfigurationError) as config:
        load_settings(data_dir=tmp_path / "other")
    assert "TETHER_LEDGER_RETENTION_DAYS" in config.value.message
    assert "at least 184 days" in config.value.message


def test_holds_are_respected(pruned_later: Services) -> None:
    svc = pruned_later
    held_from = 5
    svc.retention.add_hold("test_review", lambda _s, _c: held_from)
    svc.retention.add_hold("nothing_held", lambda _s, _c: None)
    svc.retention.add_hold("held_later", lambda _s, _c: OLD + 2)  # above the cutoff: no say
    with pytest.raises(ValueError, match="registered already"):
        svc.retention.add_hold("test_review", lambda _s, _c: 1)
    dry = svc.retention.prune(SYSTEM, retention_days=KEEP, dry_run=True)
    assert (dry.pruned, dry.last_seq, dry.held_by, dry.held_from_seq) == (
        held_from - 1, held_from - 1, "test_review", held_from)  # fmt: skip
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert (report.pruned, report.last_seq, report.held_by) == (held_from - 1, 4, "test_review")
    assert _events(svc)[0].seq == held_from
    assert svc.audit.verify(SYSTEM).ok
    # The review closes: the rest goes, a second cut after the first.
    held_from = 10**9
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert (report.pruned, report.first_seq, report.last_seq, report.held_by) == (
        OLD - 4, 5, OLD, None)  # fmt: skip
    assert [size for size, _h, _n in _cuts(svc)] == [4, OLD]
    result = svc.audit.verify(SYSTEM)
    assert result.ok, result.message
    assert result.cut is not None
    assert result.cut.size == OLD


@pytest.fixture
def pruned_later(make_services: Callable[..., Services], clock: FrozenClock) -> Services:
    return _ledger(make_services, clock)


def test_a_dry_run_changes_nothing(pruned_later: Services, tmp_path: Path) -> None:
    svc = pruned_later
    before, file_before = _events(svc), svc.settings.checkpoint_file_path.read_bytes()
    report = svc.retention.prune(SYSTEM, retention_days=KEEP, dry_run=True)
    assert (report.dry_run, report.pruned, report.first_seq, report.last_seq) == (True, OLD, 1, OLD)
    assert report.head_hash == before[OLD - 1].hash
    assert (report.checkpoint, report.event_id) == (None, None)
    with admin_client(svc) as client:
        body = client.post("/v1/audit/prune", json={"dry_run": True, "retention_days": KEEP})
        assert body.status_code == 200, body.text
        assert body.json() == {**report.to_json(), "dry_run": True}
    port = free_port()
    env = {"TETHER_URL": f"http://127.0.0.1:{port}",
           "TETHER_TOKEN": svc.settings.admin_token_path.read_text().strip(),
           "TETHER_DATA_DIR": str(tmp_path / "cli-data")}  # fmt: skip
    args = ("audit", "prune", "--dry-run", "--retention-days", str(KEEP))
    with served_in_thread(create_app(svc), port):
        table = run_cli(*args, env=env, cwd=tmp_path)
        as_json = run_cli(*args, "--json", env=env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"would prune {OLD} events older than {KEEP} days" in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout) == report.to_json()
    assert _events(svc) == before
    assert _cuts(svc) == []
    assert svc.settings.checkpoint_file_path.read_bytes() == file_before


def test_only_admins_prune(pruned_later: Services) -> None:
    svc = pruned_later
    with admin_client(svc) as client:
        api = Api(client)
        sup, aud = api.user("sue", "supervisor"), api.user("audrey", "auditor")
        before = _events(svc)
        for who in (sup, aud):
            for body in ({"retention_days": KEEP}, {"retention_days": KEEP, "dry_run": True}):
                headers = {"Authorization": f"Bearer {who['token']}"}
                response = client.post("/v1/audit/prune", json=body, headers=headers)
                assert_error(response, 403, "forbidden")
        assert _events(svc) == before
        done = client.post("/v1/audit/prune", json={"retention_days": KEEP})
        assert done.status_code == 200, done.text
        assert done.json()["pruned"] == OLD
        assert done.json()["checkpoint"]["size"] == OLD
    with pytest.raises(Forbidden):
        svc.retention.prune(Principal("user", sup["id"], "sue", Role.SUPERVISOR), dry_run=True)


def test_a_tampered_ledger_is_not_pruned(pruned_later: Services) -> None:
    """Pruning an edited event would destroy the evidence: the prune is refused, the
    failure recorded, nothing deleted."""
    svc = pruned_later
    _sql(svc, "UPDATE audit_events SET details = '{}' WHERE seq = 4")
    before = _events(svc)
    with pytest.raises(LedgerNotVerified):
        svc.retention.prune(SYSTEM, retention_days=KEEP)
    after = _events(svc)
    assert after[: len(before)] == before
    assert [e.type for e in after[len(before) :]] == ["ledger.verification_failed"]
    assert _cuts(svc) == []
    with admin_client(svc) as client:
        refused = client.post("/v1/audit/prune", json={"retention_days": KEEP})
    assert assert_error(refused, 409, "ledger_not_verified")["details"]["first_bad_seq"] == 4


def test_the_export_verifies_offline_across_the_cut(pruned: Services, tmp_path: Path) -> None:
    export = tmp_path / "export.jsonl"
    export.write_bytes(
        b"".join(canonical(e.to_json()) + b"\n" for e in pruned.audit.export(SYSTEM))
    )
    checkpoints = CheckpointFile(pruned.settings.checkpoint_file_path).read().checkpoints
    verifier = LedgerVerifier(pruned.ledger.signer.public_key)
    report = verify_export(export, checkpoints=checkpoints, verifier=verifier)
    assert report.result.ok, report.result.message
    assert report.result.cut is not None
    assert report.result.cut.size == OLD
    # Through the CLI, as an auditor runs it: no server.
    key = tmp_path / "ledger.pub"
    key.write_bytes(verifier.public_pem())
    args = ("audit", "verify", "--file", str(export), "--public-key", str(key), "--checkpoints",
            str(pruned.settings.checkpoint_file_path))  # fmt: skip
    done = run_cli(*args, env={"TETHER_DATA_DIR": str(tmp_path / "x")}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"events 1..{OLD} were pruned" in done.stdout
    # Without the cut's checkpoint the export's start is vouched for by nothing.
    no_cut = [c for c in checkpoints if c.size != OLD]
    missing = verify_export(export, checkpoints=no_cut, verifier=verifier).result
    assert (missing.ok, missing.problem) == (False, Problem.MISSING)
    # The first line after the cut edited: caught, named by its line.
    lines = export.read_text().splitlines()
    first = orjson.loads(lines[0])
    first["details"] = {"name": "forged"}
    export.write_text("\n".join([canonical(first).decode(), *lines[1:]]) + "\n")
    edited = verify_export(export, checkpoints=checkpoints, verifier=verifier)
    assert (edited.result.problem, edited.line) == (Problem.EDITED, 1)
    # A forged cut: signed by another key, or its head changed.
    export.write_text("\n".join(lines) + "\n")
    cut = next(c for c in checkpoints if c.size == OLD)
    forged = [c if c is not cut else type(cut)(cut.size, "3" * 64, cut.time_us, cut.key_id,
                                                cut.signature) for c in checkpoints]  # fmt: skip
    bad = verify_export(export, checkpoints=forged, verifier=verifier).result
    assert not bad.ok
    assert bad.problem in (Problem.EXTERNAL_CHECKPOINT_INVALID, Problem.CUT_INVALID)


def test_a_pruned_decisions_inputs_go_with_it(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock)
    svc.policies.push(SYSTEM, note=None, schema=None, policies=READ_POLICY)
    _agents(svc, 1, "reader")
    agent = _events(svc)[-1].agent_id
    assert agent is not None
    for _ in range(2):
        asyncio.run(svc.decisions.decide(Ask(agent, "resource.read", "Resource", "docs")))
    clock.advance(200 * 86_400)
    asyncio.run(svc.decisions.decide(Ask(agent, "resource.read", "Resource", "docs")))
    with svc.db.read() as s:
        kept_before = s.scalar(select(func.count()).select_from(DecisionInputRow))
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert report.last_seq is not None
    with svc.db.read() as s:
        seqs = list(s.scalars(select(DecisionInputRow.seq)))
    assert kept_before == 3
    assert len(seqs) == 1
    assert all(seq > report.last_seq for seq in seqs)
    assert svc.audit.verify(SYSTEM).ok


def test_the_maintenance_task_prunes_daily_when_configured(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    unset = make_services(clock=clock)
    assert "ledger.retention" not in {t.name for t in unset.maintenance}
    svc = _ledger(make_services, clock, ledger_retention_days=KEEP)
    (task,) = [t for t in svc.maintenance if t.name == "ledger.retention"]
    report = task.run()
    assert report is not None
    assert (report.pruned, report.last_seq) == (OLD, OLD)  # `unset` shares the database
    assert task.run() is None  # looked this hour
    _agents(svc, 2, "later")
    clock.advance(2 * 3600)
    assert task.run() is None  # looked again: the newest cut is not a day old
    clock.advance(KEEP * 86_400)
    later = task.run()
    assert later is not None
    assert later.first_seq == OLD + 1
    assert later.last_seq == OLD + NEW_AGENTS + 1 + 2  # the first prune's event, "later" too
    result = svc.audit.verify(SYSTEM)
    assert result.ok, result.message


def _report_at(client: Any) -> dict[str, Any]:
    """A compliance report over the old events' hour, built now."""
    period = {"from": "2026-01-05T09:00:00Z", "to": "2026-01-05T10:00:00Z"}
    got = client.get("/v1/reports/compliance", params=period)
    assert got.status_code == 200, got.text
    return dict(got.json())


def test_a_report_holds_its_range_until_it_is_older_than_the_retention_period(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, checkpoint_every_events=5, key_rotation_days=1000)
    _agents(svc, OLD_AGENTS, "old")
    clock.advance(100 * 86_400)
    with admin_client(svc) as client:
        envelope = _report_at(client)
        (record,) = client.get("/v1/reports").json()
    assert record["id"] == envelope["binding"]["event"]["id"]
    assert record["held_from_seq"] == envelope["report"]["ledger"]["seq_from"] == 1
    # 200 days on: the old events are past the period, the report (100 days old) is not.
    clock.advance(100 * 86_400)
    held = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert (held.pruned, held.held_by, held.held_from_seq) == (0, "compliance_reports", 1)
    # The report itself older than the period: it holds nothing, its range goes like the rest.
    clock.advance(85 * 86_400)
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert report.held_by is None
    assert report.pruned >= OLD
    assert svc.audit.verify(SYSTEM).ok


def test_an_admin_forgets_a_report_and_its_hold_is_released(
    make_services: Callable[..., Services], clock: FrozenClock
) -> None:
    svc = make_services(clock=clock, checkpoint_every_events=5, key_rotation_days=1000)
    _agents(svc, OLD_AGENTS, "old")
    clock.advance(100 * 86_400)
    with admin_client(svc) as client:
        api = Api(client)
        envelope = _report_at(client)
        report_id = envelope["binding"]["event"]["id"]
        clock.advance(100 * 86_400)
        assert svc.retention.prune(SYSTEM, retention_days=KEEP).held_by == "compliance_reports"
        sup, aud = api.user("sue", "supervisor"), api.user("audrey", "auditor")
        for who in (sup, aud):
            refused = client.delete(f"/v1/reports/{report_id}", headers=bearer(who["token"]))
            assert_error(refused, 403)
        assert_error(client.get("/v1/reports", headers=bearer(sup["token"])), 403)
        listed = client.get("/v1/reports", headers=bearer(aud["token"])).json()
        assert [r["id"] for r in listed] == [report_id]
        before = api.events()
        forgot = client.delete(f"/v1/reports/{report_id}")
        assert forgot.status_code == 200, forgot.text
        (event,) = api.new_events(before)
        assert (event["type"], event["resource"]) == (
            "report.forgotten", {"type": "Report", "id": report_id})  # fmt: skip
        assert event["details"]["held_from_seq"] == 1
        assert event["details"]["sha256"] == envelope["binding"]["sha256"]
        assert client.get("/v1/reports").json() == []
        assert_error(client.delete(f"/v1/reports/{report_id}"), 404, "report_not_found")
    report = svc.retention.prune(SYSTEM, retention_days=KEEP)
    assert report.held_by is None
    assert report.pruned >= OLD
    assert svc.audit.verify(SYSTEM).ok
