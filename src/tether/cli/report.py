"""``tether report …`` — compliance reports (``GET /v1/reports/compliance``) and their
verification, against the live ledger or offline against an export; the reports on record
(each holding its ledger range from retention) and forgetting one."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, err, line, show

app = typer.Typer(help="Compliance reports an auditor can verify offline.", no_args_is_help=True)


class Format(StrEnum):
    JSON = "json"
    HTML = "html"
    PDF = "pdf"


@app.command("build")
def build(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", help="Start (included): a date or RFC 3339.")],
    end: Annotated[str, typer.Option("--to", help="End (excluded), not in the future.")],
    format: Annotated[Format, typer.Option("--format", "-f", help="json, html or pdf.")] = (
        Format.JSON
    ),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File; default stdout.")] = None,
) -> None:
    """The report for a period: the AI inventory, human oversight and its interventions,
    logging, incidents, reviews, policy versions — each figure with the ledger range it was
    counted from, the report's digest in the ledger (report.built) and a signed checkpoint
    covering it. Admins and auditors."""
    params = {"from": start, "to": end, "format": format.value}
    with err.status("building the report…"):
        body = b"".join(client(ctx).stream_bytes("/v1/reports/compliance", params=params))
    if out is None:
        sys.stdout.buffer.write(body)
        return
    try:
        out.write_bytes(body)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
    err.print(f"wrote {len(body)} bytes to {out}")


@app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The report: its JSON, HTML or PDF.")],
    against: Annotated[
        Path | None, typer.Option("--against", help="Check offline against this ledger export.")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="With --against: the ledger's public key (PEM).")
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            help="With --against: signed checkpoints, for an export that starts "
            "after a retention cut."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recount every figure from its source range — on the live ledger (through the API), or
    offline with --against an export (`tether audit export`) and --public-key — and check the
    signed checkpoint the report embeds and the digest the ledger holds. Exit 1 naming each
    figure (or part) that does not hold."""
    from tether.governance.report_verify import load

    try:
        envelope = load(file.read_bytes(), name=str(file))
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if against is None:
        with err.status("verifying the report against the ledger…"):
            verdict: dict[str, Any] = client(ctx).post("/v1/reports/compliance/verify", envelope)
    else:
        verdict = _offline(envelope, against, public_key, checkpoints)
    if as_json:
        emit_json(verdict)
    elif verdict["ok"]:
        cp = verdict["checkpoint"]
        where = f"the export {against}" if against else "the live ledger"
        line(
            f"ok: {verdict['figures_checked']} figures recounted from {where}; checkpoint at "
            f"size {cp['size']} signed by key {cp['key_id']}; the report's digest is in the "
            "ledger"
        )
    else:
        for problem in verdict["problems"]:
            line(f"FAILED {problem['about']}: {problem['message']}")
    if not verdict["ok"]:
        raise typer.Exit(1)


_RECORD_COLUMNS = ["id", "built_at", "built_by", "held_from_seq", "seq_to", "held", "held_until"]


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The reports on record, newest first, and whether each still holds its ledger range
    from retention (until it is older than the retention period). Admins and auditors."""
    show(client(ctx).get("/v1/reports"), as_json=as_json, columns=_RECORD_COLUMNS)


@app.command("forget")
def forget(
    ctx: typer.Context,
    report_id: Annotated[str, typer.Argument(help="The report's id (binding.event.id).")],
    as_json: JsonOpt = False,
) -> None:
    """Forget a report's record: its ledger range is no longer held from retention (a
    report.forgotten event says what it held). The report still verifies offline against an
    export taken before a prune. Admins."""
    show(client(ctx).delete(f"/v1/reports/{seg(report_id)}"), as_json=as_json)


def _offline(
    envelope: Any, export: Path, public_key: Path | None, checkpoints: Path | None
) -> dict[str, Any]:
    from tether.audit.offline import load_checkpoints, load_public_key
    from tether.governance.report_verify import check_export

    if public_key is None:
        raise CliError(
            "--against needs --public-key FILE — the ledger's public key from a source you "
            "trust (`tether admin ledger-key` on the server host); a key that came with the "
            "report would prove nothing"
        )
    verifier = load_public_key(public_key)
    cuts = load_checkpoints(checkpoints) if checkpoints is not None else []
    return check_export(envelope, export, verifier=verifier, cuts=cuts).to_json()
