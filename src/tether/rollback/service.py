"""Rollback: undo what an agent did since a point in time, from the compensation journal.

The plan comes first (:meth:`RollbackService.plan`, a dry run): every recorded call of the
agent in the window that changed something, newest first — its undo ready to run, already
undone (never twice), uncertain, or irreversible. Executing (:meth:`RollbackService.run`)
runs the undos in that order, each one:

1. decided as the operator (Cedar's principal ``User::"<id>"``, action ``tool.undo``, the
   undo's tool as resource, the agent, the call and the undo's arguments in the context):
   Tether has checked the operator answers for the agent, and policies may forbid more;
2. *claimed* in the commit that records the decision — the call's ``undo_state`` goes from
   nothing (or ``failed``) to ``started`` in one conditional UPDATE, so two rollbacks never
   both run it, and a crash after this point leaves it ``started``: reported ``uncertain``
   by every later rollback and not run again unless the operator, having looked at the
   upstream, asks (``retry_uncertain``);
3. run through the gateway on the upstream (the operator's credentials never leave Tether:
   the upstream gets the gateway's own);
4. recorded — a ``rollback.step`` event (digests and redacted copies of the undo and its
   result) and the call's ``undo_state`` (``done``, ``failed``: the upstream said no,
   nothing changed, ``uncertain``: no answer) in one commit.

A failed step stops the rollback (``on_failure="stop"``, the default) or not
(``"continue"``). A rollback holds a lease on its agent while it runs; one whose worker went
away is marked ``interrupted`` by the next, which resumes: what was undone stays undone,
what was in flight is uncertain, the rest runs.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import anyio
import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from tether.agents.service import AgentService
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.db.text import unstorable
from tether.errors import LedgerUnavailable, ValidationFailed
from tether.gateway.models import ToolCallRow
from tether.gateway.redact import Redactor
from tether.ids import IdPrefix, new_id
from tether.policy.decide import DecisionService
from tether.policy.values import Ask, Decision
from tether.principals import Principal
from tether.rollback.models import RollbackRow
from tether.rollback.values import (
    OnFailure,
    Outcome,
    Plan,
    Report,
    RollbackInProgress,
    RollbackNotFound,
    Step,
    Window,
    time_text,
)

UNDO = "tool.undo"
MAX_STEPS = 10_000  # per rollback; a larger window is refused (narrow it with since/until)


class Tools(Protocol):
    """What a rollback needs of the MCP gateway (tether.gateway.service.Gateway)."""

    def tool(self, policy_id: str) -> tuple[Any, Any, dict[str, Any]]: ...

    async def forward(
        self, policy_id: str, args: dict[str, Any]
    ) -> tuple[Any, str, Sequence[str]]: ...


class GatewayRef(Protocol):
    """The wiring's handle on the running gateway (None while none runs)."""

    @property
    def gateway(self) -> Tools | None: ...


class _Taken(Exception):
    """The call's undo was claimed by someone else between the plan and this step."""


class RollbackService:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, *, agents: AgentService,
        decisions: DecisionService, gateway: GatewayRef, redactor: Redactor | None = None,
        lease_seconds: float = 120.0,
    ) -> None:  # fmt: skip
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.decisions = decisions
        self.gateway = gateway
        self.redactor = redactor or Redactor()
        self.lease_us = int(lease_seconds * 1_000_000)

    # -- the plan -----------------------------------------------------------------------------
    def plan(self, actor: Principal, window: Window, *, retry_uncertain: bool = False) -> Report:
        """The dry run: what a rollback of ``window`` would do, nothing written."""
        _check(window)
        with self.db.read() as s:
            steps = self._steps(s, actor, window, retry_uncertain=retry_uncertain)
        return Report(window, steps, dry_run=True)

    def _steps(
        self, s: Session, actor: Principal, window: Window, *, retry_uncertain: bool
    ) -> list[Step]:
        """The window's calls that changed something, newest first, each with its plan. The
        operator must answer for (``operate``) the agent and for each delegate whose calls
        are included."""
        self.agents.authorized_row(s, actor, window.agent_id, "operate")
        query = select(ToolCallRow).where(ToolCallRow.outcome == "ok",
                                          ToolCallRow.reversible.is_not(None))  # fmt: skip
        mine = ToolCallRow.agent_id == window.agent_id
        if window.delegates:  # agent ids are [A-Za-z0-9_]: nothing to escape in the pattern
            mine = or_(mine, ToolCallRow.chain.like(f'%"{window.agent_id}"%'))
        query = query.where(mine)
        if window.since is not None:
            query = query.where(ToolCallRow.at >= window.since)
        if window.until is not None:
            query = query.where(ToolCallRow.at <= window.until)
        query = query.order_by(ToolCallRow.at.desc(), ToolCallRow.event_id.desc())
        rows = s.execute(query.limit(MAX_STEPS + 1)).scalars().all()
        if len(rows) > MAX_STEPS:
            raise ValidationFailed(f"more than {MAX_STEPS} calls in this window: narrow it "
                                   "with since and until", field="since")  # fmt: skip
        for other in sorted({r.agent_id for r in rows} - {window.agent_id}):
            self.agents.authorized_row(s, actor, other, "operate")
        return [self._step(r, retry_uncertain=retry_uncertain) for r in rows]

    def _step(self, row: ToolCallRow, *, retry_uncertain: bool) -> Step:
        undo = orjson.loads(row.undo) if row.undo else None
        shown = self.redactor.record(undo)[1] if undo is not None else None
        base = Step(row.decision_event, row.event_id, row.agent_id, row.tool, row.at,
                    Plan.UNDO, undo, shown)  # fmt: skip
        if not row.reversible or undo is None:
            why = row.undo_error or "no compensation is declared for this tool (a write tool)"
            return Step(*_key(base), Plan.IRREVERSIBLE, note=why)
        state = row.undo_state
        if state == "done":
            return _with(base, Plan.UNDONE, f"undone by {row.undo_rollback}")
        if state in ("started", "uncertain") and not retry_uncertain:
            return _with(base, Plan.UNCERTAIN, f"rollback {row.undo_rollback} started its "
                         "undo and did not see it finish: check the upstream, then roll back "
                         "with retry_uncertain to run it again")  # fmt: skip
        return base

    # -- executing ----------------------------------------------------------------------------
    async def run(
        self, actor: Principal, window: Window, *, on_failure: OnFailure = "stop",
        retry_uncertain: bool = False,
    ) -> Report:  # fmt: skip
        """Roll back ``window``: start (lease, plan, ``rollback.started``), each step, finish
        (``rollback.finished``); the report says what happened to every call."""
        _check(window)
        # Shielded: a caller that goes away (a closed connection) does not cut a step in two.
        with anyio.CancelScope(shield=True):
            report = await self._run(actor, window, on_failure, retry_uncertain=retry_uncertain)
        return report  # noqa: RET504 - out of the scope: mypy sees one that may swallow

    async def _run(
        self, actor: Principal, window: Window, on_failure: OnFailure, *, retry_uncertain: bool
    ) -> Report:
        rollback_id, steps, interrupted = await anyio.to_thread.run_sync(
            self._start, actor, window, on_failure, retry_uncertain
        )
        done: list[Step] = []
        stopped = False
        for step in steps:
            if step.plan is not Plan.UNDO:
                done.append(step)
            elif stopped:
                done.append(step.ran(Outcome.NOT_RUN))
            else:
                ran = await self._undo(actor, rollback_id, step, retry_uncertain=retry_uncertain)
                done.append(ran)
                failed = ran.outcome in (Outcome.FAILED, Outcome.UNCERTAIN, Outcome.REFUSED)
                stopped = failed and on_failure == "stop"
        status = "stopped" if stopped else "done"
        report = Report(window, done, dry_run=False, rollback_id=rollback_id, status=status,
                        interrupted=interrupted)  # fmt: skip
        await anyio.to_thread.run_sync(self._finish, actor, report)
        return report

    def _start(
        self, actor: Principal, window: Window, on_failure: str, retry_uncertain: bool
    ) -> tuple[str, list[Step], list[str]]:
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            steps = self._steps(s, actor, window, retry_uncertain=retry_uncertain)
            running = s.execute(select(RollbackRow).where(
                RollbackRow.agent_id == window.agent_id, RollbackRow.status == "running"
            )).scalars().all()  # fmt: skip
            live = [r.id for r in running if r.lease_until > now_us]
            if live:
                raise RollbackInProgress(
                    f"rollback {live[0]} of agent {window.agent_id} is running: wait for its "
                    "report, then roll back again to go on", rollback=live[0],
                )  # fmt: skip
            interrupted = [r.id for r in running]
            if interrupted:
                s.execute(update(RollbackRow).where(RollbackRow.id.in_(interrupted))
                          .values(status="interrupted", finished_at=now_us))  # fmt: skip
            rollback_id = new_id(IdPrefix.ROLLBACK)
            s.add(RollbackRow(
                id=rollback_id, agent_id=window.agent_id, requested_by=actor.ref,
                since=window.since, until=window.until, delegates=window.delegates,
                on_failure=on_failure, status="running", started_at=now_us,
                lease_until=now_us + self.lease_us,
            ))  # fmt: skip
            plans = Report(window, steps, dry_run=True).summary()
            self.ledger.append(s, [NewEvent(
                EventType.ROLLBACK_STARTED, actor.ref, agent_id=window.agent_id,
                action="rollback", resource={"type": "Agent", "id": window.agent_id},
                details={"rollback_id": rollback_id, **window.to_json(), "plan": plans,
                         "on_failure": on_failure, "retry_uncertain": retry_uncertain,
                         "interrupted": interrupted,
                         "steps": [s.call for s in steps if s.plan is Plan.UNDO]},
            )], now=now)  # fmt: skip
        return rollback_id, steps, interrupted

    async def _undo(
        self, actor: Principal, rollback_id: str, step: Step, *, retry_uncertain: bool
    ) -> Step:
        assert step.undo is not None
        tool, arguments = str(step.undo["tool"]), dict(step.undo.get("arguments") or {})
        gateway = self.gateway.gateway
        try:
            properties = _served(gateway, tool)
        except LookupError as exc:  # nothing ran: the step may run again later
            return await self._record_step(actor, rollback_id, step, Outcome.FAILED,
                                           error=f"cannot run {tool}: {exc}")  # fmt: skip
        declared_by = str(step.undo.get("declared_by") or "config")
        context = {"agent": step.agent_id, "undoes": step.tool, "call": step.call,
                   "declared_by": declared_by, "args": arguments}  # fmt: skip
        ask = Ask(actor.id, UNDO, "Tool", tool, properties, context, caller=actor.ref)
        runtime = self.decisions.runtime
        if not runtime.fresh():  # the poller is behind (or not running): catch up, as decide does
            await anyio.to_thread.run_sync(runtime.ensure_current)
        decision = self.decisions.evaluate_operator(actor, ask)
        try:
            decision_event = await anyio.to_thread.run_sync(partial(
                self._decide_and_claim, actor, rollback_id, step, ask, decision,
                retry_uncertain=retry_uncertain,
            ))  # fmt: skip
        except _Taken:
            return step.ran(Outcome.SKIPPED, error="another rollback took this undo meanwhile")
        except LedgerUnavailable:
            return step.ran(Outcome.NOT_RUN, error="the ledger could not be written")
        if not decision.allowed:
            why = decision.error["message"] if decision.error else ", ".join(decision.reasons)
            return await self._record_step(
                actor, rollback_id, step, Outcome.REFUSED, decision_event=decision_event,
                error=f"policy did not allow this undo ({decision.effect.value}): {why}",
            )  # fmt: skip
        assert gateway is not None
        # The lease is held while the upstream runs the undo, however long it takes: no other
        # rollback finds this one gone (and its claimed undo free) while it is at work.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._hold_lease, rollback_id)
            result, outcome, known = await gateway.forward(tool, arguments)
            tg.cancel_scope.cancel()
        shown = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        if outcome == "ok":
            return await self._record_step(actor, rollback_id, step, Outcome.UNDONE,
                                           decision_event=decision_event, result=shown,
                                           known=known)  # fmt: skip
        texts = [c.get("text", "") for c in shown.get("content", []) if isinstance(c, dict)]
        error = (" ".join(t for t in texts if t) or "the undo failed")[:500]
        return await self._record_step(
            actor, rollback_id, step,
            Outcome.FAILED if outcome == "tool_error" else Outcome.UNCERTAIN,
            decision_event=decision_event, result=shown, known=known, error=error,
        )  # fmt: skip

    async def _hold_lease(self, rollback_id: str) -> None:
        """Renew the rollback's lease every third of it, until cancelled."""
        while True:
            await anyio.sleep(self.lease_us / 3_000_000)
            await anyio.to_thread.run_sync(self._renew, rollback_id)

    def _renew(self, rollback_id: str) -> None:
        now_us = to_micros(self.clock.now())
        with self.db.write() as s:
            s.execute(update(RollbackRow).where(RollbackRow.id == rollback_id,
                                                RollbackRow.status == "running")
                      .values(lease_until=now_us + self.lease_us))  # fmt: skip

    def _decide_and_claim(
        self, actor: Principal, rollback_id: str, step: Step, ask: Ask, decision: Decision, *,
        retry_uncertain: bool,
    ) -> str:  # fmt: skip
        """The decision's event; when it allows, the call's undo claimed in the same commit
        (:class:`_Taken` if another rollback has it), and the lease renewed."""
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            if decision.allowed:
                free: ColumnElement[bool] = ToolCallRow.undo_state == "failed"
                if retry_uncertain:  # and "started" by a rollback that is no longer running
                    live = select(RollbackRow.id).where(
                        RollbackRow.status == "running", RollbackRow.lease_until > now_us
                    )
                    free = or_(free, ToolCallRow.undo_state == "uncertain",
                               (ToolCallRow.undo_state == "started")
                               & ToolCallRow.undo_rollback.not_in(live))  # fmt: skip
                claimed = s.execute(
                    update(ToolCallRow)
                    .where(ToolCallRow.decision_event == step.call,
                           or_(ToolCallRow.undo_state.is_(None), free))
                    .values(undo_state="started", undo_rollback=rollback_id, undo_at=now_us)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    raise _Taken
            s.execute(update(RollbackRow).where(RollbackRow.id == rollback_id)
                      .values(lease_until=now_us + self.lease_us))  # fmt: skip
            event = self.decisions.operator_event(
                actor, ask, decision, agent_id=step.agent_id,
                details={"rollback_id": rollback_id, "undoes": step.call},
            )  # fmt: skip
            return self.ledger.append(s, [event], now=now)[0].id

    async def _record_step(
        self, actor: Principal, rollback_id: str, step: Step, outcome: Outcome, *,
        decision_event: str | None = None, result: Any = None, known: Iterable[str] = (),
        error: str | None = None,
    ) -> Step:  # fmt: skip
        needles = list(known)
        assert step.undo is not None
        undo_digest, undo_copy = self.redactor.record(step.undo, needles)
        details: dict[str, Any] = {
            "rollback_id": rollback_id, "call": step.call, "call_event": step.event_id,
            "tool": step.tool, "undo_digest": undo_digest, "undo": undo_copy,
            "decision_event": decision_event,
        }  # fmt: skip
        if result is not None:
            details["result_digest"], details["result"] = self.redactor.record(result, needles)
        if error is not None:
            details["error"] = self.redactor.record(error, needles)[1]
        state = {Outcome.UNDONE: "done", Outcome.FAILED: "failed",
                 Outcome.UNCERTAIN: "uncertain"}.get(outcome)  # fmt: skip
        claimed = decision_event is not None and outcome is not Outcome.REFUSED

        def write() -> str:
            now = self.clock.now()
            with self.db.write() as s:
                event = NewEvent(
                    EventType.ROLLBACK_STEP, actor.ref, agent_id=step.agent_id,
                    action=UNDO, resource={"type": "Tool", "id": str(step.undo["tool"])},  # type: ignore[index]
                    outcome=outcome.value, details=details,
                )  # fmt: skip
                chained = self.ledger.append(s, [event], now=now)[0]
                if claimed and state is not None:  # the claim's row: its outcome and its step
                    s.execute(update(ToolCallRow)
                              .where(ToolCallRow.decision_event == step.call,
                                     ToolCallRow.undo_rollback == rollback_id)
                              .values(undo_state=state, undo_at=to_micros(now),
                                      undo_event=chained.id)
                              .execution_options(synchronize_session=False))  # fmt: skip
                return chained.id

        shown_error = details.get("error")
        try:
            event_id = await anyio.to_thread.run_sync(write)
        except LedgerUnavailable:  # the undo ran (or not) and stays "started": uncertain
            return step.ran(Outcome.UNCERTAIN, error="the step's outcome could not be recorded")
        return step.ran(outcome, error=shown_error, step_event=event_id)

    def _finish(self, actor: Principal, report: Report) -> None:
        now = self.clock.now()
        summary = report.summary()
        with self.db.write() as s:
            # One found interrupted meanwhile (its lease lapsed: a stalled worker) stays so.
            s.execute(update(RollbackRow).where(RollbackRow.id == report.rollback_id,
                                                RollbackRow.status == "running").values(
                status=report.status, finished_at=to_micros(now),
                report=orjson.dumps(summary).decode(),
            ))  # fmt: skip
            self.ledger.append(s, [NewEvent(
                EventType.ROLLBACK_FINISHED, actor.ref, agent_id=report.window.agent_id,
                action="rollback", resource={"type": "Agent", "id": report.window.agent_id},
                outcome=report.status,
                details={"rollback_id": report.rollback_id, "summary": summary,
                         "steps": {s.call: s.outcome.value for s in report.steps
                                   if s.outcome is not None}},
            )], now=now)  # fmt: skip

    # -- reading ------------------------------------------------------------------------------
    def get(self, actor: Principal, rollback_id: str) -> dict[str, Any]:
        """A rollback's record: who, which window, its status and final counts."""
        with self.db.read() as s:
            row = None if unstorable(rollback_id) else s.get(RollbackRow, rollback_id)
            if row is None:
                raise RollbackNotFound(f"no rollback {rollback_id!r}", rollback=rollback_id)
            self.agents.authorized_row(s, actor, row.agent_id, "read")
            window = Window(row.agent_id, row.since, row.until, row.delegates)
            return {"id": row.id, "requested_by": row.requested_by, "status": row.status,
                    "on_failure": row.on_failure, **window.to_json(),
                    "started_at": time_text(row.started_at),
                    "finished_at": time_text(row.finished_at),
                    "summary": orjson.loads(row.report) if row.report else None}  # fmt: skip

    def reversible_since(self, agent_ids: builtins.list[str], since: datetime) -> int:
        """How many reversible calls, not undone yet, ``agent_ids`` made since ``since``:
        what a kill offers to roll back."""
        with self.db.read() as s:
            return int(s.execute(
                select(func.count()).select_from(ToolCallRow).where(
                    ToolCallRow.agent_id.in_(agent_ids), ToolCallRow.outcome == "ok",
                    ToolCallRow.reversible.is_(True), ToolCallRow.at >= to_micros(since),
                    or_(ToolCallRow.undo_state.is_(None), ToolCallRow.undo_state == "failed"),
                )
            ).scalar_one())  # fmt: skip


def _served(gateway: Tools | None, tool: str) -> dict[str, Any]:
    """The properties the undo's tool is decided with; :class:`LookupError` if no running
    gateway serves it."""
    if gateway is None:
        raise LookupError("the MCP gateway is not running (no upstream configured)")
    return gateway.tool(tool)[2]


def _check(window: Window) -> None:
    if window.since is not None and window.until is not None and window.since > window.until:
        raise ValidationFailed("since is after until", field="since")


def _key(step: Step) -> tuple[str, str, str, str, int]:
    return step.call, step.event_id, step.agent_id, step.tool, step.at


def _with(step: Step, plan: Plan, note: str) -> Step:
    return Step(*_key(step), plan, step.undo, step.shown, note)
