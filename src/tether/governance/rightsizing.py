"""Least-privilege right-sizing (issue 20, item 3): what an agent holds against what it used in
the last N days, and a narrower policy set that its recorded traffic proves safe.

For one agent: its roles, the OAuth scopes of its ceiling (and how many of its live credentials
and of the tokens issued to it in the window carried each), and its permissions — each permitted
(action, resource scope) pair of the operator's policies (:mod:`tether.governance.permissions`)
— used or not by the decisions it asked for in the window. A scope counts as used when a token
issued to the agent in the window carried it: Tether does not see what a resource server does
with a scope, so a scope is only called unused when no token of the window could have used it.

The **proposal** (:mod:`tether.governance.narrowing`) removes only unused permissions. Before it
is offered it is simulated: every decision the agent asked for in the window is replayed
(:func:`tether.policy.simulate.replay`, the machinery of ``tether policy simulate``) under the
proposed policies with the agent as the proposal would leave it (its roles dropped). A flip —
a decision that would now come out otherwise than it did — narrows the plan less
(:func:`tether.governance.narrowing.relax`) until nothing flips; decisions the current policies
already decide otherwise than recorded (the agent or the policies changed since) are reported
apart and are no flip of the proposal's. Only a proposal with zero flips over its whole window
is ``safe``; only a safe one is applied.

Applying pushes the proposed document as a new policy version (if the version it was derived
from is still current) and drops the roles and scopes through the agent registry: one
``policy.updated`` event (its note names the right-sizing) and one ``agent.updated``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import select

from tether.agents.schemas import AgentUpdate
from tether.agents.service import AgentService
from tether.agents.values import Agent
from tether.audit.events import EventType
from tether.audit.models import EventRow
from tether.clock import Clock, from_micros, to_micros
from tether.credentials.service import CredentialService
from tether.db import Database
from tether.errors import AgentNotFound, Conflict, Forbidden, ValidationFailed
from tether.governance import narrowing
from tether.governance.narrowing import Plan
from tether.governance.permissions import (
    Applicability,
    Permission,
    Recorded,
    Use,
    permissions_of,
    usage,
)
from tether.jsonutil import loads
from tether.pagination import Page
from tether.policy.decide import DecisionService
from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView, without_roles
from tether.policy.service import Checked, PolicyService, PolicyVersion, check, compile_checked
from tether.policy.simulate import Simulation, replay
from tether.principals import Principal

DEFAULT_DAYS = 30
MAX_DAYS = 3650  # the window when no ledger retention period bounds it
PAGE_MAX = 100
_CREDENTIAL_PAGE = 500
# Policy documents kept checked and compiled (:func:`_compiled`): the
# current version's, and the proposals drawn from it (a page of agents often shares one).
_COMPILED_KEPT = 8


@lru_cache(maxsize=_COMPILED_KEPT)
def _compiled(label: str, text: str, schema: str) -> tuple[Checked, CompiledPolicies]:
    """``text`` checked against ``schema`` and compiled as version ``label`` (without a
    decision memo), or :class:`PolicyInvalid`. Once per document, not once per agent:
    checking and compiling were most of a page's CPU (every agent of a page under the same
    current version, and often the same proposal). Both results are immutable (a compiled
    set's caches are memos of pure results), so a kept one answers as a fresh one would."""
    checked = check(text, schema)
    return checked, compile_checked(label, checked, memo_capacity=0)


@dataclass(frozen=True, slots=True)
class Proposal:
    plan: Plan
    policies: str  # the proposed document
    diff: str
    simulation: Simulation  # of the proposal, over the agent's decisions in the window
    flips: list[dict[str, Any]]  # its changes the current policies do not make too
    already_differing: int  # decisions the current policies decide otherwise than recorded

    @property
    def safe(self) -> bool:
        return not self.flips and not self.simulation.truncated


@dataclass(frozen=True, slots=True)
class Rightsizing:
    agent: Agent
    days: int
    since: datetime
    until: datetime
    policy_version: str
    permissions: list[Permission]
    used: dict[tuple[str, str], Use]
    scopes: dict[str, tuple[int, int]]  # scope → (live credentials, tokens in the window)
    roles_unused: list[str]
    proposal: Proposal

    def to_json(self) -> dict[str, Any]:
        plan = self.proposal.plan
        used = [_used_json(p, self.used[p.key]) for p in self.permissions if p.key in self.used]
        unused = [{**_permission_json(p), "removed": plan.removes(p)}
                  for p in self.permissions if p.key not in self.used]  # fmt: skip
        sim = self.proposal.simulation
        return {
            "agent_id": self.agent.id, "days": self.days, "since": self.since,
            "until": self.until, "policy_version": self.policy_version,
            "roles": self.agent.roles,
            "scopes": [{"scope": s, "credentials": c, "tokens": t, "used": t > 0}
                       for s, (c, t) in sorted(self.scopes.items())],
            "used": used, "unused": unused, "roles_unused": self.roles_unused,
            "scopes_unused": sorted(s for s, (_, t) in self.scopes.items() if not t),
            "proposal": {
                "safe": self.proposal.safe, "empty": plan.empty,
                "removes": sum(1 for u in unused if u["removed"]),
                "diff": self.proposal.diff, "policies": self.proposal.policies,
                "policy_changes": [
                    {"policy": c.policy, "op": "remove" if c.removes else "narrow",
                     "actions": sorted(c.keep), "removed_actions": sorted(c.actions - c.keep)}
                    for c in plan.cuts
                ],
                "role_changes": [{"op": "remove", "role": r} for r in sorted(plan.roles)],
                "scope_changes": [{"op": "remove", "scope": s} for s in sorted(plan.scopes)],
                "simulation": {
                    "checked": sim.checked, "flips": len(self.proposal.flips),
                    "changes": self.proposal.flips, "skipped": sim.skipped,
                    "truncated": sim.truncated,
                    "already_differing": self.proposal.already_differing,
                    "candidate_digest": sim.candidate_digest,
                },
            },
        }  # fmt: skip


def _permission_json(p: Permission) -> dict[str, Any]:
    return {"policy": p.policy, "action": p.action, "resource": p.resource, "via": p.via.value,
            "role": p.role, "conditional": p.conditional, "approval": p.approval}  # fmt: skip


def _used_json(p: Permission, use: Use) -> dict[str, Any]:
    return {**_permission_json(p), "count": use.count, "last_used": from_micros(use.last_us),
            "resources": sorted(use.resources), "distinct_resources": use.distinct}  # fmt: skip


class _Overlay(Mapping[str, AgentView]):
    """The runtime's agents with one as a proposal would leave it (not a copy of the map)."""

    def __init__(self, base: Mapping[str, AgentView], view: AgentView) -> None:
        self.base, self.view = base, view

    def __getitem__(self, key: str) -> AgentView:
        return self.view if key == self.view.id else self.base[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def __contains__(self, key: object) -> bool:
        return key == self.view.id or key in self.base


class RightsizingService:
    def __init__(
        self, db: Database, clock: Clock, *, agents: AgentService,
        credentials: CredentialService, policies: PolicyService, decisions: DecisionService,
        max_days: int = MAX_DAYS,
    ) -> None:  # fmt: skip
        self.db = db
        self.clock = clock
        self.agents = agents
        self.credentials = credentials
        self.policies = policies
        self.decisions = decisions
        self.max_days = max_days

    # -- reading ---------------------------------------------------------------------------
    def report(self, actor: Principal, agent_id: str, *, days: int = DEFAULT_DAYS) -> Rightsizing:
        """The agent's right-sizing over the last ``days`` days, for anyone who may read it
        (admins, auditors, its owner and supervisors). Raises :class:`AgentNotFound`,
        :class:`Forbidden`, or :class:`ValidationFailed` (``days``) out of 1 to ``max_days``."""
        agent = self.agents.get(actor, agent_id)
        self._check_days(days)
        return self._report(actor, agent, days)

    def page(
        self, actor: Principal, *, days: int = DEFAULT_DAYS, cursor: str | None = None,
        limit: int = 20,
    ) -> Page[Rightsizing]:  # fmt: skip
        """Every agent ``actor`` may see, in the registry's order, a page at a time."""
        self._check_days(days)
        if not 1 <= limit <= PAGE_MAX:
            raise ValidationFailed(f"limit must be 1 to {PAGE_MAX}", field="limit")
        found = self.agents.list(actor, cursor=cursor, limit=limit)
        return Page([self._report(actor, a, days) for a in found.items], found.next_cursor)

    def _check_days(self, days: int) -> None:
        if not 1 <= days <= self.max_days:
            raise ValidationFailed(f"days must be 1 to {self.max_days} (the ledger's window)",
                                   field="days", minimum=1, maximum=self.max_days)  # fmt: skip

    def _report(self, actor: Principal, agent: Agent, days: int) -> Rightsizing:
        until = self.clock.now()
        since = until - timedelta(days=days)
        current = self.policies.current()
        _checked, compiled = _compiled(current.version, current.policies, current.schema)
        view = self._view(agent.id)
        applies = Applicability(compiled.schema)
        permissions = permissions_of(compiled, view, applies)
        by_id = {p.id: p for p in compiled.policies}
        used = usage(permissions, by_id, self._recorded(agent.id, since, until))
        scopes = self._scopes(actor, agent, since, until)
        unused_scopes = [s for s, (_, t) in scopes.items() if not t]
        draft = narrowing.plan(permissions, used, by_id, roles=agent.roles,
                               scopes_unused=unused_scopes)  # fmt: skip
        roles_used = {p.role for p in permissions if p.role and p.key in used}
        roles_unused = sorted(set(agent.roles) - roles_used)
        proposal = self._simulated(draft, current, compiled, view, (since, until))
        return Rightsizing(agent, days, since, until, current.version, permissions, used,
                           scopes, roles_unused, proposal)  # fmt: skip

    def _view(self, agent_id: str) -> AgentView:
        rt = self.decisions.runtime
        view = rt.agents.get(agent_id)
        if view is None:  # created a moment ago: this worker has not synced it yet
            rt.ensure_current()
            view = rt.agents.get(agent_id)
        if view is None:
            raise AgentNotFound(f"no agent {agent_id!r}", agent=agent_id)
        return view

    def _recorded(self, agent_id: str, since: datetime, until: datetime) -> Iterator[Recorded]:
        """The decisions Cedar answered for the agent's own requests in the window."""
        q = (
            select(EventRow.action, EventRow.resource, EventRow.decision, EventRow.reasons,
                   EventRow.details, EventRow.time)
            .where(EventRow.agent_id == agent_id, EventRow.actor == f"agent:{agent_id}",
                   EventRow.type == EventType.DECISION.value,
                   EventRow.time >= to_micros(since), EventRow.time <= to_micros(until))
            .order_by(EventRow.seq)
        )  # fmt: skip
        with self.db.read() as s:
            for action, resource, decision, reasons, details, time_us in s.execute(q):
                info = loads(details)
                res = loads(resource) if resource else None
                if info.get("stage") != "cedar" or action is None or not isinstance(res, dict):
                    continue
                yield Recorded(action, (str(res.get("type")), str(res.get("id"))),
                               str(info.get("policy_decision", decision)),
                               tuple(loads(reasons)), time_us)  # fmt: skip

    def _scopes(
        self, actor: Principal, agent: Agent, since: datetime, until: datetime
    ) -> dict[str, tuple[int, int]]:
        """Each scope of the agent's ceiling: its live credentials that may carry it and the
        tokens issued to it in the window (client credentials or exchange) that did."""
        held = {s: [0, 0] for s in agent.scopes}
        cursor: str | None = None
        while True:
            found = self.credentials.list(actor, agent.id, cursor=cursor, limit=_CREDENTIAL_PAGE)
            for cred in found.items:
                for scope, counts in held.items():
                    counts[0] += cred.scopes is None or scope in cred.scopes
            cursor = found.next_cursor
            if cursor is None:
                break
        q = (
            select(EventRow.details)
            .where(EventRow.agent_id == agent.id, EventRow.actor == f"agent:{agent.id}",
                   EventRow.type.in_([EventType.TOKEN_ISSUED.value,
                                      EventType.TOKEN_EXCHANGED.value]),
                   EventRow.time >= to_micros(since), EventRow.time <= to_micros(until))
        )  # fmt: skip
        with self.db.read() as s:
            for details in s.scalars(q):
                scope = loads(details).get("scope")
                for name in scope.split() if isinstance(scope, str) else ():
                    if name in held:
                        held[name][1] += 1
        return {s: (c, t) for s, (c, t) in held.items()}

    def _simulated(
        self, draft: Plan, current: PolicyVersion, compiled: CompiledPolicies, view: AgentView,
        window: tuple[datetime, datetime],
    ) -> Proposal:  # fmt: skip
        """The draft, narrowed less until its replay flips nothing the current policies do
        not flip too."""
        agents = self.decisions.runtime.agents
        document, since, until = current.policies, *window
        by_id = {p.id: p for p in compiled.policies}
        baseline = replay(self.db, agents, compiled, digest="", since=since, until=until,
                          subject=view.id)  # fmt: skip
        already = {c["event_id"]: c["after"]["decision"] for c in baseline.changes}
        plan = draft
        rounds = sum(len(c.actions - c.keep) for c in draft.cuts) + len(draft.roles) + 3
        for _ in range(rounds):  # each round gives something up
            text = narrowing.rewrite(document, plan.cuts, by_id) if plan.cuts else document
            candidate, proposed = _compiled("proposed", text, current.schema)
            sim = replay(self.db, _Overlay(agents, without_roles(view, plan.roles)), proposed,
                         digest=candidate.digest, since=since, until=until,
                         subject=view.id)  # fmt: skip
            flips = [c for c in sim.changes
                     if already.get(c["event_id"]) != c["after"]["decision"]]  # fmt: skip
            if not flips or (not plan.cuts and not plan.roles):
                diff = narrowing.diff(document, text, version=current.version)
                return Proposal(plan, text, diff, sim, flips, len(already))
            plan = narrowing.relax(plan, flips, by_id, compiled.actions)
        raise AssertionError("relax gives something up every round")  # pragma: no cover

    # -- applying --------------------------------------------------------------------------
    def apply(
        self, actor: Principal, agent_id: str, *, days: int = DEFAULT_DAYS
    ) -> tuple[Rightsizing, str | None]:
        """An admin applies the agent's safe proposal (computed afresh, never taken from the
        caller): the policy document pushed as a new version if it changed (only onto the
        version it was derived from; :class:`Conflict` otherwise), then the roles and scopes
        dropped from the agent. Returns the report it applied and the new version (None if
        the policies did not change). Raises :class:`Conflict` for a proposal that is not
        safe."""
        if not actor.is_admin:
            raise Forbidden("only an admin may apply a right-sizing")
        done = self.report(actor, agent_id, days=days)
        proposal = done.proposal
        if not proposal.safe:
            raise Conflict(f"the right-sizing of {agent_id} is not safe to apply: "
                           f"{len(proposal.flips)} recorded decisions would flip",
                           agent=agent_id)  # fmt: skip
        plan = proposal.plan
        note = f"right-sizing of {agent_id} over {days} days"
        version = None
        if plan.cuts:
            version = self.policies.push(
                actor, policies=proposal.policies, schema=None, expect_version=done.policy_version,
                note=f"{note}: " + ", ".join(
                    f"{c.policy} {'removed' if c.removes else 'narrowed'}" for c in plan.cuts),
            ).version  # fmt: skip
        if plan.roles or plan.scopes:
            patch: dict[str, Any] = {}
            if plan.roles:
                patch["roles"] = [r for r in done.agent.roles if r not in plan.roles]
            if plan.scopes:
                patch["scopes"] = [s for s in done.agent.scopes if s not in plan.scopes]
            self.agents.update(actor, agent_id, AgentUpdate.model_validate(patch))
        return done, version
