"""Options shared by every command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.client import ApiClient

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def client(ctx: typer.Context) -> ApiClient:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "client" not in obj:
        obj["client"] = ApiClient(obj.get("url"), obj.get("token"))
    api: ApiClient = obj["client"]
    return api
