"""``tether policy test`` cases that state what monitoring gives Cedar on the server: the
session's history (``session`` → ``context.session``) and an inline agent's risk (``risk`` →
``principal.risk``); their defaults; bad values refused by the loader, naming the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_cli_policy import README, tether
from tether.cli.client import CliError
from tether.cli.policy import load_cases
from tether.policy.cases import Case, agent_view_of, run_case
from tether.policy.service import check, compile_checked

POLICIES = """\
@id("tools")
permit (principal, action == Action::"tool.call", resource is Tool);

@id("no-pii-egress")
forbid (principal, action == Action::"tool.call", resource)
when { context.session.labels.contains("pii") && resource has egress && resource.egress };

@id("no-shell-after-export")
forbid (principal, action == Action::"tool.call", resource == Tool::"shell")
when { context.session.tools.contains("export") };

@id("blocked-session")
forbid (principal, action, resource) when { context.session.id == "usr_blocked" };

@id("risky")
forbid (principal, action, resource) when { principal.risk.score >= 70 };

@id("critical")
forbid (principal, action, resource) when { principal.risk.level == "critical" };
"""

CASES = """\
- name: egress after pii is denied
  subject: {}
  session: {labels: [pii, public], tools: [crm-lookup]}
  action: tool.call
  resource: {type: Tool, id: webhook, properties: {egress: true}}
  expect: deny
  reasons: [no-pii-egress]
- name: egress without a session history is allowed
  subject: {}
  action: tool.call
  resource: {type: Tool, id: webhook, properties: {egress: true}}
  expect: allow
  reasons: [tools]
- name: egress after other labels is allowed
  subject: {}
  session: {labels: [public]}
  action: tool.call
  resource: {type: Tool, id: webhook, properties: {egress: true}}
  expect: allow
- name: pii with a tool that does not egress is allowed
  subject: {}
  session: {labels: [pii]}
  action: tool.call
  resource: {type: Tool, id: search, properties: {egress: false}}
  expect: allow
- name: tools the session called
  subject: {}
  session: {tools: [export]}
  action: tool.call
  resource: {type: Tool, id: shell}
  expect: deny
  reasons: [no-shell-after-export]
- name: the session id defaults to the chain's root
  subject: {}
  on_behalf_of: usr_blocked
  session: {labels: []}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [blocked-session]
- name: as it does without a session
  subject: {}
  on_behalf_of: usr_blocked
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [blocked-session]
- name: a stated session id is used
  subject: {}
  on_behalf_of: usr_blocked
  session: {id: sess-1}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: allow
- name: a high score is denied
  subject: {risk: {score: 70, level: high}}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [risky]
- name: just below is allowed
  subject: {risk: {score: 69, level: elevated}}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: allow
- name: the level is the stated one
  subject: {risk: {score: 1, level: critical}}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [critical]
- name: the score alone, level low
  subject: {risk: {score: 90}}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: deny
  reasons: [risky]
- name: no risk is 0 and low
  subject: {}
  action: tool.call
  resource: {type: Tool, id: search}
  expect: allow
"""


def test_session_and_risk_decide_cases(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "cases.yaml").write_text(CASES)
    res = tether("policy", "test", "cases.yaml", "--policies", "p.cedar", "--json", cwd=tmp_path)
    got = json.loads(res.stdout)
    failed = [c for c in got["cases"] if not c["passed"]]
    assert (res.returncode, failed) == (0, []), res.stderr
    assert got["passed"] == CASES.count("- name:")


def test_the_same_case_without_its_history_fails(tmp_path: Path) -> None:
    """Stating the session changes the decision: the pii case without it is allowed."""
    (tmp_path / "p.cedar").write_text(POLICIES)
    first = CASES.split("- name: egress without", 1)[0].replace(
        "  session: {labels: [pii, public], tools: [crm-lookup]}\n", ""
    )
    (tmp_path / "c.yaml").write_text(first)
    res = tether("policy", "test", "c.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert res.returncode == 1
    assert "0 passed, 1 failed" in res.stdout
    assert re.search(r"FAIL\s+│ egress after pii is denied\s+│ deny", res.stdout)


def test_run_case_passes_session_and_risk_to_cedar() -> None:
    compiled = compile_checked("t", check(POLICIES))

    def decide(**fields: object) -> tuple[str, list[str]]:
        case = Case.model_validate({
            "name": "x", "action": "tool.call", "expect": "allow",
            "resource": {"type": "Tool", "id": "w", "properties": {"egress": True}}, **fields,
        })  # fmt: skip
        assert not isinstance(case.subject, str)
        got = run_case(case, compiled, {case.subject.id: agent_view_of(case.subject.model_dump())})
        assert got["error"] is None, got
        return got["actual"], got["reasons"]

    assert decide(subject={}, session={"labels": ["pii"]}) == ("deny", ["no-pii-egress"])
    assert decide(subject={}, session={}) == ("allow", ["tools"])
    assert decide(subject={"risk": {"score": 75, "level": "high"}}) == ("deny", ["risky"])
    both = decide(subject={"risk": {"score": 75, "level": "high"}}, session={"labels": ["pii"]})
    assert both[0] == "deny"
    assert sorted(both[1]) == ["no-pii-egress", "risky"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("session: pii", "case 1 (x): session: "),
        ("session: {labels: pii}", "case 1 (x): session.labels: "),
        ("session: {labels: [1]}", "case 1 (x): session.labels.0: "),
        ("session: {tools: {a: 1}}", "case 1 (x): session.tools: "),
        ("session: {id: 5}", "case 1 (x): session.id: "),
        ("session: {label: [pii]}", "case 1 (x): session.label: "),
        ("subject: {risk: 70}", "case 1 (x): subject.risk: "),
        ("subject: {risk: {score: high}}", "case 1 (x): subject.risk.score: "),
        ("subject: {risk: {score: true}}", "case 1 (x): subject.risk.score: "),
        ("subject: {risk: {score: 1.5}}", "case 1 (x): subject.risk.score: "),
        ("subject: {risk: {score: 99999999999999999999}}", "case 1 (x): subject.risk.score: "),
        ("subject: {risk: {score: 1, level: 3}}", "case 1 (x): subject.risk.level: "),
        ("subject: {risk: {score: 1, level: High}}", "case 1 (x): subject.risk.level: "),
        ("subject: {risk: {scor: 1}}", "case 1 (x): subject.risk.scor: "),
    ],
)
def test_bad_session_or_risk_is_refused_naming_the_field(
    tmp_path: Path, line: str, needle: str
) -> None:
    subject = "" if line.startswith("subject") else "  subject: {}\n"
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "c.yaml").write_text(
        f"- name: x\n{subject}  {line}\n  action: tool.call\n"
        "  resource: {type: Tool, id: s}\n  expect: allow\n"
    )
    with pytest.raises(CliError, match=re.escape(needle)):
        load_cases(tmp_path / "c.yaml")
    res = tether("policy", "test", "c.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert res.returncode == 1
    assert needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_session_in_the_context_points_at_the_session_field(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "c.yaml").write_text(
        "- name: x\n  subject: {}\n  action: tool.call\n  resource: {type: Tool, id: s}\n"
        "  context: {session: {id: s, labels: [pii], tools: []}}\n  expect: allow\n"
    )
    res = tether("policy", "test", "c.yaml", "--policies", "p.cedar", "--json", cwd=tmp_path)
    assert res.returncode == 1
    (case,) = json.loads(res.stdout)["cases"]
    assert case["actual"] == "error"
    assert "context.session is set by Tether" in case["error"]
    assert "`session`" in case["error"]


def test_readme_session_and_risk_cases_run_as_written(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("**Policy tests**") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    (tmp_path / "cases.yaml").write_text(block.group(1))
    (tmp_path / "p.cedar").write_text(POLICIES)
    res = tether("policy", "test", "cases.yaml", "--policies", "p.cedar", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed, 0 failed" in res.stdout
