"""Python's answers (``tether.policy.direct``) against plain Cedar: deciding a slice of plain
policies without Cedar changes speed, not meaning.

Hypothesis draws small policy documents whose conditions are random expressions of the subset
``tether.policy.direct`` evaluates, and the inputs that make Cedar err or refuse: comparisons
across types, attributes some entities lack (guarded by ``has`` or not), missing tags, ``&&``
and ``||`` around an erroring operand, non-boolean conditions, sets, records, 64-bit edges,
floats, nulls and escapes in the context and the resource's properties, resources that are
agents (the principal itself among them). Each request is decided by ``CompiledPolicies`` with
Python on, with Python off, and by an oracle: plain ``cedarpy.is_authorized`` over the whole
policy text and every entity, positional ids mapped back to ``@id``, Tether's approval rules on
top. The two engines must agree exactly (outcome, errors and all, or the same refusal); the
oracle on effect, reasons, errors, failed forbids and Cedar's raw decision.

Policies are compiled without Cedar's validator (``source.parse`` only): a request's values are
never validated, so a validated policy meets the runtime errors drawn here too, and unvalidated
ones reach the rest of Cedar's rules (``true == 1``, ``"a" < 1``). No database.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cedarpy
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tether.errors import ValidationFailed
from tether.policy import service, source
from tether.policy.decide import cedar_request, operator_request
from tether.policy.engine import CedarRequest, CompiledPolicies, Outcome
from tether.policy.entities import NO_RISK, AgentView, agent_view
from tether.policy.slices import action_ancestors
from tether.policy.values import Ask, Effect
from tether.principals import Principal, Role

SCHEMA = cedarpy.Schema.from_str(service.BASE_SCHEMA)
BASE_POLICIES = service.base_policies(SCHEMA)
ACTION_ENTITIES: list[dict[str, Any]] = orjson.loads(
    str(cedarpy.Entities.from_json_str("[]", SCHEMA))
)

ROLES = ("ops", "payments", "support")
AGENT_IDS = tuple(f"agt_{i}" for i in range(6))
UNKNOWN_AGENT = "agt_9"
USERS = ("usr_alice", "usr_bob")
ACTIONS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "Tool": ("tool.call", "tool.write"),
    "Secret": ("secret.read",),
    "Dataset": ("dataset.read", "dataset.write"),
}
ALL_ACTIONS = tuple(a for acts in ACTIONS_BY_TYPE.values() for a in acts)
TYPE_OF_ACTION = {a: t for t, acts in ACTIONS_BY_TYPE.items() for a in acts}
RESOURCE_IDS: dict[str, tuple[str, ...]] = {
    "Tool": ("t0", "t1"),
    "Secret": ("k0",),
    "Dataset": ("d0", "d1"),
    "Ns::Tool": ("t0",),  # a namespaced type: Cedar's to read
    "if": ("t0",),  # not an entity type Cedar can parse: the request is refused
}
STRINGS = ("x", "eu", "active", "high", "1", "", "ops", "agt_1", "usr_alice", "s1", "é", 'a"b')
LONGS = (0, 1, -1, 2, 100, 2**63 - 1, -(2**63))
MAX_LONG, MIN_LONG = 2**63 - 1, -(2**63)
# Values Cedar reads otherwise or refuses: past 64 bits, floats, null, escapes.
ODD_VALUES: tuple[Any, ...] = (
    2**63,
    1.5,
    1.0,
    None,
    [1, None],
    {"__entity": {"type": "Role", "id": "ops"}},
    {"__extn": {"fn": "ip", "arg": "10.0.0.1"}},
    {"__extn": {"fn": "ip", "arg": "not an address"}},
)


def q(value: str) -> str:
    return orjson.dumps(value).decode()


def chance(draw: st.DrawFn, percent: int) -> bool:
    """True ``percent`` times in a hundred, roughly: Hypothesis favours an integer range's
    ends, so the window is drawn from its middle."""
    return 20 <= draw(st.integers(0, 139)) < 20 + percent


# -- expressions ---------------------------------------------------------------------------------
# Every expression is drawn for a type (bool, long, string, entity, set) and sometimes, on
# purpose, for another one where that type is expected. An attribute that may be absent comes
# with its `has` guard, which the enclosing test usually (not always) puts in front of it.

KINDS = ("bool", "long", "string", "entity", "set")
CHAOS = 10  # percent of operands drawn of any type


@dataclass(frozen=True)
class E:
    text: str
    guards: tuple[str, ...] = ()


def _leaf(text: str, *guards: str) -> E:
    return E(text, guards)


LEAVES: dict[str, list[E]] = {
    "long": [
        _leaf("principal.risk.score"),
        _leaf("context.amount", "context has amount"),
        _leaf("resource.count", "resource has count"),
        _leaf("context.meta.level", "context has meta", "context.meta has level"),
    ],
    "string": [
        _leaf("principal.status"),
        _leaf("principal.risk_tier"),
        _leaf("principal.risk.level"),
        _leaf('principal.getTag("team")', 'principal.hasTag("team")'),
        _leaf('principal.getTag("level")', 'principal.hasTag("level")'),
        _leaf('principal.getTag("env")', 'principal.hasTag("env")'),
        _leaf("resource.server", "resource has server"),
        _leaf("resource.classification", "resource has classification"),
        _leaf("resource.meta.owner", "resource has meta", "resource.meta has owner"),
        _leaf('resource.getTag("team")', 'resource.hasTag("team")'),
        _leaf("context.region", "context has region"),
        _leaf("context.on_behalf_of", "context has on_behalf_of"),
        _leaf("context.meta.name", "context has meta", "context.meta has name"),
        _leaf("context.session.id"),
    ],
    "entity": [
        _leaf("principal"),
        _leaf("resource"),
        _leaf("action"),
        _leaf('Role::"ops"'),
        _leaf('Role::"payments"'),
        _leaf('Agent::"agt_1"'),
        _leaf('Tool::"t0"'),
        _leaf('Action::"tool.call"'),
        _leaf('Action::"tool.write"'),
        _leaf('Action::"mutating"'),
        _leaf('User::"usr_alice"'),
    ],
    "set": [
        _leaf("context.chain"),
        _leaf("context.session.labels"),
        _leaf("context.tags", "context has tags"),
        _leaf("resource.labels", "resource has labels"),
        _leaf("[]"),
        _leaf("[1, 2]"),
        _leaf('["eu", "x"]'),
        _leaf('[Role::"ops", Role::"support"]'),
        _leaf('[1, "1", true]'),
        _leaf("[principal, resource]"),
        _leaf('[Action::"mutating", Action::"tool.call"]'),
    ],
    "bool": [
        _leaf("true"),
        _leaf("false"),
        _leaf("context.delegated"),
        _leaf("context.flag", "context has flag"),
        _leaf("resource.mutating", "resource has mutating"),
        _leaf("context.meta.inner.x", "context has meta", "context.meta has inner"),
        _leaf("principal.risk has score"),
        _leaf("principal has nope"),
    ],
}
ENTITY_TYPES = ("Agent", "Tool", "Secret", "Dataset", "Role", "Action", "User", "Ns::Tool")
HAS_TARGETS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("principal", ("status", "risk", "nope", "name"), ()),
    ("resource", ("server", "mutating", "classification", "labels", "count", "meta"), ()),
    ("context", ("amount", "region", "meta", "tags", "flag", "on_behalf_of", "nope"), ()),
    ("context.meta", ("level", "name", "inner"), ("context has meta",)),
    ("principal.risk", ("score", "level", "nope"), ()),
    ("resource.meta", ("owner", "nope"), ("resource has meta",)),
    ("1", ("x",), ()),  # not a record: an error
    ("principal.status", ("x",), ()),  # a string: an error
)
TAG_KEYS = ('"team"', '"env"', '"level"', '"nope"', "1")


def _folded(draw: st.DrawFn, body: str, guards: tuple[str, ...]) -> E:
    """A test over values that may be absent: usually behind their guards, now and then not."""
    unique = tuple(dict.fromkeys(guards))
    if unique and draw(st.integers(0, 3)) > 0:
        return E(f"({' && '.join(unique)} && {body})")
    return E(f"({body})")


@st.composite
def operands(draw: st.DrawFn, kind: str, depth: int) -> E:
    if chance(draw, CHAOS):
        kind = draw(st.sampled_from(KINDS))
    return draw(exprs(kind, depth))


@st.composite
def exprs(draw: st.DrawFn, kind: str, depth: int) -> E:
    if kind == "bool":
        return draw(bools(depth))
    if depth > 0 and draw(st.integers(0, 5)) == 0:
        cond = draw(operands("bool", depth - 1))
        then, other = draw(exprs(kind, depth - 1)), draw(exprs(kind, depth - 1))
        return E(f"(if {cond.text} then {then.text} else {other.text})",
                 cond.guards + then.guards + other.guards)  # fmt: skip
    if kind == "long" and draw(st.booleans()):
        return E(f"({draw(st.sampled_from(LONGS))})")  # `!-1` and `-1.x` do not parse
    if kind == "string" and draw(st.booleans()):
        return E(q(draw(st.sampled_from(STRINGS))))
    return draw(st.sampled_from(LEAVES[kind]))


@st.composite
def bools(draw: st.DrawFn, depth: int) -> E:
    form = draw(st.sampled_from((
        "leaf", "leaf", "and", "or", "not", "eq", "eq", "ne", "cmp", "cmp", "in", "is",
        "contains", "has", "tag", "if",
    )))  # fmt: skip
    sub = max(depth - 1, 0)
    if depth == 0 and form in ("and", "or", "not", "if"):
        form = "leaf"
    if form == "leaf":
        leaf = draw(st.sampled_from(LEAVES["bool"]))
        return _folded(draw, leaf.text, leaf.guards)
    if form == "not":
        inner = draw(operands("bool", sub))
        return _folded(draw, f"!{inner.text}", inner.guards)
    if form == "if":
        cond, then, other = (draw(operands("bool", sub)) for _ in range(3))
        return _folded(draw, f"(if {cond.text} then {then.text} else {other.text})",
                       cond.guards + then.guards + other.guards)  # fmt: skip
    if form in BINARY:
        return draw(_binary(form, sub))
    return draw(FORMS[form])


BINARY = {"and": "&&", "or": "||", "eq": "==", "ne": "!=", "cmp": ""}


@st.composite
def _binary(draw: st.DrawFn, form: str, depth: int) -> E:
    """``&&``/``||`` of booleans, ``==``/``!=`` of anything (usually of one type), an
    order of Longs."""
    if form in ("and", "or"):
        left, right = draw(operands("bool", depth)), draw(operands("bool", depth))
    elif form == "cmp":
        left, right = draw(operands("long", depth)), draw(operands("long", depth))
    else:
        kind = draw(st.sampled_from(KINDS))
        left = draw(exprs(kind, depth))
        other = kind if draw(st.integers(0, 3)) else draw(st.sampled_from(KINDS))
        right = draw(operands(other, depth))
    op = BINARY[form] or draw(st.sampled_from(("<", "<=", ">", ">=")))
    return _folded(draw, f"({left.text} {op} {right.text})", left.guards + right.guards)


@st.composite
def _ins(draw: st.DrawFn) -> E:
    left = draw(st.sampled_from((
        "principal", "resource", "action", 'Role::"ops"', 'Action::"tool.write"',
        "(if context.delegated then principal else resource)",
    )))  # fmt: skip
    if chance(draw, CHAOS):
        left = q("ops")
    right = draw(st.sampled_from((
        'Role::"ops"', 'Role::"payments"', 'Action::"mutating"', 'Tool::"t0"',
        'Agent::"agt_1"', "principal", "resource", '[Role::"ops", Role::"support"]',
        '[Action::"mutating", Role::"ops"]', "[]", '[Role::"ops", "ops"]', '"ops"',
        "context.chain",
    )))  # fmt: skip
    return E(f"({left} in {right})")


@st.composite
def _iss(draw: st.DrawFn) -> E:
    left = draw(st.sampled_from(("principal", "resource", "action", 'Role::"ops"')))
    if chance(draw, CHAOS):
        left = "context.delegated"
    kind = draw(st.sampled_from(ENTITY_TYPES))
    if draw(st.booleans()):
        within = draw(st.sampled_from((
            'Role::"ops"', 'Tool::"t0"', "resource", '[Role::"ops", Role::"support"]', '"ops"',
        )))  # fmt: skip
        return E(f"({left} is {kind} in {within})")
    return E(f"({left} is {kind})")


@st.composite
def _contains(draw: st.DrawFn) -> E:
    collection = draw(operands("set", 1))
    value = draw(exprs(draw(st.sampled_from(KINDS)), 0))
    return _folded(draw, f"{collection.text}.contains({value.text})",
                   collection.guards + value.guards)  # fmt: skip


@st.composite
def _has(draw: st.DrawFn) -> E:
    target, attrs, guards = draw(st.sampled_from(HAS_TARGETS))
    return _folded(draw, f"({target} has {draw(st.sampled_from(attrs))})", guards)


@st.composite
def _tags(draw: st.DrawFn) -> E:
    entity = draw(st.sampled_from(("principal", "resource")))
    key = draw(st.sampled_from(TAG_KEYS))
    if draw(st.booleans()):
        return E(f"{entity}.hasTag({key})")
    value = q(draw(st.sampled_from(("x", "y", "2", "true"))))
    return _folded(draw, f"({entity}.getTag({key}) == {value})", (f"{entity}.hasTag({key})",))


FORMS: dict[str, st.SearchStrategy[E]] = {
    "in": _ins(), "is": _iss(), "contains": _contains(), "has": _has(), "tag": _tags(),
}  # fmt: skip


# Outside the subset: a slice holding one of these is Cedar's.
UNSUPPORTED = (
    'context has region && context.region like "e*"',
    'context has tags && context.tags.containsAny(["a"])',
    "[1, 2].containsAll([1])",
    "context.chain.isEmpty()",
    "principal.risk.score + 1 > 0",
    'ip("10.0.0.1").isIpv4()',
    "{a: 1} == {a: 1}",
)


# -- policies ------------------------------------------------------------------------------------

principal_scopes = st.sampled_from((
    "principal", "principal", "principal", 'principal == Agent::"agt_1"',
    'principal in Role::"ops"', 'principal in Role::"payments"', "principal is Agent",
    'principal is Agent in Role::"support"',
))  # fmt: skip
action_scopes = st.sampled_from((
    "action", "action", 'action == Action::"tool.call"', 'action == Action::"dataset.read"',
    'action in Action::"mutating"', 'action in [Action::"secret.read", Action::"tool.write"]',
))  # fmt: skip
resource_scopes = st.sampled_from((
    "resource", "resource", "resource", "resource", "resource is Tool", "resource is Dataset",
    'resource == Tool::"t0"',
    'resource in Dataset::"d1"', 'resource is Tool in Tool::"t1"', "resource is Agent",
    'resource in Role::"ops"',
))  # fmt: skip


@dataclass(frozen=True)
class Spec:
    effect: str
    approval: bool
    scope: tuple[str, str, str]
    conditions: tuple[str, ...]

    def text(self, pid: str) -> str:
        head = f"@id({q(pid)})\n" + ('@approval("required")\n' if self.approval else "")
        return (f"{head}{self.effect} ({', '.join(self.scope)})"
                + "".join(f"\n  {c}" for c in self.conditions) + ";\n")  # fmt: skip


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    conditions = []
    for _ in range(draw(st.sampled_from((0, 1, 1, 1, 2)))):
        kind = draw(st.sampled_from(("when", "when", "unless")))
        body = draw(bools(draw(st.integers(0, 3)))).text
        if chance(draw, 2):
            body = draw(st.sampled_from(UNSUPPORTED))
        conditions.append(f"{kind} {{ {body} }}")
    return Spec(
        effect=draw(st.sampled_from(("permit", "permit", "permit", "forbid"))),
        approval=draw(st.integers(0, 4)) == 0,
        scope=(draw(principal_scopes), draw(action_scopes), draw(resource_scopes)),
        conditions=tuple(conditions),
    )


def document_of(policy_specs: list[Spec]) -> str:
    return "\n".join(s.text(f"p{i:02d}") for i, s in enumerate(policy_specs))


# -- agents and requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    id: str
    status: str
    risk_tier: str
    roles: frozenset[str]
    tags: dict[str, Any]

    @cached_property
    def view(self) -> AgentView:
        return agent_view(id=self.id, name=f"name-{self.id}", owner_id="usr_alice",
                          purpose="direct", risk_tier=self.risk_tier, status=self.status,
                          attributes=self.tags, expires_at=None, roles=self.roles,
                          supervisors=())  # fmt: skip

    def entity(self) -> dict[str, Any]:
        """The agent's Cedar entity from the schema's description, not from Tether's code."""
        return {
            "uid": {"type": "Agent", "id": self.id},
            "attrs": {"status": self.status, "risk_tier": self.risk_tier, "owner": "usr_alice",
                      "purpose": "direct", "name": f"name-{self.id}", "risk": NO_RISK},
            "parents": [{"type": "Role", "id": r} for r in self.roles],
            "tags": {k: v if isinstance(v, str) else orjson.dumps(v).decode()
                     for k, v in self.tags.items()},
        }  # fmt: skip


@st.composite
def agents(draw: st.DrawFn, aid: str) -> Agent:
    tags: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "team": st.sampled_from(("x", "y")),
        "env": st.sampled_from(("prod", "dev")),
        "level": st.integers(0, 3),  # not a string: a JSON-text tag
    }))  # fmt: skip
    if chance(draw, 5):
        tags["__k"] = "v"  # a key Cedar reads plainly, with the escapes' prefix
    return Agent(
        aid,
        draw(st.sampled_from(("active",) * 8 + ("suspended",))),
        draw(st.sampled_from(("minimal", "limited", "high"))),
        draw(st.frozensets(st.sampled_from(ROLES), max_size=2)),
        tags,
    )


@st.composite
def populations(draw: st.DrawFn) -> dict[str, Agent]:
    n = draw(st.integers(3, len(AGENT_IDS)))
    return {aid: draw(agents(aid)) for aid in AGENT_IDS[:n]}


def _odd(draw: st.DrawFn, values: dict[str, Any]) -> None:
    if chance(draw, 8):
        values[draw(st.sampled_from(("odd", "amount", "meta")))] = draw(st.sampled_from(ODD_VALUES))


@st.composite
def asks(draw: st.DrawFn, population: tuple[str, ...]) -> Ask:
    subject = draw(st.sampled_from(population))
    action = draw(st.sampled_from(ALL_ACTIONS))
    rtype = TYPE_OF_ACTION[action]
    how = draw(st.integers(0, 39))
    if how < 5:
        rtype = draw(st.sampled_from(("Tool", "Secret", "Dataset")))
    elif how < 8:
        rtype = "Agent"
    elif how == 8:
        rtype = draw(st.sampled_from(("Ns::Tool", "if")))
    if rtype == "Agent":
        rid = draw(st.sampled_from((subject, *population, UNKNOWN_AGENT)))
    else:
        rid = draw(st.sampled_from(RESOURCE_IDS[rtype]))
    props: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "server": st.sampled_from(("s1", "s2", "x")) | st.just(1),
        "mutating": st.booleans() | st.just("yes"),
        "classification": st.sampled_from(("public", "secret")),
        "labels": st.lists(st.sampled_from(("pii", "x")), max_size=2),
        "count": st.sampled_from(LONGS),
        "meta": st.fixed_dictionaries({}, optional={"owner": st.sampled_from(STRINGS)}),
    }))  # fmt: skip
    _odd(draw, props)
    ctx: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "amount": st.sampled_from(LONGS) | st.integers(-5, 250) | st.just("100"),
        "region": st.sampled_from(("eu", "us")) | st.just(1),
        "flag": st.booleans() | st.just("true"),
        "tags": st.lists(st.sampled_from(("a", "b")) | st.just(1), max_size=3),
        "meta": st.fixed_dictionaries({}, optional={
            "level": st.sampled_from(LONGS) | st.just("1"),
            "name": st.sampled_from(STRINGS),
            "inner": st.fixed_dictionaries({"x": st.booleans()}),
        }),
    }))  # fmt: skip
    _odd(draw, ctx)
    chain: tuple[str, ...] = ()
    on_behalf_of = None
    if draw(st.integers(0, 3)) == 0:
        on_behalf_of = draw(st.sampled_from(USERS + population))
        chain = (on_behalf_of, subject)
    return Ask(subject, action, rtype, rid, props, ctx, chain, on_behalf_of)


# -- the three deciders --------------------------------------------------------------------------

_POSITIONAL = re.compile(r"while evaluating policy `policy(\d+)`")


def compiled(policies: list[source.Policy], *, direct: bool) -> CompiledPolicies:
    """A policy version as ``CompiledPolicies.build`` makes one, the memo off (every request
    decided), Python on or off."""
    base = cedarpy.Entities.from_json_str("[]", SCHEMA)
    return CompiledPolicies("vD", tuple(policies), SCHEMA, base, action_ancestors(base),
                            memo_capacity=0, direct=direct)  # fmt: skip


@dataclass
class World:
    policies: list[source.Policy]
    agents: dict[str, Agent]

    @classmethod
    def of(cls, document: str, population: dict[str, Agent]) -> World:
        return cls([*BASE_POLICIES, *source.parse(document)], population)

    @cached_property
    def fast(self) -> CompiledPolicies:
        return compiled(self.policies, direct=True)

    @cached_property
    def slow(self) -> CompiledPolicies:
        return compiled(self.policies, direct=False)

    @cached_property
    def views(self) -> dict[str, AgentView]:
        return {aid: a.view for aid, a in self.agents.items()}

    @cached_property
    def lifted(self) -> list[source.Policy]:
        return [p for p in self.policies if not (p.approval and p.effect == "forbid")]

    @cached_property
    def sets(self) -> tuple[cedarpy.PolicySet, cedarpy.PolicySet]:
        return (cedarpy.PolicySet.from_str("\n".join(p.text for p in self.policies)),
                cedarpy.PolicySet.from_str("\n".join(p.text for p in self.lifted)))  # fmt: skip

    def request(self, ask: Ask) -> CedarRequest:
        return cedar_request(ask, self.views)


@dataclass(frozen=True)
class Expected:
    outcome: Outcome  # errors sorted
    cedar_allowed: bool


def _plain_request(ask: Ask) -> dict[str, Any]:
    """The request as API.md and the schema describe it (TetherContext), built by hand."""
    chain = list(ask.full_chain)
    context = {**ask.context, "chain": chain, "delegated": len(chain) > 1,
               "session": {"id": chain[0], "labels": [], "tools": []}}  # fmt: skip
    if ask.on_behalf_of is not None:
        context["on_behalf_of"] = ask.on_behalf_of
    return {
        "principal": {"type": "Agent", "id": ask.subject},
        "action": {"type": "Action", "id": ask.action},
        "resource": {"type": ask.resource_type, "id": ask.resource_id},
        "context": context,
    }


def _store(w: World, ask: Ask) -> list[dict[str, Any]]:
    """Every entity there is: the schema's actions, every agent, the resource when it has
    properties (an agent resource is the agent's entity)."""
    out = [*ACTION_ENTITIES, *(a.entity() for a in w.agents.values())]
    known_agent = ask.resource_type == "Agent" and ask.resource_id in w.agents
    if ask.properties and not known_agent:
        uid = {"type": ask.resource_type, "id": ask.resource_id}
        out.append({"uid": uid, "attrs": ask.properties, "parents": []})
    return out


def _cedar(
    request: dict[str, Any], policies: list[source.Policy], policy_set: cedarpy.PolicySet,
    entities: list[dict[str, Any]],
) -> tuple[bool, list[str], list[str]] | None:  # fmt: skip
    """Plain Cedar: allowed, reasons and errors by @id; None when Cedar refuses the input."""
    try:
        raw = cedarpy.is_authorized(request, policy_set, entities, schema=None)
    except ValueError:
        return None
    if raw.decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
        return None
    names = raw.diagnostics.id_annotations_by_reason
    assert set(names) == set(raw.diagnostics.reasons)
    errors = [_POSITIONAL.sub(lambda m: f"while evaluating policy `{policies[int(m[1])].id}`", e)
              for e in raw.diagnostics.errors]  # fmt: skip
    return raw.allowed, sorted(names[r] for r in raw.diagnostics.reasons), errors


def oracle(w: World, ask: Ask) -> Expected | None:
    """Plain Cedar on everything, Tether's approval rules on top; None: Cedar refuses."""
    request, entities = _plain_request(ask), _store(w, ask)
    first = _cedar(request, w.policies, w.sets[0], entities)
    if first is None:
        return None
    allowed, reasons, errors = first
    forbids = {p.id for p in w.policies if p.effect == "forbid"}
    approval_permits = {p.id for p in w.policies if p.approval and p.effect == "permit"}
    approval_forbids = {p.id for p in w.policies if p.approval and p.effect == "forbid"}

    def failed(errs: list[str]) -> tuple[str, ...]:
        return tuple(sorted({m[1] for e in errs for m in re.finditer(
            r"while evaluating policy `([^`]+)`", e)} & forbids))  # fmt: skip

    if allowed:
        effect = Effect.APPROVAL_REQUIRED if approval_permits & set(reasons) else Effect.ALLOW
        return Expected(Outcome(effect, tuple(reasons), tuple(sorted(errors)), failed(errors)),
                        cedar_allowed=True)  # fmt: skip
    if reasons and approval_forbids.issuperset(reasons):
        again = _cedar(request, w.lifted, w.sets[1], entities)
        assert again is not None
        if again[0]:
            both = tuple(sorted({*reasons, *again[1]}))
            every = [*errors, *again[2]]
            return Expected(Outcome(Effect.APPROVAL_REQUIRED, both, tuple(sorted(every)),
                                    failed(every)), cedar_allowed=False)  # fmt: skip
    return Expected(Outcome(Effect.DENY, tuple(reasons), tuple(sorted(errors))), False)


def _sorted(o: Outcome) -> Outcome:
    return Outcome(o.effect, o.reasons, tuple(sorted(o.errors)), o.failed_forbids)


def _attempt(c: CompiledPolicies, req: CedarRequest) -> Outcome | ValidationFailed:
    try:
        return c.decide(req)
    except ValidationFailed as exc:
        return exc


def _same(a: Outcome | ValidationFailed, b: Outcome | ValidationFailed) -> bool:
    if isinstance(a, ValidationFailed) or isinstance(b, ValidationFailed):
        return type(a) is type(b) and a.to_dict() == b.to_dict()  # type: ignore[union-attr]
    return a == b


def check(w: World, ask: Ask) -> tuple[Outcome | ValidationFailed, Expected | None]:
    """``ask`` decided with Python on and off (the same, exactly) and as plain Cedar decides
    (None: plain Cedar refused the input, which the engine may never have given it)."""
    req = w.request(ask)
    fast, slow = _attempt(w.fast, req), _attempt(w.slow, req)
    assert _same(fast, slow), (ask, fast, slow)
    want = oracle(w, ask)
    if want is None:
        # Cedar refuses the input: so does the engine, unless the request's slice reads none
        # of what Cedar refused (it then is not given it)
        return fast, None
    assert not isinstance(fast, ValidationFailed), (ask, fast)
    assert _sorted(fast) == want.outcome, (ask, fast, want)
    if fast.effect is Effect.ALLOW:
        assert want.cedar_allowed
    elif fast.effect is Effect.DENY:
        assert not want.cedar_allowed
    return fast, want


# -- the property --------------------------------------------------------------------------------

# No shrinking: a failure names the request, and Hypothesis prints the drawn policies.
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_python_answers_as_cedar_does() -> None:
    seen: Counter[str] = Counter()

    @HYPOTHESIS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        policy_specs = data.draw(st.lists(specs(), min_size=2, max_size=12), label="policies")
        population = data.draw(populations(), label="agents")
        w = World.of(document_of(policy_specs), population)
        requests = data.draw(st.lists(asks(tuple(population)), min_size=40, max_size=80),
                             label="requests")  # fmt: skip
        decided: list[tuple[CedarRequest, Outcome]] = []
        for ask in requests:
            before = w.fast.direct_answers
            got, want = check(w, ask)
            answered = w.fast.direct_answers - before
            assert answered in (0, 1)
            seen["requests"] += 1
            seen["python"] += answered
            if isinstance(got, ValidationFailed):
                seen["refused"] += 1
                assert not answered
                continue
            seen[got.effect.value] += 1
            seen[f"{got.effect.value} in Python"] += answered
            lifted = got.effect is Effect.APPROVAL_REQUIRED and want and not want.cedar_allowed
            seen["lifted"] += bool(lifted)
            seen["lifted in Python"] += bool(lifted) and answered
            seen["failed forbids"] += bool(got.failed_forbids)
            seen["deny without a forbid"] += got.effect is Effect.DENY and not got.reasons
            seen["errors"] += bool(got.errors)
            assert not (answered and got.errors), (ask, got)
            if want is not None:  # a batch gives Cedar every request's context
                decided.append((w.request(ask), got))
        # the batch path answers each as the single one (errors in any order)
        batch = w.fast.decide_many([r for r, _ in decided])
        assert [_sorted(o) for o in batch] == [_sorted(o) for _, o in decided]

    run()
    print(dict(seen))  # the share and the outcomes, with -s
    assert seen["python"] > 0.3 * seen["requests"], seen
    # every kind of answer was reached, Cedar's errors and refusals among them
    for key in (
        "allow",
        "deny",
        "approval_required",
        "errors",
        "refused",
        "lifted",
        "allow in Python",
        "deny in Python",
        "approval_required in Python",
    ):
        assert seen[key] > 0, seen


# -- Cedar's rules, one by one -------------------------------------------------------------------

STAFF = {
    "low": Agent("low", "active", "minimal", frozenset({"ops"}), {"team": "x", "level": 2}),
    "risky": Agent("risky", "active", "high", frozenset(), {}),
}
PERMIT_ALL = '@id("all") permit (principal, action, resource);\n'


def decide(document: str, ask: Ask, *, python: bool | None = True) -> Outcome | ValidationFailed:
    """``ask`` under ``document`` (and the base policies), checked as the property checks it;
    ``python``: whether Python must have answered it (True), Cedar (False), or either."""
    w = World.of(document, STAFF)
    got, _ = check(w, ask)
    if python is not None:
        assert (w.fast.direct_answers == 1) is python, (got, w.fast.direct_answers)
    return got


def asking(
    action: str = "tool.call", rtype: str = "Tool", rid: str = "t0", *, subject: str = "low",
    properties: dict[str, Any] | None = None, **context: Any,
) -> Ask:  # fmt: skip
    return Ask(subject, action, rtype, rid, properties or {}, context)


def forbid_when(condition: str, pid: str = "f", *, approval: bool = False) -> str:
    head = '@approval("required") ' if approval else ""
    return f"@id({q(pid)}) {head}forbid (principal, action, resource) when {{ {condition} }};\n"


def permit_when(condition: str, pid: str = "p", *, kind: str = "when") -> str:
    return f"@id({q(pid)}) permit (principal, action, resource) {kind} {{ {condition} }};\n"


ALLOW_ALL = Outcome(Effect.ALLOW, ("all",))


def _one_error(got: Outcome | ValidationFailed, pid: str) -> None:
    assert isinstance(got, Outcome)
    [error] = got.errors
    assert f"while evaluating policy `{pid}`" in error, error


@pytest.mark.parametrize(
    "condition",
    ["true == 1", '1 == "1"', 'Role::"a" == "a"', 'principal == "low"', "[1] == 1",
     'context.n == "1"', 'principal.getTag("level") == 2', "false == 0",
     'Action::"tool.call" == "tool.call"', 'context.chain == "low"'],
)  # fmt: skip
def test_equality_across_types_is_false_not_an_error(condition: str) -> None:
    assert decide(PERMIT_ALL + forbid_when(condition), asking(n=1)) == ALLOW_ALL
    unequal = condition.replace("==", "!=")
    assert decide(PERMIT_ALL + forbid_when(unequal), asking(n=1)) == Outcome(Effect.DENY, ("f",))


def test_tags_are_text() -> None:
    doc = PERMIT_ALL + forbid_when('principal.getTag("level") == "2"')
    assert decide(doc, asking()) == Outcome(Effect.DENY, ("f",))


def test_not_of_a_non_boolean_errors_and_the_forbid_is_skipped() -> None:
    got = decide(PERMIT_ALL + forbid_when("!context.region"), asking(region="eu"), python=False)
    assert isinstance(got, Outcome)
    assert (got.effect, got.reasons, got.failed_forbids) == (Effect.ALLOW, ("all",), ("f",))
    _one_error(got, "f")
    assert decide(PERMIT_ALL + forbid_when("!context.region"), asking(region=False)) == (
        Outcome(Effect.DENY, ("f",))
    )


def test_principal_in_a_set_of_roles() -> None:
    doc = permit_when('principal in [Role::"ops", Role::"payments"]')
    assert decide(doc, asking()) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking(subject="risky")) == Outcome(Effect.DENY, ())
    assert decide(permit_when("principal in []"), asking()) == Outcome(Effect.DENY, ())
    # a set holding something that is not an entity: Cedar's to say
    decide(permit_when('principal in [Role::"ops", "ops"]'), asking(), python=None)
    decide(permit_when('principal in [Role::"x", "ops"]'), asking(), python=None)
    got = decide(permit_when('principal in "ops"'), asking(), python=False)
    _one_error(got, "p")


def test_in_on_entities_held_and_not() -> None:
    assert decide(permit_when("principal in principal"), asking()) == Outcome(Effect.ALLOW, ("p",))
    assert decide(permit_when('Role::"ops" in Role::"ops"'), asking()) == (
        Outcome(Effect.ALLOW, ("p",))
    )
    decide(permit_when('Role::"ops" in Role::"x"'), asking(), python=None)
    decide(permit_when('Role::"ops" in principal'), asking(), python=None)
    decide(permit_when("resource in principal"), asking(properties={"a": 1}), python=None)


def test_action_in_a_group_in_a_condition() -> None:
    doc = permit_when('action in Action::"mutating"')
    assert decide(doc, asking("tool.write")) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking("tool.call")) == Outcome(Effect.DENY, ())
    listed = permit_when('action in [Action::"secret.read", Role::"ops"]')
    assert decide(listed, asking("secret.read", "Secret", "k0")) == Outcome(Effect.ALLOW, ("p",))
    assert decide(listed, asking()) == Outcome(Effect.DENY, ())
    # another action's groups: the entity store's
    literal = permit_when('Action::"tool.write" in Action::"mutating"')
    assert decide(literal, asking(), python=None) == Outcome(Effect.ALLOW, ("p",))


def test_resource_is_a_type_in_an_entity() -> None:
    doc = permit_when('resource is Tool in Tool::"t0"')
    assert decide(doc, asking()) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking(properties={"server": "s1"})) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking(rid="t1")) == Outcome(Effect.DENY, ())
    assert decide(doc, asking("secret.read", "Secret", "t0")) == Outcome(Effect.DENY, ())
    scoped = '@id("p") permit (principal, action, resource is Tool in Tool::"t0");'
    assert decide(scoped, asking()) == Outcome(Effect.ALLOW, ("p",))
    assert decide(scoped, asking(rid="t1")) == Outcome(Effect.DENY, ())
    assert decide(permit_when('principal is Agent in [Role::"ops"]'), asking()) == (
        Outcome(Effect.ALLOW, ("p",))
    )
    got = decide(permit_when("context.flag is Agent"), asking(flag=True), python=False)
    _one_error(got, "p")


def test_unless_with_an_erroring_body_skips_the_policy() -> None:
    doc = permit_when("context.amount > 1", kind="unless")
    got = decide(doc, asking(amount="5"), python=False)
    assert isinstance(got, Outcome)
    assert (got.effect, got.reasons, got.failed_forbids) == (Effect.DENY, (), ())
    _one_error(got, "p")
    assert decide(doc, asking(amount=0)) == Outcome(Effect.ALLOW, ("p",))
    unless = PERMIT_ALL + '@id("f") forbid (principal, action, resource) unless { 1 < "a" };'
    got = decide(unless, asking(), python=False)
    assert isinstance(got, Outcome)
    assert (got.effect, got.reasons, got.failed_forbids) == (Effect.ALLOW, ("all",), ("f",))


def test_reasons_are_the_satisfied_policies_of_the_winning_effect() -> None:
    permits = permit_when("true", "a") + permit_when("principal has status", "b")
    permits += permit_when('principal.status == "suspended"', "c")
    assert decide(permits, asking()) == Outcome(Effect.ALLOW, ("a", "b"))
    forbids = forbid_when("true", "f1") + forbid_when("false", "f2")
    forbids += forbid_when('context has region && context.region == "eu"', "f3")
    assert decide(permits + forbids, asking(region="eu")) == Outcome(Effect.DENY, ("f1", "f3"))
    assert decide(forbids, asking(region="us")) == Outcome(Effect.DENY, ("f1",))


def test_an_error_anywhere_in_the_slice_is_cedars_to_report() -> None:
    doc = forbid_when("true") + permit_when('1 < "a"')
    got = decide(doc, asking(), python=False)
    assert isinstance(got, Outcome)
    assert (got.effect, got.reasons) == (Effect.DENY, ("f",))
    _one_error(got, "p")


def test_approval_through_a_permit_and_through_a_lifted_forbid() -> None:
    gate = '@id("gate") @approval("required") permit (principal, action, resource is Tool);\n'
    assert decide(gate, asking()) == Outcome(Effect.APPROVAL_REQUIRED, ("gate",))
    assert decide(gate + PERMIT_ALL, asking()) == (
        Outcome(Effect.APPROVAL_REQUIRED, ("all", "gate"))
    )
    check_eu = forbid_when('context has region && context.region == "eu"', "chk", approval=True)
    assert decide(PERMIT_ALL + check_eu, asking(region="eu")) == (
        Outcome(Effect.APPROVAL_REQUIRED, ("all", "chk"))
    )
    assert decide(PERMIT_ALL + check_eu, asking(region="us")) == ALLOW_ALL
    assert decide(check_eu, asking(region="eu")) == Outcome(Effect.DENY, ("chk",))  # no permit
    stop = forbid_when("true", "stop")
    assert decide(PERMIT_ALL + check_eu + stop, asking(region="eu")) == (
        Outcome(Effect.DENY, ("chk", "stop"))
    )
    # the base approval forbid: a high-risk agent's mutating action
    assert decide(PERMIT_ALL, asking("tool.write", subject="risky")) == Outcome(
        Effect.APPROVAL_REQUIRED, ("all", "tether.high-risk-mutating-needs-approval")
    )
    # an approval forbid that errors is skipped (and reported), never an approval
    erring = forbid_when("context.region < 1", "chk", approval=True)
    got = decide(PERMIT_ALL + erring, asking(region="eu"), python=False)
    assert isinstance(got, Outcome)
    assert (got.effect, got.reasons, got.failed_forbids) == (Effect.ALLOW, ("all",), ("chk",))


def test_and_or_look_right_only_when_they_must() -> None:
    bad = '(1 < "a")'
    assert decide(PERMIT_ALL + forbid_when(f"false && {bad}"), asking()) == ALLOW_ALL
    assert decide(PERMIT_ALL + forbid_when(f"true || {bad}"), asking()) == (
        Outcome(Effect.DENY, ("f",))
    )
    for erring in (f"{bad} || true", f"true && {bad}", f"false || {bad}", "true && 1"):
        got = decide(PERMIT_ALL + forbid_when(erring), asking(), python=False)
        assert isinstance(got, Outcome)
        assert (got.effect, got.failed_forbids) == (Effect.ALLOW, ("f",))


def test_if_then_else() -> None:
    got = decide(PERMIT_ALL + forbid_when("if 1 then true else false"), asking(), python=False)
    assert isinstance(got, Outcome)
    assert got.failed_forbids == ("f",)
    # the branch not taken is not evaluated; the one taken may be of any type
    assert decide(forbid_when(f'if true then true else {1} < "a"') + PERMIT_ALL, asking()) == (
        Outcome(Effect.DENY, ("f",))
    )
    assert decide(PERMIT_ALL + forbid_when('(if false then 1 else "a") == "a"'), asking()) == (
        Outcome(Effect.DENY, ("f",))
    )


def test_contains_on_a_context_set() -> None:
    doc = permit_when('context.tags.contains("a")')
    assert decide(doc, asking(tags=["a", "b"])) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking(tags=[1, True])) == Outcome(Effect.DENY, ())
    # membership is Cedar's equality: true is not 1
    for contains in ("[1, 2].contains(true)", "context.tags.contains(1)", '["1"].contains(1)'):
        assert decide(permit_when(contains), asking(tags=[True])) == Outcome(Effect.DENY, ())
    assert decide(permit_when("context.chain.contains(principal)"), asking()) == (
        Outcome(Effect.DENY, ())
    )
    _one_error(decide(doc, asking(tags="a"), python=False), "p")
    # set equality is Cedar's: order and repeats do not count
    assert decide(permit_when("[1, 2, 2] == [2, 1]"), asking(), python=None) == (
        Outcome(Effect.ALLOW, ("p",))
    )
    assert decide(permit_when("context.tags == [2, 1]"), asking(tags=[1, 2]), python=None) == (
        Outcome(Effect.ALLOW, ("p",))
    )


def test_longs_at_the_edges() -> None:
    doc = permit_when("context.n == 9223372036854775807 && -9223372036854775808 < context.n")
    assert decide(doc, asking(n=2**63 - 1)) == Outcome(Effect.ALLOW, ("p",))
    assert decide(permit_when("context.n <= -9223372036854775808"), asking(n=-(2**63))) == (
        Outcome(Effect.ALLOW, ("p",))
    )
    _one_error(decide(permit_when('context.n < "1"'), asking(n=1), python=False), "p")
    # a boolean is not a Long, though Python's bool is an int
    for erring in ("true < 1", "0 <= false", "principal.risk.score > context.flag"):
        _one_error(decide(permit_when(erring), asking(flag=True), python=False), "p")


def test_erroring_inputs_get_cedars_answer() -> None:
    missing_tag = PERMIT_ALL + forbid_when('principal.getTag("nope") == "x"')
    got = decide(missing_tag, asking(), python=False)
    assert isinstance(got, Outcome)
    assert got.failed_forbids == ("f",)
    assert "does not have the tag `nope`" in got.errors[0]
    mismatched = PERMIT_ALL + forbid_when("context.region < 1")
    got = decide(mismatched, asking(region="eu"), python=False)
    assert isinstance(got, Outcome)
    assert "type error" in got.errors[0]
    missing_attribute = permit_when('resource.server == "s1"')
    _one_error(decide(missing_attribute, asking(properties={"x": 1}), python=False), "p")
    _one_error(decide(missing_attribute, asking(), python=False), "p")  # no entity at all


def test_values_cedar_refuses_are_refused_when_read_and_only_then() -> None:
    reads = PERMIT_ALL + forbid_when("false && context has x")
    for odd in (1.5, 1.0, None, 2**63, [1, None], {"__extn": {"fn": "ip", "arg": "no"}}):
        got = decide(reads, asking(x=odd), python=False)
        assert isinstance(got, ValidationFailed), odd
        assert got.details["field"] == "context"
    # a context no policy reads is not given to Cedar, unless it holds an escape
    for odd in (1.5, None, 2**63):
        assert decide(PERMIT_ALL, asking(x=odd)) == ALLOW_ALL
    got = decide(PERMIT_ALL, asking(x={"__extn": {"fn": "ip", "arg": "no"}}), python=False)
    assert isinstance(got, ValidationFailed)
    fine = {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}
    assert decide(PERMIT_ALL, asking(x=fine), python=False) == ALLOW_ALL
    # the resource's properties: given when a policy reads the resource or names its type
    for doc in (PERMIT_ALL + forbid_when("false && resource has x"),
                PERMIT_ALL + forbid_when('Tool::"t9" == principal')):  # fmt: skip
        got = decide(doc, asking(properties={"x": 1.5}), python=False)
        assert isinstance(got, ValidationFailed)
        assert got.details["field"] == "resource.properties"
    assert decide(PERMIT_ALL, asking(properties={"x": 1.5})) == ALLOW_ALL


def test_agents_as_resources() -> None:
    doc = permit_when('resource has status && resource.status == "active"')
    doc += forbid_when('resource in Role::"ops"')
    # the principal itself: Cedar's (the entity store holds it once)
    assert decide(doc, asking(rtype="Agent", rid="low"), python=False) == (
        Outcome(Effect.DENY, ("f",))
    )
    assert decide(doc, asking(rtype="Agent", rid="risky")) == Outcome(Effect.ALLOW, ("p",))
    assert decide(doc, asking(rtype="Agent", rid="nobody"), python=None) == (
        Outcome(Effect.DENY, ())
    )
    tagged = permit_when('resource.hasTag("team") && resource.getTag("team") == "x"')
    assert decide(tagged, asking(rtype="Agent", rid="low", subject="risky")) == (
        Outcome(Effect.ALLOW, ("p",))
    )


@pytest.mark.parametrize("condition", UNSUPPORTED)
def test_outside_the_subset_cedar_decides(condition: str) -> None:
    decide(PERMIT_ALL + forbid_when(condition), asking(tags=["a"], region="eu"), python=False)


def test_an_operators_request() -> None:
    """An operator is ``User::"<id>"`` with a role attribute, no tags and no parents; the
    resource's entity is always given, the context as asked (no chain)."""
    operator = Principal("user", "usr_alice", "Alice", Role.ADMIN)
    doc = permit_when('principal is User && principal.role == "admin"', "admin")
    doc += forbid_when('principal.hasTag("x") || resource has server || context has chain')
    doc += forbid_when('principal in Role::"ops" || resource.hasTag("x")', "g")
    w = World.of(doc, STAFF)
    cases = [
        (asking(), Outcome(Effect.ALLOW, ("admin",))),
        (asking(properties={"server": "s1"}), Outcome(Effect.DENY, ("f",))),
        (asking(chain=["x"]), Outcome(Effect.DENY, ("f",))),
    ]
    for n, (ask, want) in enumerate(cases, 1):
        req = operator_request(operator, ask)
        assert _attempt(w.fast, req) == _attempt(w.slow, req) == want
        assert w.fast.direct_answers == n
    erring = World.of(permit_when("context.chain.contains(principal)"), STAFF)
    req = operator_request(operator, asking())
    got = _attempt(erring.fast, req)
    assert got == _attempt(erring.slow, req)
    _one_error(got, "p")
    assert erring.fast.direct_answers == 0
