"""``tether rollback AGENT`` — undo what an agent did: the plan first, then (confirmed) each
undo run through the gateway as you, every step on the record (API.md "Rollback")."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from tether.cli.client import ApiClient, CliError
from tether.cli.common import JsonOpt, seg
from tether.cli.render import emit_json, err, out, table

_AGO = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
PLAN_COLUMNS = ["at", "agent_id", "tool", "plan", "undo", "note"]
RESULT_COLUMNS = ["at", "agent_id", "tool", "plan", "outcome", "undo", "error"]
# A rollback answers once every step is on the record: allow it time.
TIMEOUT_SECONDS = 900.0

SinceOpt = Annotated[
    str | None,
    typer.Option(
        help="Only calls at or after this time: RFC 3339 (2026-12-06T14:00:00Z) or "
        "an age (30m, 2h, 1d)."
    ),
]
UntilOpt = Annotated[
    str | None, typer.Option(help="Only calls at or before this time (as --since).")
]


def _when(value: str | None) -> str | None:
    """An age (``2h``) as the RFC 3339 time that long ago; anything else as given (the server
    checks it and says what is wrong)."""
    if value is None:
        return None
    match = _AGO.match(value.strip())
    if match is None:
        return value
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def undo(step: dict[str, Any]) -> str:
        call = step.get("undo")
        return str(call["tool"]) if call else ""

    return [{**s, "undo": undo(s)} for s in steps]


def _summary(report: dict[str, Any]) -> str:
    counts = report["summary"]
    if report["dry_run"]:
        return (f"{counts['undo']} to undo, {counts['irreversible']} irreversible, "
                f"{counts['undone']} already undone, {counts['uncertain']} uncertain")  # fmt: skip
    ran = ", ".join(f"{counts['outcome_' + k]} {k.replace('_', ' ')}"
                    for k in ("undone", "failed", "refused", "uncertain", "not_run"))  # fmt: skip
    return (f"rollback {report['rollback_id']} {report['status']}: {ran}, "
            f"{counts['irreversible']} irreversible")  # fmt: skip


def rollback(
    ctx: typer.Context,
    agent_id: str,
    since: SinceOpt = None,
    until: UntilOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
    delegates: Annotated[
        bool, typer.Option("--delegates", help="Also the calls of agents acting for it.")
    ] = False,
    keep_going: Annotated[
        bool, typer.Option("--continue", help="Go on after a step that fails (default: stop).")
    ] = False,
    retry_uncertain: Annotated[
        bool,
        typer.Option(
            "--retry-uncertain",
            help="Run again the undos an interrupted rollback left uncertain (check the "
            "upstream first: they may have run).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Undo what an agent did through the gateway, newest first: shows the plan (what will be
    undone, what cannot be), then, once you confirm, runs each undo as you and reports."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    api = ApiClient(obj.get("url"), obj.get("token"), timeout=TIMEOUT_SECONDS)
    path = f"/v1/agents/{seg(agent_id)}/rollback"
    window = {"since": _when(since), "until": _when(until),
              "delegates": delegates, "retry_uncertain": retry_uncertain}  # fmt: skip
    window = {k: v for k, v in window.items() if v is not None}
    plan = api.post(path, {**window, "dry_run": True})
    if dry_run:
        if as_json:
            emit_json(plan)
            return
        table(_rows(plan["steps"]), PLAN_COLUMNS, title=f"Plan for {agent_id} (newest first)")
        out.print(_summary(plan))
        return
    if plan["summary"]["undo"] == 0:
        if as_json:
            emit_json(plan)
            return
        table(_rows(plan["steps"]), PLAN_COLUMNS, title=f"Plan for {agent_id}")
        out.print(f"nothing to undo: {_summary(plan)}")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("a rollback runs undos upstream: add --yes to confirm when not on a "
                           "terminal (or --dry-run to see the plan)")  # fmt: skip
        table(_rows(plan["steps"]), PLAN_COLUMNS, title=f"Plan for {agent_id} (newest first)")
        out.print(_summary(plan))
        typer.confirm(f"Run {plan['summary']['undo']} undo(s) now?", abort=True)
    body = {**window, "on_failure": "continue" if keep_going else "stop"}
    with err.status(f"rolling back {plan['summary']['undo']} call(s) of {agent_id}…"):
        report = api.post(path, body)
    if as_json:
        emit_json(report)
    else:
        table(_rows(report["steps"]), RESULT_COLUMNS, title=f"Rollback {report['rollback_id']}")
        out.print(_summary(report))
    counts = report["summary"]
    if report["status"] != "done" or any(
        counts[f"outcome_{k}"] for k in ("failed", "refused", "uncertain", "not_run")
    ):
        raise typer.Exit(1)
