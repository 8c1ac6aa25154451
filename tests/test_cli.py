"""The CLI against a real server: the README walkthrough as written, --json, clean errors.

The README walkthrough gets a server of its own: it runs as written on a fresh deployment and
reads the ledger's first events back. The other tests share one server per backend (per xdist
worker): each creates what it uses under names of its own, asserts only on what it created,
and puts back what it breaks (a tampered event, a removed checkpoint file)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, text

from tests import forkserver
from tests.conftest import BACKENDS, Backend, bearer
from tests.serverproc import module_server, run_cli, running_server

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def _with_python_on_path(server_env: dict[str, str]) -> dict[str, str]:
    return forkserver.on_path(server_env)


@pytest.fixture
def server(backend: Backend, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh deployment of this test's own."""
    with running_server(backend, tmp_path) as (_url, server_env):
        yield tmp_path, _with_python_on_path(server_env)


@dataclass
class Shared:
    cwd: Path
    env: dict[str, str]
    backend: Backend
    api: httpx.Client  # the admin's, for set-up the CLI is not under test for

    def post(self, path: str, **body: object) -> dict[str, object]:
        made = self.api.post(path, json=body)
        assert made.status_code == 201, made.text
        return dict(made.json())


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    """One server per backend for the tests that leave it as they found it."""
    with (
        module_server(request, tmp_path_factory, "cli") as (tmp, url, env, token, backend),
        httpx.Client(base_url=url, headers=bearer(token), timeout=30) as api,
    ):
        yield Shared(tmp, _with_python_on_path(env), backend, api)


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def tether(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


def test_readme_walkthrough_runs_as_written(server: tuple[Path, dict[str, str]]) -> None:
    cwd, env = server
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    walkthrough = next(b for b in blocks if "tether whoami" in b)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The token captured with T=$(tether token …) was accepted (curl -f fails on a 4xx).
    answers = [line for line in result.stdout.splitlines() if line.startswith('{"decision"')]
    assert len(answers) == 1, result.stdout
    assert json.loads(answers[0])["context"]["decision"] in ("allow", "deny")
    assert "ok:" in result.stdout  # tether audit verify
    assert "suspended" in result.stdout  # the fingerprint change suspended the agent
    # the kill says what a rollback could undo (nothing: this agent made no tool call)
    assert "made no reversible call in the last 24 h" in result.stdout
    lines = (cwd / "audit.jsonl").read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types[:4] == ["system.bootstrapped", "key.created", "user.created", "agent.created"]
    assert "agent.killed" in types
    assert "agent.cloned" in types
    assert "token.issued" in types


def test_json_output_and_clean_errors(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    role = _unique("json")  # this test's agent is the only one with it
    made = tether(env, cwd, "agents", "create", "--name", "a", "--owner", "admin", "--purpose",
                  "p", "--role", role, "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    agent = json.loads(made.stdout)
    assert agent["status"] == "active"
    listed = json.loads(tether(env, cwd, "agents", "list", "--role", role, "--json").stdout)
    assert [a["id"] for a in listed] == [agent["id"]]

    for args, needle in [
        (("agents", "show", "agt_missing"), "agent_not_found"),
        (("agents", "create", "--name", "b", "--owner", "nobody", "--purpose", "p"), "owner"),
        (
            (
                "agents",
                "create",
                "--name",
                "b",
                "--owner",
                "admin",
                "--purpose",
                "p",
                "--risk-tier",
                "prohibited",
            ),
            "risk_tier_prohibited",
        ),
        (("agents", "kill", agent["id"], "--reason", "r"), "--yes"),
        (("agents", "update", agent["id"]), "nothing to change"),
        (
            (
                "agents",
                "create",
                "--name",
                "b",
                "--owner",
                "admin",
                "--purpose",
                "p",
                "--attr",
                "novalue",
            ),
            "key=value",
        ),
    ]:
        res = tether(env, cwd, *args)
        assert res.returncode != 0, args
        assert needle in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout
        assert len(res.stderr.strip().splitlines()) <= 2, res.stderr

    bad_token = tether({**env, "TETHER_TOKEN": "tth_wrong"}, cwd, "agents", "list")
    assert bad_token.returncode == 1
    assert "unauthenticated" in bad_token.stderr
    down = tether({**env, "TETHER_URL": "http://127.0.0.1:9"}, cwd, "agents", "list")
    assert down.returncode == 1
    assert "cannot reach Tether" in down.stderr
    assert "Traceback" not in down.stderr


def test_audit_verify_exits_nonzero_on_tampering(shared: Shared) -> None:
    cwd, env, backend = shared.cwd, shared.env, shared.backend
    assert tether(env, cwd, "audit", "verify").returncode == 0
    args = {"options": f"-csearch_path={backend.schema}"} if backend.schema else {}
    engine = create_engine(backend.url, connect_args=args)
    details = text("SELECT details FROM audit_events WHERE seq = 1")
    edit = text("UPDATE audit_events SET details = :d WHERE seq = 1")
    try:
        with engine.begin() as conn:
            original = conn.execute(details).scalar_one()
            conn.execute(edit, {"d": '{"x":1}'})
        try:
            res = tether(env, cwd, "audit", "verify", "--json")
        finally:  # the shared ledger whole again for the other tests
            with engine.begin() as conn:
                conn.execute(edit, {"d": original})
    finally:
        engine.dispose()
    assert res.returncode == 1
    broken = json.loads(res.stdout)
    assert broken["first_bad_seq"] == 1
    assert broken["head_hash"] is None  # not the genesis hash: a broken chain has no head
    assert tether(env, cwd, "audit", "verify").returncode == 0  # the event put back


def test_audit_verify_reports_a_deleted_checkpoint_file(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    signed = tether(env, cwd, "audit", "checkpoint", "--json")
    assert signed.returncode == 0, signed.stderr
    ok = tether(env, cwd, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "not yet anchored" in ok.stdout
    checkpoints = Path(env["TETHER_DATA_DIR"], "checkpoints.jsonl")
    kept = checkpoints.read_bytes()
    checkpoints.unlink()
    try:
        table = tether(env, cwd, "audit", "verify")
        as_json = json.loads(tether(env, cwd, "audit", "verify", "--json").stdout)
    finally:  # the shared deployment's file back for the other tests
        checkpoints.write_bytes(kept)
    assert table.returncode == 1
    assert table.stdout.startswith("FAILED: external_checkpoints_missing"), table.stdout
    assert (as_json["ok"], as_json["problem"]) == (False, "external_checkpoints_missing")


def test_audit_tail_shows_the_newest_and_follows(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    names = [_unique("u") for _ in range(3)]
    for name in names:  # the newest events: three after the others (bootstrap's at least)
        shared.post("/v1/users", username=name, role="auditor")
    last3 = tether(env, cwd, "audit", "tail", "-n", "3", "--json")
    assert last3.returncode == 0, last3.stderr
    events = [json.loads(line) for line in last3.stdout.splitlines()]  # JSON Lines
    assert [e["details"]["username"] for e in events] == names
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert seqs[0] > 2  # after system.bootstrapped and key.created

    with subprocess.Popen(
        [sys.executable, "-m", "tether", "audit", "tail", "-n", "1", "-f", "--interval", "0.2",
         "--json"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as follower:  # fmt: skip
        seen: list[int] = []
        last = seqs[-1] + 2
        try:
            assert follower.stdout is not None
            made = False
            deadline = time.monotonic() + 30
            while last not in seen and time.monotonic() < deadline:
                line = follower.stdout.readline()
                if line:
                    seen.append(json.loads(line)["seq"])
                    if not made:  # the first event printed: now add two more while it follows
                        for name in ("late1", "late2"):
                            shared.post("/v1/users", username=_unique(name), role="auditor")
                        made = True
        finally:
            follower.terminate()
    assert seen == [seqs[-1], seqs[-1] + 1, last]


def test_freeze_and_unfreeze_from_the_cli(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    role = _unique("ops")  # this test's agent is the only one the freeze stops
    shared.post("/v1/agents", name="a", owner="admin", purpose="p", risk_tier="minimal",
                roles=[role])  # fmt: skip
    no_reason = tether(env, cwd, "freeze", "--role", role)
    assert no_reason.returncode == 1
    assert no_reason.stderr.startswith("error: ")
    assert "--reason" in no_reason.stderr
    bad_role = tether(env, cwd, "freeze", "--reason", "r", "--role", "nobody")
    assert bad_role.returncode == 1
    assert "scope.role" in bad_role.stderr
    assert "Traceback" not in bad_role.stderr
    frozen = tether(env, cwd, "freeze", "--reason", "incident 7", "--role", role, "--json")
    assert frozen.returncode == 0, frozen.stderr
    freeze = json.loads(frozen.stdout)
    assert freeze["scope"] == {"role": role}
    shown = tether(env, cwd, "freeze", "--show")
    assert shown.returncode == 0, shown.stderr
    assert freeze["id"] in shown.stdout
    assert f"role={role}" in shown.stdout
    lifted = tether(env, cwd, "unfreeze", "--reason", "contained", "--json")
    assert lifted.returncode == 0, lifted.stderr
    assert [f["id"] for f in json.loads(lifted.stdout)] == [freeze["id"]]
    again = tether(env, cwd, "unfreeze")
    assert again.returncode == 0
    assert "nothing matching was frozen" in again.stdout


def test_set_password_generates_one_that_signs_in_to_the_console(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    name = _unique("pw")
    made = shared.api.post("/v1/users", json={"username": name, "role": "auditor"})
    assert made.status_code == 201, made.text
    empty = tether(env, cwd, "users", "set-password", name)  # stdin is empty, not a terminal
    assert empty.returncode != 0
    assert "password" in empty.stderr
    assert "Traceback" not in empty.stderr
    generated = tether(env, cwd, "users", "set-password", name, "--generate")
    assert generated.returncode == 0, generated.stderr
    password = generated.stdout.strip()
    assert len(password) >= 20
    with httpx.Client(base_url=str(shared.api.base_url), follow_redirects=False) as browser:
        page = browser.get("/console/sign-in")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        signed = browser.post("/console/sign-in", data={
            "csrf": token.group(1), "username": name, "password": password})  # fmt: skip
        assert signed.status_code == 303, signed.text
        assert browser.get("/console").status_code == 200


def test_alerts_list_ack_and_tail_for_people_and_scripts(shared: Shared) -> None:
    cwd, env = shared.cwd, shared.env
    made = shared.post(
        "/v1/agents", name=_unique("alerted"), owner="admin", purpose="p", risk_tier="minimal"
    )
    agent = str(made["id"])
    suspended = shared.api.post(f"/v1/agents/{agent}/suspend", json={"reason": "cli alerts"})
    assert suspended.status_code == 200, suspended.text
    deadline = time.monotonic() + 15  # the server's own loop raises it
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline and not found:
        listed = tether(env, cwd, "alerts", "list", "--agent", agent, "--json")
        assert listed.returncode == 0, listed.stderr
        found = json.loads(listed.stdout)
        time.sleep(0.2)
    assert [a["kind"] for a in found] == ["agent.suspended"]
    table_out = tether(env, cwd, "alerts", "list", "--agent", agent)
    assert "agent.suspended" in table_out.stdout
    acked = tether(env, cwd, "alerts", "ack", str(found[0]["id"]), "--note", "seen")
    assert acked.returncode == 0, acked.stderr
    assert f"acknowledged {found[0]['id']}" in acked.stdout
    still_open = tether(env, cwd, "alerts", "list", "--agent", agent, "--json")
    assert json.loads(still_open.stdout) == []
    tail = tether(env, cwd, "alerts", "tail", "--json")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert any(line["id"] == found[0]["id"] and line["acked_by"] for line in lines)
    missing = tether(env, cwd, "alerts", "ack", "alr_nope")
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
