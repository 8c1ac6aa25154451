"""The engine against plain Cedar: slicing by scope and the per-request entity delta change
speed, not meaning.

Hypothesis draws a policy set (30-60 operator policies from templates), a population of
agents and a few hundred requests per example. Each request is answered by Tether's engine
(``CompiledPolicies``, requests built by ``DecisionService.cedar_request``, agents by the
runtime snapshot's ``agent_view``) and by an independent oracle: plain ``cedarpy.is_authorized``
over the whole policy text (base policies included) and every entity there is (all agents, the
resource, the schema's actions), with request and entities built here from the schema's
description, positional policy ids mapped back through ``@id``. Decision, raw Cedar decision and
reasons must agree, and the batch paths (``decide_many``, ``DecisionService.evaluate_many``) must
agree with the single one. No database.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import cedarpy
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tether.agents.directory import record_of
from tether.clock import SystemClock
from tether.errors import PolicyInvalid, ValidationFailed
from tether.policy import engine, service, slices, source
from tether.policy.decide import DecisionService
from tether.policy.engine import CompiledPolicies, Outcome
from tether.policy.entities import AgentView
from tether.policy.runtime import view_of
from tether.policy.values import Ask, Decision, Effect

# A schema with a caller context field, so `context.amount < 100` type-checks (guarded).
SCHEMA = service.BASE_SCHEMA.replace(
    "  on_behalf_of?: String,\n", "  on_behalf_of?: String,\n  amount?: Long,\n  region?: String,\n"
)
assert SCHEMA != service.BASE_SCHEMA
ACTION_ENTITIES: list[dict[str, Any]] = orjson.loads(
    str(cedarpy.Entities.from_json_str("[]", cedarpy.Schema.from_str(SCHEMA)))
)

ROLES = ("payments", "ops", "research", "support")
TIERS = ("minimal", "limited", "high")
TEAMS = ("x", "y", "z")
ENVS = ("prod", "dev")
SERVERS = ("s1", "s2")
CLASSES = ("public", "secret")
REGIONS = ("eu", "us")
AGENT_IDS = tuple(f"agt_{i}" for i in range(9))
USERS = ("usr_alice", "usr_bob")
ACTIONS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "Tool": ("tool.call", "tool.write"),
    "Secret": ("secret.read",),
    "Dataset": ("dataset.read", "dataset.write"),
}
ALL_ACTIONS = tuple(a for acts in ACTIONS_BY_TYPE.values() for a in acts)
TYPE_OF_ACTION = {a: t for t, acts in ACTIONS_BY_TYPE.items() for a in acts}
MUTATING_TYPES = ("Tool", "Dataset")
RESOURCE_IDS: dict[str, tuple[str, ...]] = {
    "Tool": ("t0", "t1", "t2", "t3"),
    "Secret": ("k0", "k1"),
    "Dataset": ("d0", "d1", "d2"),
}
# Every resource's usual properties; requests sometimes send a variant instead.
CATALOG: dict[tuple[str, str], dict[str, Any]] = {
    ("Tool", "t0"): {"server": "s1"},
    ("Tool", "t1"): {"server": "s2", "mutating": True},
    ("Tool", "t2"): {"mutating": False},
    ("Tool", "t3"): {},
    ("Secret", "k0"): {},
    ("Secret", "k1"): {},
    ("Dataset", "d0"): {"classification": "public"},
    ("Dataset", "d1"): {"classification": "secret"},
    ("Dataset", "d2"): {},
}


def q(value: str) -> str:
    return orjson.dumps(value).decode()


# -- policies ----------------------------------------------------------------------------------

principal_scopes = st.one_of(
    st.just("principal"),
    st.sampled_from(AGENT_IDS).map(lambda a: f"principal == Agent::{q(a)}"),
    st.sampled_from(ROLES).map(lambda r: f"principal in Role::{q(r)}"),
    st.just("principal is Agent"),
    st.sampled_from(ROLES).map(lambda r: f"principal is Agent in Role::{q(r)}"),
)


def _action(a: str) -> str:
    return f"Action::{q(a)}"


@st.composite
def action_and_resource_scopes(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(("any", "Tool", "Secret", "Dataset")))
    if kind == "any":
        action = draw(
            st.one_of(
                st.just("action"),
                st.just('action in Action::"mutating"'),
                st.sampled_from(ALL_ACTIONS).map(lambda a: f"action == {_action(a)}"),
                st.lists(st.sampled_from(ALL_ACTIONS), min_size=1, max_size=3, unique=True).map(
                    lambda acts: f"action in [{', '.join(_action(a) for a in acts)}]"
                ),
            )
        )
        return action, "resource"
    acts = ACTIONS_BY_TYPE[kind]
    action_options = [
        st.just("action"),
        st.sampled_from(acts).map(lambda a: f"action == {_action(a)}"),
        st.just(f"action in [{', '.join(_action(a) for a in acts)}]"),
    ]
    if kind in MUTATING_TYPES:
        action_options.append(st.just('action in Action::"mutating"'))
    action = draw(st.one_of(action_options))
    rid = draw(st.sampled_from(RESOURCE_IDS[kind]))
    resource = draw(
        st.sampled_from(
            (
                "resource",
                f"resource is {kind}",
                f"resource == {kind}::{q(rid)}",
                f"resource in {kind}::{q(rid)}",
                f"resource is {kind} in {kind}::{q(rid)}",
            )
        )
    )
    if action == "action" and resource == "resource":
        resource = f"resource is {kind}"
    return action, resource


atoms = st.one_of(
    st.sampled_from(TIERS).map(lambda t: f"principal.risk_tier == {q(t)}"),
    st.just('principal.status == "active"'),
    st.sampled_from(TEAMS).map(
        lambda t: f'principal.hasTag("team") && principal.getTag("team") == {q(t)}'
    ),
    st.just('principal.hasTag("env")'),
    st.sampled_from(ENVS).map(
        lambda e: f'principal.hasTag("env") && principal.getTag("env") == {q(e)}'
    ),
    st.sampled_from(ROLES).map(lambda r: f"principal in Role::{q(r)}"),
    st.sampled_from(AGENT_IDS).map(lambda a: f"principal == Agent::{q(a)}"),
    st.sampled_from(SERVERS).map(lambda s: f"resource has server && resource.server == {q(s)}"),
    st.just("resource has mutating && resource.mutating"),
    st.sampled_from(CLASSES).map(
        lambda c: f"resource has classification && resource.classification == {q(c)}"
    ),
    st.just("context.delegated"),
    st.sampled_from(AGENT_IDS + USERS).map(lambda m: f"context.chain.contains({q(m)})"),
    st.sampled_from(USERS).map(
        lambda u: f"context has on_behalf_of && context.on_behalf_of == {q(u)}"
    ),
    st.integers(0, 200).map(lambda n: f"context has amount && context.amount < {n}"),
    st.sampled_from(REGIONS).map(lambda r: f"context has region && context.region == {q(r)}"),
)
bodies = st.one_of(
    atoms,
    st.tuples(atoms, atoms).map(lambda ab: f"({ab[0]}) || ({ab[1]})"),
    atoms.map(lambda a: f"!({a})"),
)
clauses = st.lists(
    st.tuples(st.sampled_from(("when", "unless")), bodies).map(lambda c: f"{c[0]} {{ {c[1]} }}"),
    max_size=2,
)


@dataclass(frozen=True)
class Spec:
    effect: str
    approval: bool
    principal: str
    action: str
    resource: str
    conditions: tuple[str, ...]

    def text(self, pid: str) -> str:
        head = f"@id({q(pid)})\n" + ('@approval("required")\n' if self.approval else "")
        scope = f"{self.effect} ({self.principal}, {self.action}, {self.resource})"
        return head + scope + "".join(f"\n  {c}" for c in self.conditions) + ";\n"


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    action, resource = draw(action_and_resource_scopes())
    return Spec(
        effect=draw(st.sampled_from(("permit", "permit", "forbid"))),
        approval=draw(st.integers(0, 4)) == 0,
        principal=draw(principal_scopes),
        action=action,
        resource=resource,
        conditions=tuple(draw(clauses)),
    )


def document_of(policy_specs: list[Spec]) -> str:
    parts = [f"// generated set of {len(policy_specs)} policies\n"]
    parts += [s.text(f"p{i:02d}") for i, s in enumerate(policy_specs)]
    return "\n".join(parts)


# -- agents and requests -----------------------------------------------------------------------


# An agent as the registry has it: its row (the columns agent_view reads) and its roles.
Row = tuple[SimpleNamespace, frozenset[str]]


@st.composite
def agent_rows(draw: st.DrawFn, aid: str) -> Row:
    tags: dict[str, Any] = {}
    if draw(st.booleans()):
        tags["team"] = draw(st.sampled_from(TEAMS))
    if draw(st.booleans()):
        tags["env"] = draw(st.sampled_from(ENVS))
    if draw(st.integers(0, 5)) == 0:
        tags["level"] = draw(st.integers(0, 3))  # non-string attribute: a JSON-text tag
    row = SimpleNamespace(
        id=aid,
        status=draw(st.sampled_from(("active",) * 6 + ("suspended",))),
        risk_tier=draw(st.sampled_from(TIERS)),
        owner_id="usr_alice",
        purpose="differential",
        name=f"name-{aid}",
        attributes=orjson.dumps(tags).decode(),
        expires_at=None,
        recertify_by=None,
    )
    roles = draw(st.frozensets(st.sampled_from(ROLES), max_size=2))
    return row, roles


@st.composite
def populations(draw: st.DrawFn) -> dict[str, Row]:
    n = draw(st.integers(5, len(AGENT_IDS)))
    return {aid: draw(agent_rows(aid)) for aid in AGENT_IDS[:n]}


@st.composite
def asks(draw: st.DrawFn, agents: tuple[str, ...], *, catalog_only: bool = False) -> Ask:
    subject = draw(st.sampled_from(agents))
    action = draw(st.sampled_from(ALL_ACTIONS))
    rtype = TYPE_OF_ACTION[action]
    if draw(st.integers(0, 19)) == 0:  # now and then a resource of the wrong type
        rtype = draw(st.sampled_from(tuple(RESOURCE_IDS)))
    rid = draw(st.sampled_from(RESOURCE_IDS[rtype]))
    props = dict(CATALOG[(rtype, rid)])
    if not catalog_only and draw(st.integers(0, 4)) == 0:
        props = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "server": st.sampled_from(SERVERS),
                    "mutating": st.booleans(),
                    "classification": st.sampled_from(CLASSES),
                },
            )
        )
    ctx: dict[str, Any] = {}
    if draw(st.booleans()):
        ctx["amount"] = draw(st.integers(-5, 250))
    if draw(st.booleans()):
        ctx["region"] = draw(st.sampled_from(REGIONS))
    chain: tuple[str, ...] = ()
    on_behalf_of = None
    how = draw(st.integers(0, 3))
    if how == 1:
        on_behalf_of = draw(st.sampled_from(USERS + agents))
        chain = (on_behalf_of, subject)
    elif how == 2:
        first = draw(st.sampled_from(USERS))
        middle = draw(st.sampled_from(agents))
        chain, on_behalf_of = (first, middle, subject), first
    return Ask(subject, action, rtype, rid, props, ctx, chain, on_behalf_of)


# -- the two sides -----------------------------------------------------------------------------


@dataclass
class Setup:
    compiled: CompiledPolicies
    decisions: DecisionService
    entities: list[dict[str, Any]]  # the oracle's: actions and every agent, built by hand
    text: str  # the whole policy text, base policies first
    approval_permits: frozenset[str]
    approval_forbids: frozenset[str]
    lifted_text: str  # the same without the approval forbids

    # Parsed once per example by cedarpy itself (its handle for reuse across calls): a parse of
    # 30-60 policies per request was half of this file's CPU.
    @cached_property
    def policy_set(self) -> cedarpy.PolicySet:
        return cedarpy.PolicySet.from_str(self.text)

    @cached_property
    def lifted_set(self) -> cedarpy.PolicySet:
        return cedarpy.PolicySet.from_str(self.lifted_text)


def agent_view(row: Any, roles: frozenset[str], supervisors: tuple[str, ...]) -> AgentView:
    """Tether's view of an agent from its row, as the runtime builds it."""
    return view_of(record_of(row, roles, supervisors))


def oracle_entity(row: SimpleNamespace, roles: frozenset[str]) -> dict[str, Any]:
    """The Cedar entity of an agent, from the schema's description, not from Tether's code."""
    tags = json.loads(row.attributes)
    return {
        "uid": {"type": "Agent", "id": row.id},
        "attrs": {
            "status": row.status,
            "risk_tier": row.risk_tier,
            "owner": row.owner_id,
            "purpose": row.purpose,
            "name": row.name,
        },
        "parents": [{"type": "Role", "id": r} for r in roles],
        "tags": {k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()},
    }


def setup(document: str, agents: dict[str, Row], schema: str = SCHEMA) -> Setup:
    checked = service.check(document, schema)
    compiled = service.compile_checked("vT", checked)
    views: dict[str, AgentView] = {
        aid: agent_view(row, roles, ()) for aid, (row, roles) in agents.items()
    }
    runtime = SimpleNamespace(
        agents=views,
        users=dict.fromkeys(USERS),
        revoked_jtis={},
        policies=compiled,
        freezes=(),
        current=lambda: True,
    )
    decisions = DecisionService(runtime, None, SystemClock(), None)  # type: ignore[arg-type]
    every = [*checked.base, *checked.policies]
    return Setup(
        compiled,
        decisions,
        [*ACTION_ENTITIES, *(oracle_entity(row, roles) for row, roles in agents.values())],
        "\n".join([*(p.text for p in checked.base), document]),
        frozenset(p.id for p in every if p.approval and p.effect == "permit"),
        frozenset(p.id for p in every if p.approval and p.effect == "forbid"),
        "\n".join(p.text for p in every if not (p.approval and p.effect == "forbid")),
    )


def plain_request(ask: Ask) -> dict[str, Any]:
    """The request as API.md and the schema describe it (TetherContext), built by hand."""
    chain = list(ask.chain or (ask.subject,))
    context = {**ask.context, "chain": chain, "delegated": len(chain) > 1}
    if ask.on_behalf_of is not None:
        context["on_behalf_of"] = ask.on_behalf_of
    return {
        "principal": {"type": "Agent", "id": ask.subject},
        "action": {"type": "Action", "id": ask.action},
        "resource": {"type": ask.resource_type, "id": ask.resource_id},
        "context": context,
    }


def all_entities(s: Setup, ask: Ask) -> list[dict[str, Any]]:
    resource = {
        "uid": {"type": ask.resource_type, "id": ask.resource_id},
        "attrs": ask.properties,
        "parents": [],
    }
    return [*s.entities, resource]


def _named(result: cedarpy.AuthzResult) -> list[str]:
    names = result.diagnostics.id_annotations_by_reason
    assert set(names) == set(result.diagnostics.reasons), result.diagnostics.reasons
    return sorted(names[r] for r in result.diagnostics.reasons)


@dataclass(frozen=True)
class Expected:
    effect: Effect
    reasons: tuple[str, ...]
    cedar_allowed: bool
    cedar_reasons: tuple[str, ...]


def oracle(s: Setup, ask: Ask) -> Expected:
    """Plain Cedar on everything, then Tether's documented approval rules on top."""
    request, ents = plain_request(ask), all_entities(s, ask)
    raw = cedarpy.is_authorized(request, s.policy_set, ents, schema=None)
    assert raw.diagnostics.errors == [], raw.diagnostics.errors
    reasons = _named(raw)
    if raw.allowed:
        gated = bool(s.approval_permits.intersection(reasons))
        effect = Effect.APPROVAL_REQUIRED if gated else Effect.ALLOW
        return Expected(effect, tuple(reasons), True, tuple(reasons))
    # Denied by approval forbids alone: would it pass without them?
    if reasons and s.approval_forbids.issuperset(reasons) and s.lifted_text:
        again = cedarpy.is_authorized(request, s.lifted_set, ents, schema=None)
        if again.allowed:
            both = tuple(sorted({*reasons, *_named(again)}))
            return Expected(Effect.APPROVAL_REQUIRED, both, False, tuple(reasons))
    return Expected(Effect.DENY, tuple(reasons), False, tuple(reasons))


def compare(s: Setup, ask: Ask, got: Outcome) -> Expected:
    want = oracle(s, ask)
    assert (got.effect, got.reasons) == (want.effect, want.reasons), ask
    assert got.errors == (), (ask, got.errors)
    # the raw Cedar decision behind Tether's answer
    if got.effect is Effect.ALLOW:
        assert want.cedar_allowed
    elif got.effect is Effect.DENY:
        assert not want.cedar_allowed
    elif want.cedar_allowed:  # approval_required from a satisfied approval permit
        assert s.approval_permits.intersection(got.reasons)
        assert set(got.reasons) == set(want.cedar_reasons)
    else:  # approval_required from lifted approval forbids: Cedar denied on those alone
        assert want.cedar_reasons
        assert s.approval_forbids.issuperset(want.cedar_reasons)
        assert set(want.cedar_reasons) <= set(got.reasons)
    return want


# -- the property ------------------------------------------------------------------------------

# No shrinking: an example is 30-60 policies and hundreds of requests, and shrinking one takes
# minutes; a failure names the request, and Hypothesis prints the drawn policies and agents.
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@HYPOTHESIS
@given(data=st.data())
def test_engine_matches_plain_cedar(data: st.DataObject) -> None:
    policy_specs = data.draw(st.lists(specs(), min_size=30, max_size=60), label="policies")
    agents = data.draw(populations(), label="agents")
    document = document_of(policy_specs)
    s = setup(document, agents)
    assert len(s.compiled.policies) == len(policy_specs) + 2
    ids = tuple(agents)
    requests = data.draw(st.lists(asks(ids), min_size=150, max_size=250), label="requests")
    for ask in requests:
        got = s.compiled.decide(s.decisions.cedar_request(ask))
        compare(s, ask, got)
    # asked again (slices now cached): the same answers
    for ask in requests[:40]:
        again = s.compiled.decide(s.decisions.cedar_request(ask))
        compare(s, ask, again)


@HYPOTHESIS
@given(data=st.data())
def test_batch_matches_single(data: st.DataObject) -> None:
    policy_specs = data.draw(st.lists(specs(), min_size=30, max_size=60), label="policies")
    agents = data.draw(populations(), label="agents")
    document = document_of(policy_specs)
    single, batch = setup(document, agents), setup(document, agents)
    ids = tuple(agents)
    catalog_only = data.draw(st.booleans(), label="catalog_only")  # True: the one-call path
    requests = data.draw(
        st.lists(asks(ids, catalog_only=catalog_only), min_size=60, max_size=150),
        label="requests",
    )
    sizes = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=12), label="batch sizes")
    want = [single.compiled.decide(single.decisions.cedar_request(a)) for a in requests]
    got: list[Outcome] = []
    decided: list[Decision] = []
    i, k = 0, 0
    while i < len(requests):
        size = sizes[k % len(sizes)]
        chunk = requests[i : i + size]
        got += batch.compiled.decide_many([batch.decisions.cedar_request(a) for a in chunk])
        decided += batch.decisions.evaluate_many(chunk)  # the PDP's own batch path
        i, k = i + size, k + 1
    assert got == want
    for ask, outcome in list(zip(requests, got, strict=True))[:30]:
        compare(batch, ask, outcome)
    # Through DecisionService: Cedar's answer unless a runtime check refused first.
    for ask, outcome, decision in zip(requests, want, decided, strict=True):
        if all(agents[m][0].status == "active" for m in ask.full_chain if m in agents):
            assert decision.stage == "cedar", (ask, decision)
            assert (decision.effect, decision.reasons) == (outcome.effect, outcome.reasons)
        else:
            assert decision.stage == "runtime", (ask, decision)
            assert decision.effect is Effect.DENY


def test_generated_sets_are_not_trivial() -> None:
    """The generator reaches every outcome, including both kinds of approval_required."""
    rng_specs = st.lists(specs(), min_size=40, max_size=40)
    seen: dict[str, int] = {"allow": 0, "deny": 0, "approval_required": 0, "lifted": 0}
    started = time.monotonic()

    @settings(
        max_examples=8,
        deadline=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(policy_specs=rng_specs, agents=populations(), data=st.data())
    def run(policy_specs: list[Spec], agents: dict[str, Row], data: st.DataObject) -> None:
        s = setup(document_of(policy_specs), agents)
        for ask in data.draw(st.lists(asks(tuple(agents)), min_size=100, max_size=100)):
            got = s.compiled.decide(s.decisions.cedar_request(ask))
            want = compare(s, ask, got)
            seen[got.effect.value] += 1
            if got.effect is Effect.APPROVAL_REQUIRED and not want.cedar_allowed:
                seen["lifted"] += 1

    run()
    assert time.monotonic() - started < 60
    assert all(n > 0 for n in seen.values()), seen


# -- fixed examples ----------------------------------------------------------------------------


def _view(aid: str, *, tier: str = "minimal", status: str = "active", **tags: Any) -> Row:
    row = SimpleNamespace(
        id=aid,
        status=status,
        risk_tier=tier,
        owner_id="usr_alice",
        purpose="p",
        name=aid,
        attributes=orjson.dumps(tags).decode(),
        expires_at=None,
        recertify_by=None,
    )
    return row, frozenset()


AGENTS = {
    "low": _view("low"),
    "risky": _view("risky", tier="high"),
    "paused": _view("paused", status="suspended"),
}


def _decide(document: str, subject: str, action: str, rtype: str = "Tool") -> Outcome:
    s = setup(document, AGENTS)
    rid = {"Tool": "t1", "Secret": "k0", "Dataset": "d0"}[rtype]
    ask = Ask(subject, action, rtype, rid, {"server": "s1"} if rtype == "Tool" else {})
    got = s.compiled.decide(s.decisions.cedar_request(ask))
    compare(s, ask, got)
    assert s.compiled.decide_many([s.decisions.cedar_request(ask)] * 2) == [got, got]
    return got


PERMIT_ALL = '@id("all") permit(principal, action, resource);\n'


def test_default_deny() -> None:
    assert _decide("", "low", "tool.call") == Outcome(Effect.DENY, ())
    assert _decide("", "risky", "tool.write") == Outcome(
        Effect.DENY, ("tether.high-risk-mutating-needs-approval",)
    )
    only_secrets = '@id("s") permit(principal, action == Action::"secret.read", resource);'
    assert _decide(only_secrets, "low", "tool.call") == Outcome(Effect.DENY, ())


def test_forbid_beats_permit() -> None:
    doc = PERMIT_ALL + '@id("no-s1") forbid(principal, action, resource is Tool)\n'
    doc += '  when { resource has server && resource.server == "s1" };\n'
    assert _decide(doc, "low", "tool.call") == Outcome(Effect.DENY, ("no-s1",))
    assert _decide(doc, "low", "secret.read", "Secret") == Outcome(Effect.ALLOW, ("all",))


def test_approval_permit_asks_for_approval() -> None:
    doc = '@id("gate") @approval("required") permit(principal, action, resource is Tool);\n'
    doc += '@id("plain") permit(principal, action == Action::"secret.read", resource);\n'
    assert _decide(doc, "low", "tool.call") == Outcome(Effect.APPROVAL_REQUIRED, ("gate",))
    assert _decide(doc, "low", "secret.read", "Secret") == Outcome(Effect.ALLOW, ("plain",))
    # an approval permit beside a plain one: still a checkpoint
    both = doc + '@id("also") permit(principal, action, resource);\n'
    assert _decide(both, "low", "tool.call") == Outcome(Effect.APPROVAL_REQUIRED, ("also", "gate"))


def test_high_risk_mutating_needs_approval() -> None:
    got = _decide(PERMIT_ALL, "risky", "tool.write")
    assert got == Outcome(
        Effect.APPROVAL_REQUIRED, ("all", "tether.high-risk-mutating-needs-approval")
    )
    assert _decide(PERMIT_ALL, "risky", "dataset.write", "Dataset").effect is (
        Effect.APPROVAL_REQUIRED
    )
    assert _decide(PERMIT_ALL, "risky", "tool.call") == Outcome(Effect.ALLOW, ("all",))
    assert _decide(PERMIT_ALL, "low", "tool.write") == Outcome(Effect.ALLOW, ("all",))
    # a plain forbid beside the approval forbid: deny, nothing to approve
    stop = PERMIT_ALL + '@id("stop") forbid(principal, action == Action::"tool.write", resource);'
    assert _decide(stop, "risky", "tool.write") == Outcome(
        Effect.DENY, ("stop", "tether.high-risk-mutating-needs-approval")
    )


def test_operator_approval_forbid_is_lifted_only_when_the_rest_allows() -> None:
    doc = '@id("check-s1") @approval("required") forbid(principal, action, resource is Tool)\n'
    doc += '  when { resource has server && resource.server == "s1" };\n'
    assert _decide(doc, "low", "tool.call") == Outcome(Effect.DENY, ("check-s1",))
    assert _decide(PERMIT_ALL + doc, "low", "tool.call") == Outcome(
        Effect.APPROVAL_REQUIRED, ("all", "check-s1")
    )


def test_inactive_status_is_the_active_only_forbid() -> None:
    assert _decide(PERMIT_ALL, "paused", "tool.call") == Outcome(
        Effect.DENY, ("tether.active-only",)
    )
    gate = '@id("gate") @approval("required") permit(principal, action, resource);'
    assert _decide(gate, "paused", "tool.call") == Outcome(Effect.DENY, ("tether.active-only",))


# -- findings (see the report) -----------------------------------------------------------------


# A condition that reads another entity's attributes (or tags, or ancestors) needs that entity
# in the decision's store; Tether loads only the principal and the resource, so such a policy
# would decide differently from plain Cedar. It is refused when pushed instead.
NAMING_ANOTHER_AGENT = [
    pytest.param('@id("boss-away-stops-all") forbid(principal, action, resource)\n'
                 '  when { Agent::"boss".status != "active" };\n', id="attribute"),
    pytest.param('@id("only-with-boss") forbid(principal, action, resource)\n'
                 '  unless { Agent::"boss" has status };\n', id="has"),
    pytest.param('@id("boss-team") permit(principal, action, resource)\n'
                 '  when { Agent::"boss".hasTag("team") };\n', id="tag"),
    pytest.param('@id("boss-role") permit(principal, action, resource)\n'
                 '  when { Agent::"boss" in Role::"r0" };\n', id="ancestors"),
    # the literal inside the operand read, not right in front of it
    pytest.param('@id("boss-if") forbid(principal, action, resource)\n'
                 '  when { (if true then Agent::"boss" else principal).status == "x" };\n',
                 id="through-if"),
]  # fmt: skip


@pytest.mark.parametrize("condition", NAMING_ANOTHER_AGENT)
def test_a_policy_reading_another_entity_is_refused(condition: str) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        service.check(PERMIT_ALL + condition, SCHEMA)
    [problem] = caught.value.details["errors"]
    assert 'Agent::"boss"' in problem["message"]
    assert problem["line"] == PERMIT_ALL.count("\n") + 1


def test_comparing_ids_of_other_entities_is_fine() -> None:
    doc = (
        PERMIT_ALL
        + '@id("not-boss") forbid(principal, action, resource)\n'
        + '  when { principal == Agent::"boss" };\n'
    )
    s = setup(doc, {"boss": _view("boss"), "w": _view("w")})
    [boss, worker] = s.decisions.evaluate_many(
        [Ask("boss", "tool.call", "Tool", "t0", {}), Ask("w", "tool.call", "Tool", "t0", {})]
    )
    assert boss.effect is Effect.DENY
    assert boss.reasons == ("not-boss",)
    assert worker.effect is Effect.ALLOW


def test_erroring_forbid_never_becomes_an_approval() -> None:
    doc = PERMIT_ALL + (
        '@id("cap") forbid (principal, action, resource)\n'
        "  when { context has amount && context.amount >= 100 };\n"
    )
    s = setup(doc, AGENTS)
    as_number = Ask("risky", "tool.write", "Tool", "t0", {}, {"amount": 1000})
    as_text = Ask("risky", "tool.write", "Tool", "t0", {}, {"amount": "1000"})
    [number, text] = s.decisions.evaluate_many([as_number]) + s.decisions.evaluate_many([as_text])
    assert number.effect is Effect.DENY
    assert text.effect is Effect.DENY, text


# -- the outcome memo ----------------------------------------------------------------------------

PAYMENTS_ONLY = '@id("pay") permit(principal in Role::"payments", action, resource);\n'


def _counting(monkeypatch: pytest.MonkeyPatch, s: Setup) -> list[int]:
    """Counts Cedar's decisions (Python's off: the memo is what these tests look at)."""
    s.compiled.direct = False
    calls = [0]
    real = engine._authorize

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(engine, "_authorize", counted)
    return calls


def test_a_repeated_request_is_answered_without_cedar(monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup(PAYMENTS_ONLY, {"a": (_view("a")[0], frozenset({"payments"}))})
    calls = _counting(monkeypatch, s)
    ask = Ask("a", "tool.call", "Tool", "t0", {"server": "s1"}, {"amount": 5})
    first = s.compiled.decide(s.decisions.cedar_request(ask))
    assert first.effect is Effect.ALLOW
    assert calls[0] == 1
    assert s.compiled.decide(s.decisions.cedar_request(ask)) == first
    assert s.compiled.decide_many([s.decisions.cedar_request(ask)] * 3) == [first] * 3
    assert calls[0] == 1
    # any input that differs is decided by Cedar: context, properties, resource, action
    for other in (
        Ask("a", "tool.call", "Tool", "t0", {"server": "s1"}, {"amount": 6}),
        Ask("a", "tool.call", "Tool", "t0", {"server": "s2"}, {"amount": 5}),
        Ask("a", "tool.call", "Tool", "t1", {"server": "s1"}, {"amount": 5}),
        Ask("a", "tool.write", "Tool", "t0", {"server": "s1"}, {"amount": 5}),
    ):
        s.compiled.decide(s.decisions.cedar_request(other))
    assert calls[0] == 5


def test_a_changed_agent_is_never_answered_from_memory() -> None:
    row = _view("a")[0]
    s = setup(PAYMENTS_ONLY, {"a": (row, frozenset({"payments"}))})
    ask = Ask("a", "tool.call", "Tool", "t0", {})
    assert s.compiled.decide(s.decisions.cedar_request(ask)).effect is Effect.ALLOW
    # the registry drops the role: the runtime's new view of the agent has new entity text
    s.decisions.runtime.agents["a"] = agent_view(row, frozenset(), ())
    assert s.compiled.decide(s.decisions.cedar_request(ask)).effect is Effect.DENY
    [again] = s.compiled.decide_many([s.decisions.cedar_request(ask)])
    assert again.effect is Effect.DENY


def test_the_memo_is_bounded_and_can_be_off(monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup(PAYMENTS_ONLY, {"a": (_view("a")[0], frozenset({"payments"}))})
    calls = _counting(monkeypatch, s)
    long_context = Ask("a", "tool.call", "Tool", "t0", {}, {"note": "x" * 5000})
    long_properties = Ask("a", "tool.call", "Tool", "t0", {"server": "x" * 5000})
    for _ in range(3):
        s.compiled.decide(s.decisions.cedar_request(long_context))
        s.compiled.decide(s.decisions.cedar_request(long_properties))
    assert calls[0] == 6  # too long to remember
    assert s.compiled._memo == {}
    # a byte budget bounds the inputs held, however many entries fit the capacity
    monkeypatch.setattr(engine, "_MEMO_MAX_BYTES", 1_000)
    for n in range(40):
        s.compiled.decide(s.decisions.cedar_request(Ask("a", "tool.call", "Tool", "t0", {"n": n})))
        assert s.compiled._memo_bytes <= 1_000 + 200  # one entry's inputs are ~110 bytes
    assert 0 < len(s.compiled._memo) < 30
    s.compiled.set_memo_capacity(4)
    for n in range(10):
        s.compiled.decide(s.decisions.cedar_request(Ask("a", "tool.call", "Tool", f"t{n}", {})))
        assert len(s.compiled._memo) <= 4
    s.compiled.set_memo_capacity(0)
    ask = Ask("a", "tool.call", "Tool", "t0", {})
    before = calls[0]
    s.compiled.decide(s.decisions.cedar_request(ask))
    s.compiled.decide(s.decisions.cedar_request(ask))
    assert calls[0] == before + 2


# -- inputs a slice does not read ----------------------------------------------------------------


def _reads(text: str) -> slices.Reads:
    [policy] = source.parse(text)
    return slices.Reads.of(policy)


def test_what_a_policy_reads() -> None:
    assert _reads('@id("p") permit(principal in Role::"r", action, resource is Tool);') == (
        slices.Reads(context=False, resource=False, literal_types=frozenset())
    )
    assert _reads('@id("p") permit(principal, action, resource) when { context.delegated };') == (
        slices.Reads(context=True, resource=False, literal_types=frozenset())
    )
    assert _reads('@id("p") permit(principal, action, resource) unless { resource has m };') == (
        slices.Reads(context=False, resource=True, literal_types=frozenset())
    )
    # an `in` scope needs the resource's ancestors, so its entity
    assert _reads('@id("p") permit(principal, action, resource in Agent::"a");').resource
    assert _reads('@id("p") permit(principal, action, resource is Agent in Agent::"a");').resource
    assert not _reads('@id("p") permit(principal, action, resource == Tool::"t");').resource
    # an entity named in a condition may be the request's resource (Tether's policy check
    # refuses reading such an entity today; the engine does not rely on that)
    text = 'permit(principal, action, resource) when { Tool::"t" has m };'
    [est] = orjson.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values()
    literal = slices.Reads.of(source.Policy("p", "permit", False, 1, est, text))
    assert literal == slices.Reads(context=False, resource=False, literal_types=frozenset({"Tool"}))


def _cedar_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], int]]:
    """What Cedar was given per call: the request and how many entities it held."""
    seen: list[tuple[dict[str, Any], int]] = []
    real = engine._authorize

    def spy(request: dict[str, Any], policies: Any, entities: Any) -> Any:
        seen.append((request, len(entities)))
        return real(request, policies, entities)

    monkeypatch.setattr(engine, "_authorize", spy)
    return seen


def test_inputs_no_policy_reads_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = PAYMENTS_ONLY + (
        '@id("small") permit(principal, action == Action::"dataset.read", resource)\n'
        "  when { context has amount && context.amount < 10 };\n"
        '@id("secret") forbid(principal, action == Action::"dataset.write", resource)\n'
        '  when { resource has classification && resource.classification == "secret" };\n'
    )
    s = setup(doc, {"a": (_view("a")[0], frozenset({"payments"}))})
    s.compiled.set_memo_capacity(0)
    s.compiled.direct = False  # what Cedar is given (Python would answer these)
    seen = _cedar_inputs(monkeypatch)
    props = {"classification": "secret"}
    asks = [
        Ask("a", "tool.call", "Tool", "t0", {"server": "s1"}, {"amount": 5}),  # reads neither
        Ask("a", "dataset.read", "Dataset", "d1", props, {"amount": 5}),  # the context
        Ask("a", "dataset.write", "Dataset", "d1", props, {"amount": 5}),  # the resource
    ]
    got = [s.compiled.decide(s.decisions.cedar_request(a)) for a in asks]
    for ask, outcome in zip(asks, got, strict=True):
        compare(s, ask, outcome)
    [(call, call_n), (read, read_n), (write, write_n)] = seen
    assert "context" not in call
    assert "context" in read
    assert "context" not in write
    assert read_n == call_n
    assert write_n == call_n + 1
    assert [o.effect for o in got] == [Effect.ALLOW, Effect.ALLOW, Effect.DENY]


def test_escaped_values_are_always_given_to_cedar(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entity reference in the context may name the resource; and a value Cedar cannot
    read is refused (422) whatever the slice reads, never decided without it."""
    s = setup(PAYMENTS_ONLY, {"a": (_view("a")[0], frozenset({"payments"}))})
    s.compiled.set_memo_capacity(0)
    seen = _cedar_inputs(monkeypatch)
    ref = {"target": {"__entity": {"type": "Tool", "id": "t0"}}}
    ask = Ask("a", "tool.call", "Tool", "t0", {"server": "s1"}, ref)
    assert s.compiled.decide(s.decisions.cedar_request(ask)).effect is Effect.ALLOW
    [(request, n)] = seen
    assert "context" in request
    assert n == len(s.compiled.base_entities) + 2
    bad_ip = {"__extn": {"fn": "ip", "arg": "not an address"}}
    for bad, where in (
        (Ask("a", "tool.call", "Tool", "t0", {}, {"ip": bad_ip}), "context"),
        (Ask("a", "tool.call", "Tool", "t0", {"ip": bad_ip}), "resource.properties"),
    ):
        with pytest.raises(ValidationFailed) as caught:
            s.compiled.decide(s.decisions.cedar_request(bad))
        assert caught.value.details["field"] == where
        with pytest.raises(ValidationFailed):
            s.compiled.decide_many([s.decisions.cedar_request(bad)] * 2)
