"""``tether admin …`` — break-glass work on the server host, beside the server: it reads the
server's settings (data dir, database) and root keys directly, not the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.render import bare, err, line

app = typer.Typer(
    help="Break-glass commands run on the server host (its data dir and database).",
    no_args_is_help=True,
)


@app.command("recover")
def recover(
    user: Annotated[str, typer.Option(help="The admin to mint a token for.")] = "admin",
    print_token: Annotated[
        bool,
        typer.Option("--print", help="Print the token once on stdout instead of writing a file."),
    ] = False,
) -> None:
    """Mint a new token for a locked-out admin and record `admin.recovered` in the ledger.

    Needs what the server has: its settings (TETHER_DATA_DIR, TETHER_DATABASE_URL, …), the
    database, and the master and ledger keys. The token goes to a new 0600 file in the data
    dir, named by the deployment and the token id; the admin's other tokens stay valid."""
    from tether.bootstrap import check_deployment, recover_admin, recovered_token_path
    from tether.config import load_settings
    from tether.container import build_services
    from tether.keyfiles import require_root_keys, write_private

    settings = load_settings()
    check_deployment(settings)
    require_root_keys(settings)
    services = build_services(settings)
    try:
        recovery = recover_admin(services, user)
    finally:
        services.close()
    name, token_id = recovery.user.username, recovery.token.id
    done = (
        f"minted token {token_id} for {name!r} (deployment {recovery.deployment_id}); the "
        "ledger records it as admin.recovered"
    )
    others = (
        f"the other tokens of {name!r} still work: list them with `tether users tokens {name}` "
        f"and revoke any that was lost with `tether users revoke-token {name} <id>`"
    )
    if print_token:  # stdout holds the token alone: T=$(tether admin recover --print)
        err.print(f"{done}. It is shown once, below, and kept nowhere.", markup=False)
        err.print(others, markup=False)
        bare(recovery.secret)
        return
    path = recovered_token_path(settings, recovery)
    write_private(path, recovery.secret.encode() + b"\n")
    line(f"{done}; the token is in {path} (mode 0600)")
    line(f"use it: export TETHER_TOKEN=$(cat {path})")
    line(others)


@app.command("ledger-key")
def ledger_key(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File; default stdout.")
    ] = None,
) -> None:
    """The ledger's public key (PEM), for `tether audit verify --file … --public-key`."""
    from tether.audit.signing import LedgerVerifier
    from tether.config import load_settings
    from tether.keyfiles import require_root_keys

    keys = require_root_keys(load_settings())
    verifier = LedgerVerifier(keys.ledger_key.public_key())
    pem = verifier.public_pem()
    if output is None:
        bare(pem.decode().rstrip("\n"))
    else:
        output.write_bytes(pem)
        err.print(f"wrote the ledger public key (key id {verifier.key_id}) to {output}")
