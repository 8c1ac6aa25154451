"""``tether approvals …`` — human-in-the-loop checkpoints: list, show (wait), approve, deny."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, out, record, table

app = typer.Typer(help="Approve or deny what agents asked to do.", no_args_is_help=True)
LIST_COLUMNS = ["id", "agent_id", "action", "resource", "status", "reasons", "expires_at"]
SHOW_COLUMNS = [
    "id",
    "status",
    "agent_id",
    "on_behalf_of",
    "action",
    "resource",
    "request",
    "reasons",
    "policy_version",
    "created_at",
    "expires_at",
    "decided_by",
    "decided_at",
    "note",
    "used_at",
]
# Each long-poll stays under the API client's 30-second timeout (the server allows 60).
_MAX_WAIT = 25
NoteOpt = Annotated[str | None, typer.Option(help="Why; kept in the ledger.")]


def _row(approval: dict[str, Any]) -> dict[str, Any]:
    res = approval.get("resource") or {}
    return {**approval, "resource": f"{res.get('type')}::{res.get('id')}"}


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        str, typer.Option(help="pending, approved, denied, expired, used, cancelled or all.")
    ] = "pending",
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Approvals you may see (supervisors: the agents they own or supervise), newest first."""
    items = list(
        client(ctx).paginate(
            "/v1/approvals",
            limit=limit or None,
            status=None if status == "all" else status,
            agent=agent,
        )
    )
    if as_json:
        emit_json(items)
    else:
        table([_row(a) for a in items], LIST_COLUMNS)


@app.command("show")
def show(
    ctx: typer.Context,
    approval_id: str,
    wait: Annotated[
        float, typer.Option(min=0, help="Wait up to N seconds for a pending one to be decided.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """One approval with the exact request it is bound to."""
    import time

    api = client(ctx)
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        approval = api.get(f"/v1/approvals/{seg(approval_id)}", wait=min(left, _MAX_WAIT) or None)
        if approval["status"] != "pending" or left <= _MAX_WAIT:
            break
    if as_json:
        emit_json(approval)
    else:
        record(_row(approval), SHOW_COLUMNS)


def _decide(ctx: typer.Context, approval_id: str, verdict: str, note: str | None) -> Any:
    if note is not None and not note.strip():
        raise CliError("--note must not be empty")
    return client(ctx).post(f"/v1/approvals/{seg(approval_id)}/{seg(verdict)}", {"note": note})


@app.command("approve")
def approve(
    ctx: typer.Context, approval_id: str, note: NoteOpt = None, as_json: JsonOpt = False
) -> None:
    """Approve: the agent's identical request is then allowed once."""
    result = _decide(ctx, approval_id, "approve", note)
    if as_json:
        emit_json(result)
    else:
        out.print(f"approved {result['id']}: {result['agent_id']} may {result['action']} "
                  f"{_row(result)['resource']} once", markup=False)  # fmt: skip


@app.command("deny")
def deny(
    ctx: typer.Context, approval_id: str, note: NoteOpt = None, as_json: JsonOpt = False
) -> None:
    """Deny: the request stays refused."""
    result = _decide(ctx, approval_id, "deny", note)
    if as_json:
        emit_json(result)
    else:
        out.print(f"denied {result['id']}: {result['agent_id']} may not {result['action']} "
                  f"{_row(result)['resource']}", markup=False)  # fmt: skip
