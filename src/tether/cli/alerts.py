"""``tether alerts …`` — notable events raised from the ledger: list, acknowledge, follow;
the webhook secret receivers verify with; dead-lettered deliveries and their replay."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import bare, emit_json, emit_json_line, out, table

app = typer.Typer(help="Alerts: kills, freezes, approvals, fingerprint changes…",
                  no_args_is_help=True)  # fmt: skip
COLUMNS = ["id", "created_at", "severity", "kind", "agent_id", "summary", "suppressed", "acked_by"]


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Acknowledged ones too.")] = False,
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first (open ones unless --all)."""
    page = client(ctx).get("/v1/alerts", status=None if all_ else "open", agent=agent,
                           limit=limit)  # fmt: skip
    if as_json:
        emit_json(page["items"])
        return
    table(page["items"], COLUMNS)


@app.command("ack")
def ack(
    ctx: typer.Context,
    alert_id: str,
    note: Annotated[str | None, typer.Option(help="Kept with it, and in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Acknowledge an alert: later ones of its kind about its agent raise anew."""
    done = client(ctx).post(f"/v1/alerts/{seg(alert_id)}/ack", {"note": note} if note else {})
    if as_json:
        emit_json(done)
        return
    out.print(f"acknowledged {done['id']} ({done['kind']})")


@app.command("tail")
def tail(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The latest alerts, oldest first; with -f, new ones as they are raised (JSON lines with
    --json, for a pipe)."""
    api = client(ctx)
    seen: set[str] = set()

    def show(items: list[dict[str, Any]]) -> None:
        for item in reversed(items):
            if item["id"] in seen:
                continue
            seen.add(item["id"])
            if as_json:
                emit_json_line(item)
            else:
                out.print(f"{item['created_at']}  {item['severity']:<8} {item['kind']:<26} "
                          f"{item['summary']}")  # fmt: skip

    show(api.get("/v1/alerts", limit=20)["items"])
    while follow:
        time.sleep(1)
        show(api.get("/v1/alerts", limit=50)["items"])


@app.command("dead")
def dead(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Deliveries given up on (their receiver was down too long)."""
    found = client(ctx).get("/v1/alerts/deliveries/dead")
    if as_json:
        emit_json(found)
        return
    table(found, ["id", "alert_id", "kind", "attempts", "last_error", "receiver"])


@app.command("replay")
def replay(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(help="Dead delivery ids; none: all.")] = None,
) -> None:
    """Send dead-lettered deliveries again, in their order."""
    done = client(ctx).post("/v1/alerts/deliveries/replay", {"ids": ids} if ids else {})
    out.print(f"{done['replayed']} delivery(ies) queued again")


@app.command("secret")
def secret() -> None:
    """On the server host: the secret alert webhook receivers verify with (whsec_…)."""
    from tether.alerts.service import derived_secret
    from tether.config import load_settings
    from tether.keyfiles import load_root_keys

    settings = load_settings()
    bare(settings.alert_webhook_secret or derived_secret(load_root_keys(settings).master_key))
