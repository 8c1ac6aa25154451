"""``tether freeze`` / ``tether unfreeze`` — the incident switch (API.md "Agents": freeze)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client
from tether.cli.render import emit_json, out, table

COLUMNS = ["id", "scope", "reason", "by", "since"]
OwnerOpt = Annotated[str | None, typer.Option(help="Only the agents of this owner (name or id).")]
RoleOpt = Annotated[str | None, typer.Option(help="Only the agents holding this role.")]
TierOpt = Annotated[
    str | None, typer.Option("--risk-tier", help="Only the agents of this risk tier.")
]


def _scope(owner: str | None, role: str | None, risk_tier: str | None) -> dict[str, str]:
    named = {"owner": owner, "role": role, "risk_tier": risk_tier}
    return {k: v for k, v in named.items() if v is not None}


def _rows(freezes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def scope(f: dict[str, Any]) -> str:
        parts = [f"{k}={v}" for k, v in f["scope"].items()]
        return " ".join(parts) or "every agent"

    return [{**f, "scope": scope(f)} for f in freezes]


def freeze(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why (required); kept in the ledger.")] = None,
    owner: OwnerOpt = None,
    role: RoleOpt = None,
    risk_tier: TierOpt = None,
    show: Annotated[bool, typer.Option("--show", help="Only show what is frozen.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop every agent at once (or those of an owner, role or risk tier): denied everything
    on every node until `tether unfreeze`. Nothing is revoked."""
    api = client(ctx)
    if not show:
        if not reason:
            raise CliError("say why: --reason is required to freeze (or --show to look)")
        frozen = api.post("/v1/freeze", {"reason": reason, "scope": _scope(owner, role, risk_tier)})
        if as_json:
            emit_json(frozen)
            return
        out.print(f"frozen: {_rows([frozen])[0]['scope']} ({frozen['id']})")
    state = api.get("/v1/freeze")
    if as_json:
        emit_json(state)
        return
    table(_rows(state["freezes"]), COLUMNS, title="In force" if state["frozen"] else None)


def unfreeze(
    ctx: typer.Context,
    freeze_id: Annotated[str | None, typer.Option("--id", help="Lift only this freeze.")] = None,
    owner: OwnerOpt = None,
    role: RoleOpt = None,
    risk_tier: TierOpt = None,
    reason: Annotated[str | None, typer.Option(help="Why; kept in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift freezes: one (--id), those of exactly a scope, or (naming nothing) all of them."""
    params = {"id": freeze_id, "reason": reason, **_scope(owner, role, risk_tier)}
    lifted = client(ctx).request("DELETE", "/v1/freeze", params=params)["lifted"]
    if as_json:
        emit_json(lifted)
        return
    if not lifted:
        out.print("nothing matching was frozen")
        return
    table(_rows(lifted), [*COLUMNS, "lifted_at"], title="Lifted")
