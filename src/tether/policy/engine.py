"""The Cedar engine on the hot path: handles parsed once, policies sliced by scope.

A :class:`CompiledPolicies` is immutable and built off the hot path when a policy version
becomes current; the runtime swaps it in atomically. Per request it does:

1. **Slice.** Only the policies whose scope can match the request (:mod:`tether.policy.slices`),
   found once per *scope key* — the action, and only those features of principal and resource
   that some scope mentions — as a cached ``PolicySet`` handle.
2. **Entities.** The base handle holds the schema's action entities (so ``action in
   Action::"mutating"`` works); the principal's entity (prebuilt JSON in the runtime snapshot)
   is added once per agent version and cached. The resource's entity (from the request's
   properties) is added, and the context passed, only when the slice's policies read them.
   Nothing is re-parsed per request, and no agent change ever rebuilds a handle.
3. **Decide.** Cedar's answer becomes allow / deny / approval_required: a satisfied permit
   annotated ``@approval("required")`` asks for approval; so does a deny caused only by
   forbids so annotated when, without them, the request would be allowed.
4. **Remember.** Cedar is deterministic: the same policies (this object), principal entity
   (the snapshot's text of that agent version, parents included), action, resource entity
   and context give the same answer. Outcomes are memoized by exactly those inputs, so an
   agent repeating a request skips Cedar; a changed agent has new entity text and a new
   policy version a new object, so nothing stale can match. Revocation, status and chain
   checks happen before this layer on every request (``tether.policy.decide``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import cedarpy
import orjson
from cedarpy import _internal as _cedar

from tether.errors import ValidationFailed
from tether.policy.direct import Inputs, checked
from tether.policy.slices import (
    Reads,
    Slice,
    Uid,
    action_ancestors,
    action_matches,
    scope_matches,
    scope_uids,
)
from tether.policy.source import Policy, to_cedar_json
from tether.policy.values import Effect

_SLICE_CACHE_MAX = 16_384
_PRINCIPAL_CACHE_MAX = 1_024  # ~7 KB each (≤ 7 MiB): only slices Cedar decides need one
MEMO_MAX = 32_768  # outcomes remembered per policy version (cleared when full)
_MEMO_MAX_INPUT = 2_048  # a longer context + resource entity is decided every time
_MEMO_MAX_BYTES = 16 * 1024 * 1024  # the inputs' text the memo may hold (cleared when over)
_ESCAPE = '"__'  # Cedar JSON's escapes: {"__entity": ...}, {"__extn": ...}
_ERRORED_POLICY = re.compile(r"while evaluating policy `([^`]+)`")


class CedarRequest(NamedTuple):
    """One request in Cedar's terms. ``principal_entity``/``resource_entity`` are Cedar JSON
    entity objects (text); ``context`` is the Cedar context as JSON text. A named tuple: made
    once per request, where a frozen dataclass's construction (a ``__setattr__`` per field)
    was a tenth of a remembered answer's time."""

    principal: Uid
    principal_parents: frozenset[Uid]
    principal_entity: str
    action: str
    resource: Uid
    resource_parents: frozenset[Uid]
    resource_entity: str | None
    context: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Cedar's answer, as Cedar gives it. ``failed_forbids`` are forbid policies whose
    evaluation errored (Cedar then skips them); Tether's decision layer denies on them."""

    effect: Effect
    reasons: tuple[str, ...]
    errors: tuple[str, ...] = ()
    failed_forbids: tuple[str, ...] = ()


@dataclass
class CompiledPolicies:
    """One policy version, ready to decide. Immutable after construction (the slice cache is
    a memo of pure results)."""

    version: str
    policies: tuple[Policy, ...]
    schema: cedarpy.Schema
    base_entities: cedarpy.Entities
    actions: dict[str, frozenset[str]]
    reads_session: bool = field(init=False)
    reads_risk: bool = field(init=False)
    _principal_uids: frozenset[Uid] = field(init=False)
    _resource_uids: frozenset[Uid] = field(init=False)
    _slices: dict[tuple[Any, ...], Slice] = field(init=False, default_factory=dict)
    _by_ids: dict[frozenset[str], Slice] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # base + one principal's entity, per prebuilt entity text (a runtime snapshot's AgentView
    # holds one string object per agent version, so a changed agent gets a new handle)
    _principals: dict[str, cedarpy.Entities] = field(init=False, default_factory=dict)
    # outcomes by (principal entity, action, resource, resource entity, context); 0 turns off
    memo_capacity: int = field(default=MEMO_MAX, kw_only=True)
    _memo: dict[tuple[str, str, Uid, str | None, str], Outcome] = field(
        init=False, default_factory=dict
    )
    _memo_bytes: int = field(init=False, default=0)
    # decide a slice of plain policies in Python (tether.policy.direct); False: always Cedar
    direct: bool = field(default=True, kw_only=True)
    direct_answers: int = field(init=False, default=0)  # requests so decided

    def __post_init__(self) -> None:
        # Whether any policy reads the session's history (context.session): when none does,
        # the decision path neither builds it nor hands it to Cedar to parse.
        # Whether any policy may read the principal's risk (``principal.risk``: any mention
        # of "risk" counts): when none does, Cedar is given the agent's own entity, whose
        # handle is cached, not one rebuilt each time its score moves.
        texts = [orjson.dumps(p.est) for p in self.policies]
        self.reads_session = any(b'"session"' in t for t in texts)
        self.reads_risk = any(b"risk" in t for t in texts)
        self._principal_uids = frozenset(
            uid for p in self.policies for uid in scope_uids(p.est["principal"])
        )
        self._resource_uids = frozenset(
            uid for p in self.policies for uid in scope_uids(p.est["resource"])
        )

    @classmethod
    def build(
        cls, version: str, policies: Sequence[Policy], schema: cedarpy.Schema
    ) -> CompiledPolicies:
        base = cedarpy.Entities.from_json_str("[]", schema)
        return cls(version, tuple(policies), schema, base, action_ancestors(base))

    def knows_action(self, action: str) -> bool:
        return action in self.actions

    def for_principal(self, uid: Uid, parents: frozenset[Uid]) -> list[Policy]:
        """The policies whose principal scope can match this principal (it, a role it holds,
        its type, or anyone): what may apply to it — each one's conditions decide the rest."""
        return [p for p in self.policies if scope_matches(p.est["principal"], uid, parents)]

    # -- slicing ---------------------------------------------------------------------------
    def _slice(self, req: CedarRequest) -> Slice:
        key = (
            req.action,
            req.principal if req.principal in self._principal_uids else None,
            req.principal_parents & self._principal_uids,
            req.resource[0],
            req.resource if req.resource in self._resource_uids else None,
            req.resource_parents & self._resource_uids,
        )
        found = self._slices.get(key)
        if found is not None:
            return found
        ancestors = self.actions.get(req.action, frozenset({req.action}))
        chosen = tuple(
            p for p in self.policies
            if action_matches(p.est["action"], req.action, ancestors)
            and scope_matches(p.est["principal"], req.principal, req.principal_parents)
            and scope_matches(p.est["resource"], req.resource, req.resource_parents)
        )  # fmt: skip
        ids = frozenset(p.id for p in chosen)
        with self._lock:
            built = self._by_ids.get(ids)
            if built is None:
                built = Slice.of(chosen)
                self._by_ids[ids] = built
            if len(self._slices) >= _SLICE_CACHE_MAX:
                self._slices.clear()
            self._slices[key] = built
        return built

    # -- deciding --------------------------------------------------------------------------
    def decide(self, req: CedarRequest) -> Outcome:
        if not self.memo_capacity:
            return self._decide(req)
        key = _memo_key(req)
        found = self._memo.get(key)
        if found is not None:
            return found
        outcome = self._decide(req)
        self._remember(key, req, outcome)
        return outcome

    def may_permit(self, req: CedarRequest) -> bool:
        """Whether some context could make ``req`` allowed (the MCP gateway's tool list: a
        tool a ``permit`` allows for some arguments is shown). Cedar's partial evaluation
        (experimental in Cedar) with the context unknown: allowed, or undecided until the
        context is known. Never a decision: each call is decided on its whole request."""
        sl = self._slice(req)
        if sl.empty:
            return False
        entities = self._principal_entities(req.principal_entity)
        if req.resource_entity is not None:
            entities = _with_resources(entities, f"[{req.resource_entity}]")
        request = {  # no context: unknown
            "principal": _uid_text(req.principal),
            "action": f"Action::{orjson.dumps(req.action).decode()}",
            "resource": _uid_text(req.resource),
        }
        result = cedarpy.is_authorized_partial(request, sl.policy_set, entities)
        return result.decision in (cedarpy.Decision.Allow, cedarpy.Decision.NoDecision)

    def set_memo_capacity(self, capacity: int) -> None:
        """Remember up to ``capacity`` outcomes (0: none); forgets what it remembered."""
        self.memo_capacity = capacity
        self._memo.clear()
        self._memo_bytes = 0

    def _remember(
        self, key: tuple[str, str, Uid, str | None, str], req: CedarRequest, outcome: Outcome
    ) -> None:
        size = len(req.context) + len(req.resource_entity or "")
        if self.memo_capacity and size <= _MEMO_MAX_INPUT:
            size += len(req.principal_entity)  # a view joins its text anew when not kept
            if len(self._memo) >= self.memo_capacity or self._memo_bytes > _MEMO_MAX_BYTES:
                self._memo.clear()
                self._memo_bytes = 0
            self._memo[key] = outcome
            self._memo_bytes += size

    def _decide(self, req: CedarRequest) -> Outcome:
        sl = self._slice(req)
        found = self._without_cedar(sl, req)
        return found if found is not None else self._by_cedar(sl, req)

    def _without_cedar(self, sl: Slice, req: CedarRequest) -> Outcome | None:
        """The answer when Cedar is not needed for it: an empty slice, or one decided in
        Python; else None."""
        if sl.empty:
            return Outcome(Effect.DENY, ())
        if sl.direct is not None and self.direct:
            return self._in_python(sl, req)
        return None

    def _by_cedar(self, sl: Slice, req: CedarRequest) -> Outcome:
        entities = self._principal_entities(req.principal_entity)
        if _needs_resource(sl.reads, req):
            entities = _with_resources(entities, f"[{req.resource_entity}]")
        request = _request(req, context=sl.reads.context or _ESCAPE in req.context)
        result = _authorize(request, sl.policy_set, entities)
        return self._finish(sl, request, result, entities)

    def _in_python(self, sl: Slice, req: CedarRequest) -> Outcome | None:
        """The slice's answer from its policies in Python, with Cedar's inputs checked as
        Cedar checks them (only those Cedar would be given), or None: Cedar decides."""
        assert sl.direct is not None
        if req.resource == req.principal or not _cedar_type(req.resource[0]):
            return None
        context = _NO_CONTEXT
        if sl.reads.context or _ESCAPE in req.context:
            read = checked(req.context)
            if read is None:
                return None
            context = read
        resource = None
        if _needs_resource(sl.reads, req):
            assert req.resource_entity is not None
            resource = checked(req.resource_entity)
            if resource is None:
                return None
        found = sl.direct.satisfied(Inputs(
            principal=req.principal, principal_parents=req.principal_parents,
            principal_text=req.principal_entity, action=req.action, actions=self.actions,
            resource=req.resource, resource_parents=req.resource_parents,
            resource_entity=resource, context=context,
        ))  # fmt: skip
        if found is None:
            return None
        self.direct_answers += 1
        return _effect(sl, *found)

    def _principal_entities(self, entity: str) -> cedarpy.Entities:
        found = self._principals.get(entity)
        if found is None:
            found = self.base_entities.with_added_json_str(f"[{entity}]")
            if len(self._principals) >= _PRINCIPAL_CACHE_MAX:
                self._principals.clear()
            self._principals[entity] = found
        return found

    def decide_many(self, reqs: Sequence[CedarRequest]) -> list[Outcome]:
        """A batch, one Cedar call per principal: the union of those requests' slices (a policy
        whose scope cannot match a request cannot affect it, so the union is exact for each)
        over the principal's cached entity set plus the batch's resources."""
        groups: dict[str, list[int]] = {}
        out: list[Outcome | None] = [None] * len(reqs)
        for i, r in enumerate(reqs):
            out[i] = self._memo.get(_memo_key(r))
            if out[i] is None and (found := self._without_cedar(self._slice(r), r)) is not None:
                out[i] = found
                self._remember(_memo_key(r), r, found)
            if out[i] is None:
                groups.setdefault(r.principal_entity, []).append(i)
        for indexes in groups.values():
            group = [reqs[i] for i in indexes]
            for i, outcome in zip(indexes, self._decide_group(group), strict=True):
                out[i] = outcome
                self._remember(_memo_key(reqs[i]), reqs[i], outcome)
        return [o for o in out if o is not None]

    def _decide_group(self, reqs: list[CedarRequest]) -> list[Outcome]:
        if len(reqs) == 1:  # already tried without Cedar (decide_many)
            return [self._by_cedar(self._slice(reqs[0]), reqs[0])]
        # none of them has an empty slice: decide_many answered those without Cedar
        ids = frozenset(p.id for r in reqs for p in self._slice(r).policies)
        resources: dict[Uid, str] = {}
        for r in reqs:
            if r.resource == r.principal:
                continue
            # "" for a resource sent without properties (no entity): it must stay without one
            if resources.setdefault(r.resource, r.resource_entity or "") != (
                r.resource_entity or ""
            ):
                # same uid, different properties: one at a time
                return [self._by_cedar(self._slice(r), r) for r in reqs]
        union = self._union(ids)
        entities = self._principal_entities(reqs[0].principal_entity)
        if delta := ",".join(e for e in resources.values() if e):
            entities = _with_resources(entities, f"[{delta}]")
        requests = [_request(r) for r in reqs]
        results = _authorize_batch(requests, union.policy_set, entities)
        return [
            self._finish(union, q, res, entities) for q, res in zip(requests, results, strict=True)
        ]

    def _union(self, ids: frozenset[str]) -> Slice:
        with self._lock:
            built = self._by_ids.get(ids)
            if built is None:
                built = Slice.of([p for p in self.policies if p.id in ids])
                self._by_ids[ids] = built
            return built

    def _finish(
        self, sl: Slice, request: dict[str, Any], result: _Result, entities: cedarpy.Entities,
    ) -> Outcome:  # fmt: skip
        reasons, errors = result.reasons, result.errors
        if result.allowed:
            failed = self._failed_forbids(errors)
            if sl.approval_ids.intersection(reasons):
                return Outcome(Effect.APPROVAL_REQUIRED, reasons, errors, failed)
            return Outcome(Effect.ALLOW, reasons, errors, failed)
        if reasons and sl.approval_forbids.issuperset(reasons):
            lifted = self._lifted(sl)
            again = _authorize(request, lifted, entities) if lifted else None
            if again is not None and again.allowed:
                both = tuple(sorted({*reasons, *again.reasons}))
                all_errors = (*errors, *again.errors)
                failed = self._failed_forbids(all_errors)
                return Outcome(Effect.APPROVAL_REQUIRED, both, all_errors, failed)
        return Outcome(Effect.DENY, reasons, errors)

    def _failed_forbids(self, errors: tuple[str, ...]) -> tuple[str, ...]:
        if not errors:
            return ()
        forbids = {p.id for p in self.policies if p.effect == "forbid"}
        named = {m.group(1) for e in errors for m in _ERRORED_POLICY.finditer(e)}
        return tuple(sorted(named & forbids))

    def _lifted(self, sl: Slice) -> cedarpy.PolicySet | None:
        """The slice without its approval forbids: would the request pass once approved?"""
        if sl.lifted is None:
            rest = [p for p in sl.policies if p.id not in sl.approval_forbids]
            if not rest:
                return None
            sl.lifted = cedarpy.PolicySet.from_json_str(to_cedar_json(rest))
        return sl.lifted


@dataclass(frozen=True, slots=True)
class _Result:
    allowed: bool
    reasons: tuple[str, ...]
    errors: tuple[str, ...]


def _with_resources(entities: cedarpy.Entities, delta: str) -> cedarpy.Entities:
    try:
        return entities.with_added_json_str(delta)
    except ValueError as exc:  # an escape Cedar cannot read, e.g. {"__extn": {"fn": "ip", ...}}
        raise ValidationFailed(
            f"resource.properties are not valid Cedar values ({exc}); check any "
            '"__entity"/"__extn" values', field="resource.properties",
        ) from exc  # fmt: skip


def _result(text: str) -> _Result:
    raw = orjson.loads(text)
    diagnostics = raw.get("diagnostics") or {}
    if raw.get("decision") not in ("Allow", "Deny"):  # Cedar could not build the request
        problem = "; ".join(diagnostics.get("errors") or ()) or "no decision"
        raise ValidationFailed(
            f'context is not valid Cedar ({problem}); check any "__entity"/"__extn" values',
            field="context",
        )
    return _Result(raw.get("decision") == "Allow", tuple(sorted(diagnostics.get("reason") or ())),
                   tuple(diagnostics.get("errors") or ()))  # fmt: skip


# cedarpy's public wrappers re-encode the context and decode each answer with the stdlib json
# module and wrap it in objects: a fifth of a decision here (bench/README.md). The extension
# functions they call take the same arguments (the context already as JSON text); cedarpy is
# pinned to a minor version in pyproject.toml, and tests/test_policy_differential.py holds
# these answers to the public API's.
def _authorize(
    request: dict[str, Any], policies: cedarpy.PolicySet, entities: cedarpy.Entities
) -> _Result:
    return _result(_cedar.is_authorized(request, policies, entities._inner))


def _authorize_batch(
    requests: list[dict[str, Any]], policies: cedarpy.PolicySet, entities: cedarpy.Entities
) -> list[_Result]:
    return [_result(t) for t in _cedar.is_authorized_batch(requests, policies, entities._inner)]


def _effect(sl: Slice, permits: list[str], forbids: list[str]) -> Outcome:
    """The outcome of the satisfied policies, as :meth:`CompiledPolicies._finish` makes it of
    Cedar's answer (no errors: Python hands any request that has one to Cedar)."""
    if permits and not forbids:  # Cedar: allowed, for every satisfied permit
        reasons = tuple(sorted(permits))
        if sl.approval_ids.intersection(reasons):
            return Outcome(Effect.APPROVAL_REQUIRED, reasons)
        return Outcome(Effect.ALLOW, reasons)
    reasons = tuple(sorted(forbids))  # denied, for every satisfied forbid (maybe none)
    if reasons and permits and sl.approval_forbids.issuperset(reasons):
        # only approval forbids stand in the way of a permit: _finish's lifted slice
        return Outcome(Effect.APPROVAL_REQUIRED, tuple(sorted({*reasons, *permits})))
    return Outcome(Effect.DENY, reasons)


_NO_CONTEXT: dict[str, Any] = {}  # the slice reads no context: Cedar is given none


@lru_cache(maxsize=1024)
def _cedar_type(name: str) -> bool:
    """Whether Cedar reads ``name`` as an entity type (it refuses a request naming one it
    does not, e.g. ``if`` or ``a:b``): asked of Cedar once per name."""
    try:
        cedarpy.Entities.from_json_str(
            orjson.dumps([{"uid": {"type": name, "id": ""}, "attrs": {}, "parents": []}]).decode()
        )
    except ValueError:
        return False
    return True


def _uid_text(uid: Uid) -> str:
    return f"{uid[0]}::{orjson.dumps(uid[1]).decode()}"


def _memo_key(req: CedarRequest) -> tuple[str, str, Uid, str | None, str]:
    return (req.principal_entity, req.action, req.resource, req.resource_entity, req.context)


def _needs_resource(reads: Reads, req: CedarRequest) -> bool:
    """Whether Cedar must hold the resource's entity to decide ``req`` on a slice whose
    policies read ``reads``: when a policy reads the resource (or its ancestors), names an
    entity of its type, or the context may refer to it. The entity text is always parsed
    when it has ``__`` keys (an entity reference or extension value), so an input Cedar
    rejects is rejected whatever the slice."""
    entity = req.resource_entity
    if entity is None or req.resource == req.principal:
        return False
    return (
        reads.resource
        or req.resource[0] in reads.literal_types
        or _ESCAPE in req.context
        or _ESCAPE in entity
    )


def _request(req: CedarRequest, *, context: bool = True) -> dict[str, Any]:
    """Cedar's request. ``context=False`` when no policy Cedar will see reads the context and
    the context is plain data (no ``__entity``/``__extn`` escapes, so nothing in it can fail
    to parse): the empty record (no context) then decides the same, and Cedar parses nothing."""
    request: dict[str, Any] = {
        "principal": {"type": req.principal[0], "id": req.principal[1]},
        "action": {"type": "Action", "id": req.action},
        "resource": {"type": req.resource[0], "id": req.resource[1]},
    }
    if context:
        request["context"] = req.context
    return request
