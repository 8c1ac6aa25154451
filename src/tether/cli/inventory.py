"""``tether inventory …`` — the AI system register (``GET /v1/agents/export``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from tether.cli.client import CliError
from tether.cli.common import client
from tether.cli.render import err

app = typer.Typer(help="Export the AI system register (every agent you may see).",
                  no_args_is_help=True)  # fmt: skip
_PROGRESS_EVERY = 1 << 20  # bytes between two progress updates


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"


@app.command("export")
def export(
    ctx: typer.Context,
    format: Annotated[Format, typer.Option("--format", "-f", help="csv or json.")] = Format.CSV,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File; default stdout.")
    ] = None,
) -> None:
    """Every agent you may see — owner, supervisors, purpose, risk tier, status, roles,
    scopes, dates, lineage, fingerprint, credentials, attributes — as CSV or JSON. The server
    records the export in the ledger (``inventory.exported``) with the SHA-256 printed here.
    A file is written whole or not at all."""
    chunks = client(ctx).stream_bytes("/v1/agents/export", params={"format": format.value})
    digest, size = hashlib.sha256(), 0
    with err.status("exporting the inventory…") as status, _sink(output) as sink:
        for chunk in chunks:
            sink.write(chunk)
            digest.update(chunk)
            before, size = size, size + len(chunk)
            if before // _PROGRESS_EVERY != size // _PROGRESS_EVERY:
                status.update(f"exporting the inventory… {size // _PROGRESS_EVERY} MiB")
    where = f" to {output}" if output else ""
    err.print(f"exported {size} bytes{where}; sha256 {digest.hexdigest()}")


@contextlib.contextmanager
def _sink(output: Path | None) -> Iterator[BinaryIO]:
    """Standard output, or a temporary file beside ``output`` renamed onto it once the
    whole body arrived (removed on any failure: no half register is left behind)."""
    if output is None:
        yield sys.stdout.buffer
        return
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or Path())
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        tmp.replace(output)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
