"""``tether agents …`` — the agent registry, each agent with its risk now (``risk`` and
``clear-risk``: :mod:`tether.cli.risk`)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from tether.cli import rightsizing, risk
from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, err, out, show, table

app = typer.Typer(help="Register and govern agents.", no_args_is_help=True)
app.command("risk")(risk.risk)
app.command("clear-risk")(risk.clear_risk)
app.command("rightsize")(rightsizing.rightsize)
LIST_COLUMNS = ["id", "name", "owner_username", "risk_tier", "status", "risk", "roles",
                "created_at"]  # fmt: skip
SHOW_COLUMNS = [
    "id",
    "spiffe_id",
    "name",
    "owner_username",
    "owner",
    "supervisors",
    "purpose",
    "risk_tier",
    "status",
    "status_reason",
    "roles",
    "attributes",
    "parent",
    "lineage",
    "lineage_kind",
    "fingerprint",
    "created_at",
    "updated_at",
    "expires_at",
    "recertify_by",
    "risk",
]

RoleOpt = Annotated[list[str] | None, typer.Option("--role", help="Repeat for several roles.")]
ScopeOpt = Annotated[
    list[str] | None, typer.Option("--scope", help="OAuth scope it may hold; repeat.")
]
AttrOpt = Annotated[
    list[str] | None, typer.Option("--attr", help="key=value; value parsed as JSON if it can be.")
]
SupOpt = Annotated[list[str] | None, typer.Option("--supervisor", help="Username or id; repeat.")]


def _shown(value: Any, *, as_json: bool, columns: list[str]) -> None:
    """Agents as JSON, or for people with their risk in a few words (``high 70, step-up``)."""
    if not as_json:
        many = value if isinstance(value, list) else [value]
        people = [{**a, "risk": risk.summary(a.get("risk"))} for a in many]
        value = people if isinstance(value, list) else people[0]
    show(value, as_json=as_json, columns=columns)


def _attrs(pairs: list[str] | None) -> dict[str, Any] | None:
    if pairs is None:
        return None
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--attr {pair!r}: expected key=value")
        try:
            result[key] = json.loads(raw)
        except ValueError:
            result[key] = raw
    return result


def _fingerprint(
    model: str | None, version: str | None, prompt: str | None, tools: str | None
) -> dict[str, Any] | None:
    if model is None:
        if version or prompt or tools:
            raise CliError("--model is required when giving any other fingerprint part")
        return None
    return {
        "model": model,
        "model_version": version,
        "prompt_sha256": prompt,
        "tools_sha256": tools,
    }


ModelOpt = Annotated[str | None, typer.Option(help="Fingerprint: model name.")]
VersionOpt = Annotated[str | None, typer.Option(help="Fingerprint: model version.")]
PromptOpt = Annotated[str | None, typer.Option(help="Fingerprint: SHA-256 of the system prompt.")]
ToolsOpt = Annotated[str | None, typer.Option(help="Fingerprint: SHA-256 of the tool manifest.")]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Display name.")],
    owner: Annotated[str, typer.Option(help="Accountable human: username or id.")],
    purpose: Annotated[str, typer.Option(help="What the agent is for.")],
    risk_tier: Annotated[str, typer.Option(help="minimal, limited or high.")] = "minimal",
    role: RoleOpt = None,
    scope: ScopeOpt = None,
    attr: AttrOpt = None,
    parent: Annotated[str | None, typer.Option(help="Spawning agent's id.")] = None,
    supervisor: SupOpt = None,
    model: ModelOpt = None,
    model_version: VersionOpt = None,
    prompt_sha256: PromptOpt = None,
    tools_sha256: ToolsOpt = None,
    expires_at: Annotated[
        str | None, typer.Option(help="RFC 3339, e.g. 2027-01-01T00:00:00Z")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a new agent."""
    body: dict[str, Any] = {
        "name": name,
        "owner": owner,
        "purpose": purpose,
        "risk_tier": risk_tier,
        "roles": role or [],
        "scopes": scope or [],
        "attributes": _attrs(attr) or {},
        "supervisors": supervisor or [],
    }
    if parent:
        body["parent"] = parent
    fingerprint = _fingerprint(model, model_version, prompt_sha256, tools_sha256)
    if fingerprint:
        body["fingerprint"] = fingerprint
    if expires_at:
        body["expires_at"] = expires_at
    _shown(client(ctx).post("/v1/agents", body), as_json=as_json, columns=SHOW_COLUMNS)


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option()] = None,
    risk_tier: Annotated[str | None, typer.Option()] = None,
    recertify_due_within: Annotated[
        int | None,
        typer.Option(help="Only agents due for recertification within N days (0: overdue)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List agents (supervisors see the agents they own or supervise)."""
    items = list(
        client(ctx).paginate(
            "/v1/agents",
            limit=limit or None,
            status=status,
            owner=owner,
            role=role,
            risk_tier=risk_tier,
            recertify_due_within=recertify_due_within,
        )
    )
    _shown(items, as_json=as_json, columns=LIST_COLUMNS)


@app.command("show")
def show_(ctx: typer.Context, agent_id: str, as_json: JsonOpt = False) -> None:
    """Show one agent."""
    _shown(client(ctx).get(f"/v1/agents/{seg(agent_id)}"), as_json=as_json, columns=SHOW_COLUMNS)


UnsetAttrOpt = Annotated[
    list[str] | None, typer.Option("--unset-attr", help="Remove this attribute; repeat.")
]


@app.command("update")
def update(
    ctx: typer.Context,
    agent_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    purpose: Annotated[str | None, typer.Option()] = None,
    risk_tier: Annotated[str | None, typer.Option()] = None,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="The agent's roles become exactly these; repeat."),
    ] = None,
    clear_roles: Annotated[bool, typer.Option("--clear-roles", help="Remove every role.")] = False,
    scope: ScopeOpt = None,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", help="key=value: add or change one attribute (others are kept)."),
    ] = None,
    unset_attr: UnsetAttrOpt = None,
    supervisor: SupOpt = None,
    model: ModelOpt = None,
    model_version: VersionOpt = None,
    prompt_sha256: PromptOpt = None,
    tools_sha256: ToolsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an agent: what is given changes, everything else is kept (a JSON Merge Patch).

    A new fingerprint on a high-risk agent suspends it until a supervisor resumes it.
    """
    if clear_roles and role:
        raise CliError("--role and --clear-roles contradict each other — give one of them")
    attributes = _attrs(attr) or {}
    for key in unset_attr or []:
        if key in attributes:
            raise CliError(f"--attr {key}=… and --unset-attr {key} contradict each other")
        attributes[key] = None
    fingerprint = {
        part: value
        for part, value in (
            ("model", model),
            ("model_version", model_version),
            ("prompt_sha256", prompt_sha256),
            ("tools_sha256", tools_sha256),
        )
        if value is not None
    }
    body: dict[str, Any] = {}
    for key, value in (
        ("name", name),
        ("owner", owner),
        ("purpose", purpose),
        ("risk_tier", risk_tier),
        ("roles", [] if clear_roles else role),
        ("scopes", scope),
        ("attributes", attributes or None),
        ("supervisors", supervisor),
        ("fingerprint", fingerprint or None),
    ):
        if value is not None:
            body[key] = value
    if not body:
        raise CliError("nothing to change: give at least one option (see --help)")
    api = client(ctx)
    before = api.get(f"/v1/agents/{seg(agent_id)}") if fingerprint else None
    agent = api.patch(f"/v1/agents/{seg(agent_id)}", body)
    _shown(agent, as_json=as_json, columns=SHOW_COLUMNS)
    if before and before["status"] != "suspended" and agent["status"] == "suspended":
        # On stderr, so that --json output stays one JSON document.
        err.print(
            f"note: the fingerprint of high-risk agent {agent_id} changed, so it is now "
            f"suspended until a supervisor re-approves it: tether agents resume {agent_id}",
            markup=False,
        )


ReasonOpt = Annotated[str, typer.Option(help="Why; recorded in the ledger.")]


@app.command("suspend")
def suspend(ctx: typer.Context, agent_id: str, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Suspend an agent (reversible with resume)."""
    agent = client(ctx).post(f"/v1/agents/{seg(agent_id)}/suspend", {"reason": reason})
    show(agent, as_json=as_json, columns=["id", "name", "status", "status_reason"])


@app.command("resume")
def resume(
    ctx: typer.Context,
    agent_id: str,
    note: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a suspended agent (this is also the re-approval after a fingerprint change)."""
    agent = client(ctx).post(f"/v1/agents/{seg(agent_id)}/resume", {"note": note} if note else {})
    show(agent, as_json=as_json, columns=["id", "name", "status"])


@app.command("recertify")
def recertify(
    ctx: typer.Context,
    agent_id: str,
    note: Annotated[str, typer.Option(help="Why it still needs what it has.")],
    until: Annotated[
        str | None,
        typer.Option(help="RFC 3339; default: its risk tier's period from now (the most)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recertify an agent: confirm it still needs what it has, moving its recertify_by."""
    body: dict[str, Any] = {"note": note, **({"until": until} if until else {})}
    agent = client(ctx).post(f"/v1/agents/{seg(agent_id)}/recertify", body)
    show(agent, as_json=as_json, columns=["id", "name", "risk_tier", "status", "recertify_by"])


@app.command("retire")
def retire(ctx: typer.Context, agent_id: str, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Retire an agent for good (its id is never reused)."""
    agent = client(ctx).post(f"/v1/agents/{seg(agent_id)}/retire", {"reason": reason})
    show(agent, as_json=as_json, columns=["id", "name", "status", "status_reason"])


@app.command("clone")
def clone(
    ctx: typer.Context,
    agent_id: str,
    name: Annotated[str, typer.Option(help="Name of the new agent.")],
    as_json: JsonOpt = False,
) -> None:
    """Clone an agent: new id, same roles and attributes, lineage kept, no credentials."""
    _shown(
        client(ctx).post(f"/v1/agents/{seg(agent_id)}/clone", {"name": name}),
        as_json=as_json,
        columns=SHOW_COLUMNS,
    )


@app.command("kill")
def kill(
    ctx: typer.Context,
    agent_id: str,
    reason: ReasonOpt,
    cascade: Annotated[bool, typer.Option(help="Also revoke every descendant.")] = True,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an agent (and its descendants) permanently."""
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("kill is irreversible: add --yes to confirm when not on a terminal")
        typer.confirm(
            f"Permanently revoke {agent_id}{' and its descendants' if cascade else ''}?", abort=True
        )
    result = client(ctx).post(
        f"/v1/agents/{seg(agent_id)}/kill", {"reason": reason, "cascade": cascade}
    )
    if as_json:
        emit_json(result)
        return
    out.print(f"revoked {len(result['revoked'])} agent(s)")
    table([{"id": a} for a in result["revoked"]], ["id"])
    cut = ", ".join(f"{k}: {v}" for k, v in result["cut_off"].items())
    out.print(f"cut off: {cut}")
    offer = result.get("rollback")
    if offer and offer["reversible_actions"]:
        out.print(f"{agent_id} made {offer['reversible_actions']} reversible call(s) in the last "
                  f"{offer['hours']} h; see what undoes them: {offer['command']}")  # fmt: skip
    elif offer:
        out.print(f"{agent_id} made no reversible call in the last {offer['hours']} h")
