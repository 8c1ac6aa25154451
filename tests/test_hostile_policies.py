"""Hostile Cedar input (issue 10, item 1): nothing a client sends may crash the server.

Cedar's parser and evaluator recurse once per level of an expression; a policy nested ~700
levels deep overflowed the stack and killed the whole process (SIGSEGV) — a one-request
denial of service open to any signed-in user, an auditor included, through
``POST /v1/policies/validate``. :mod:`tether.policy.limits` now refuses such text before
Cedar sees it. These tests send every shape the review named, at 100, 1,000 and 100,000
levels, to a real ``tether serve`` process on SQLite and on PostgreSQL — through validate
(as an auditor), push, simulate and decisions — and to the CLI's ``policy test`` and
``policy format``; after each request the server must still answer, and its log must hold no
traceback. On the code before the fix the server process died at the first deep document.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS, bearer
from tests.serverproc import module_server, run_cli
from tether.clock import to_micros
from tether.container import Services
from tether.errors import PolicyInvalid
from tether.policy import limits, source
from tether.policy.decide import cedar_request
from tether.policy.entities import AgentView
from tether.policy.models import PolicyVersionRow
from tether.policy.service import BASE_SCHEMA, check, compile_checked
from tether.policy.values import Ask
from tether.principals import SYSTEM

LEVELS = [100, 1_000, 100_000]
TIMEOUT = 60.0  # seconds any one hostile request may take before the test calls it a hang


def _policy(condition: str, pid: str = "hostile") -> str:
    return f'@id("{pid}")\npermit (principal, action, resource) when {{ {condition} }};\n'


SHAPES: dict[str, Callable[[int], str]] = {
    "parentheses": lambda n: "(" * n + "true" + ")" * n,
    "sets": lambda n: "[" * n + "1" + "]" * n + " == [1]",
    "records": lambda n: "{a: " * n + "1" + "}" * n + " == {a: 1}",
    "negations": lambda n: "!" * n + "true",
    "if-chains": lambda n: "if true then " * n + "true" + " else false" * n,
    "and-chains": lambda n: " && ".join(["true"] * n),
    "or-chains": lambda n: " || ".join(["false"] * n),
    "attribute-chains": lambda n: "context" + ".a" * n + " == 1",
}


def hostile_documents() -> Iterator[tuple[str, str]]:
    for shape, build in SHAPES.items():
        for n in LEVELS:
            yield f"{shape}-{n}", _policy(build(n))
    many = "".join(f'@id("p{i}") permit (principal, action, resource);\n' for i in range(10_000))
    yield "10000-policies", many


# -- the bounds, without a server ------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_deep_shapes_are_refused_before_cedar_sees_them(shape: str) -> None:
    """1,000 levels of every shape crashed or would crash Cedar; each is a clean refusal."""
    document = _policy(SHAPES[shape](1_000))
    with pytest.raises(PolicyInvalid) as refused:
        check(document)
    [problem] = refused.value.details["errors"]
    assert problem["policy"] == "hostile"
    assert problem["line"] == 1
    if shape != "negations":  # Cedar itself refuses more than four `!` in a row
        assert "nesting depth" in problem["message"] or "expression size" in problem["message"]


def test_a_schema_nested_too_deep_is_refused() -> None:
    schema = "entity A { x: " + "{a: " * 3_000 + "Long" + "}" * 3_000 + " };"
    with pytest.raises(PolicyInvalid) as refused:
        check("", schema)
    assert "nesting depth" in refused.value.details["errors"][0]["message"]


def test_strings_and_comments_do_not_count() -> None:
    brackets = "(" * 5_000
    document = _policy(f'resource has server && resource.server == "{brackets}"') + (
        f"// {brackets} && && &&\n"
    )
    assert [p.id for p in check(document).policies] == ["hostile"]


def test_sequential_ifs_in_brackets_do_not_add_up() -> None:
    condition = " && ".join(["(if true then true else false)"] * 60)
    assert limits.check_policy_text(_policy(condition)) is None


def test_the_bounds_are_exact() -> None:
    def nested(n: int) -> str:
        # The when-block's braces are one level; n - 1 parentheses make n.
        return _policy("(" * (n - 1) + "true" + ")" * (n - 1))

    def chain(n: int) -> str:
        return _policy(" && ".join(["true"] * (n + 1)))

    assert limits.check_policy_text(nested(limits.MAX_NESTING)) is None
    assert limits.check_policy_text(nested(limits.MAX_NESTING + 1)) is not None
    assert limits.check_policy_text(chain(limits.MAX_OPERATORS)) is None
    assert limits.check_policy_text(chain(limits.MAX_OPERATORS + 1)) is not None


def _worst_case_at_the_bounds() -> str:
    """The costliest policy for Cedar's parser that Tether accepts: parentheses to the nesting
    bound (~12 KiB of Cedar's stack each) around the longest ``&&`` chain that still fits the
    JSON-depth bound."""
    parens = limits.MAX_NESTING - 1  # the when-block's braces are one level

    def policy(k: int) -> str:
        chain = " && ".join(["context has x"] * k)
        return _policy("(" * parens + chain + ")" * parens, "worst")

    k = 1
    while _json_depth_ok(policy(k + 1)):
        k += 1
    assert not _json_depth_ok(policy(k + 1))
    return policy(k)


def _json_depth_ok(document: str) -> bool:
    try:
        source.parse(document)
    except source.PolicyDocumentError:
        return False
    return True


def _on_small_stack(work: Callable[[], Any], stack: int = 1 << 20) -> Any:
    """Run ``work`` on a thread with a ``stack``-byte stack (an overflow kills the test run)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:
            out.append(exc)

    old = threading.stack_size(stack)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_a_policy_at_both_bounds_is_decided_on_a_one_mebibyte_stack() -> None:
    """The bounds leave Cedar room: parse, validate, compile and decide at the limits on an
    eighth of a glibc thread's default stack."""
    document = _worst_case_at_the_bounds()
    assert limits.check_policy_text(document) is None

    def decide() -> str:
        compiled = compile_checked("v-worst", check(document))
        view = _agent_view()
        ask = Ask(view.id, "tool.call", "Tool", "t1", context={})
        return compiled.decide(cedar_request(ask, {view.id: view})).effect.value

    # `context has x` is false, so the chain is false and nothing permits: a clean deny.
    assert _on_small_stack(decide) == "deny"


def test_a_chain_cedar_cannot_read_back_is_refused_not_a_500_on_push() -> None:
    """70 ``&&`` parse and validate, but their JSON form is too deep for Cedar's reader: the
    push used to fail while compiling (a 500, after validate had said "valid")."""
    with pytest.raises(PolicyInvalid) as refused:
        check(_policy(SHAPES["and-chains"](70)))
    assert "nesting depth" in refused.value.details["errors"][0]["message"]


def _agent_view() -> AgentView:
    from tether.policy.cases import agent_view_of

    return agent_view_of({"id": "agt_bounds", "owner": "usr_x", "purpose": "p",
                          "risk_tier": "minimal", "status": "active", "roles": ["r"]})  # fmt: skip


def test_split_then_check_covers_every_policy_of_a_document() -> None:
    document = _policy("true", "fine") + _policy(SHAPES["parentheses"](40), "deep")
    with pytest.raises(PolicyInvalid) as refused:
        check(document)
    [problem] = refused.value.details["errors"]
    assert problem["policy"] == "deep"
    assert problem["line"] == 3
    assert [c.line for c in source.split(document)] == [1, 3]


# -- a real server, both backends --------------------------------------------------------------


class _Server:
    def __init__(self, url: str, admin: str, log: Path) -> None:
        self.url, self.admin, self.log = url, admin, log
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT)

    def call(self, method: str, path: str, token: str, body: Any) -> httpx.Response:
        response = self.http.request(method, path, json=body, headers=bearer(token))
        self.assert_alive(f"{method} {path}")
        return response

    def assert_alive(self, after: str) -> None:
        try:
            health = self.http.get("/healthz", timeout=10)
        except httpx.TransportError as exc:  # the process died
            pytest.fail(f"server down after {after}: {exc}\n{self.log.read_text()[-2000:]}")
        assert health.status_code == 200, after

    def assert_no_traceback(self) -> None:
        log = self.log.read_text()
        assert "Traceback" not in log, log[-4000:]
        assert "Segmentation fault" not in log


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[_Server, dict[str, str]]]:
    """One server per backend for the module: every test sends it what it must survive and
    then checks that it still answers and logged no traceback (a crash in one test would
    fail every later one too, never hide)."""
    with module_server(request, tmp_path_factory, "hostile") as served:
        srv = _Server(served.url, served.admin_token, served.workdir / "server.log")
        yield srv, served.env
        srv.http.close()


def _user_token(srv: _Server, role: str) -> str:
    username = f"eve-{secrets.token_hex(4)}"  # the server is shared by the module's tests
    user = srv.http.post("/v1/users", json={"username": username, "role": role},
                         headers=bearer(srv.admin))  # fmt: skip
    assert user.status_code == 201, user.text
    token = srv.http.post(f"/v1/users/{user.json()['id']}/tokens", json={},
                          headers=bearer(srv.admin))  # fmt: skip
    assert token.status_code == 201, token.text
    return str(token.json()["token"])


def _refused(response: httpx.Response, label: str) -> None:
    assert 400 <= response.status_code < 500, f"{label}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert error["code"] in {"policy_invalid", "validation_error", "payload_too_large"}, label


@pytest.mark.slow
def test_hostile_documents_get_4xx_and_the_server_stays_up(
    server: tuple[_Server, dict[str, str]],
) -> None:
    srv, _ = server
    auditor = _user_token(srv, "auditor")
    before = srv.http.get("/v1/policies", headers=bearer(auditor)).json()
    for label, document in hostile_documents():
        body = {"policies": document}
        _refused(srv.call("POST", "/v1/policies/validate", auditor, body), f"validate {label}")
        _refused(srv.call("PUT", "/v1/policies", srv.admin, body), f"push {label}")
        _refused(srv.call("POST", "/v1/policies/simulate", srv.admin, body), f"simulate {label}")
    deep_schema = "entity A { x: " + "{a: " * 3_000 + "Long" + "}" * 3_000 + " };"
    body = {"policies": "", "schema": deep_schema}
    _refused(srv.call("POST", "/v1/policies/validate", auditor, body), "deep schema")
    # Nothing was pushed: the current version is still the one before.
    current = srv.http.get("/v1/policies", headers=bearer(auditor)).json()
    assert current["version"] == before["version"]
    assert current["policies"] == before["policies"]
    srv.assert_no_traceback()


@pytest.mark.slow
def test_huge_literals_and_pathological_like_patterns_are_decided(
    server: tuple[_Server, dict[str, str]],
) -> None:
    """A 40,000-character string literal is a valid policy; a ``like`` pattern of 5,000
    wildcards against a 500,000-character string is decided (Cedar's matcher is linear), and
    so are values nested as deep as a request may nest them; deeper ones are a 422."""
    srv, _ = server
    auditor = _user_token(srv, "auditor")
    literal = "x" * 40_000
    pattern = "*a" * 5_000 + "*b"
    document = (
        _policy(f'resource has server && resource.server == "{literal}"', "huge-literal")
        + '@id("like")\npermit (principal in Role::"ops", action == Action::"tool.call", '
        f'resource is Tool) when {{ resource has server && resource.server like "{pattern}" }};\n'
    )
    ok = srv.call("POST", "/v1/policies/validate", auditor, {"policies": document})
    assert ok.status_code == 200, ok.text
    pushed = srv.call("PUT", "/v1/policies", srv.admin, {"policies": document})
    assert pushed.status_code == 200, pushed.text
    agent = srv.call("POST", "/v1/agents", srv.admin, {
        "name": "ops-bot", "owner": "admin", "purpose": "hostile input",
        "risk_tier": "minimal", "roles": ["ops"],
    })  # fmt: skip
    assert agent.status_code == 201, agent.text

    def evaluate(server_name: str, context: Any = None) -> httpx.Response:
        return srv.call("POST", "/access/v1/evaluation", srv.admin, {
            "subject": {"type": "agent", "id": agent.json()["id"]},
            "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "t", "properties": {"server": server_name}},
            "context": context or {},
        })  # fmt: skip

    miss = evaluate("a" * 500_000)  # every wildcard matches, the final "b" never does
    assert miss.status_code == 200, miss.text
    assert miss.json()["decision"] is False
    hit = evaluate("a" * 500_000 + "b")
    assert hit.status_code == 200, hit.text
    assert hit.json()["decision"] is True
    assert hit.json()["context"]["reasons"] == ["like"]
    exact = evaluate(literal)
    assert exact.json()["decision"] is True
    for depth in [17, *LEVELS]:  # a request may nest values 16 deep
        raw = '{"deep": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
        response = srv.http.post("/access/v1/evaluation", headers={
            **bearer(srv.admin), "Content-Type": "application/json",
        }, content=_evaluation_text(agent.json()["id"], raw))  # fmt: skip
        srv.assert_alive(f"context nested {depth}")
        assert response.status_code in (400, 422), (depth, response.text)
    srv.assert_no_traceback()


def _evaluation_text(agent_id: str, context: str) -> str:
    return (
        f'{{"subject": {{"type": "agent", "id": "{agent_id}"}}, "action": {{"name": "tool.call"}},'
        f' "resource": {{"type": "Tool", "id": "t"}}, "context": {context}}}'
    )


# -- the CLI: `policy test` and `policy format` run Cedar locally ------------------------------


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=env, timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["parentheses", "if-chains", "and-chains", "sets"])
def test_cli_policy_test_and_format_refuse_deep_files_cleanly(
    shape: str, server: tuple[_Server, dict[str, str]], tmp_path: Path
) -> None:
    _, env = server
    policies = tmp_path / "hostile.cedar"
    policies.write_text(_policy(SHAPES[shape](1_000)))
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- name: anything\n  subject: {roles: [ops]}\n  action: tool.call\n"
        "  resource: {type: Tool, id: t}\n  expect: deny\n"
    )
    for args in (["policy", "test", str(cases), "--policies", str(policies)],
                 ["policy", "format", str(policies)]):  # fmt: skip
        done = _cli(args, tmp_path, env)
        assert done.returncode == 1, (args, done.returncode, done.stderr)  # not -11 (SIGSEGV)
        assert "Traceback" not in done.stderr
        assert "nesting depth" in done.stderr or "expression size" in done.stderr, done.stderr


# -- a version stored before the bounds --------------------------------------------------------


def test_a_stored_version_over_the_bounds_fails_closed_and_can_be_replaced(
    make_services: Callable[..., Services], caplog: pytest.LogCaptureFixture
) -> None:
    """A policy pushed before this release's bounds (40 nested parentheses parsed fine) must
    not reach Cedar on upgrade, nor stop the server from starting: the worker decides with the
    base policies alone — everything else denied — and logs why, until an admin pushes a fixed
    version."""
    first = make_services()
    deep = _policy("(" * 40 + "true" + ")" * 40, "deep-from-before")
    with first.db.write() as s:
        s.add(PolicyVersionRow(
            number=1, policies=deep, schema=BASE_SCHEMA, digest="0" * 64, policy_count=1,
            created_at=to_micros(first.clock.now()), created_by="system", note="old release",
        ))  # fmt: skip
    with caplog.at_level(logging.ERROR, "tether.policy"):
        upgraded = make_services()
        with upgraded.db.read() as s:
            compiled = upgraded.policies.compiled(s)
    assert "policy version v1 no longer passes validation" in caplog.text
    assert "nesting depth" in caplog.text
    view = _agent_view()
    ask = Ask(view.id, "tool.call", "Tool", "t1")
    assert compiled.version == "v1"
    assert compiled.decide(cedar_request(ask, {view.id: view})).effect.value == "deny"
    fixed = upgraded.policies.push(SYSTEM, policies=_policy("true", "flat"), schema=None, note=None)
    assert fixed.version == "v2"
    with upgraded.db.read() as s:
        current = upgraded.policies.compiled(s)
    assert current.decide(cedar_request(ask, {view.id: view})).effect.value == "allow"


def test_cli_policy_test_refuses_deeply_nested_inline_values(tmp_path: Path) -> None:
    """An inline subject's attributes reach Cedar as entity JSON: nested beyond what a request
    may nest, the case file is refused with the field named (it was a bare TypeError)."""
    value = "1"
    for _ in range(300):
        value = "{a: " + value + "}"
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        f"- name: deep\n  subject: {{roles: [ops], attributes: {{x: {value}}}}}\n"
        "  action: tool.call\n  resource: {type: Tool, id: t}\n  expect: deny\n"
    )
    policies = tmp_path / "p.cedar"
    policies.write_text(_policy("true"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_DATA_DIR"] = str(tmp_path / "data")
    done = _cli(["policy", "test", str(cases), "--policies", str(policies)], tmp_path, env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "subject.attributes" in done.stderr
    assert "nested too deeply" in done.stderr
