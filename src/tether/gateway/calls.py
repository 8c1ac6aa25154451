"""Recording tool calls: the gateway's (MCP) and those an in-process agent reports through the
SDK's ``guard`` — the same ledger event (``tool.called``), the same redaction, one row in
``tool_calls``, all in one commit.

A call is linked to the decision that allowed it, and a decision allows one call: a second
record for it is refused (:class:`CallAlreadyRecorded`). An agent's report is checked against
that decision inside the commit: the agent's own, an ``allow``, and for the tool it names —
an agent cannot put a call on the record that Tether did not allow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import anyio
import orjson
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.group import Chain, GroupCommitter
from tether.audit.models import EventRow
from tether.clock import Clock, to_micros
from tether.errors import Conflict, NotFound
from tether.gateway.models import ToolCallRow
from tether.gateway.redact import Redactor

Via = Literal["gateway", "sdk"]
Outcome = Literal["ok", "tool_error", "upstream_failure", "refused"]
_TABLE = cast(Table, ToolCallRow.__table__)


class DecisionNotFound(NotFound):
    code = "decision_not_found"


class CallAlreadyRecorded(Conflict):
    code = "call_already_recorded"


class CallNotAllowed(Conflict):
    code = "call_not_allowed"


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Who called what, by which decision, and what happened."""

    agent_id: str
    actor: str  # the agent's ref, ``agent:<id>``
    tool: str
    decision_event: str
    decision: str
    reasons: Sequence[str]
    policy_version: str | None
    args: Any
    result: Any
    outcome: Outcome
    duration_ms: float
    via: Via
    on_behalf_of: str | None = None
    chain: Sequence[str] = ()
    details: dict[str, Any] | None = None  # more, e.g. the gateway's server and tool
    action: str = "tool.call"
    resource: dict[str, Any] | None = None  # default: Tool::<tool>
    journal: Journal | None = None  # how the call is undone (None: nothing to undo)

    def __post_init__(self) -> None:
        if self.resource is None:
            object.__setattr__(self, "resource", {"type": "Tool", "id": self.tool})


@dataclass(frozen=True, slots=True)
class Journal:
    """A completed call's compensation: ``undo`` (``{"tool", "arguments"}``) ready to run,
    or not reversible (``undo`` None, ``error`` saying why when a declared undo could not be
    derived from the call)."""

    reversible: bool
    undo: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    event_id: str
    seq: int
    args_digest: str
    result_digest: str


class CallRecorder:
    def __init__(
        self, committer: GroupCommitter, clock: Clock, redactor: Redactor | None = None
    ) -> None:
        self.committer = committer
        self.clock = clock
        self.redactor = redactor or Redactor()

    async def record(
        self, facts: CallFacts, *, known: Iterable[str] = (), check: bool = False
    ) -> Recorded:
        """The call's event and row, durable when this returns. ``known``: secret values to
        hide wherever they appear. ``check``: verify the decision first (an agent's report);
        the gateway's own calls come with the decision it just made."""
        if check:  # the decision named: an event, never changed, so read before the lock
            facts = await anyio.to_thread.run_sync(self._checked, facts)
        needles = list(known)
        args_digest, args_copy = self.redactor.record(facts.args, needles)
        result_digest, result_copy = self.redactor.record(facts.result, needles)
        details = {
            **(facts.details or {}), "decision_event": facts.decision_event, "via": facts.via,
            "args_digest": args_digest, "args": args_copy, "result_digest": result_digest,
            "result": result_copy, "duration_ms": round(facts.duration_ms, 2),
        }  # fmt: skip
        if facts.journal is not None:  # the undo's digest and a redacted copy, as the call's
            details["reversible"] = facts.journal.reversible
            if facts.journal.undo is not None:
                details["undo_digest"], details["undo"] = self.redactor.record(
                    facts.journal.undo, needles
                )
            if facts.journal.error is not None:
                details["undo_error"] = facts.journal.error

        event = NewEvent(
            EventType.TOOL_CALLED, facts.actor, agent_id=facts.agent_id,
            on_behalf_of=facts.on_behalf_of, chain=tuple(facts.chain),
            action=facts.action, resource=facts.resource, decision=facts.decision,
            reasons=tuple(facts.reasons), policy_version=facts.policy_version,
            outcome=facts.outcome, details=details,
        )  # fmt: skip
        now = to_micros(self.clock.now())

        def finish(chained: list[Event]) -> Recorded:
            return Recorded(chained[0].id, chained[0].seq, args_digest, result_digest)

        journal = facts.journal
        undo = orjson.dumps(journal.undo).decode() if journal and journal.undo else None
        reversible = journal.reversible if journal else None
        why_not = journal.error[:300] if journal and journal.error else None
        before = [p for p in facts.chain if p != facts.agent_id]
        chain = orjson.dumps(before).decode() if before else None

        def rows(chained: list[Event]) -> list[tuple[Table, tuple[Any, ...]]]:
            row = (facts.decision_event, chained[0].id, facts.agent_id, facts.tool,
                   facts.via, facts.outcome, now, reversible, undo, why_not, chain,
                   None, None, None, None)  # fmt: skip
            return [(_TABLE, row)]

        record = Chain([event], finish=finish, rows_of=rows)
        if not check:
            # The gateway records the decision it has just made: no earlier record can name
            # it (and the primary key stands guard) — appended without a session.
            return cast(Recorded, await self.committer.append_async(record))

        def job(s: Session) -> Chain:
            # A report names a decision of its own: once only, checked under the lock.
            if s.get(ToolCallRow, facts.decision_event) is not None:
                raise CallAlreadyRecorded(
                    f"the call decided by {facts.decision_event} is on the record already: "
                    "a decision allows one call — ask again for another"
                )
            return record

        return cast(Recorded, await self.committer.run_async(_Once(job, facts.decision_event)))

    def _checked(self, facts: CallFacts) -> CallFacts:
        with self.committer.db.read() as s:
            return _decision_of(s, facts)


class _Once:
    """A record's job, one per decision within a batch too: a second report of the same
    decision in the same batch is refused before any row is written (the primary key would
    otherwise fail the whole batch, other callers' events with it)."""

    def __init__(self, job: Callable[[Session], Chain], decision_event: str) -> None:
        self.job, self.decision_event, self.duplicate = job, decision_event, False

    def __call__(self, s: Session) -> Chain:
        if self.duplicate:
            raise CallAlreadyRecorded(
                f"the call decided by {self.decision_event} is being recorded already"
            )
        return self.job(s)

    @staticmethod
    def prepare(s: Session, jobs: Sequence[_Once]) -> None:
        seen: set[str] = set()
        for job in jobs:
            job.duplicate = job.decision_event in seen
            seen.add(job.decision_event)


def _decision_of(s: Session, facts: CallFacts) -> CallFacts:
    """The agent's report checked against the decision it names, whose action, resource and
    reasons the record then carries."""
    row = s.execute(
        select(EventRow.type, EventRow.agent_id, EventRow.decision, EventRow.action,
               EventRow.resource, EventRow.reasons, EventRow.policy_version)
        .where(EventRow.id == facts.decision_event)
    ).one_or_none()  # fmt: skip
    if row is None or row.type != EventType.DECISION.value or row.agent_id != facts.agent_id:
        raise DecisionNotFound(
            f"no decision {facts.decision_event} of this agent: report a call with the "
            "event_id of the decision that allowed it"
        )
    resource = orjson.loads(row.resource) if row.resource else {}
    if row.decision != "allow":
        raise CallNotAllowed(f"decision {facts.decision_event} was {row.decision!r}, not allow")
    if resource.get("id") != facts.tool:
        raise CallNotAllowed(
            f"decision {facts.decision_event} allowed {row.action} on "
            f"{resource.get('type')}::{resource.get('id')!r}, not the call of {facts.tool!r}"
        )
    return replace(facts, action=row.action, resource=resource, decision="allow",
                   reasons=tuple(orjson.loads(row.reasons or "[]")),
                   policy_version=row.policy_version)  # fmt: skip
