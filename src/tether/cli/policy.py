"""``tether policy …`` — the Cedar policy set: read, push, validate, format, test, simulate.

``get``, ``versions``, ``push``, ``validate`` and ``simulate`` speak only the HTTP API.
``format`` and ``test`` run here: ``test`` evaluates declarative cases with the server's own
engine (:mod:`tether.policy.engine`), recording nothing; it calls the server only to fetch the
current policies (without ``--policies``) or an agent a case names by id.

A rejected document prints one ``file:line: [policy] message`` line per problem, the way
compilers do, so editors and CI annotate them.
"""

from __future__ import annotations

import json
import re
import sys
from collections import ChainMap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.client import ApiClient, CliError
from tether.cli.common import JsonOpt, seg
from tether.cli.render import emit_json, out, table

if TYPE_CHECKING:
    import httpx2 as httpx

    from tether.policy.cases import Case
    from tether.policy.engine import CompiledPolicies
    from tether.policy.entities import AgentView

app = typer.Typer(help="The Cedar policy set: read, check, test and change it.",
                  no_args_is_help=True)  # fmt: skip
SchemaOpt = Annotated[
    Path | None, typer.Option("--schema", help="Cedar schema file (default: the current one).")
]
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNION_TAGS = frozenset({"str", "InlineAgent"})


# -- talking to the server ---------------------------------------------------------------------


class PolicyRejected(CliError):
    """A 422 ``policy_invalid``: ``problems`` is the server's ``details.errors`` list."""

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


class _PolicyApi(ApiClient):
    """The CLI's client, except that a rejected document keeps its list of problems (the
    shared error path folds a response into one line)."""

    def _result(self, resp: httpx.Response) -> Any:
        if resp.status_code == 422:
            try:
                error = resp.json()["error"]
                problems = error["details"]["errors"]
            except (ValueError, KeyError, TypeError):
                error, problems = {}, None
            if error.get("code") == "policy_invalid" and isinstance(problems, list) and problems:
                n = len(problems)
                raise PolicyRejected(f"{error['code']}: {_count(n, 'problem')}; "
                                     "nothing was changed [HTTP 422]", problems)  # fmt: skip
        return super()._result(resp)


def _api(ctx: typer.Context) -> _PolicyApi:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "policy_client" not in obj:
        obj["policy_client"] = _PolicyApi(obj.get("url"), obj.get("token"))
    api: _PolicyApi = obj["policy_client"]
    return api


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: cannot read: not UTF-8 (byte {exc.start})") from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def problem_lines(
    problems: list[dict[str, Any]], policies: Path | str, schema: Path | str | None = None
) -> list[str]:
    """``file:line: [policy] message`` for each problem; a schema problem names the schema."""
    lines = []
    for p in problems:
        message = str(p.get("message", ""))
        name = policies
        if p.get("line") is None and p.get("policy") is None and message.startswith("schema"):
            name = schema or "schema"
        where = f"{name}:{p['line']}" if p.get("line") is not None else str(name)
        label = f" [{p['policy']}]" if p.get("policy") else ""
        lines.append(f"{where}:{label} {message}")
    return lines


def _rejected(exc: PolicyRejected, policies: Path, schema: Path | None) -> CliError:
    for line in problem_lines(exc.problems, policies, schema):
        typer.echo(line, err=True)
    return CliError(exc.message)


def _document(path: Path, schema: Path | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"policies": _read(path), **extra}
    if schema is not None:
        body["schema"] = _read(schema)
    return body


# -- reading -------------------------------------------------------------------------------


@app.command("get")
def get(
    ctx: typer.Context,
    version: Annotated[
        str | None, typer.Option(help="A version such as v3 (default: current).")
    ] = None,
    schema: Annotated[bool, typer.Option("--schema", help="The schema instead.")] = False,
    base: Annotated[bool, typer.Option("--base", help="The base policies instead.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the current (or a given) policy version's Cedar text."""
    path = f"/v1/policies/versions/{seg(version)}" if version else "/v1/policies"
    doc = _api(ctx).get(path)
    if as_json:
        emit_json(doc)
        return
    text = doc["schema"] if schema else doc["base_policies"] if base else doc["policies"]
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{output}: cannot write ({exc})") from exc
        typer.echo(f"wrote {doc['version']} to {output}", err=True)
    elif text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        typer.echo(f"{doc['version']}: no operator policies (the base policies only)", err=True)


@app.command("versions")
def versions(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Policy versions, newest first (v0 is the base policies alone)."""
    items = list(_api(ctx).paginate("/v1/policies/versions", limit=limit or None))
    if as_json:
        emit_json(items)
    else:
        table(items, ["version", "policy_count", "created_at", "created_by", "note", "digest"])


# -- changing and checking -----------------------------------------------------------------


@app.command("push")
def push(
    ctx: typer.Context,
    file: Path,
    schema: SchemaOpt = None,
    note: Annotated[str | None, typer.Option(help="Why (kept with the version).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make FILE the policy set: a new version, or every problem listed and nothing changed."""
    try:
        made = _api(ctx).request("PUT", "/v1/policies", json=_document(file, schema, note=note))
    except PolicyRejected as exc:
        raise _rejected(exc, file, schema) from None
    if as_json:
        emit_json({k: v for k, v in made.items() if k not in ("policies", "schema",
                                                                "base_policies")})  # fmt: skip
    else:
        out.print(f"pushed {made['version']}: {made['policy_count']} policies, "
                  f"digest {made['digest'][:16]}")  # fmt: skip


@app.command("validate")
def validate(
    ctx: typer.Context, file: Path, schema: SchemaOpt = None, as_json: JsonOpt = False
) -> None:
    """Check FILE as push would (on the server), changing nothing; exit 1 on any problem."""
    try:
        result = _api(ctx).post("/v1/policies/validate", _document(file, schema))
    except PolicyRejected as exc:
        raise _rejected(exc, file, schema) from None
    if as_json:
        emit_json(result)
    else:
        names = ", ".join(result["policies"]) or "none"
        out.print(f"valid: {len(result['policies'])} policies ({names})", markup=False)


@app.command("format")
def format_(
    file: Path,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if FILE is not formatted.")
    ] = False,
    write: Annotated[bool, typer.Option("--write", "-w", help="Rewrite FILE in place.")] = False,
) -> None:
    """Format FILE the Cedar way (locally); print it, check it (CI) or rewrite it."""
    import cedarpy

    if check and write:
        raise CliError("give --check or --write, not both")
    from tether.policy import limits, source

    text = _read(file)
    for chunk in source.split(text):  # Cedar's formatter would crash on these, not refuse
        if excess := limits.check_policy_text(chunk.text):
            raise CliError(f"{file}:{chunk.line}: cannot format: {excess.message}")
    try:
        formatted = cedarpy.format_policies(text) if text.strip() else text
    except ValueError as exc:
        for line in _syntax_errors(text, file):
            typer.echo(line, err=True)
        raise CliError(f"{file}: cannot format: {exc}") from None
    if check:
        if formatted != text:
            typer.echo(f"{file}: not formatted (run `tether policy format --write {file}`)",
                       err=True)  # fmt: skip
            raise typer.Exit(1)
        typer.echo(f"{file}: formatted", err=True)
    elif write:
        if formatted != text:
            file.write_text(formatted, encoding="utf-8")
        typer.echo(f"{file}: {'reformatted' if formatted != text else 'unchanged'}", err=True)
    else:
        sys.stdout.write(formatted)


def _syntax_errors(text: str, file: Path) -> list[str]:
    from tether.policy import source

    try:
        source.parse(text)
    except source.PolicyDocumentError as exc:
        syntax = [p.to_json() for p in exc.problems if p.message.startswith("syntax")]
        return problem_lines(syntax, file)
    return []


@app.command("simulate")
def simulate(
    ctx: typer.Context,
    file: Path,
    schema: SchemaOpt = None,
    since: Annotated[
        str | None, typer.Option(help="RFC 3339 time, or an age: 30m, 24h, 7d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339 time, or an age.")] = None,
    fail_on_change: Annotated[
        bool, typer.Option("--fail-on-change", help="Exit 1 if any decision would change.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay recorded decisions under FILE: which would change, by agent and by policy."""
    body = _document(file, schema, since=_when(since, "--since"), until=_when(until, "--until"))
    try:
        result = _api(ctx).post("/v1/policies/simulate", body)
    except PolicyRejected as exc:
        raise _rejected(exc, file, schema) from None
    if as_json:
        emit_json(result)
    else:
        _print_simulation(result)
    if fail_on_change and result["changed"]:
        raise typer.Exit(1)


def _when(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    m = _DURATION.match(value.strip())
    if m is None:
        return value  # an RFC 3339 time; the server checks it
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > 100 * 365 * 86400:
        raise CliError(f"{option} {value}: too far back")
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _print_simulation(result: dict[str, Any]) -> None:
    changes = [
        {**c, "resource": f"{c['resource']['type']}::{c['resource']['id']}",
         "before": _verdict(c["before"]), "after": _verdict(c["after"])}
        for c in sorted(result["changes"], key=lambda c: (c["agent"], c["seq"]))
    ]  # fmt: skip
    if changes:
        table(changes, ["agent", "time", "action", "resource", "before", "after"],
              title="Decisions that would change")  # fmt: skip
        table(result["by_agent"], ["agent", "changed"], title="By agent")
        table(result["by_policy"], ["policy", "changed"], title="By policy")
    note = " (truncated: narrow --since/--until)" if result.get("truncated") else ""
    out.print(f"{_count(result['checked'], 'decision')} replayed, {result['skipped']} skipped, "
              f"{result['changed']} would change{note}", markup=False)  # fmt: skip


def _verdict(side: dict[str, Any]) -> str:
    reasons = ", ".join(side.get("reasons") or []) or "no policy"
    return f"{side['decision']} ({reasons})"


# -- test: declarative cases, evaluated locally --------------------------------------------


def load_cases(path: Path) -> list[Case]:
    """The cases of a YAML or JSON file: a list, or a mapping with a ``cases`` list."""
    import yaml
    from pydantic import ValidationError

    from tether.policy.cases import Case

    text = _read(path)
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise CliError(f"{path}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(raw, dict) and "cases" in raw:
        raw = raw["cases"]
    if not isinstance(raw, list) or not raw:
        raise CliError(f"{path}: expected a non-empty list of cases")
    cases = []
    for i, item in enumerate(raw, 1):
        label = f"case {i}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
        try:
            cases.append(Case.model_validate(item))
        except ValidationError as exc:
            # The deepest error is the telling one ("subject.rolez", not "not a string");
            # the union members pydantic tried ("str", "InlineAgent") are not fields.
            first = max(exc.errors(), key=lambda e: len(e["loc"]))
            where = ".".join(str(p) for p in first["loc"] if str(p) not in _UNION_TAGS)
            raise CliError(f"{path}: {label}: {where or 'case'}: {first['msg']}") from None
    return cases


def _compile(
    ctx: typer.Context, policies: Path | None, schema: Path | None
) -> tuple[CompiledPolicies, str]:
    from tether.errors import PolicyInvalid
    from tether.policy.service import check, compile_checked

    if policies is not None:
        text, label = _read(policies), str(policies)
        schema_text = _read(schema) if schema is not None else None
    else:
        current = _api(ctx).get("/v1/policies")
        text, label = current["policies"], current["version"]
        schema_text = _read(schema) if schema is not None else current["schema"]
    try:
        checked = check(text, schema_text)
    except PolicyInvalid as exc:
        for line in problem_lines(exc.details.get("errors", []), policies or label, schema):
            typer.echo(line, err=True)
        n = len(exc.details.get("errors", []))
        raise CliError(f"policy_invalid: {_count(n, 'problem')}") from None
    return compile_checked(label, checked), label


@app.command("test")
def run_tests(
    ctx: typer.Context,
    cases_file: Path,
    policies: Annotated[
        Path | None, typer.Option(help="Policy file (default: the server's current policies).")
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Schema file (default: the base schema with --policies).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the cases of CASES_FILE (YAML or JSON) locally; exit 1 on any mismatch."""
    from tether.policy.cases import agent_view_of, run_case

    cases = load_cases(cases_file)
    compiled, label = _compile(ctx, policies, schema)
    fetched: dict[str, AgentView] = {}
    results = []
    for case in cases:
        if isinstance(case.subject, str):
            if case.subject not in fetched:
                fetched[case.subject] = agent_view_of(
                    _api(ctx).get(f"/v1/agents/{seg(case.subject)}")
                )
            agents: Mapping[str, AgentView] = fetched
        else:  # an inline subject belongs to its case alone
            inline = {case.subject.id: agent_view_of(case.subject.model_dump())}
            agents = ChainMap(inline, fetched)
        results.append(run_case(case, compiled, agents))
    failed = sum(not r["passed"] for r in results)
    if as_json:
        emit_json({"policies": label, "passed": len(results) - failed, "failed": failed,
                   "cases": results})  # fmt: skip
    else:
        rows = [{**r, "result": "PASS" if r["passed"] else "FAIL",
                 "expected": _expected(r), "actual": _actual(r)} for r in results]  # fmt: skip
        table(rows, ["result", "name", "expected", "actual"], title=f"Policy tests ({label})")
        out.print(f"{len(results) - failed} passed, {failed} failed", markup=False)
    if failed:
        raise typer.Exit(1)


def _expected(r: dict[str, Any]) -> str:
    if r["expected_reasons"] is None:
        return str(r["expect"])
    return f"{r['expect']} ({', '.join(r['expected_reasons']) or 'no policy'})"


def _actual(r: dict[str, Any]) -> str:
    if r["error"]:
        return f"error: {r['error']}"
    return f"{r['actual']} ({', '.join(r['reasons']) or 'no policy'})"
