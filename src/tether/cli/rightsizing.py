"""``tether agents rightsize`` — an agent's least-privilege right-sizing: what it holds against
what it used in the last N days, and the narrower policy set its recorded traffic proves safe
(``GET /v1/agents/{id}/rightsizing``); ``--apply`` has an admin apply a safe proposal."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import bare, emit_json, line, record, table

USED_COLUMNS = ["policy", "action", "resource", "via", "count", "last_used", "resources"]
UNUSED_COLUMNS = ["policy", "action", "resource", "via", "proposal"]


def _via(p: dict[str, Any]) -> str:
    return f"role {p['role']}" if p.get("role") else str(p["via"])


def _print(r: dict[str, Any]) -> None:
    proposal, sim = r["proposal"], r["proposal"]["simulation"]
    verdict = ("nothing to remove" if proposal["empty"]
               else "safe" if proposal["safe"] else "NOT safe")  # fmt: skip
    record({
        "agent": r["agent_id"], "window": f"{r['days']} days, since {r['since']}",
        "policies": r["policy_version"], "roles": r["roles"],
        "roles unused": r["roles_unused"], "scopes unused": r["scopes_unused"],
        "proposal": f"{verdict}: removes {proposal['removes']} of {len(r['unused'])} unused "
                    "permissions",
        "simulation": f"{sim['checked']} recorded decisions replayed, {sim['flips']} flip"
                      f"{'' if sim['flips'] == 1 else 's'}"
                      + (f" ({sim['already_differing']} already differ under the current "
                         "policies)" if sim["already_differing"] else ""),
    })  # fmt: skip
    table([{**p, "via": _via(p)} for p in r["used"]], USED_COLUMNS, title="used")
    table([{**p, "via": _via(p), "proposal": "remove" if p["removed"] else "keep"}
           for p in r["unused"]], UNUSED_COLUMNS, title="not used")  # fmt: skip
    changes = [
        *({"change": f"drop role {c['role']} from the agent"} for c in proposal["role_changes"]),
        *({"change": f"drop scope {c['scope']} from the agent"}
          for c in proposal["scope_changes"]),
        *({"change": f"{c['op']} policy {c['policy']}"
                     + (f" to {', '.join(c['actions'])}" if c["actions"] else "")}
          for c in proposal["policy_changes"]),
    ]  # fmt: skip
    if changes:
        table(changes, ["change"], title="proposal")
    if proposal["diff"]:
        line("")
        bare(proposal["diff"].rstrip("\n"))


def rightsize(
    ctx: typer.Context,
    agent_id: str,
    days: Annotated[int, typer.Option(help="The window: the last this many days.")] = 30,
    apply: Annotated[
        bool, typer.Option("--apply", help="Apply the proposal (admins; only a safe one).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """An agent's unused roles, scopes and permissions over the last DAYS days, and a narrower
    policy set simulated against what it actually did."""
    api = client(ctx)
    if apply:
        done = api.post(f"/v1/agents/{seg(agent_id)}/rightsizing/apply", {"days": days})
        if as_json:
            emit_json(done)
            return
        _print(done["rightsizing"])
        version = done["policy_version"]
        line(f"applied{f': policies now {version}' if version else ''}")
        return
    found = api.get(f"/v1/agents/{seg(agent_id)}/rightsizing", days=days)
    if as_json:
        emit_json(found)
        return
    _print(found)
