"""The CLI against a real server: the README walkthrough as written, --json, clean errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.serverproc import run_cli, running_server

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def server(backend: Backend, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    with running_server(backend, tmp_path) as (_url, server_env):
        path = f"{Path(sys.executable).parent}:{server_env.get('PATH', '')}"
        yield tmp_path, {**server_env, "PATH": path}


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
    lines = (cwd / "audit.jsonl").read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types[:4] == ["system.bootstrapped", "key.created", "user.created", "agent.created"]
    assert "agent.killed" in types
    assert "agent.cloned" in types
    assert "token.issued" in types


def test_json_output_and_clean_errors(server: tuple[Path, dict[str, str]]) -> None:
    cwd, env = server
    made = tether(
        env, cwd, "agents", "create", "--name", "a", "--owner", "admin", "--purpose", "p", "--json"
    )
    assert made.returncode == 0, made.stderr
    agent = json.loads(made.stdout)
    assert agent["status"] == "active"
    listed = json.loads(tether(env, cwd, "agents", "list", "--json").stdout)
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


def test_audit_verify_exits_nonzero_on_tampering(
    server: tuple[Path, dict[str, str]], backend: Backend
) -> None:
    cwd, env = server
    assert tether(env, cwd, "audit", "verify").returncode == 0
    from sqlalchemy import create_engine, text

    args = {"options": f"-csearch_path={backend.schema}"} if backend.schema else {}
    engine = create_engine(backend.url, connect_args=args)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details = :d WHERE seq = 1"), {"d": '{"x":1}'})
    engine.dispose()
    res = tether(env, cwd, "audit", "verify", "--json")
    assert res.returncode == 1
    broken = json.loads(res.stdout)
    assert broken["first_bad_seq"] == 1
    assert broken["head_hash"] is None  # not the genesis hash: a broken chain has no head


def test_audit_verify_reports_a_deleted_checkpoint_file(
    server: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = server
    signed = tether(env, cwd, "audit", "checkpoint", "--json")
    assert signed.returncode == 0, signed.stderr
    ok = tether(env, cwd, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "not yet anchored" in ok.stdout
    Path(env["TETHER_DATA_DIR"], "checkpoints.jsonl").unlink()
    table = tether(env, cwd, "audit", "verify")
    assert table.returncode == 1
    assert table.stdout.startswith("FAILED: external_checkpoints_missing"), table.stdout
    as_json = json.loads(tether(env, cwd, "audit", "verify", "--json").stdout)
    assert (as_json["ok"], as_json["problem"]) == (False, "external_checkpoints_missing")


def test_audit_tail_shows_the_newest_and_follows(server: tuple[Path, dict[str, str]]) -> None:
    cwd, env = server
    for i in range(5):
        assert tether(env, cwd, "users", "create", f"u{i}", "--role", "auditor").returncode == 0
    last3 = tether(env, cwd, "audit", "tail", "-n", "3", "--json")
    assert last3.returncode == 0, last3.stderr
    seqs = [json.loads(line)["seq"] for line in last3.stdout.splitlines()]  # JSON Lines
    assert seqs == [5, 6, 7]  # after system.bootstrapped and key.created

    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "audit",
            "tail",
            "-n",
            "1",
            "-f",
            "--interval",
            "0.2",
            "--json",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as follower:
        seen: list[int] = []
        try:
            assert follower.stdout is not None
            made = False
            deadline = time.monotonic() + 30
            while 9 not in seen and time.monotonic() < deadline:
                line = follower.stdout.readline()
                if line:
                    seen.append(json.loads(line)["seq"])
                    if not made:  # the first event printed: now add two more while it follows
                        for name in ("late1", "late2"):
                            res = tether(env, cwd, "users", "create", name, "--role", "auditor")
                            assert res.returncode == 0
                        made = True
        finally:
            follower.terminate()
    assert seen == [7, 8, 9]


def test_freeze_and_unfreeze_from_the_cli(server: tuple[Path, dict[str, str]]) -> None:
    cwd, env = server
    made = tether(env, cwd, "agents", "create", "--name", "a", "--owner", "admin", "--purpose",
                  "p", "--role", "ops", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    no_reason = tether(env, cwd, "freeze", "--role", "ops")
    assert no_reason.returncode == 1
    assert no_reason.stderr.startswith("error: ")
    assert "--reason" in no_reason.stderr
    bad_role = tether(env, cwd, "freeze", "--reason", "r", "--role", "nobody")
    assert bad_role.returncode == 1
    assert "scope.role" in bad_role.stderr
    assert "Traceback" not in bad_role.stderr
    frozen = tether(env, cwd, "freeze", "--reason", "incident 7", "--role", "ops", "--json")
    assert frozen.returncode == 0, frozen.stderr
    freeze = json.loads(frozen.stdout)
    assert freeze["scope"] == {"role": "ops"}
    shown = tether(env, cwd, "freeze", "--show")
    assert shown.returncode == 0, shown.stderr
    assert freeze["id"] in shown.stdout
    assert "role=ops" in shown.stdout
    lifted = tether(env, cwd, "unfreeze", "--reason", "contained", "--json")
    assert lifted.returncode == 0, lifted.stderr
    assert [f["id"] for f in json.loads(lifted.stdout)] == [freeze["id"]]
    again = tether(env, cwd, "unfreeze")
    assert again.returncode == 0
    assert "nothing matching was frozen" in again.stdout
