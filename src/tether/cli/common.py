"""Options shared by every command."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from tether.cli.client import ApiClient, CliError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def client(ctx: typer.Context) -> ApiClient:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "client" not in obj:
        obj["client"] = ApiClient(obj.get("url"), obj.get("token"))
    api: ApiClient = obj["client"]
    return api


def seg(value: str) -> str:
    """An id the user typed, as one segment of an API path. Refused if it would name another
    path: the server decodes ``%2F`` before routing, so ``agt_x/credentials`` must not be
    sent at all (``tether agents show agt_x/credentials`` would list the credentials)."""
    if not value or value in (".", "..") or any(c in value for c in "/?#\\"):
        raise CliError(
            f"the id {value!r} is empty or a relative path, or holds '/', '?', '#' or '\\' — "
            "give the item's id (the list commands show them)"
        )
    return quote(value, safe="")
