"""The decision path: who asks, may they, and the durable record — the PDP's one service.

1. runtime checks as set look-ups: is this worker current; is the token revoked; does the
   subject exist; is every member of the chain active (no database round trip);
2. Cedar through :class:`tether.policy.engine.CompiledPolicies` (sliced, pre-parsed handles);
3. ``approval_required`` goes to :class:`tether.approvals.service.ApprovalService`, which
   consumes a granted approval for this exact request or opens (or reuses) a pending one;
4. every answer is a ledger event, made durable by group commit before the answer leaves;
   a ledger that cannot be written turns the answer into deny (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, Protocol, cast

import orjson
from prometheus_client import Counter
from sqlalchemy.orm import Session

from tether.agents import authority, recertification
from tether.agents.authority import Act, Stewards
from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.group import Chain, GroupCommitter
from tether.clock import Clock, to_micros
from tether.errors import Forbidden, LedgerUnavailable
from tether.freeze.values import FROZEN, holding
from tether.policy.engine import CedarRequest, CompiledPolicies, Outcome
from tether.policy.entities import AgentView
from tether.policy.runtime import DecisionSnapshot
from tether.policy.values import (
    INACTIVE_AGENT,
    INACTIVE_CHAIN,
    LEDGER_DOWN,
    OPERATOR_AUTHORITY,
    RECERTIFICATION_OVERDUE,
    REVOKED_TOKEN,
    STALE,
    UNKNOWN_ACTION,
    UNKNOWN_AGENT,
    Ask,
    Decision,
    Effect,
    validate_ask,
)
from tether.principals import Principal, Role

log = logging.getLogger("tether.policy.decide")
DECISIONS = Counter("tether_decisions", "Decisions answered", ["decision"])
FAILED_CLOSED = Counter(
    "tether_decisions_failed_closed",
    "Decisions denied because Tether could not be sure (ledger unwritable, worker not current)",
    ["reason"],
)
_COUNTED = {effect: DECISIONS.labels(effect.value) for effect in Effect}


class ApprovalCheckpoints(Protocol):
    """What the decision path needs of the approvals domain (which implements it, and depends
    on this module, not the other way round): the checkpoint run as a job of the group commit,
    and the announcement once that commit is durable."""

    def checkpoint(
        self, s: Session, ask: Ask, decision: Decision, decisions: DecisionService,
        watch: Any = None,
    ) -> Chain: ...  # fmt: skip

    def announce(self, final: Decision, opened: Any) -> None: ...


class Watcher(Protocol):
    """What the decision path needs of monitoring (:class:`tether.monitor.service.Monitor`,
    which implements it): the principal's risk and the session's history for Cedar, the
    request counted before Cedar is asked, the answer after (and the response it may change
    it into), and that response recorded before the answer leaves."""

    def principal_entity(self, view: AgentView) -> str: ...

    def session_context(self, ask: Ask, now_us: int) -> dict[str, Any]: ...

    def before(self, ask: Ask, view: AgentView, now_us: int, *, session: bool = True,
               risk: bool = True) -> Any: ...  # fmt: skip

    def after(self, ask: Ask, decision: Decision, watch: Any, now_us: int
              ) -> tuple[Decision, Any]: ...  # fmt: skip

    def respond(self, response: Any) -> bool: ...


class DecisionService:
    def __init__(
        self,
        runtime: DecisionSnapshot,
        committer: GroupCommitter,
        clock: Clock,
        approvals: ApprovalCheckpoints,
        monitor: Watcher | None = None,
        *,
        recertify_overdue: Mapping[str, str] = recertification.DEFAULT_OVERDUE,
    ) -> None:
        self.runtime = runtime
        self.committer = committer
        self.clock = clock
        self.approvals = approvals
        self.monitor = monitor
        self.recertify_overdue = dict(recertify_overdue)  # each tier's response when overdue

    def may_ask(self, asker: Principal, subject: str) -> None:
        """Who may ask about an agent's action — asking records an event and may open or use
        an approval, so it is not a read: the agent itself (its own token), an admin (a
        gateway's token), a supervisor for the agents they own or supervise; never an auditor."""
        if asker.kind == "agent":
            if subject != asker.id:
                raise Forbidden("an agent may only ask about its own actions", field="subject.id")
            return
        if asker.is_admin:
            return
        if asker.role is Role.SUPERVISOR:
            agent = self.runtime.agents.get(subject)
            if agent is None or authority.allows(
                asker, Act.OPERATE, Stewards(agent.owner_id, agent.supervisors)
            ):
                return  # an unknown agent is denied (and recorded) like for anyone
            raise Forbidden(f"you neither own nor supervise agent {subject}", field="subject.id")
        raise Forbidden("auditors read; asking for a decision records it and may use an approval")

    # -- evaluation (no I/O) ---------------------------------------------------------------
    def evaluate(self, ask: Ask) -> Decision:
        """The decision before it is recorded: runtime checks, then Cedar."""
        rt = self.runtime
        compiled = rt.policies
        if compiled is None or not rt.current():
            return _stale(compiled, 1)[0]
        now_us = to_micros(self.clock.now())
        refused = self._precheck(ask, compiled, now_us)
        if refused is not None:
            return refused
        outcome = compiled.decide(self._cedar(ask, now_us))
        return self._overdue(ask, decision_from_outcome(outcome, compiled.version), now_us)

    def evaluate_many(self, asks: Sequence[Ask]) -> list[Decision]:
        if len(asks) == 1:
            return [self.evaluate(asks[0])]
        rt = self.runtime
        compiled = rt.policies
        if compiled is None or not rt.current():
            return _stale(compiled, len(asks))
        now_us = to_micros(self.clock.now())
        out: list[Decision | None] = []
        pending: list[tuple[int, CedarRequest]] = []
        for i, ask in enumerate(asks):
            refused = self._precheck(ask, compiled, now_us)
            out.append(refused)
            if refused is None:
                pending.append((i, self._cedar(ask, now_us)))
        if pending:
            outcomes = compiled.decide_many([r for _, r in pending])
            for (i, _), outcome in zip(pending, outcomes, strict=True):
                out[i] = self._overdue(asks[i], decision_from_outcome(outcome, compiled.version),
                                       now_us)  # fmt: skip
        return [d for d in out if d is not None]

    def _watched(self, asks: Sequence[Ask]) -> list[tuple[Decision, Any, Any]]:
        """:meth:`evaluate_many` for decisions that will be recorded: each counted in its
        agent's behaviour window; beside each decision, the monitor's response (None, or one
        to record before the answer leaves) and what the monitor saw (its ``watch``)."""
        monitor = self.monitor
        if monitor is None:
            return [(d, None, None) for d in self.evaluate_many(asks)]
        rt = self.runtime
        compiled = rt.policies
        if compiled is None or not rt.current():
            return [(d, None, None) for d in _stale(compiled, len(asks))]
        now_us = to_micros(self.clock.now())
        if len(asks) == 1:  # decide, decide_then: one request, straight through
            return [self._watched_one(asks[0], monitor, compiled, now_us)]
        out: list[tuple[Decision, Any, Any] | None] = []
        pending: list[tuple[int, Any, CedarRequest]] = []
        for i, ask in enumerate(asks):
            refused = self._precheck(ask, compiled, now_us)
            if refused is not None:
                out.append((refused, None, None))
                continue
            out.append(None)
            pending.append((i, *self._watch(ask, monitor, compiled, now_us)))
        if pending:
            reqs = [r for _, _, r in pending]
            outcomes = [compiled.decide(reqs[0])] if len(reqs) == 1 else compiled.decide_many(reqs)
            for (i, watch, _), outcome in zip(pending, outcomes, strict=True):
                out[i] = self._watched_answer(asks[i], outcome, watch, monitor=monitor,
                                              version=compiled.version, now_us=now_us)  # fmt: skip
        return [x for x in out if x is not None]

    def _watched_one(
        self, ask: Ask, monitor: Watcher, compiled: CompiledPolicies, now_us: int
    ) -> tuple[Decision, Any, Any]:
        """:meth:`_watched` for one request: the same steps without the batch's lists."""
        refused = self._precheck(ask, compiled, now_us)
        if refused is not None:
            return refused, None, None
        watch, request = self._watch(ask, monitor, compiled, now_us)
        return self._watched_answer(ask, compiled.decide(request), watch, monitor=monitor,
                                    version=compiled.version, now_us=now_us)  # fmt: skip

    def _watch(
        self, ask: Ask, monitor: Watcher, compiled: CompiledPolicies, now_us: int
    ) -> tuple[Any, CedarRequest]:
        """The request counted in its agent's window, and Cedar's request with what the
        monitor gives it (the session, the principal with its risk)."""
        agents = self.runtime.agents
        reads = compiled.reads_session
        watch = monitor.before(ask, agents[ask.subject], now_us, session=reads,
                               risk=compiled.reads_risk)  # fmt: skip
        return watch, cedar_request(ask, agents, session=watch.session if reads else False,
                                    principal_entity=watch.entity)  # fmt: skip

    def _watched_answer(
        self, ask: Ask, outcome: Outcome, watch: Any, *, monitor: Watcher, version: str,
        now_us: int,
    ) -> tuple[Decision, Any, Any]:  # fmt: skip
        """Cedar's outcome scored by the monitor (its response, if any), then the overdue
        recertification's checkpoint."""
        decision = decision_from_outcome(outcome, version)
        final, response = monitor.after(ask, decision, watch, now_us)
        return self._overdue(ask, final, now_us), response, watch

    def _overdue(self, ask: Ask, decision: Decision, now_us: int) -> Decision:
        """After Cedar (and monitoring): an allow of an agent whose recertification is overdue,
        its tier's response being ``require_approval``, becomes an approval checkpoint — the
        agents domain's rule (:func:`tether.agents.recertification.requires_approval`) over
        the agent's view, no database read."""
        if decision.effect is not Effect.ALLOW:
            return decision
        view = self.runtime.agents.get(ask.subject)
        if view is None or not recertification.requires_approval(
            view.risk_tier, view.recertify_by, self.recertify_overdue, now_us
        ):
            return decision
        return Decision(Effect.APPROVAL_REQUIRED, (*decision.reasons, RECERTIFICATION_OVERDUE),
                        decision.policy_version, stage=decision.stage,
                        policy_effect=decision.policy_effect)  # fmt: skip

    async def _responded(self, watched: list[tuple[Decision, Any, Any]]) -> list[Decision]:
        """Record the monitor's responses (before any of these answers leaves); a response
        that cannot be recorded denies its decision (fail closed)."""
        out = []
        for decision, response, _ in watched:
            if response is not None:
                assert self.monitor is not None
                try:
                    await asyncio.to_thread(self.monitor.respond, response)
                except Exception:
                    out.append(self._ledger_down(decision))
                    continue
            out.append(decision)
        return out

    def refusal(self, ask: Ask) -> Decision | None:
        """What :meth:`evaluate` answers ``ask`` without asking Cedar — this worker not
        current, the token revoked, the subject or a member of its chain unknown, not active
        or frozen, the action unknown — or None when Cedar decides."""
        compiled = self.runtime.policies
        if compiled is None or not self.runtime.current():
            return _stale(compiled, 1)[0]
        return self._precheck(ask, compiled, to_micros(self.clock.now()))

    def _precheck(self, ask: Ask, compiled: CompiledPolicies, now_us: int) -> Decision | None:  # noqa: PLR0911
        rt = self.runtime
        version = compiled.version
        if ask.jti is not None and ask.jti in rt.revoked_jtis:
            return _refuse(REVOKED_TOKEN, version, "token_revoked", "the access token is revoked")
        agent = rt.agents.get(ask.subject)
        if agent is None:
            return _refuse(UNKNOWN_AGENT, version, "agent_not_found",
                           f"no agent {ask.subject!r}")  # fmt: skip
        if not agent.active_at(now_us):
            return _refuse(INACTIVE_AGENT, version, "agent_not_active",
                           f"agent {ask.subject} is {_status(agent, now_us)}")  # fmt: skip
        if rt.freezes and (refused := _frozen(ask, rt, version)) is not None:
            return refused
        for member in ask.chain:  # the subject is last, and was checked just above
            if member == ask.subject:
                continue
            if member.startswith("usr_"):
                if member not in rt.users:
                    return _refuse(INACTIVE_CHAIN, version, "chain_member_not_active",
                                   f"the human {member} in the chain no longer exists")  # fmt: skip
                continue
            view = rt.agents.get(member)
            if view is None or not view.active_at(now_us):
                state = _status(view, now_us) if view else "unknown"
                return _refuse(INACTIVE_CHAIN, version, "chain_member_not_active",
                               f"agent {member} in the delegation chain is {state}")  # fmt: skip
        if not compiled.knows_action(ask.action):
            return _refuse(UNKNOWN_ACTION, version, "unknown_action",
                           f"the schema ({version}) declares no action {ask.action!r}")  # fmt: skip
        return None

    def evaluate_operator(self, operator: Principal, ask: Ask) -> Decision:
        """A human operator's own request (a rollback's undo: Cedar's principal is
        ``User::"<id>"`` with its ``role``; no agent acts), once the caller has checked the
        human's authority over the agent concerned: this worker current, the human still
        there, then Cedar — when the schema declares the action; otherwise that authority
        decides (reason ``tether.operator-authority``). ``ask.subject`` is the operator's id."""
        rt = self.runtime
        compiled = rt.policies
        if compiled is None or not rt.current():
            return _stale(compiled, 1)[0]
        version = compiled.version
        if operator.kind != "user" or operator.id not in rt.users:
            return _refuse(INACTIVE_CHAIN, version, "operator_not_found",
                           f"no user {operator.id}: only a human operator asks this")  # fmt: skip
        if not compiled.knows_action(ask.action):
            # Not declared (the base schema does not: its principals are agents): the
            # authority the caller checked decides alone, and the record says so.
            return Decision(Effect.ALLOW, (OPERATOR_AUTHORITY,), version, stage="runtime")
        return decision_from_outcome(compiled.decide(operator_request(operator, ask)), version)

    def operator_event(
        self, operator: Principal, ask: Ask, decision: Decision, *, agent_id: str,
        details: Mapping[str, Any],
    ) -> NewEvent:  # fmt: skip
        """The ledger event of :meth:`evaluate_operator`'s answer, on the record of the agent
        ``agent_id`` whose action it concerns."""
        full = {"caller": operator.ref, "stage": decision.stage,
                "request_digest": ask.digest(), "context_digest": ask.context_digest(),
                **details}  # fmt: skip
        if decision.error:
            full["error"] = decision.error["code"]
        return NewEvent(
            EventType.DECISION, operator.ref, agent_id=agent_id, action=ask.action[:200],
            resource={"type": ask.resource_type, "id": ask.resource_id},
            decision=decision.effect.value, reasons=decision.reasons,
            policy_version=decision.policy_version, details=full,
        )  # fmt: skip

    def caller_refused(self, agent_id: str, jti: str | None, chain: Sequence[str]) -> str | None:
        """Why an agent's token must not be honoured at all right now — revoked, the agent
        or a member of its chain not active — or None; from the runtime, no database read.
        For transports that hold a session (the MCP gateway answers 401 then); a decision
        checks the same, and freezes, on every request."""
        compiled = self.runtime.policies
        if compiled is None or not self.runtime.current():
            return "this worker is not current"
        ask = Ask(agent_id, "tool.call", "Tool", "-", chain=tuple(chain), jti=jti)
        refused = self._precheck(ask, compiled, to_micros(self.clock.now()))
        if refused is None or refused.error is None or refused.reasons[0] in (FROZEN,):
            return None
        return str(refused.error.get("message"))

    def cedar_request(self, ask: Ask) -> CedarRequest:
        if self.monitor is None:
            return cedar_request(ask, self.runtime.agents)
        return self._cedar(ask, to_micros(self.clock.now()))

    def _cedar(self, ask: Ask, now_us: int) -> CedarRequest:
        monitor = self.monitor
        if monitor is None:
            return cedar_request(ask, self.runtime.agents)
        compiled = self.runtime.policies
        reads = compiled is None or compiled.reads_session
        view = self.runtime.agents[ask.subject]
        risk = compiled is None or compiled.reads_risk
        return cedar_request(ask, self.runtime.agents,
                             session=monitor.session_context(ask, now_us) if reads else False,
                             principal_entity=monitor.principal_entity(view) if risk
                             else view.entity)  # fmt: skip

    # -- recording -------------------------------------------------------------------------
    def event(self, ask: Ask, decision: Decision) -> NewEvent:
        known = ask.subject in self.runtime.agents
        details: dict[str, Any] = {
            "caller": ask.caller, "stage": decision.stage,
            "request_digest": ask.digest(), "context_digest": ask.context_digest(),
        }  # fmt: skip
        if not known:
            details["subject"] = ask.subject[:200]
        if decision.policy_effect is not None and decision.policy_effect is not decision.effect:
            details["policy_decision"] = decision.policy_effect.value
        if decision.approval_id:
            details["approval_id"] = decision.approval_id
        if decision.error:
            details["error"] = decision.error["code"]
        if ask.jti:
            details["jti"] = ask.jti
        if ask.request_id:  # absent before request ids: older events hash as they did
            details["request_id"] = ask.request_id
        return NewEvent(
            EventType.DECISION, f"agent:{ask.subject}" if known else ask.caller,
            agent_id=ask.subject if known else None, on_behalf_of=ask.on_behalf_of,
            chain=ask.full_chain if known else (), action=ask.action[:200],
            resource={"type": ask.resource_type, "id": ask.resource_id},
            decision=decision.effect.value, reasons=decision.reasons,
            policy_version=decision.policy_version, details=details,
        )  # fmt: skip

    @staticmethod
    def attachment(ask: Ask, watch: Any = None) -> str:
        """The decision's inputs kept beside its event: what was asked, and what monitoring
        gave Cedar (``session``, and ``risk`` when not 0) — what a denial was based on, and
        what a simulation replays."""
        given = {"properties": ask.properties, "context": ask.context,
                 "chain": list(ask.full_chain), "on_behalf_of": ask.on_behalf_of}  # fmt: skip
        if watch is not None:
            given |= watch.seen()
        return orjson.dumps(given, option=orjson.OPT_SORT_KEYS).decode()

    async def decide(self, ask: Ask) -> Decision:
        return (await self.decide_many([ask]))[0]

    async def decide_many(
        self, asks: Sequence[Ask], *, stop_on: Effect | None = None
    ) -> list[Decision]:
        """Evaluate, then record every answer durably before returning any of them. With
        ``stop_on`` (AuthZEN's short-circuit semantics) the batch ends at the first deny
        (``Effect.DENY``) or permit (``Effect.ALLOW``); later requests are not answered."""
        for ask in asks:
            validate_ask(ask)
        if not self.runtime.fresh():  # the poller is behind (or not running): catch up
            await asyncio.to_thread(self.runtime.ensure_current)
        watched = self._watched(asks)
        decisions = ([d for d, _, _ in watched] if all(r is None for _, r, _ in watched)
                     else await self._responded(watched))  # fmt: skip
        out: list[Decision] = []
        waits: dict[int, asyncio.Future[Event]] = {}
        for ask, decision, (_, _, watch) in zip(asks, decisions, watched, strict=True):
            if decision.effect is Effect.APPROVAL_REQUIRED:
                out.append(await self._checkpoint(ask, decision, watch))
            else:
                event, attachment = self.event(ask, decision), self.attachment(ask, watch)
                waits[len(out)] = self.committer.submit_async(event, attachment)
                out.append(decision)
            if stop_on is not None and out[-1].allowed == (stop_on is Effect.ALLOW):
                break
        for i, wait in waits.items():
            try:
                out[i] = replace(out[i], event_id=(await wait).id)
            except LedgerUnavailable:
                out[i] = self._ledger_down(out[i])
        for decision in out:
            _COUNTED[decision.effect].inc()
        return out

    async def decide_then(self, ask: Ask, then: Then) -> tuple[Decision, Any]:
        """:meth:`decide`, and when the answer is allow, ``then(s, decision)`` in the same
        group-commit transaction as the decision's event: its :class:`Chain`'s events follow
        the decision's, its rows go in the same statement — one durable commit for both,
        and neither without the other. Returns the decision and what ``then``'s ``finish``
        gave (None when not allowed). ``then`` raising fails only this request (the caller
        gets the exception; the allow is then not recorded, and nothing took effect). A
        ``then`` with a ``prepare(session, thens)`` attribute has it called once per batch
        with every ``then`` of that kind (as group-commit jobs do). An approval granted for
        this exact request runs ``then`` in the transaction right after the approval's."""
        validate_ask(ask)
        if not self.runtime.fresh():
            await asyncio.to_thread(self.runtime.ensure_current)
        watched = self._watched([ask])
        decision, response, watch = watched[0]
        if response is not None:
            decision = (await self._responded(watched))[0]
        if decision.effect is Effect.APPROVAL_REQUIRED:
            final = await self._checkpoint(ask, decision, watch)
            _COUNTED[final.effect].inc()
            if not final.allowed:
                return final, None
            return final, await self.committer.run_async(_Then(then, final))
        if decision.effect is not Effect.ALLOW:
            return await self._recorded(ask, decision, watch), None
        job = _Then(then, decision, self.event(ask, decision), self.attachment(ask, watch))
        try:
            final, result = await self.committer.run_async(job)
        except LedgerUnavailable:
            final, result = self._ledger_down(decision), None
        _COUNTED[final.effect].inc()
        return final, result

    async def _recorded(self, ask: Ask, decision: Decision, watch: Any) -> Decision:
        """Record an answer already decided (and counted) that needs no approval."""
        try:
            event = await self.committer.submit_async(self.event(ask, decision),
                                                      self.attachment(ask, watch))  # fmt: skip
            final = replace(decision, event_id=event.id)
        except LedgerUnavailable:
            final = self._ledger_down(decision)
        _COUNTED[final.effect].inc()
        return final

    async def _checkpoint(self, ask: Ask, decision: Decision, watch: Any = None) -> Decision:
        """The approval workflow runs in the next group commit, like a plain decision event."""
        try:
            final, opened = await self.committer.run_async(
                partial(
                    self.approvals.checkpoint,
                    ask=ask,
                    decision=decision,
                    decisions=self,
                    watch=watch,
                )
            )
        except Exception:
            log.exception("approval checkpoint could not be recorded; denying")
            return self._ledger_down(decision)
        try:  # the answer is recorded: a failing notifier must not turn it into an error
            self.approvals.announce(final, opened)
        except Exception:
            log.exception("approval %s recorded but not announced", final.approval_id)
        return cast(Decision, final)

    @staticmethod
    def _ledger_down(decision: Decision) -> Decision:
        FAILED_CLOSED.labels("ledger").inc()
        return _refuse(LEDGER_DOWN, decision.policy_version, LedgerUnavailable.code,
                       "the decision could not be recorded: denied")  # fmt: skip

    def decide_sync(self, ask: Ask) -> Decision:
        """For callers without an event loop (CLI tools, tests, the SDK in-process)."""
        return asyncio.run(self.decide(ask))


Then = Callable[[Session, Decision], Chain]


@dataclass(frozen=True, slots=True)
class _Then:
    """A group-commit job: the decision's event (if not recorded yet) and what follows it."""

    then: Then
    decision: Decision
    event: NewEvent | None = None
    attachment: Any = None

    def __call__(self, s: Session) -> Chain:
        follows = self.then(s, self.decision)
        if self.event is None:
            return follows
        decision = self.decision

        def finish(chained: list[Event]) -> tuple[Decision, Any]:
            return replace(decision, event_id=chained[0].id), follows.finish(chained[1:])

        return Chain([self.event, *follows.events], finish, self.attachment, follows.rows)

    @staticmethod
    def prepare(s: Session, jobs: Sequence[_Then]) -> None:
        kinds: dict[Any, list[Any]] = {}
        for job in jobs:
            if (prepare := getattr(job.then, "prepare", None)) is not None:
                kinds.setdefault(prepare, []).append(job.then)
        for prepare, thens in kinds.items():
            prepare(s, thens)


def cedar_request(
    ask: Ask, agents: Mapping[str, AgentView], *,
    session: dict[str, Any] | Literal[False] | None = None, principal_entity: str | None = None,
) -> CedarRequest:  # fmt: skip
    """The request in Cedar's terms: the principal's prebuilt entity (or ``principal_entity``,
    the same with its current risk), the resource's from the request's properties (or, for an
    agent, its entity), Tether's context fields added (``session``: what the session touched;
    none when not given)."""
    agent = agents[ask.subject]
    resource = (ask.resource_type, ask.resource_id)
    target = agents.get(ask.resource_id) if ask.resource_type == "Agent" else None
    if target is not None:
        entity, parents = target.entity, target.parents
    elif ask.properties:
        entity = orjson.dumps({"uid": {"type": resource[0], "id": resource[1]},
                               "attrs": ask.properties, "parents": []}).decode()  # fmt: skip
        parents = frozenset()
    else:  # Cedar treats an entity it does not hold as one without attributes or parents
        entity, parents = None, frozenset()
    chain = ask.full_chain
    ctx = {**ask.context, "chain": list(chain), "delegated": len(chain) > 1}
    if session is not False:  # False: no policy reads it (CompiledPolicies.reads_session)
        ctx["session"] = session or {"id": chain[0], "labels": [], "tools": []}
    if ask.on_behalf_of is not None:
        ctx["on_behalf_of"] = ask.on_behalf_of
    return CedarRequest(
        principal=("Agent", agent.id), principal_parents=agent.parents,
        principal_entity=principal_entity or agent.entity, action=ask.action, resource=resource,
        resource_parents=parents, resource_entity=entity, context=orjson.dumps(ctx).decode(),
    )  # fmt: skip


def operator_request(operator: Principal, ask: Ask) -> CedarRequest:
    """An operator's request in Cedar's terms: ``User::"<id>"`` with its role, the resource
    from the request's properties, the context as asked (no delegation chain)."""
    uid = ("User", operator.id)
    role = operator.role.value if operator.role is not None else ""
    principal = orjson.dumps({"uid": {"type": "User", "id": operator.id},
                              "attrs": {"role": role}, "parents": []}).decode()  # fmt: skip
    resource = orjson.dumps({"uid": {"type": ask.resource_type, "id": ask.resource_id},
                             "attrs": ask.properties, "parents": []}).decode()  # fmt: skip
    return CedarRequest(
        principal=uid, principal_parents=frozenset(), principal_entity=principal,
        action=ask.action, resource=(ask.resource_type, ask.resource_id),
        resource_parents=frozenset(), resource_entity=resource,
        context=orjson.dumps(ask.context).decode(),
    )  # fmt: skip


def _frozen(ask: Ask, rt: DecisionSnapshot, version: str) -> Decision | None:
    """A freeze in force holding the subject or an agent of its chain (the freeze domain's
    rule over this worker's snapshot); only asked while something is frozen."""
    for member in (ask.subject, *ask.chain):
        view = rt.agents.get(member)
        if view is None:
            continue  # humans, and unknown agents (refused below as inactive)
        freeze = holding(rt.freezes, view.owner_id, view.roles, view.risk_tier)
        if freeze is not None:
            whose = "" if member == ask.subject else " in the delegation chain"
            return _refuse(FROZEN, version, "agent_frozen",
                           f"agent {member}{whose} is frozen: {freeze.reason}")  # fmt: skip
    return None


def _status(agent: AgentView | None, now_us: int) -> str:
    if agent is None:
        return "unknown"
    if agent.status == "active" and agent.expires_at is not None and agent.expires_at <= now_us:
        return "expired"
    return agent.status


def _stale(compiled: CompiledPolicies | None, count: int) -> list[Decision]:
    FAILED_CLOSED.labels("runtime").inc(count)
    version = compiled.version if compiled else "unknown"
    message = "this Tether worker cannot confirm it is current"
    return [_refuse(STALE, version, "runtime_not_current", message) for _ in range(count)]


def _refuse(reason: str, version: str, code: str, message: str) -> Decision:
    return Decision(Effect.DENY, (reason,), version, error={"code": code, "message": message},
                    stage="runtime")  # fmt: skip


def decision_from_outcome(outcome: Outcome, version: str) -> Decision:
    """Tether's answer from Cedar's: deny when a forbid could not be evaluated."""
    if outcome.failed_forbids and outcome.effect is not Effect.DENY:
        # Cedar skips a policy whose evaluation errors (an ill-typed property, say); for a
        # forbid that would let the request through. Tether fails closed instead.
        names = ", ".join(outcome.failed_forbids)
        return Decision(Effect.DENY, outcome.failed_forbids, version,
                        error={"code": "policy_error", "message": f"forbid {names} could not be "
                               "evaluated on this request (check its properties and context)"},
                        policy_effect=Effect.DENY)  # fmt: skip
    return Decision(outcome.effect, outcome.reasons, version, policy_effect=outcome.effect)
