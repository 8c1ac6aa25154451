"""``tether policy …`` and ``tether approvals …``: the local commands (format, test) without a
server; get, push, validate, simulate and approvals against a real one; the README's policy
walkthrough as written. Every failure is clean lines and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx2 as httpx
import pytest

from tests import forkserver
from tests.conftest import BACKENDS, bearer
from tests.serverproc import module_server, run_cli
from tether.cli.client import ApiClient
from tether.cli.policy import load_cases, problem_lines
from tether.policy.cases import Case, agent_view_of, run_case
from tether.policy.decide import DecisionService, cedar_request
from tether.policy.entities import AgentView
from tether.policy.service import check, compile_checked
from tether.policy.values import Ask

README = Path(__file__).resolve().parents[1] / "README.md"
LOCAL_ENV = {"PATH": "/usr/bin:/bin", "TETHER_URL": "http://127.0.0.1:9"}  # no server there

POLICIES = """\
// Support agents may use tools.
@id("support-tools")
permit (principal in Role::"support", action == Action::"tool.call", resource is Tool);

@id("support-writes")
permit (principal in Role::"support", action == Action::"tool.write", resource is Tool)
when { resource has server && resource.server == "crm" };

@id("regional")
permit (principal, action == Action::"dataset.read", resource is Dataset)
when { principal.hasTag("region") && principal.getTag("region") == "eu" && !context.delegated };
"""

BROKEN = """\
@id("ok")
permit (principal, action == Action::"tool.call", resource is Tool);

@id("typo")
permit (principal, action == Action::"tool.call", resource)
when { principal.nope == 1 };

@id("optional")
permit (principal in Role::"x", action == Action::"tool.write", resource is Tool)
when { resource.server == "crm" };
"""

CASES = """\
- name: support may call tools
  subject: {roles: [support]}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: allow
  reasons: [support-tools]
- name: sales may not
  subject: {roles: [sales]}
  action: {name: tool.call}
  resource: {type: Tool, id: search}
  expect: deny
  reasons: []
- name: high-risk crm writes wait for a human
  subject: {id: agt_bot, roles: [support], risk_tier: high}
  action: tool.write
  resource: {type: Tool, id: crm, properties: {server: crm}}
  expect: approval_required
  reasons: [support-writes, tether.high-risk-mutating-needs-approval]
- name: other writes are denied
  subject: {id: agt_bot, roles: [support], risk_tier: minimal}
  action: tool.write
  resource: {type: Tool, id: mail, properties: {server: mail}}
  expect: deny
- name: a suspended agent does nothing
  subject: {roles: [support], status: suspended}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [tether.agent-not-active]
- name: tags are attributes
  subject: {attributes: {region: eu}}
  action: dataset.read
  resource: {type: Dataset, id: sales}
  expect: allow
- name: not when delegated
  subject: {attributes: {region: eu}}
  on_behalf_of: usr_someone
  action: dataset.read
  resource: {type: Dataset, id: sales}
  expect: deny
- name: unknown actions are refused
  subject: {roles: [support]}
  action: tool.fly
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [tether.unknown-action]
"""


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tether(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
    """``tether ARGS`` through the CLI's own entry point (its one error handler included), in
    this process for speed; :func:`tether_process` runs a real one."""
    from tether.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    clients: list[ApiClient] = []  # a process would exit; here their sockets must be closed
    start = ApiClient.__init__

    def tracked(self: ApiClient, *a: Any, **kw: Any) -> None:
        start(self, *a, **kw)
        clients.append(self)

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env if env is not None else LOCAL_ENV)
    try:
        with (
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            mock.patch.object(sys, "argv", ["tether", *args]),
            mock.patch.object(ApiClient, "__init__", tracked),
        ):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for client in clients:
            client.close()
    result = Ran(code, stdout.getvalue(), stderr.getvalue())
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def tether_process(*args: str, cwd: Path, env: dict[str, str]) -> Ran:
    done = run_cli(*args, cwd=cwd, env=env)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr)


# -- local: format and test, no server -------------------------------------------------------


def test_format_check_and_write(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(POLICIES)
    printed = tether("policy", "format", str(path), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert 'permit (\n  principal in Role::"support",' in printed.stdout
    assert path.read_text() == POLICIES  # printing changes nothing

    unformatted = tether("policy", "format", "--check", str(path), cwd=tmp_path)
    assert unformatted.returncode == 1
    assert "not formatted" in unformatted.stderr

    written = tether("policy", "format", "--write", str(path), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert path.read_text() == printed.stdout
    assert "// Support agents may use tools." in path.read_text()  # comments survive
    assert tether("policy", "format", "--check", str(path), cwd=tmp_path).returncode == 0

    path.write_text('@id("a")\npermit (principal, action, resource);\n\n@id("b")\npermit (;\n')
    broken = tether("policy", "format", "--check", str(path), cwd=tmp_path)
    assert broken.returncode == 1
    assert f"{path}:4: [b] syntax error" in broken.stderr
    missing = tether("policy", "format", str(tmp_path / "nope.cedar"), cwd=tmp_path)
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


def test_policy_test_passes_and_fails_locally(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "cases.yaml").write_text(CASES)
    passing = tether("policy", "test", "cases.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "8 passed, 0 failed" in passing.stdout
    assert "FAIL" not in passing.stdout

    as_json = json.loads(
        tether(
            "policy", "test", "cases.yaml", "--policies", "p.cedar", "--json", cwd=tmp_path
        ).stdout
    )
    assert (as_json["passed"], as_json["failed"]) == (8, 0)
    third = as_json["cases"][2]
    assert third["actual"] == "approval_required"
    assert third["reasons"] == ["support-writes", "tether.high-risk-mutating-needs-approval"]

    (tmp_path / "cases.json").write_text(
        json.dumps(
            [
                {
                    "name": "right",
                    "subject": {"roles": ["support"]},
                    "action": "tool.call",
                    "resource": {"type": "Tool", "id": "s"},
                    "expect": "allow",
                },
                {
                    "name": "wrong",
                    "subject": {"roles": ["support"]},
                    "action": "tool.call",
                    "resource": {"type": "Tool", "id": "s"},
                    "expect": "deny",
                },
                {
                    "name": "wrong reasons",
                    "subject": {"roles": ["support"]},
                    "action": "tool.call",
                    "resource": {"type": "Tool", "id": "s"},
                    "expect": "allow",
                    "reasons": ["other"],
                },
                {
                    "name": "bad context",
                    "subject": {"roles": ["support"]},
                    "action": "tool.call",
                    "resource": {"type": "Tool", "id": "s"},
                    "context": {"chain": []},
                    "expect": "allow",
                },
            ]
        )
    )
    failing = tether("policy", "test", "cases.json", "--policies", "p.cedar", cwd=tmp_path)
    assert failing.returncode == 1
    assert "1 passed, 3 failed" in failing.stdout
    assert re.search(r"FAIL\s+│ wrong\s+│ deny\s+│ allow \(support-tools\)", failing.stdout)
    assert "context.chain is set by Tether" in failing.stdout


def test_policy_test_reports_bad_input_cleanly(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "broken.cedar").write_text(BROKEN)
    (tmp_path / "cases.yaml").write_text(CASES)
    bad_policies = tether(
        "policy", "test", "cases.yaml", "--policies", "broken.cedar", cwd=tmp_path
    )
    assert bad_policies.returncode == 1
    lines = bad_policies.stderr.splitlines()
    assert any(line.startswith("broken.cedar:4: [typo] ") for line in lines), lines
    assert any(line.startswith("broken.cedar:8: [optional] ") for line in lines), lines

    for text, needle in [
        (
            "- name: x\n  subject: {roles: []}\n  action: tool.call\n"
            "  resource: {type: Tool, id: s}\n  expected: allow\n",
            "case 1 (x): expect",
        ),
        (
            "- name: x\n  subject: {roles: []}\n  action: tool.call\n"
            "  resource: {type: Tool, id: s}\n  expect: maybe\n",
            "case 1 (x): expect",
        ),
        (
            "- name: x\n  subject: {rolez: []}\n  action: tool.call\n"
            "  resource: {type: Tool, id: s}\n  expect: allow\n",
            "subject.rolez",
        ),
        ("[1, 2", "not valid YAML"),
        ("{}", "non-empty list of cases"),
    ]:
        (tmp_path / "c.yaml").write_text(text)
        res = tether("policy", "test", "c.yaml", "--policies", "p.cedar", cwd=tmp_path)
        assert res.returncode == 1, text
        assert needle in res.stderr, (needle, res.stderr)
        assert len(res.stderr.strip().splitlines()) <= 2, res.stderr

    # A case naming an agent by id needs the server; without one, one clean line.
    (tmp_path / "c.yaml").write_text(
        "- name: x\n  subject: agt_x\n  action: tool.call\n"
        "  resource: {type: Tool, id: s}\n  expect: allow\n"
    )
    down = tether("policy", "test", "c.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert down.returncode == 1
    assert "cannot reach Tether" in down.stderr


def test_policy_test_fails_closed_like_the_server(tmp_path: Path) -> None:
    """A forbid Cedar cannot evaluate (an ill-typed property) denies, as on the server."""
    (tmp_path / "p.cedar").write_text(
        '@id("tools")\npermit (principal, action == Action::"tool.call", resource is Tool);\n'
        '@id("no-prod")\nforbid (principal, action, resource is Tool)\n'
        'when { resource has server && resource.server like "prod*" };\n'
    )
    (tmp_path / "c.yaml").write_text(
        "- name: ill-typed\n  subject: {}\n  action: tool.call\n"
        "  resource: {type: Tool, id: x, properties: {server: 5}}\n"
        "  expect: deny\n  reasons: [no-prod]\n"
        "- name: fine\n  subject: {}\n  action: tool.call\n"
        "  resource: {type: Tool, id: x, properties: {server: dev}}\n  expect: allow\n"
    )
    res = tether("policy", "test", "c.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed, 0 failed" in res.stdout


def test_local_requests_are_the_servers_requests() -> None:
    """``policy test`` builds Cedar requests as the decision service does from its snapshot."""

    @dataclass
    class Snapshot:
        agents: dict[str, AgentView]

    bot = agent_view_of(
        {
            "id": "agt_a",
            "owner": "usr_o",
            "purpose": "p",
            "risk_tier": "high",
            "status": "active",
            "roles": ["r1", "r2"],
            "attributes": {"n": 3},
        }
    )
    other = agent_view_of(
        {
            "id": "agt_b",
            "owner": "usr_o",
            "purpose": "p",
            "risk_tier": "minimal",
            "status": "suspended",
            "roles": [],
        }
    )
    agents = {"agt_a": bot, "agt_b": other}
    service = DecisionService(Snapshot(agents), None, None, None)  # type: ignore[arg-type]
    asks = [
        Ask("agt_a", "tool.call", "Tool", "t", {"server": "x"}, {"k": [1, "2"]}),
        Ask("agt_a", "agent.manage", "Agent", "agt_b"),
        Ask("agt_a", "agent.manage", "Agent", "agt_missing", {"p": True}),
        Ask("agt_a", "tool.call", "Tool", "t", {}, {}, ("usr_1", "agt_a"), "usr_1"),
    ]
    for ask in asks:
        assert cedar_request(ask, agents) == service.cedar_request(ask)


def test_cases_decide_like_the_engine() -> None:
    compiled = compile_checked("t", check(POLICIES))
    cases = [
        Case.model_validate(c)
        for c in [
            {
                "name": "a",
                "subject": {"roles": ["support"]},
                "action": "tool.call",
                "resource": {"type": "Tool", "id": "x"},
                "expect": "allow",
            },
        ]
    ]
    agents = {"agt_policy_test": agent_view_of(cases[0].subject.model_dump())}  # type: ignore[union-attr]
    assert run_case(cases[0], compiled, agents)["passed"]
    assert problem_lines(
        [
            {"policy": "p", "line": 3, "message": "m"},
            {"policy": None, "line": None, "message": "schema: bad"},
        ],
        "a.cedar",
        "s.cedarschema",
    ) == ["a.cedar:3: [p] m", "s.cedarschema: schema: bad"]


def test_a_case_cedar_cannot_read_is_an_error_not_a_traceback() -> None:
    compiled = compile_checked("t", check(POLICIES))
    bad_ip = {"__extn": {"fn": "ip", "arg": "not an address"}}
    case = Case.model_validate({
        "name": "bad ip", "subject": {"roles": ["support"]}, "action": "tool.call",
        "resource": {"type": "Tool", "id": "x"}, "context": {"ip": bad_ip}, "expect": "allow",
    })  # fmt: skip
    agents = {"agt_policy_test": agent_view_of(case.subject.model_dump())}  # type: ignore[union-attr]
    got = run_case(case, compiled, agents)
    assert (got["actual"], got["passed"]) == ("error", False)
    assert "context" in got["error"]


def test_load_cases_accepts_a_cases_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cases.yml"
    path.write_text("cases:\n" + "\n".join("  " + line for line in CASES.splitlines()) + "\n")
    assert [c.name for c in load_cases(path)][:2] == ["support may call tools", "sales may not"]


# -- against a server ------------------------------------------------------------------------


@dataclass
class Server:
    cwd: Path
    env: dict[str, str]
    admin: httpx.Client

    def run(self, *args: str) -> Ran:
        return tether(*args, cwd=self.cwd, env=self.env)

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def agent(self, name: str, **fields: Any) -> str:
        body = {"name": name, "owner": "admin", "purpose": "cli tests", "risk_tier": "minimal"}
        body |= fields
        made = self.admin.post("/v1/agents", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def ask(self, agent: str, action: str, resource: str, **properties: Any) -> dict[str, Any]:
        res = self.admin.post(
            "/access/v1/evaluation",
            json={
                "subject": {"type": "agent", "id": agent},
                "action": {"name": action},
                "resource": {"type": "Tool", "id": resource, "properties": properties},
            },
        )
        assert res.status_code == 200, res.text
        return dict(res.json())


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with (
        module_server(request, tmp_path_factory, "cli-policy") as (tmp, url, env, token, _backend),
        httpx.Client(base_url=url, headers=bearer(token), timeout=30) as admin,
    ):
        yield Server(tmp, env, admin)


@pytest.mark.slow
def test_push_get_validate_and_versions(server: Server) -> None:
    cwd = server.cwd
    (cwd / "p.cedar").write_text(POLICIES)
    (cwd / "broken.cedar").write_text(BROKEN)
    before = server.admin.get("/v1/policies").json()["version"]

    rejected = tether_process("policy", "push", "broken.cedar", cwd=cwd, env=server.env)
    assert rejected.returncode == 1
    lines = rejected.stderr.strip().splitlines()
    assert lines[0].startswith("broken.cedar:4: [typo] ")
    assert "`nope`" in lines[0]
    assert any(line.startswith("broken.cedar:8: [optional] ") for line in lines)
    assert "policy_invalid" in lines[-1]
    assert server.admin.get("/v1/policies").json()["version"] == before  # nothing changed

    invalid = server.run("policy", "validate", "broken.cedar")
    assert invalid.returncode == 1
    assert invalid.stderr.splitlines()[: len(lines) - 1] == lines[:-1]
    no_id = cwd / "no-id.cedar"
    no_id.write_text("permit (principal, action, resource);\n")
    unnamed = server.run("policy", "validate", str(no_id))
    assert unnamed.returncode == 1
    assert f"{no_id}:1: every policy needs an @id" in unnamed.stderr
    bad_schema = cwd / "bad.cedarschema"
    bad_schema.write_text("entity {")
    schema_err = server.run("policy", "validate", "p.cedar", "--schema", str(bad_schema))
    assert schema_err.returncode == 1
    assert f"{bad_schema}: schema" in schema_err.stderr

    assert "valid: 3 policies (support-tools, support-writes, regional)" in server.ok(
        "policy", "validate", "p.cedar"
    )
    pushed = server.ok("policy", "push", "p.cedar", "--note", "from the cli")
    version = re.search(r"pushed (v\d+): 3 policies", pushed)
    assert version, pushed
    assert server.ok("policy", "get") == POLICIES
    assert "entity Agent in [Role]" in server.ok("policy", "get", "--schema")
    assert '@id("tether.active-only")' in server.ok("policy", "get", "--base")
    doc = json.loads(server.ok("policy", "get", "--json"))
    assert (doc["version"], doc["note"]) == (version.group(1), "from the cli")
    assert json.loads(server.ok("policy", "get", "--version", "v0", "--json"))["policies"] == ""
    server.ok("policy", "get", "--output", "copy.cedar")
    assert (cwd / "copy.cedar").read_text() == POLICIES
    listed = json.loads(server.ok("policy", "versions", "--json"))
    assert listed[0]["version"] == version.group(1)
    assert listed[-1]["version"] == "v0"
    missing = server.run("policy", "get", "--version", "v999")
    assert missing.returncode == 1
    assert "policy_version_not_found" in missing.stderr

    # Without --policies, policy test checks the server's current version and fetches agents.
    bot = server.agent("tested", risk_tier="high", roles=["support"])
    (cwd / "server-cases.yaml").write_text(
        f"- name: the real agent\n  subject: {bot}\n  action: tool.write\n"
        "  resource: {type: Tool, id: crm, properties: {server: crm}}\n"
        "  expect: approval_required\n"
    )
    tested = server.ok("policy", "test", "server-cases.yaml")
    assert f"Policy tests ({version.group(1)})" in tested
    assert "1 passed, 0 failed" in tested


@pytest.mark.slow
def test_simulate_shows_what_would_change(server: Server) -> None:
    (server.cwd / "p.cedar").write_text(POLICIES)
    server.ok("policy", "push", "p.cedar")
    agent = server.agent("simulated", roles=["support"])
    assert server.ask(agent, "tool.call", "search")["decision"] is True
    (server.cwd / "narrow.cedar").write_text(
        '@id("nothing")\nforbid (principal, action, resource is Tool);\n'
    )
    shown = server.ok("policy", "simulate", "narrow.cedar", "--since", "1h")
    assert "Decisions that would change" in shown
    assert agent in shown
    assert "support-tools" in shown
    result = json.loads(server.ok("policy", "simulate", "narrow.cedar", "--json"))
    change = next(c for c in result["changes"] if c["agent"] == agent)
    assert change["before"]["decision"] == "allow"
    assert change["after"] == {"decision": "deny", "reasons": ["nothing"]}
    assert {"agent": agent, "changed": 1} in result["by_agent"]
    assert server.run("policy", "simulate", "narrow.cedar", "--fail-on-change").returncode == 1
    empty = server.ok(
        "policy",
        "simulate",
        "p.cedar",
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2000-01-02T00:00:00Z",
    )
    assert "0 decisions replayed" in empty
    bad = server.run("policy", "simulate", "p.cedar", "--since", "yesterday")
    assert bad.returncode == 1
    assert "since" in bad.stderr


@pytest.mark.slow
def test_approvals_list_show_approve_deny(server: Server) -> None:
    (server.cwd / "p.cedar").write_text(POLICIES)
    server.ok("policy", "push", "p.cedar")
    agent = server.agent("risky", risk_tier="high", roles=["support"])
    first = server.ask(agent, "tool.write", "crm", server="crm")["context"]
    second = server.ask(agent, "tool.write", "crm-2", server="crm")["context"]
    assert first["decision"] == second["decision"] == "approval_required"

    table = server.ok("approvals", "list", "--agent", agent)
    assert first["approval_id"] in table
    assert "Tool::crm" in table
    listed = json.loads(server.ok("approvals", "list", "--agent", agent, "--json"))
    assert {a["id"] for a in listed} == {first["approval_id"], second["approval_id"]}
    assert all(a["status"] == "pending" for a in listed)

    shown = json.loads(server.ok("approvals", "show", first["approval_id"], "--json"))
    assert shown["request"]["resource"]["properties"] == {"server": "crm"}
    waited = server.run("approvals", "show", first["approval_id"], "--wait", "0.5")
    assert waited.returncode == 0
    assert "pending" in waited.stdout

    approved = server.ok("approvals", "approve", first["approval_id"], "--note", "ok")
    assert f"approved {first['approval_id']}" in approved
    denied = json.loads(server.ok("approvals", "deny", second["approval_id"], "--json"))
    assert denied["status"] == "denied"
    assert server.ask(agent, "tool.write", "crm", server="crm")["decision"] is True

    used = json.loads(server.ok("approvals", "list", "--agent", agent, "--status", "all", "--json"))
    assert {a["id"]: a["status"] for a in used} == {
        first["approval_id"]: "used",
        second["approval_id"]: "denied",
    }
    assert json.loads(server.ok("approvals", "list", "--agent", agent, "--json")) == []
    for args, needle in [
        (("approvals", "approve", second["approval_id"]), "approval_not_pending"),
        (("approvals", "show", "apr_missing"), "approval_not_found"),
        (("approvals", "list", "--status", "bogus"), "status"),
        (("approvals", "deny", first["approval_id"], "--note", " "), "--note"),
    ]:
        res = server.run(*args)
        assert res.returncode == 1, args
        assert needle in res.stderr, (args, res.stderr)


@pytest.mark.slow
def test_readme_policy_walkthrough_runs_as_written(server: Server, tmp_path: Path) -> None:
    """On the module's server, in a directory of its own: the walkthrough pushes its policies
    and asks about the agent it creates (a deployment in use, as a reader's would be)."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    walkthrough = next(b for b in blocks if "tether policy push" in b)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough],
        cwd=tmp_path,
        env=forkserver.on_path(server.env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 0 failed" in result.stdout
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [a["context"]["decision"] for a in answers] == ["approval_required", "allow"]
