"""A rollback's values: the window asked for, the plan (each recorded call that changed
something, newest first, and what will happen to it) and each step's outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal

from tether.clock import from_micros, to_rfc3339
from tether.errors import Conflict, NotFound

OnFailure = Literal["stop", "continue"]


class RollbackInProgress(Conflict):
    code = "rollback_in_progress"


class RollbackNotFound(NotFound):
    code = "rollback_not_found"


class Plan(StrEnum):
    """What a rollback does with one recorded call."""

    UNDO = "undo"  # its compensation will run
    UNDONE = "undone"  # a rollback undid it already: never twice
    UNCERTAIN = "uncertain"  # an undo was started and nobody knows whether it ran: left alone
    IRREVERSIBLE = "irreversible"  # nothing undoes it (declared, or not derivable)


class Outcome(StrEnum):
    """What happened to a step that was to run."""

    UNDONE = "undone"
    FAILED = "failed"  # the upstream answered with an error: nothing changed, it may run again
    UNCERTAIN = "uncertain"  # no answer from the upstream: it may have run
    REFUSED = "refused"  # policy did not allow this operator this undo
    SKIPPED = "skipped"  # another rollback took it meanwhile
    NOT_RUN = "not_run"  # an earlier step failed and the rollback stopped


@dataclass(frozen=True, slots=True)
class Window:
    """The calls a rollback looks at: the agent's (and, with ``delegates``, those of agents
    acting on its behalf) recorded from ``since`` to ``until`` (microseconds, inclusive)."""

    agent_id: str
    since: int | None = None
    until: int | None = None
    delegates: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "since": time_text(self.since),
                "until": time_text(self.until), "delegates": self.delegates}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Step:
    """One recorded call in a rollback, newest first. ``undo`` is the compensation ready to
    run (raw: it stays on the server; answers carry ``shown``, its redacted copy)."""

    call: str  # the decision event that allowed the call (the tool_calls key)
    event_id: str  # the call's tool.called event
    agent_id: str
    tool: str
    at: int
    plan: Plan
    undo: dict[str, Any] | None = None
    shown: dict[str, Any] | None = None
    note: str | None = None  # why irreversible, or which rollback undid it
    outcome: Outcome | None = None
    error: str | None = None
    step_event: str | None = None  # the step's rollback.step event

    def ran(self, outcome: Outcome, *, error: str | None = None,
            step_event: str | None = None) -> Step:  # fmt: skip
        return replace(self, outcome=outcome, error=error, step_event=step_event)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "call": self.call, "event_id": self.event_id, "agent_id": self.agent_id,
            "tool": self.tool, "at": time_text(self.at), "plan": self.plan.value,
            "undo": self.shown,
        }  # fmt: skip
        for key, value in (("note", self.note), ("error", self.error),
                           ("step_event", self.step_event)):  # fmt: skip
            if value is not None:
                out[key] = value
        if self.outcome is not None:
            out["outcome"] = self.outcome.value
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """A rollback's plan (``dry_run``) or its result."""

    window: Window
    steps: Sequence[Step]
    dry_run: bool
    rollback_id: str | None = None
    status: str = "planned"  # planned | done | stopped
    interrupted: Sequence[str] = ()  # earlier rollbacks of this agent found cut short

    def summary(self) -> dict[str, int]:
        plans = Counter(s.plan.value for s in self.steps)
        out = {p.value: plans.get(p.value, 0) for p in Plan}
        if not self.dry_run:
            done = Counter(s.outcome.value for s in self.steps if s.outcome is not None)
            out |= {f"outcome_{o.value}": done.get(o.value, 0) for o in Outcome}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "rollback_id": self.rollback_id, "dry_run": self.dry_run, "status": self.status,
            **self.window.to_json(), "summary": self.summary(),
            "interrupted": list(self.interrupted), "steps": [s.to_json() for s in self.steps],
        }  # fmt: skip


def time_text(us: int | None) -> str | None:
    """Microseconds since the epoch as RFC 3339 (None stays None)."""
    return None if us is None else to_rfc3339(from_micros(us))
