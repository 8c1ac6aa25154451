"""What a policy version permits an agent, and which of it the agent's recorded decisions used.

A **permission** is one action a ``permit`` policy grants the agent on that policy's resource
scope as written — one entity (``Tool::"search"``), a type (``Tool``) or any resource the
action applies to (``*``) — under the policy's conditions. A policy's actions are those its
action scope names (an action group stands for its members) that Cedar's validator finds
applicable to its resource scope. How the policy reaches the agent (``via``): the agent named
in its principal scope, a role of the agent's, or everyone (``principal``, ``principal is
Agent``). Forbids grant nothing and are not permissions; Tether's base policies are not the
operator's to narrow.

A permission is **used** when a decision the agent asked for in the window was answered
``allow`` or ``approval_required`` by Cedar with that policy among its reasons, for that action,
on a resource the policy's scope still matches. Pure functions of plain values: the service
(:mod:`tether.governance.rightsizing`) reads the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import cedarpy
import orjson

from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView
from tether.policy.slices import Uid, action_matches, scope_matches, scope_uids, uid_of
from tether.policy.source import BASE_PREFIX, Policy

RESOURCES_SHOWN = 10  # the distinct resources a used permission lists (the count is exact)
_USES = ("allow", "approval_required")  # Cedar answers in which a permit's reason was used


class Via(StrEnum):
    AGENT = "agent"  # the principal scope names the agent
    ROLE = "role"  # a role of the agent's
    EVERYONE = "everyone"  # any principal, or any agent


@dataclass(frozen=True, slots=True)
class Permission:
    policy: str
    action: str
    resource: str  # 'Tool::"search"', 'Tool', or '*'
    via: Via
    role: str | None  # the role it reaches the agent through (``via`` role)
    conditional: bool  # the policy has when/unless conditions
    approval: bool  # @approval("required")

    @property
    def key(self) -> tuple[str, str]:
        return (self.policy, self.action)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One decision the agent asked for, as Cedar answered it then."""

    action: str
    resource: Uid
    effect: str  # allow, deny, approval_required
    reasons: tuple[str, ...]
    time_us: int


@dataclass(slots=True)
class Use:
    count: int = 0
    last_us: int = 0
    resources: set[str] = field(default_factory=set)  # up to RESOURCES_SHOWN
    distinct: int = 0

    def add(self, resource: str, time_us: int) -> None:
        self.count += 1
        self.last_us = max(self.last_us, time_us)
        if resource not in self.resources:
            if len(self.resources) < RESOURCES_SHOWN:
                self.resources.add(resource)
            self.distinct += 1  # an overestimate past RESOURCES_SHOWN: shown as "at least"


def uid_text(uid: Uid) -> str:
    return f"{uid[0]}::{orjson.dumps(uid[1]).decode()}"


def resource_text(scope: Mapping[str, Any]) -> str:
    """A resource scope as a reader sees it: an entity, a type, or ``*``."""
    op = scope.get("op")
    entity = uid_of(scope.get("entity"))
    if op in ("==", "in") and entity is not None:
        return uid_text(entity) if op == "==" else f"in {uid_text(entity)}"
    if op == "is":
        inner = uid_of((scope.get("in") or {}).get("entity"))
        kind = str(scope.get("entity_type"))
        return f"{kind} in {uid_text(inner)}" if inner else kind
    return "*"


def _via(policy: Policy, view: AgentView) -> tuple[Via, str | None]:
    me: Uid = ("Agent", view.id)
    for uid in scope_uids(policy.est["principal"]):
        if uid == me:
            return Via.AGENT, None
        if uid[0] == "Role" and uid[1] in view.roles:
            return Via.ROLE, uid[1]
    return Via.EVERYONE, None


def applies_to_agent(compiled: CompiledPolicies, view: AgentView) -> list[Policy]:
    """The operator's permits whose principal scope can match the agent."""
    return [
        p for p in compiled.for_principal(("Agent", view.id), view.parents)
        if p.effect == "permit" and not p.id.startswith(BASE_PREFIX)
    ]  # fmt: skip


class Applicability:
    """Whether an action applies to a resource scope, asked of Cedar's validator (which knows
    each action's ``appliesTo``; an action group applies to nothing) and remembered."""

    def __init__(self, schema: cedarpy.Schema) -> None:
        self.schema = schema
        self._known: dict[tuple[str, bytes], bool] = {}

    def __call__(self, action: str, resource_scope: Mapping[str, Any]) -> bool:
        key = (action, orjson.dumps(resource_scope, option=orjson.OPT_SORT_KEYS))
        found = self._known.get(key)
        if found is None:
            probe = {"effect": "permit", "principal": {"op": "All"},
                     "action": {"op": "==", "entity": {"type": "Action", "id": action}},
                     "resource": resource_scope, "conditions": []}  # fmt: skip
            text = cedarpy.policies_from_json_str(orjson.dumps(
                {"staticPolicies": {"probe": probe}, "templates": {}, "templateLinks": []}
            ).decode())  # fmt: skip
            found = cedarpy.validate_policies(text, self.schema).validation_passed
            self._known[key] = found
        return found


def permissions_of(
    compiled: CompiledPolicies, view: AgentView, applies: Applicability | None = None
) -> list[Permission]:
    """Every permission the operator's policies of ``compiled`` grant the agent ``view``."""
    applies = applies or Applicability(compiled.schema)
    out: list[Permission] = []
    for policy in applies_to_agent(compiled, view):
        via, role = _via(policy, view)
        scope = policy.est["resource"]
        conditional = bool(policy.est.get("conditions"))
        for action in sorted(compiled.actions):
            if action_matches(policy.est["action"], action, compiled.actions[action]) and applies(
                action, scope
            ):
                out.append(Permission(policy.id, action, resource_text(scope), via, role,
                                      conditional, policy.approval))  # fmt: skip
    return out


def usage(
    permissions: Sequence[Permission], policies: Mapping[str, Policy], recorded: Iterable[Recorded]
) -> dict[tuple[str, str], Use]:
    """Each permission's use in ``recorded``, by :attr:`Permission.key` (absent: unused)."""
    wanted = {p.key for p in permissions}
    used: dict[tuple[str, str], Use] = {}
    for rec in recorded:
        if rec.effect not in _USES:
            continue
        for reason in rec.reasons:
            key = (reason, rec.action)
            policy = policies.get(reason)
            if key not in wanted or policy is None:
                continue
            if not scope_matches(policy.est["resource"], rec.resource, frozenset()):
                continue  # the policy's scope changed since: not a use of it as it is now
            used.setdefault(key, Use()).add(uid_text(rec.resource), rec.time_us)
    return used


def roles_named(est: Mapping[str, Any]) -> frozenset[str]:
    """The roles a policy names anywhere: its scope or its conditions."""
    names: set[str] = set()
    stack: list[Any] = [dict(est)]
    while stack:  # an explicit stack: how deep a policy is must not reach Python's limit
        node = stack.pop()
        if isinstance(node, dict):
            uid = uid_of(node)
            if uid is not None and uid[0] == "Role":
                names.add(uid[1])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(names)
