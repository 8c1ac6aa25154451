"""What the CLI prints is usable as printed (issue 13, items 1 and 9): a token captured from a
pipe or copied from a narrow terminal is one line and works as a bearer token; tables piped to
a file are never wrapped; `audit tail -f` prints a header once and a line per event; the help
shows flags as flags; `--version` answers.

One SQLite server for the module: nothing here depends on the storage behind the API."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests import forkserver
from tests.conftest import backend_for, bearer
from tests.serverproc import http_client, run_cli, running_server
from tether import __version__

pytestmark = pytest.mark.slow

Server = tuple[Path, dict[str, str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cli-output")
    with backend_for("sqlite", tmp) as backend, running_server(backend, tmp) as (_url, env):
        yield tmp, env


def tether(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout and stderr to pipes, as in ``X=$(tether …)``."""
    cwd, env = server
    return run_cli(*args, env=env, cwd=cwd)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _admin(server: Server) -> httpx.Client:
    """The admin's API client, for set-up the CLI is not under test for."""
    env = server[1]
    token = Path(env["TETHER_DATA_DIR"], "admin.token").read_text().strip()
    return http_client(base_url=env["TETHER_URL"], headers=bearer(token), timeout=30)


def _agent_with_secret(server: Server, name: str) -> tuple[str, str]:
    """An agent and its API key's secret, made through the API (the shell script below makes
    them with the CLI, as printed)."""
    with _admin(server) as admin:
        agent = admin.post("/v1/agents", json={"name": name, "owner": "admin", "purpose": "p",
                                               "risk_tier": "minimal"})  # fmt: skip
        assert agent.status_code == 201, agent.text
        agent_id = str(agent.json()["id"])
        key = admin.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
        assert key.status_code == 201, key.text
    return agent_id, str(key.json()["client_secret"])


def _evaluate(server: Server, agent: str, token: str) -> httpx.Response:
    """An AuthZEN question an agent's own access token may ask: about itself."""
    body = {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "search"},
    }
    with http_client(timeout=30) as http:
        return http.post(
            f"{server[1]['TETHER_URL']}/access/v1/evaluation",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )


def test_a_token_captured_from_a_pipe_is_one_line_and_works(server: Server) -> None:
    agent, secret = _agent_with_secret(server, "piped")
    printed = ok(tether(server, "token", "--client-id", agent, "--client-secret", secret))
    token = printed.rstrip("\n")  # what $(…) keeps
    assert len(token) > 200  # longer than any width Rich wrapped a pipe at (80 or 200)
    assert "\n" not in token, printed
    assert " " not in token
    answer = _evaluate(server, agent, token)
    assert answer.status_code == 200, answer.text
    assert "decision" in answer.json()


def test_a_shell_script_captures_ids_secrets_and_a_working_token(server: Server) -> None:
    cwd, env = server
    script = """
        AGENT=$(tether agents create --name scripted --owner admin --purpose p --json | jq -r .id)
        SECRET=$(tether credentials create "$AGENT" --json | jq -r .client_secret)
        T=$(tether token --client-id "$AGENT" --client-secret "$SECRET")
        curl -fsS "$TETHER_URL/access/v1/evaluation" -H "Authorization: Bearer $T" \\
          -H "Content-Type: application/json" \\
          -d '{"subject": {"type": "agent", "id": "'"$AGENT"'"}, "action": {"name": "tool.call"},
               "resource": {"type": "Tool", "id": "search"}}'
    """
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=forkserver.on_path(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["context"]["decision"] == "deny"  # asked, and answered


def _run_on_a_terminal(server: Server, args: list[str], columns: int) -> str:
    """The CLI's output on a pseudo-terminal ``columns`` wide, as a person would see it."""
    cwd, env = server
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    clean = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        cwd=cwd,
        env={**clean, "TERM": "dumb"},
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=30) == 0, b"".join(chunks)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_a_token_on_a_narrow_terminal_is_not_folded(server: Server) -> None:
    agent, secret = _agent_with_secret(server, "terminal")
    shown = _run_on_a_terminal(
        server, ["token", "--client-id", agent, "--client-secret", secret], columns=60
    )
    (token,) = [line for line in shown.splitlines() if line.strip()]
    assert len(token) > 60  # longer than the terminal: the terminal wraps it, Rich did not
    assert _evaluate(server, agent, token).status_code == 200


def test_a_secret_shown_once_on_a_narrow_terminal_is_on_one_line(server: Server) -> None:
    agent, secret = _agent_with_secret(server, "secret-on-tty")
    shown = _run_on_a_terminal(server, ["credentials", "create", agent], columns=40)
    (line,) = [line for line in shown.splitlines() if line.startswith("client_secret")]
    assert line.split()[-1].startswith("tsk_")
    assert len(line.split()[-1]) == len(secret)


def test_a_piped_table_is_never_wrapped(server: Server) -> None:
    name = "a-very-long-agent-name-" * 8  # 184 characters: with the other columns, over 200
    made = json.loads(ok(tether(server, "agents", "create", "--name", name, "--owner", "admin",
                                "--purpose", "p", "--json")))  # fmt: skip
    listed = ok(tether(server, "agents", "list", "--limit", "0"))
    rows = json.loads(ok(tether(server, "agents", "list", "--limit", "0", "--json")))
    lines = listed.splitlines()
    # Top border, header, rule, a line per agent, bottom border: no line is a continuation.
    assert len(lines) == 4 + len(rows), listed
    (row,) = [line for line in lines if made["id"] in line]
    assert name in row
    assert len({len(line) for line in lines}) == 1  # every line of the frame as wide


def test_audit_tail_follow_prints_a_header_once_then_a_line_per_event(server: Server) -> None:
    cwd, env = server
    with subprocess.Popen(
        [sys.executable, "-m", "tether", "audit", "tail", "-n", "2", "-f", "--interval", "0.2"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as follower:
        assert follower.stdout is not None
        try:
            lines = [follower.stdout.readline() for _ in range(3)]  # the header, 2 events
            with _admin(server) as admin:  # three events while it follows
                for name in ("tail-a", "tail-b", "tail-c"):
                    made = admin.post("/v1/users", json={"username": name, "role": "auditor"})
                    assert made.status_code == 201, made.text
            deadline = time.monotonic() + 30
            while sum("user.created" in line for line in lines[3:]) < 3:
                assert time.monotonic() < deadline, lines
                lines.append(follower.stdout.readline())
        finally:
            follower.terminate()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "TYPE"]
    assert sum(line.startswith("SEQ") for line in lines) == 1
    assert not any(set(line) & set("┏┃┡│└━─") for line in lines), lines
    seqs = [int(line.split()[0]) for line in lines[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one line each, in order
    assert sum("user.created" in line for line in lines[3:]) == 3


def test_audit_tail_json_is_one_object_a_line(server: Server) -> None:
    # Three events of its own, the newest: the server is the module's, maybe just started.
    names = [f"json-{secrets.token_hex(4)}" for _ in range(3)]
    with _admin(server) as admin:
        for name in names:
            made = admin.post("/v1/users", json={"username": name, "role": "auditor"})
            assert made.status_code == 201, made.text
    printed = ok(tether(server, "audit", "tail", "-n", "3", "--json"))
    events = [json.loads(line) for line in printed.splitlines()]
    assert len(events) == 3
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["details"]["username"] for e in events] == names


def test_version_and_flags_shown_as_flags(server: Server) -> None:
    assert ok(tether(server, "--version")).strip() == f"tether {__version__}"
    for command in (["agents", "list"], ["audit", "verify"], ["whoami"]):
        help_text = ok(tether(server, *command, "--help"))
        (json_line,) = [line for line in help_text.splitlines() if "--json" in line]
        assert json_line.split()[:2] == ["--json", "Print"], json_line  # no <bool>, BOOLEAN
