"""``tether audit verify --file`` — an exported ledger checked with no server
(:mod:`tether.audit.offline`)."""

from __future__ import annotations

from pathlib import Path

import typer

from tether.cli.client import CliError
from tether.cli.render import emit_json, line


def verify_file(
    export: Path, checkpoints: Path | None, public_key: Path | None, *, as_json: bool
) -> None:
    """Print the verdict on ``export``; exit 1 if it fails. Raises :class:`CliError` unless
    both the checkpoints and the key are given: a chain alone, or checked with a key that
    came with it, proves nothing (anyone can compute one)."""
    from tether.audit.offline import load_checkpoints, load_public_key, verify_export

    if public_key is None:
        raise CliError(
            "--file needs --public-key FILE — the ledger's public key from a source you trust "
            "(`tether admin ledger-key` on the server host); a key that came with the export "
            "would prove nothing"
        )
    if checkpoints is None:
        raise CliError(
            "--file needs --checkpoints FILE — signed checkpoints (the server's "
            "checkpoints.jsonl, or GET /v1/audit/checkpoints/latest saved after the export)"
        )
    verifier = load_public_key(public_key)
    report = verify_export(export, checkpoints=load_checkpoints(checkpoints), verifier=verifier)
    result = report.result
    if as_json:
        emit_json(report.to_json())
    elif result.ok:
        line(
            f"ok: {result.checked} events in {export} verified against "
            f"{result.external_checkpoints} checkpoints signed by key {verifier.key_id}; "
            f"head {result.head_hash}"
        )
        if result.cut is not None:
            line(
                f"events 1..{result.cut.size} were pruned: the export starts at the checkpoint "
                "signed at that cut"
            )
        unsigned = result.end - result.anchored_size
        if unsigned:
            line(
                f"events {result.anchored_size + 1}..{result.end} come after the newest "
                "checkpoint: no signature covers them (take a checkpoint after the export)"
            )
    else:
        where = f" at line {report.line}" if report.line is not None else ""
        line(f"FAILED{where}: {result.problem} — {result.message}")
    if not result.ok:
        raise typer.Exit(1)
