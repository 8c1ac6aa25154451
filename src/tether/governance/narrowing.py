"""A narrower policy set for one agent: the smallest honest change that removes what it did not
use, written as Cedar and as a unified diff of the policy document.

Only grants are removed; a change that would lift a restriction is never proposed:

* a role the agent holds whose every permission went unused is **dropped from the agent** (the
  role's policies serve other agents and stay as they are) — unless a policy the agent used
  names it (a condition such as ``principal in Role::"ops"``) or any ``forbid`` names it
  (dropping the role would lift that forbid);
* a permit that names the agent itself (``principal == Agent::"…"``) is **rewritten** to the
  actions it used, or **removed** when it used none; its annotations, resource scope and
  conditions stay as they are. Its Cedar comes from Cedar's own JSON form
  (``cedarpy.policies_from_json_str``), never from pasted text;
* permissions every agent or a used role has are left alone: narrowing them is a change of
  shared policy, a reviewer's call;
* OAuth scopes no token of the agent's carried in the window are dropped from its ceiling.

:func:`relax` narrows a plan less when its simulation flipped a recorded decision.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cedarpy
import orjson

from tether.governance.permissions import Permission, Via, roles_named
from tether.policy import source
from tether.policy.slices import action_matches
from tether.policy.source import Policy


@dataclass(frozen=True, slots=True)
class Cut:
    """A permit naming the agent, narrowed to ``keep`` (its used actions; none: removed)."""

    policy: str
    actions: frozenset[str]  # everything it grants the agent now
    keep: frozenset[str]

    @property
    def removes(self) -> bool:
        return not self.keep


@dataclass(frozen=True, slots=True)
class Plan:
    cuts: tuple[Cut, ...] = ()
    roles: frozenset[str] = frozenset()  # to drop from the agent
    scopes: frozenset[str] = frozenset()  # to drop from its scope ceiling

    @property
    def empty(self) -> bool:
        return not (self.cuts or self.roles or self.scopes)

    def removes(self, permission: Permission) -> bool:
        """Whether this plan takes ``permission`` away from the agent."""
        if permission.via is Via.ROLE and permission.role in self.roles:
            return True
        return any(c.policy == permission.policy and permission.action not in c.keep
                   for c in self.cuts)  # fmt: skip


def plan(
    permissions: Sequence[Permission],
    used: Iterable[tuple[str, str]],
    policies: Mapping[str, Policy],
    *,
    roles: Iterable[str],
    scopes_unused: Iterable[str],
) -> Plan:
    """The narrowest plan: every removal the rules above allow, before any simulation."""
    used = set(used)
    used_policies = {p for p, _ in used}
    keep_roles: set[str] = set()
    for p in policies.values():
        if p.effect == "forbid" or p.id in used_policies:
            keep_roles |= roles_named(p.est)
    by_role: dict[str, list[Permission]] = {}
    by_policy: dict[str, list[Permission]] = {}
    for perm in permissions:
        if perm.via is Via.ROLE and perm.role is not None:
            by_role.setdefault(perm.role, []).append(perm)
        elif perm.via is Via.AGENT:
            by_policy.setdefault(perm.policy, []).append(perm)
    drop = frozenset(
        r for r in roles
        if r not in keep_roles and not any(p.key in used for p in by_role.get(r, ()))
    )  # fmt: skip
    cuts = []
    for pid, perms in sorted(by_policy.items()):
        actions = frozenset(p.action for p in perms)
        keep = frozenset(p.action for p in perms if p.key in used)
        if keep != actions:
            cuts.append(Cut(pid, actions, keep))
    return Plan(tuple(cuts), drop, frozenset(scopes_unused))


def relax(
    current: Plan, flips: Sequence[Mapping[str, Any]], policies: Mapping[str, Policy],
    actions: Mapping[str, frozenset[str]],
) -> Plan:  # fmt: skip
    """``current`` narrowed less so that the recorded decisions in ``flips`` (simulation
    changes: ``action`` and the ``before``/``after`` reasons) decide as they did: each flipped
    action is kept in the cut policies that decided it, and each role those policies name is
    kept. A flip no reason explains (the policy that decided it was renamed since, say) keeps
    the dropped roles named by any policy that can grant its action (``actions``: each action's
    groups); failing that, every role drop is given up, then every cut."""
    cuts = {c.policy: c for c in current.cuts}
    roles = set(current.roles)
    for flip in flips:
        action = flip["action"]
        ids = {*flip["before"]["reasons"], *flip["after"]["reasons"]}
        for pid in ids:
            cut = cuts.get(pid)
            if cut is not None and action in cut.actions - cut.keep:
                cuts[pid] = replace(cut, keep=cut.keep | {action})
            if pid in policies:
                roles -= roles_named(policies[pid].est)
        if not ids.intersection(policies):
            groups = actions.get(action, frozenset({action}))
            for p in policies.values():
                if p.effect == "permit" and action_matches(p.est["action"], action, groups):
                    roles -= roles_named(p.est)
    if roles == current.roles and tuple(cuts.values()) == current.cuts:  # nothing given up
        if roles:
            roles = set()
        else:
            cuts = {}
    return Plan(tuple(c for c in cuts.values() if c.keep != c.actions), frozenset(roles),
                current.scopes)  # fmt: skip


def _policy_text(est: Mapping[str, Any]) -> str:
    text = cedarpy.policies_from_json_str(orjson.dumps(
        {"staticPolicies": {"p": est}, "templates": {}, "templateLinks": []}
    ).decode())  # fmt: skip
    return cedarpy.format_policies(text).strip()


def _narrowed(policy: Policy, keep: frozenset[str]) -> dict[str, Any]:
    est = dict(policy.est)
    scope = est["action"]
    kind = next((str(e["type"]) for e in [scope.get("entity"), *scope.get("entities", ())]
                 if isinstance(e, dict) and "type" in e), "Action")  # fmt: skip
    named = [{"type": kind, "id": a} for a in sorted(keep)]
    est["action"] = {"op": "==", "entity": named[0]} if len(named) == 1 else {
        "op": "in", "entities": named}  # fmt: skip
    return est


def _head(chunk: str) -> tuple[str, str]:
    """A chunk's text before its policy (the rest of the previous policy's line, blank and
    comment lines) and the part of it that stays when the policy goes: up to the last blank
    line, so that the comment attached to the policy goes with it."""
    lines = chunk.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("//")):
        i += 1
    if i == 0:
        return "", ""
    # line 0 is the rest of the line the previous policy ended on: it stays with it
    blank = max((j for j in range(1, i) if not lines[j].strip()), default=0)
    return "".join(lines[:i]), "".join(lines[: blank + 1])


def rewrite(document: str, cuts: Sequence[Cut], policies: Mapping[str, Policy]) -> str:
    """``document`` with each cut applied: the policy rewritten in place (its comment kept),
    or removed with the comment attached to it; everything else byte for byte."""
    by_id = {c.policy: c for c in cuts}
    chunks = source.split(document)
    out: list[str] = []
    for chunk in chunks:
        parsed = source.parse(chunk.text)  # in force, so it parses: one policy per chunk
        cut = by_id.get(parsed[0].id) if len(parsed) == 1 else None
        if cut is None:
            out.append(chunk.text)
            continue
        head, stays = _head(chunk.text)
        if cut.removes:
            out.append(stays)
        else:
            out.append(head + _policy_text(_narrowed(policies[cut.policy], cut.keep)))
    return "".join(out) + document[sum(len(c.text) for c in chunks) :]


def diff(before: str, after: str, *, version: str) -> str:
    """A unified diff of the policy document, version ``version`` to the proposal."""
    return "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"policies@{version}", tofile="policies@proposed",
    ))  # fmt: skip
