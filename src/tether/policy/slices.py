"""Slicing: which of a policy version's policies can matter to a request, and what they read.

A policy whose scope (``principal``/``action``/``resource`` heads) cannot match a request
cannot be satisfied, so Cedar need not see it; a slice is the rest, parsed once into a
``PolicySet``. :class:`Reads` says what a slice's conditions can look at beyond the principal
— the context, the resource's entity, entities named by type — so the engine gives Cedar only
that. Both change speed, not meaning (``tests/test_policy_differential.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy
import orjson

from tether.policy.direct import Direct
from tether.policy.source import Policy, to_cedar_json

Uid = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Reads:
    """What a policy can look at beyond the principal: whether it reads ``context``, whether
    it needs the resource's entity (its attributes or ancestors), and the entity types it
    names as literals (an entity it names can be the request's resource)."""

    context: bool
    resource: bool
    literal_types: frozenset[str]

    @classmethod
    def of(cls, policy: Policy) -> Reads:
        names: set[str] = set()
        types: set[str] = set()
        _walk(policy.est.get("conditions") or [], names, types)
        scope = policy.est["resource"]
        in_scope = scope.get("op") == "in" or (scope.get("op") == "is" and "in" in scope)
        return cls("context" in names, "resource" in names or in_scope, frozenset(types))

    @classmethod
    def union(cls, reads: Iterable[Reads]) -> Reads:
        reads = list(reads)
        return cls(any(r.context for r in reads), any(r.resource for r in reads),
                   frozenset(t for r in reads for t in r.literal_types))  # fmt: skip


def _walk(root: Any, names: set[str], types: set[str]) -> None:
    """Variables and entity literals anywhere in a policy's conditions (Cedar JSON). An
    explicit stack, not recursion: how deep a policy is must not reach Python's limit."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            var = node.get("Var")
            if isinstance(var, str):
                names.add(var)
            if "Slot" in node:  # a template slot: could be anything
                names.update(("context", "resource"))
            entity = node.get("__entity")
            if isinstance(entity, dict):
                types.add(str(entity.get("type")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@dataclass(slots=True)
class Slice:
    """The policies whose scope can match one request shape, what they read, and their
    approval annotations; Cedar's ``PolicySet`` of them is parsed the first time Cedar is
    asked (a slice decided in Python (``direct``) never needs it)."""

    policies: tuple[Policy, ...]
    approval_forbids: frozenset[str]
    approval_ids: frozenset[str]
    reads: Reads
    direct: Direct | None  # the policies in Python, when all are plain (tether.policy.direct)
    lifted: cedarpy.PolicySet | None = None
    _parsed: cedarpy.PolicySet | None = None

    @classmethod
    def of(cls, policies: Sequence[Policy]) -> Slice:
        return cls(
            tuple(policies),
            frozenset(p.id for p in policies if p.approval and p.effect == "forbid"),
            frozenset(p.id for p in policies if p.approval),
            Reads.union(Reads.of(p) for p in policies),
            Direct.of(policies),
        )

    @property
    def empty(self) -> bool:
        """No policy can match: the request is denied, by nothing."""
        return not self.policies

    @property
    def policy_set(self) -> cedarpy.PolicySet:
        """Cedar's ``PolicySet`` of the slice (parsed once; two threads may both parse it the
        first time, and one result is kept — the same policies either way)."""
        found = self._parsed
        if found is None:
            found = self._parsed = cedarpy.PolicySet.from_json_str(
                to_cedar_json(list(self.policies))
            )
        return found


def uid_of(value: Any) -> Uid | None:
    if isinstance(value, dict) and "type" in value and "id" in value:
        return (str(value["type"]), str(value["id"]))
    return None


def scope_matches(scope: dict[str, Any], uid: Uid, ancestors: frozenset[Uid]) -> bool:  # noqa: PLR0911
    op = scope.get("op")
    if op == "All":
        return True
    if op == "==":
        return uid_of(scope.get("entity")) == uid
    if op == "in":
        target = uid_of(scope.get("entity"))
        return target == uid or target in ancestors
    if op == "is":
        if scope.get("entity_type") != uid[0]:
            return False
        inner = scope.get("in")
        if isinstance(inner, dict):
            target = uid_of(inner.get("entity"))
            return target == uid or target in ancestors
        return True
    return True  # anything newer than this code: let Cedar decide


def scope_uids(scope: dict[str, Any]) -> Iterable[Uid]:
    for value in (scope.get("entity"), (scope.get("in") or {}).get("entity")):
        uid = uid_of(value)
        if uid is not None:
            yield uid
    for value in scope.get("entities") or ():
        uid = uid_of(value)
        if uid is not None:
            yield uid


def action_matches(scope: dict[str, Any], action: str, ancestors: frozenset[str]) -> bool:
    op = scope.get("op")
    if op == "All":
        return True
    if op == "==":
        return uid_of(scope.get("entity")) == ("Action", action)
    if op == "in":
        targets = [scope.get("entity")] if "entity" in scope else list(scope.get("entities") or [])
        for target in targets:
            uid = uid_of(target)
            if uid is not None and uid[0].endswith("Action") and uid[1] in ancestors:
                return True
        return False
    return True


def action_ancestors(entities: cedarpy.Entities) -> dict[str, frozenset[str]]:
    """For every action the schema declares: itself and the action groups it is in."""
    parents: dict[str, set[str]] = {}
    for ent in orjson.loads(str(entities)):
        uid = uid_of(ent.get("uid"))
        if uid is None or not uid[0].endswith("Action"):
            continue
        parents[uid[1]] = {p["id"] for p in ent.get("parents", []) if uid_of(p)}
    out: dict[str, frozenset[str]] = {}
    for action in parents:
        seen, todo = {action}, [action]
        while todo:
            for parent in parents.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        out[action] = frozenset(seen)
    return out
