"""The record of every tool call an agent made, through the gateway or the SDK's ``guard``:
one row per call, keyed by the decision that allowed it (a decision allows one call), beside
the call's ``tool.called`` ledger event, in the same commit — and the compensation journal:
each call's undo, derived when it completed, ready to run."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tether.db.base import Base


class ToolCallRow(Base):
    __tablename__ = "tool_calls"

    decision_event: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)  # its tool.called event
    agent_id: Mapped[str] = mapped_column(String(40))
    tool: Mapped[str] = mapped_column(String(200))
    via: Mapped[str] = mapped_column(String(16))  # "gateway" | "sdk"
    outcome: Mapped[str] = mapped_column(String(32))
    at: Mapped[int] = mapped_column(BigInteger)  # microseconds since the epoch
    # The journal: whether the call can be undone (None: nothing to undo — refused, failed,
    # read-only), the undo call ready to run (JSON: {"tool": <policy id>, "arguments": {…}}),
    # and why a declared undo could not be derived from this call.
    reversible: Mapped[bool | None] = mapped_column(Boolean)
    undo: Mapped[str | None] = mapped_column(Text)
    undo_error: Mapped[str | None] = mapped_column(String(300))
    # The delegation chain the call was made in (JSON list of the principals before the
    # agent; None when it acted for itself): a rollback of an agent can take its delegates'.
    chain: Mapped[str | None] = mapped_column(Text)
    # Its undo, once a rollback took it (tether.rollback): "started" (claimed; the upstream
    # may or may not have run it), "done", "failed" (the upstream refused it: nothing
    # happened, it may run again), "uncertain" (no answer: it may have happened); the
    # rollback that took it, its step's ledger event and when.
    undo_state: Mapped[str | None] = mapped_column(String(16))
    undo_rollback: Mapped[str | None] = mapped_column(String(40))
    undo_event: Mapped[str | None] = mapped_column(String(40))
    undo_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_tool_calls_agent_id_at", "agent_id", "at"),)
