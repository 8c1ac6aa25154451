"""``tether reviews …`` — access review campaigns (``/v1/reviews``): start one, list and show
them, an owner's inbox, answer a line keep / reduce / retire, confirm a reduce or retire."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

import typer

from tether.cli.common import JsonOpt, client, seg
from tether.cli.render import emit_json, line, record, table

app = typer.Typer(
    help="Access reviews: owners confirm what each agent still needs.", no_args_is_help=True
)
REVIEW_COLUMNS = ["id", "status", "created_at", "due", "overdue", "lines", "open", "settled"]
LINE_COLUMNS = ["id", "agent", "kind", "subject", "last_used_at", "state", "answer", "outcome"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AnswerChoice(StrEnum):
    KEEP = "keep"
    REDUCE = "reduce"
    RETIRE = "retire"


def _due(value: str | None) -> str | None:
    """A date (the end of that day, UTC) or an RFC 3339 date-time, as given."""
    if value is None or not _DATE.match(value):
        return value
    return f"{value}T23:59:59Z"


def _review_row(review: dict[str, Any]) -> dict[str, Any]:
    prog = review["progress"]
    return {
        **review,
        "lines": prog["lines"],
        "open": prog["open"] + prog["awaiting_confirmation"],
        "settled": prog["settled"],
    }


def _line_row(item: dict[str, Any]) -> dict[str, Any]:
    agent = item["agent_name"] or item["agent_id"]
    return {**item, "agent": f"{agent} ({item['agent_id']})"}


def _lines(items: list[dict[str, Any]]) -> None:
    table([_line_row(x) for x in items], LINE_COLUMNS)


@app.command("start")
def start(
    ctx: typer.Context,
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="Review this user's agents (username or id; repeat)."),
    ] = None,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="Review this agent (repeat).")
    ] = None,
    due: Annotated[
        str | None,
        typer.Option(
            help="YYYY-MM-DD (end of day, UTC) or an RFC 3339 date-time; default 30 days."
        ),
    ] = None,
    note: Annotated[str | None, typer.Option(help="Why; kept in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a campaign (admin): a line for each permission, role, credential and delegation
    of each agent in scope (every active agent unless --owner / --agent), with its last use."""
    body: dict[str, Any] = {}
    if owner:
        body["owners"] = owner
    if agent:
        body["agents"] = agent
    if due is not None:
        body["due"] = _due(due)
    if note is not None:
        body["note"] = note
    review = client(ctx).post("/v1/reviews", body)
    if as_json:
        emit_json(review)
        return
    record(_review_row(review), REVIEW_COLUMNS)
    _lines(review.get("lines") or [])


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="open, closed or overdue.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Reviews, newest first, with their progress."""
    page = client(ctx).get("/v1/reviews", status=status, limit=limit)
    if as_json:
        emit_json(page["items"])
        return
    table([_review_row(r) for r in page["items"]], REVIEW_COLUMNS)


@app.command("show")
def show(ctx: typer.Context, review_id: str, as_json: JsonOpt = False) -> None:
    """A review, its progress and its lines with their answers."""
    review = client(ctx).get(f"/v1/reviews/{seg(review_id)}")
    if as_json:
        emit_json(review)
        return
    record(_review_row(review), REVIEW_COLUMNS)
    _lines(review.get("lines") or [])


@app.command("inbox")
def inbox(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Your open lines: unanswered, or answered reduce/retire and awaiting confirmation."""
    page = client(ctx).get("/v1/reviews/inbox", limit=limit)
    if as_json:
        emit_json(page["items"])
        return
    table(
        [{**_line_row(x), "review": x["review_id"]} for x in page["items"]],
        ["review", *LINE_COLUMNS],
    )


@app.command("answer")
def answer(
    ctx: typer.Context,
    review_id: str,
    line_id: str,
    choice: Annotated[AnswerChoice, typer.Argument(metavar="keep|reduce|retire")],
    note: Annotated[str, typer.Option(help="Why; kept in the ledger.")],
    as_json: JsonOpt = False,
) -> None:
    """Answer one line. reduce and retire act only once confirmed (tether reviews confirm)."""
    done = client(ctx).post(
        f"/v1/reviews/{seg(review_id)}/lines/{seg(line_id)}/answer",
        {"answer": choice.value, "note": note},
    )
    if as_json:
        emit_json(done)
        return
    line(f"{done['id']}: {done['answer']} ({done['state']})")
    if done["state"] == "answered":
        line(f"to carry it out: tether reviews confirm {review_id} {done['id']}")


@app.command("confirm")
def confirm(
    ctx: typer.Context,
    review_id: str,
    line_id: str,
    note: Annotated[str | None, typer.Option(help="Kept in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Carry out a line answered reduce (exactly what it names) or retire (the agent)."""
    done = client(ctx).post(
        f"/v1/reviews/{seg(review_id)}/lines/{seg(line_id)}/confirm", {"note": note} if note else {}
    )
    if as_json:
        emit_json(done)
        return
    line(f"{done['id']}: {done['outcome']}")


@app.command("close")
def close(
    ctx: typer.Context,
    review_id: str,
    note: Annotated[str | None, typer.Option(help="Kept in the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a review by hand (admin); it closes by itself once every line is settled."""
    done = client(ctx).post(f"/v1/reviews/{seg(review_id)}/close", {"note": note} if note else {})
    if as_json:
        emit_json(done)
        return
    line(f"{done['id']}: closed")
