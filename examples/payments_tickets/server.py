"""A small payments-and-tickets MCP server: the upstream Tether's gateway stands in front of
in the tests, the README and the benchmarks.

Tools (the gateway shows them as ``payments.<tool>`` when registered under the name
``payments``):

- read: ``get_balance``, ``list_payments``, ``list_refunds``, ``list_tickets``, ``get_ticket``;
- write, each with its inverse: ``refund`` (holds the amount from ``ops``) ↔
  ``cancel_refund`` (by ``refund_id`` from the result; gives it back, once),
  ``create_ticket`` ↔ ``delete_ticket``, ``close_ticket`` ↔ ``reopen_ticket``;
- irreversible: ``transfer`` (money leaves; nothing undoes it), ``send_email`` (a message to
  any address, outside the organisation too: what the gateway's configuration can mark
  ``egress``; nothing unsends it);
- ``slow`` (sleeps) and ``fail`` (a tool error) for fault tests.

A resource ``tickets://{id}`` and a prompt ``triage`` pass through the gateway too. State is in
memory. With ``--api-key`` (or ``EXAMPLE_API_KEY``) every HTTP request must carry it in
``X-Api-Key`` (what the gateway injects from a broker-only secret); ``--header-log FILE``
appends each request's ``Authorization`` and ``X-Api-Key`` headers to FILE, so a test can
show what reached the upstream.

Run: ``python -m examples.payments_tickets.server [--port 8765] [--stdio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict

READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False)
IRREVERSIBLE = ToolAnnotations(read_only_hint=False, destructive_hint=True)


class Refund(TypedDict):
    id: str
    payment_id: str
    amount: int
    currency: str
    status: str


class Ticket(TypedDict):
    id: str
    title: str
    body: str
    status: str


@dataclass
class Ledger:
    """The example's whole state."""

    balances: dict[str, int] = field(default_factory=lambda: {"ops": 100_000, "sales": 25_000})
    payments: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "pay_1": {"id": "pay_1", "amount": 1200, "currency": "EUR", "customer": "c_17"},
        "pay_2": {"id": "pay_2", "amount": 80, "currency": "EUR", "customer": "c_42"},
    })  # fmt: skip
    refunds: dict[str, Refund] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    outbox: list[dict[str, str]] = field(default_factory=list)  # what send_email sent
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def build(state: Ledger | None = None) -> MCPServer:
    """The server, over ``state`` (a fresh one by default)."""
    state = state or Ledger()
    mcp = MCPServer("payments-and-tickets", version="1.0",
                    instructions="Example payments and tickets system (in memory).")  # fmt: skip

    @mcp.tool(annotations=READ)
    def get_balance(account: str) -> dict[str, Any]:
        """The balance of an account, in cents."""
        if account not in state.balances:
            raise ToolError(f"no account {account!r}")
        return {"account": account, "balance": state.balances[account]}

    @mcp.tool(annotations=READ)
    def list_payments() -> list[dict[str, Any]]:
        """Every payment."""
        return list(state.payments.values())

    @mcp.tool(annotations=WRITE)
    def refund(payment_id: str, amount: int, currency: str = "EUR") -> Refund:
        """Refund part of a payment (cents). Undone by cancel_refund(refund_id)."""
        payment = state.payments.get(payment_id)
        if payment is None:
            raise ToolError(f"no payment {payment_id!r}")
        if not 0 < amount <= payment["amount"]:
            raise ToolError(f"amount must be 1-{payment['amount']}")
        if state.balances["ops"] < amount:
            raise ToolError("insufficient funds in ops")
        refund_id = f"re_{next(state.ids)}"
        state.balances["ops"] -= amount  # held for the customer while the refund is pending
        state.refunds[refund_id] = Refund(id=refund_id, payment_id=payment_id, amount=amount,
                                          currency=currency, status="pending")  # fmt: skip
        return Refund(**state.refunds[refund_id])

    @mcp.tool(annotations=WRITE)
    def cancel_refund(refund_id: str) -> Refund:
        """Cancel a pending refund (its amount goes back to ops); a refund is cancelled once."""
        found = state.refunds.get(refund_id)
        if found is None:
            raise ToolError(f"no refund {refund_id!r}")
        if found["status"] != "pending":
            raise ToolError(f"refund {refund_id} is {found['status']}, not pending")
        found["status"] = "cancelled"
        state.balances["ops"] += found["amount"]
        return Refund(**found)

    @mcp.tool(annotations=READ)
    def list_refunds() -> list[Refund]:
        """Every refund."""
        return list(state.refunds.values())

    @mcp.tool(annotations=IRREVERSIBLE)
    def transfer(from_account: str, to_account: str, amount: int) -> dict[str, Any]:
        """Move money between accounts (cents). Irreversible."""
        if state.balances.get(from_account, 0) < amount or amount <= 0:
            raise ToolError("insufficient funds or bad amount")
        state.balances[from_account] -= amount
        state.balances[to_account] = state.balances.get(to_account, 0) + amount
        return {"from": from_account, "to": to_account, "amount": amount,
                "transfer_id": f"tr_{next(state.ids)}"}  # fmt: skip

    @mcp.tool(annotations=IRREVERSIBLE)
    def send_email(to: str, subject: str, body: str = "") -> dict[str, Any]:
        """Send an email to any address (kept in the outbox). Irreversible."""
        if "@" not in to:
            raise ToolError(f"{to!r} is no email address")
        message_id = f"msg_{next(state.ids)}"
        state.outbox.append({"id": message_id, "to": to, "subject": subject, "body": body})
        return {"id": message_id, "to": to, "status": "sent"}

    _tickets(mcp, state)
    _faults(mcp)
    return mcp


def _tickets(mcp: MCPServer, state: Ledger) -> None:
    @mcp.tool(annotations=READ)
    def list_tickets(status: str | None = None) -> list[Ticket]:
        """Tickets, optionally of one status (open, closed)."""
        return [t for t in state.tickets.values() if status is None or t["status"] == status]

    @mcp.tool(annotations=READ)
    def get_ticket(ticket_id: str) -> Ticket:
        """One ticket."""
        if ticket_id not in state.tickets:
            raise ToolError(f"no ticket {ticket_id!r}")
        return Ticket(**state.tickets[ticket_id])

    @mcp.tool(annotations=WRITE)
    def create_ticket(title: str, body: str = "") -> Ticket:
        """Open a ticket. Undone by close_ticket(ticket_id)."""
        ticket_id = f"t_{next(state.ids)}"
        state.tickets[ticket_id] = Ticket(id=ticket_id, title=title, body=body, status="open")
        return Ticket(**state.tickets[ticket_id])

    @mcp.tool(annotations=WRITE)
    def delete_ticket(ticket_id: str) -> Ticket:
        """Delete a ticket (what undoes create_ticket)."""
        if ticket_id not in state.tickets:
            raise ToolError(f"no ticket {ticket_id!r}")
        return Ticket(**state.tickets.pop(ticket_id))

    @mcp.tool(annotations=WRITE)
    def close_ticket(ticket_id: str) -> Ticket:
        """Close a ticket. Undone by reopen_ticket(ticket_id)."""
        return _set_status(state, ticket_id, "closed")

    @mcp.tool(annotations=WRITE)
    def reopen_ticket(ticket_id: str) -> Ticket:
        """Reopen a closed ticket."""
        return _set_status(state, ticket_id, "open")

    @mcp.resource("tickets://{ticket_id}", mime_type="application/json")
    def ticket_resource(ticket_id: str) -> str:
        """A ticket as a resource."""
        return json.dumps(state.tickets.get(ticket_id) or {"error": "no such ticket"})

    @mcp.prompt()
    def triage(ticket_id: str) -> str:
        """A prompt to triage a ticket."""
        return f"Triage ticket {ticket_id}: decide its priority and who should take it."


def _faults(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ)
    async def slow(seconds: float = 1.0) -> str:
        """Sleep, then answer (a slow upstream, for timeouts)."""
        await asyncio.sleep(min(seconds, 60.0))
        return "done"

    @mcp.tool(annotations=READ)
    def fail(message: str = "boom") -> str:
        """Always a tool error."""
        raise ToolError(message)


def _set_status(state: Ledger, ticket_id: str, status: str) -> Ticket:
    if ticket_id not in state.tickets:
        raise ToolError(f"no ticket {ticket_id!r}")
    state.tickets[ticket_id]["status"] = status
    return Ticket(**state.tickets[ticket_id])


class _Guard:
    """Requires ``X-Api-Key`` when a key is set; logs what each request carried."""

    def __init__(self, app: ASGIApp, api_key: str | None, header_log: str | None) -> None:
        self.app, self.api_key, self.header_log = app, api_key, header_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            if self.header_log:
                with Path(self.header_log).open("a", encoding="utf-8") as log:
                    seen = {"authorization": headers.get("authorization"),
                            "x-api-key": headers.get("x-api-key")}  # fmt: skip
                    log.write(json.dumps(seen) + "\n")
            if self.api_key and headers.get("x-api-key") != self.api_key:
                await _deny(send)
                return
        await self.app(scope, receive, send)


async def _deny(send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    body = b'{"error": "missing or wrong X-Api-Key"}'
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def http_app(
    *, api_key: str | None = None, header_log: str | None = None, state: Ledger | None = None
) -> ASGIApp:
    """The streamable-HTTP app at ``/mcp`` (stateless: any worker answers any request)."""
    app = build(state).streamable_http_app(stateless_http=True, json_response=True)
    return _Guard(app, api_key, header_log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--stdio", action="store_true", help="serve on stdin/stdout")
    parser.add_argument("--api-key", default=os.environ.get("EXAMPLE_API_KEY"))
    parser.add_argument("--header-log", default=os.environ.get("EXAMPLE_HEADER_LOG"))
    args = parser.parse_args()
    if args.stdio:
        build().run("stdio")
        return
    uvicorn.run(http_app(api_key=args.api_key, header_log=args.header_log), host=args.host,
                port=args.port, log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()


__all__ = ["Ledger", "build", "http_app"]
