"""``tether webhooks …`` — what a webhook receiver needs from the server host."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    help="Signed webhooks: the secret receivers verify X-Tether-Signature with.",
    no_args_is_help=True,
)


@app.command("secret")
def secret() -> None:
    """Print the webhooks' signing secret, bare (S=$(tether webhooks secret)).

    Run on the server host: it is TETHER_APPROVAL_WEBHOOK_SECRET when set, else derived from
    the master key, which only the server's operator can read — so no API serves it. Receivers
    verify with tether.sdk.webhooks.verify_webhook(body, header, S.encode()).
    """
    from tether.config import load_settings
    from tether.container import webhook_secret
    from tether.keyfiles import require_root_keys

    settings = load_settings()
    sys.stdout.write(webhook_secret(settings, require_root_keys(settings)) + "\n")  # unwrapped
