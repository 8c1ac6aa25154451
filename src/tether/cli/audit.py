"""``tether audit …`` — read, verify and export the ledger."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.common import JsonOpt, client
from tether.cli.render import bare, cell, emit_json, emit_json_line, err, out, table

app = typer.Typer(help="Read, verify and export the tamper-evident ledger.", no_args_is_help=True)
COLUMNS = ["seq", "time", "type", "actor", "agent_id", "outcome", "details"]
# Widths of the columns `tail -f` prints line by line (a table cannot grow as events come):
# an RFC 3339 time with microseconds is 27 characters, a prefixed ULID 30. A longer value
# pushes the rest of its line right; nothing is cut.
_WIDTHS = {"seq": 6, "time": 27, "type": 22, "actor": 36, "agent_id": 30, "outcome": 8}


@app.command("tail")
def tail(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", min=0, max=1000, help="How many recent events.")] = 20,
    agent: Annotated[str | None, typer.Option()] = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Poll interval with --follow.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """The most recent events, oldest first (``-f`` to follow: a header once, then a line per
    event). ``--json`` prints one JSON object per line (JSON Lines)."""
    api = client(ctx)
    newest = (
        api.get("/v1/audit/events", agent=agent, type=type_, limit=n, order="desc") if n else None
    )
    events = list(reversed(newest["items"])) if newest else []
    if not follow:
        _print(events, as_json)
        return
    if not as_json:
        bare(_line({c: c.upper() for c in COLUMNS}))
    _print_lines(events, as_json)
    last = events[-1]["seq"] if events else 0
    from tether.pagination import encode_cursor

    try:
        while True:
            time.sleep(interval)
            new = list(
                api.paginate(
                    "/v1/audit/events", agent=agent, type=type_, cursor=encode_cursor(str(last))
                )
            )
            if new:
                _print_lines(new, as_json)
                last = new[-1]["seq"]
    except KeyboardInterrupt:
        return


def _print(events: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for ev in events:
            emit_json_line(ev)
    elif events:
        table(events, COLUMNS)


def _print_lines(events: list[dict[str, Any]], as_json: bool) -> None:
    for ev in events:
        if as_json:
            emit_json_line(ev)
        else:
            bare(_line({c: cell(ev.get(c)) for c in COLUMNS}))


def _line(values: dict[str, str]) -> str:
    """One event as a line of `tail -f`, its columns at fixed widths, the details last."""
    fixed = "  ".join(values[c].ljust(width) for c, width in _WIDTHS.items())
    return f"{fixed}  {values['details']}"


@app.command("verify")
def verify(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Check this export offline (no server), with the next two."),
    ] = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="With --file: signed checkpoints (checkpoints.jsonl).")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="With --file: the ledger's public key (PEM).")
    ] = None,
) -> None:
    """Recompute the whole chain, check signed checkpoints (the database's and the checkpoint
    file's) and the checkpoint interval; exit 1 on any problem. With --file, the same for an
    export, offline."""
    if file is not None:
        from tether.cli.offline import verify_file

        verify_file(file, checkpoints, public_key, as_json=as_json)
        return
    with err.status("verifying the ledger…"):
        result = client(ctx).get("/v1/audit/verify")
    if as_json:
        emit_json(result)
    elif result["ok"]:
        out.print(
            f"ok: {result['checked']} events and {result['checkpoints_checked']} "
            f"checkpoints verified; head {result['head_hash']}"
        )
        if result.get("cut"):
            out.print(
                f"events 1..{result['cut']['size']} were pruned: the chain starts at the "
                f"checkpoint signed at that cut (key {result['cut']['key_id']})"
            )
        if result.get("anchored_size") is not None:
            out.print(
                f"signed through seq {result['anchored_size']} ({result['external_checkpoints']}"
                f" checkpoints in the checkpoint file); {result['unanchored']} events not yet "
                f"anchored (at most {result['max_unanchored']}, for up to "
                f"{result['max_unanchored_seconds']:.0f} s)"
            )
    else:
        out.print(f"FAILED{_where(result)}: {result['problem']} — {result['message']}")
    if not result["ok"]:
        raise typer.Exit(1)


def _where(result: dict[str, Any]) -> str:
    """Where verification failed: a range when a hash chain cannot name one event."""
    if result.get("after_seq") is not None:
        return f" in seq {result['after_seq'] + 1}..{result['through_seq']}"
    if result.get("first_bad_seq") is not None:
        return f" at seq {result['first_bad_seq']}"
    return ""


@app.command("checkpoint")
def checkpoint(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Sign the current head now (admin)."""
    cp = client(ctx).post("/v1/audit/checkpoints")
    if as_json:
        emit_json(cp)
    else:
        out.print(
            f"signed checkpoint: size {cp['size']}, head {cp['head_hash']}, key {cp['key_id']}"
        )


@app.command("prune")
def prune(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be pruned.")
    ] = False,
    retention_days: Annotated[
        int | None,
        typer.Option(
            "--retention-days",
            help="Prune events older than this (at least six months: 184 days); default: "
            "the server's TETHER_LEDGER_RETENTION_DAYS.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the events older than the retention period (admin), keeping a checkpoint signed
    at the cut: `audit verify` starts there. Events an open review or report references stay."""
    body: dict[str, Any] = {"dry_run": dry_run}
    if retention_days is not None:
        body["retention_days"] = retention_days
    report = client(ctx).post("/v1/audit/prune", body)
    if as_json:
        emit_json(report)
        return
    rows = [{k: report.get(k) for k in _PRUNE_COLUMNS}]
    rows[0]["checkpoint"] = (report.get("checkpoint") or {}).get("signature")
    table(rows, [*_PRUNE_COLUMNS, "checkpoint"], title=_prune_title(report))


_PRUNE_COLUMNS = ["pruned", "first_seq", "last_seq", "cutoff", "held_by", "held_from_seq"]


def _prune_title(report: dict[str, Any]) -> str:
    days = report["retention_days"]
    if not report["pruned"]:
        return f"nothing to prune ({days} days' retention)"
    verb = "would prune" if report["dry_run"] else "pruned"
    return f"{verb} {report['pruned']} events older than {days} days"


@app.command("export")
def export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File; default stdout.")
    ] = None,
) -> None:
    """Every event as JSON lines, in order."""
    api = client(ctx)
    count = 0
    stream = output.open("wb") if output else sys.stdout.buffer
    try:
        with err.status("exporting…") as status:
            for line in api.stream_lines("/v1/audit/export", params={"format": "jsonl"}):
                stream.write(line + b"\n")
                count += 1
                if count % 1000 == 0:
                    status.update(f"exporting… {count} events")
    finally:
        if output:
            stream.close()
    err.print(f"exported {count} events" + (f" to {output}" if output else ""))
