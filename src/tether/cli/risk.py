"""``tether agents risk`` and ``tether agents clear-risk`` — an agent's risk as monitoring
scores it: the score and level, each rule that holds with its explanation and evidence, what
was last raised, the step-up; and a human clearing it (API.md "Monitoring and governance")."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, line, record, table

RULE_COLUMNS = ["rule", "score", "because", "evidence"]


def summary(risk: dict[str, Any] | None) -> str:
    """An agent's ``risk`` as a table cell: ``high 70, step-up``."""
    if not risk:
        return "-"
    text = f"{risk['level']} {risk['score']}"
    return f"{text}, step-up" if risk.get("step_up") else text


def _evidence(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


def _rules(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**h, "evidence": _evidence(h.get("evidence") or {})} for h in hits]


def _baseline(b: dict[str, Any] | None) -> str:
    if not b:
        return "-"
    pairs = f"{b['pairs_known']} action/resource pairs known"
    if not b["active_buckets"]:
        return f"not learned yet; {pairs}"
    return (f"{b['baseline_per_bucket']} requests per bucket (± {b['baseline_deviation']}), "
            f"learned over {b['active_buckets']} active buckets; {pairs}")  # fmt: skip


def _raised(raised: dict[str, Any] | None) -> str:
    if not raised:
        return "-"
    text = f"{raised['level']} ({raised['score']}) at {raised['at']}"
    names = [r["rule"] for r in raised.get("rules") or []]
    if names:
        text += f" by {', '.join(names)}"
    trigger = raised.get("trigger")
    if trigger:
        res = trigger.get("resource") or {}
        text += (f"; on {trigger['action']} {res.get('type', '?')}::{res.get('id', '?')} "
                 f"({trigger['decision']})")  # fmt: skip
    return text


def _print(risk: dict[str, Any]) -> None:
    agent = risk["agent_id"]
    step_up = (f"yes: every allowed request asks a human until cleared (tether agents "
               f"clear-risk {agent})" if risk["step_up"] else "no")  # fmt: skip
    record({"agent": agent, "score": risk["score"], "level": risk["level"],
            "step-up": step_up, "signals": _evidence(risk.get("signals") or {}),
            "last raised": _raised(risk["raised"]),
            "cleared at": risk["cleared_at"],
            "baseline": _baseline(risk["baseline"])})  # fmt: skip
    if risk["rules"]:
        table(_rules(risk["rules"]), RULE_COLUMNS, title="rules that hold now")
    else:
        line("no rule holds now")
    raised = (risk["raised"] or {}).get("rules") or []
    if raised:
        table(_rules(raised), RULE_COLUMNS, title="rules when last raised")


def risk(ctx: typer.Context, agent_id: str, as_json: JsonOpt = False) -> None:
    """An agent's risk: score, level, step-up, each rule that holds and why, last raised."""
    found = client(ctx).get(f"/v1/agents/{seg(agent_id)}/risk")
    if as_json:
        emit_json(found)
        return
    _print(found)


def clear_risk(
    ctx: typer.Context,
    agent_id: str,
    note: Annotated[str | None, typer.Option(help="Why; recorded in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Clear an agent's risk (its owner, a supervisor or an admin): no more step-up, its
    counts start again."""
    done = client(ctx).post(f"/v1/agents/{seg(agent_id)}/risk/clear",
                            {"note": note} if note else {})  # fmt: skip
    if as_json:
        emit_json(done)
        return
    line(f"cleared the risk of {done['agent_id']}: now {summary(done)}"
         f"{'' if done['step_up'] else ', no step-up'}")  # fmt: skip
