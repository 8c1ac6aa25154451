"""A deterministic policy-decision workload: Cedar schema, policies, entities and requests.

Pure data, no Tether imports, so that the decision benchmark and its baselines (plain
``cedarpy`` and ``pycasbin``) run on exactly the same inputs. Everything is seeded: the same
arguments give the same text, entities and requests on every run and machine.

The world (defaults):

- 40 roles ``r00``..``r39`` with Zipf-like popularity (``r00`` on ~40 % of agents);
- 10,000 agents ``a000000``.. with status 92 % active / 5 % suspended / 3 % revoked, risk tier
  50 % minimal / 35 % limited / 15 % high, 1-3 roles each, an owner ``u000``..``u099``, and
  ``team``/``env`` tags on 80 % of them (no tags on the rest);
- 200 tools ``t000``.. spread over 8 MCP servers, with ``mutating`` and ``sensitivity`` 0-4;
  50 secrets ``sec00``..; 50 datasets ``d00``.. classified public/internal/confidential/
  restricted; 100 users (the owners).

The policy set (:func:`make_policies`, 120 by default): six ``forbid`` guard rails, then a
repeating block of permits in fixed proportions — role-based permits on one tool, one secret or
one dataset (with an ``action in [...]`` list), role-scoped permits on every low-sensitivity
tool of a server, ABAC permits on ``principal.risk_tier`` and ``context.delegated``, on
``context.amount`` (paired with an ``@approval("required")`` permit above the limit), on the
principal's tags, on ``context.on_behalf_of == principal.owner``, and ``unless`` clauses. Every
policy carries ``@id("bench.<k>")``, names one action (or an action list or group) and one
resource or resource type, and validates against :data:`SCHEMA`.

Requests (:func:`make_requests`) are 60 % "on duty" (an agent exercising one of its roles'
grants, which conditions and forbids may still deny), 10 % tool calls on a random tool and
30 % random action and resource; about half are allowed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import casbin

SCHEMA = """\
entity Role;
entity User;
entity Agent in [Role] {
  status: String,
  risk_tier: String,
  owner: String,
  purpose: String,
} tags String;
entity Tool { server: String, mutating: Bool, sensitivity: Long };
entity Secret;
entity Dataset { classification: String };

type Ctx = { chain: Set<String>, delegated: Bool, on_behalf_of?: String, amount?: Long };

action "mutating";
action "tool.call" appliesTo { principal: [Agent], resource: [Tool], context: Ctx };
action "tool.write" in ["mutating"] appliesTo {
  principal: [Agent], resource: [Tool], context: Ctx
};
action "secret.read" appliesTo { principal: [Agent], resource: [Secret], context: Ctx };
action "dataset.read" appliesTo { principal: [Agent], resource: [Dataset], context: Ctx };
action "dataset.write" in ["mutating"] appliesTo {
  principal: [Agent], resource: [Dataset], context: Ctx
};
"""

ACTIONS = ["tool.call", "tool.write", "secret.read", "dataset.read", "dataset.write"]
# Every action of SCHEMA and the action groups it is in (``action "tool.write" in ["mutating"]``).
ACTION_GROUPS: dict[str, tuple[str, ...]] = {
    "mutating": (),
    "tool.call": (),
    "tool.write": ("mutating",),
    "secret.read": (),
    "dataset.read": (),
    "dataset.write": ("mutating",),
}
RESOURCE_TYPE = {
    "tool.call": "Tool",
    "tool.write": "Tool",
    "secret.read": "Secret",
    "dataset.read": "Dataset",
    "dataset.write": "Dataset",
}
SERVERS = ["s3", "github", "slack", "jira", "postgres", "stripe", "gdrive", "k8s"]
CLASSIFICATIONS = ["public", "internal", "confidential", "restricted"]
STATUSES = ["active", "suspended", "revoked"]
STATUS_WEIGHTS = [92, 5, 3]
TIERS = ["minimal", "limited", "high"]
TIER_WEIGHTS = [50, 35, 15]
SECRETS = 50
DATASETS = 50
USERS = 100
TEAMS = 37
TRUST_DOMAIN = "spiffe://bench.example"

# Kinds of policy. The first three are pure RBAC (role, action, resource; no condition): the
# part that pycasbin expresses exactly.
RBAC_KINDS = frozenset({"rbac_tool", "rbac_secret", "rbac_datasets"})
# One block of permits, repeated until the policy count is reached (19 policies per block).
BLOCK = [
    "rbac_tool",
    "rbac_datasets",
    "rbac_tool",
    "risk_write",
    "rbac_tool",
    "server",
    "rbac_tool",
    "amount",  # + its @approval("required") twin above the limit: 2 policies
    "rbac_tool",
    "unless_dataset",
    "rbac_secret",
    "rbac_tool",
    "tags",
    "rbac_datasets",
    "rbac_tool",
    "risk_write",
    "owner_secret",
    "rbac_tool",
]
FORBIDS = [
    # (text after the annotation, action scope, resource type)
    (
        'forbid(principal, action == Action::"secret.read", resource is Secret)\n'
        '  when { principal.risk_tier == "high" };',
        ("secret.read",),
        "Secret",
    ),
    (
        'forbid(principal, action in Action::"mutating", resource)\n'
        '  unless { principal.status == "active" };',
        ("tool.write", "dataset.write"),
        None,
    ),
    (
        'forbid(principal, action == Action::"tool.write", resource is Tool)\n'
        "  when { context.delegated && !(context has on_behalf_of) };",
        ("tool.write",),
        "Tool",
    ),
    (
        'forbid(principal, action == Action::"dataset.write", resource is Dataset)\n'
        '  when { resource.classification == "restricted" }\n'
        '  unless { principal in Role::"r39" };',
        ("dataset.write",),
        "Dataset",
    ),
    (
        'forbid(principal, action == Action::"tool.call", resource is Tool)\n'
        '  when { resource.sensitivity >= 4 && principal.risk_tier == "high" };',
        ("tool.call",),
        "Tool",
    ),
    (
        'forbid(principal, action == Action::"tool.write", resource is Tool)\n'
        "  when { context has amount && context.amount >= 100000 };",
        ("tool.write",),
        "Tool",
    ),
]


# -- ids ---------------------------------------------------------------------------------------
def role_id(k: int) -> str:
    return f"r{k:02d}"


def agent_id(i: int) -> str:
    return f"a{i:06d}"


def tool_id(j: int) -> str:
    return f"t{j:03d}"


def secret_id(j: int) -> str:
    return f"sec{j:02d}"


def dataset_id(j: int) -> str:
    return f"d{j:02d}"


def user_id(j: int) -> str:
    return f"u{j:03d}"


def _uid(kind: str, ident: str) -> dict[str, str]:
    return {"type": kind, "id": ident}


# -- the world: profiles shared by entities, policies and requests -------------------------------
@dataclass(frozen=True)
class AgentProfile:
    id: str
    status: str
    risk_tier: str
    owner: str
    roles: tuple[str, ...]
    tags: dict[str, str]


@dataclass(frozen=True)
class ToolProfile:
    id: str
    server: str
    mutating: bool
    sensitivity: int


def agent_profiles(agents: int, roles: int = 40, seed: int = 7) -> list[AgentProfile]:
    """The agents, drawn in order: agent ``i`` is the same whatever ``agents`` is (a prefix)."""
    rng = random.Random(f"agents:{seed}:{roles}")
    role_ids = [role_id(k) for k in range(roles)]
    weights = [1 / (k + 1) for k in range(roles)]
    out = []
    for i in range(agents):
        status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
        tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
        owner = user_id(rng.randrange(USERS))
        picked = sorted(set(rng.choices(role_ids, weights, k=rng.randint(1, 3))))
        tags = {"team": f"team-{i % TEAMS}", "env": "prod"} if rng.random() < 0.8 else {}
        out.append(AgentProfile(agent_id(i), status, tier, owner, tuple(picked), tags))
    return out


def tool_profiles(tools: int = 200, seed: int = 7) -> list[ToolProfile]:
    rng = random.Random(f"tools:{seed}")
    return [
        ToolProfile(
            tool_id(j),
            SERVERS[j % len(SERVERS)],
            rng.random() < 0.4,
            rng.choices(range(5), [30, 25, 20, 15, 10])[0],
        )
        for j in range(tools)
    ]


def dataset_classification(j: int) -> str:
    return CLASSIFICATIONS[j % len(CLASSIFICATIONS)]


# -- entities ----------------------------------------------------------------------------------
def make_entities(
    agents: int = 10_000, roles: int = 40, tools: int = 200, seed: int = 7
) -> list[dict[str, Any]]:
    """Cedar JSON entities: users, roles, agents (with role parents and tags), tools, secrets,
    datasets, and the actions with their groups (:func:`action_entities`). ``json.dumps`` of
    the list is what ``cedarpy.Entities.from_json_str`` takes."""
    out: list[dict[str, Any]] = []
    out += [{"uid": _uid("User", user_id(j)), "attrs": {}, "parents": []} for j in range(USERS)]
    out += [{"uid": _uid("Role", role_id(k)), "attrs": {}, "parents": []} for k in range(roles)]
    for i, a in enumerate(agent_profiles(agents, roles, seed)):
        out.append(
            {
                "uid": _uid("Agent", a.id),
                "attrs": {
                    "status": a.status,
                    "risk_tier": a.risk_tier,
                    "owner": a.owner,
                    "purpose": f"benchmark agent {i}: triages support tickets",
                },
                "parents": [_uid("Role", r) for r in a.roles],
                "tags": dict(a.tags),
            }
        )
    for t in tool_profiles(tools, seed):
        attrs = {"server": t.server, "mutating": t.mutating, "sensitivity": t.sensitivity}
        out.append({"uid": _uid("Tool", t.id), "attrs": attrs, "parents": []})
    out += [
        {"uid": _uid("Secret", secret_id(j)), "attrs": {}, "parents": []} for j in range(SECRETS)
    ]
    out += [
        {
            "uid": _uid("Dataset", dataset_id(j)),
            "attrs": {"classification": dataset_classification(j)},
            "parents": [],
        }
        for j in range(DATASETS)
    ]
    return out + action_entities()


def action_entities() -> list[dict[str, Any]]:
    """The schema's actions as entities, with their groups as parents. Without a schema, Cedar
    knows an action's groups only from these: an entity set without them makes ``action in
    Action::"mutating"`` false for every action (so that ``forbid`` would never apply)."""
    return [
        {"uid": _uid("Action", a), "attrs": {}, "parents": [_uid("Action", g) for g in groups]}
        for a, groups in ACTION_GROUPS.items()
    ]


# -- policies ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """One generated policy: its text and, for generating requests and the casbin twin, what
    it is scoped to."""

    id: str  # the @id annotation
    kind: str  # "forbid", one of RBAC_KINDS, or an ABAC kind
    effect: str  # "permit" | "forbid"
    role: str | None  # principal in Role::<role>, if scoped to a role
    actions: tuple[str, ...]
    resource_type: str | None
    resource_id: str | None  # resource == <type>::<id>, if scoped to one resource
    server: str | None  # resource.server == <server>, for "server" permits
    approval: bool  # @approval("required")
    text: str

    @property
    def rbac(self) -> bool:
        """Pure role-based: ``principal in Role``, action(s), one resource, no condition."""
        return self.kind in RBAC_KINDS


def policy_specs(
    n: int = 120, seed: int = 7, *, roles: int = 40, tools: int = 200
) -> list[PolicySpec]:
    """The ``n`` policies of :func:`make_policies`, with their scopes."""
    rng = random.Random(f"policies:{seed}:{roles}:{tools}")
    tool_list = tool_profiles(tools, seed)
    specs: list[PolicySpec] = []

    def add(kind: str, body: str, **scope: Any) -> None:
        k = len(specs)
        approval = bool(scope.pop("approval", False))
        note = '@approval("required")\n' if approval else ""
        text = f'@id("bench.{k}")\n{note}{body}'
        effect = "forbid" if body.startswith("forbid") else "permit"
        scope.setdefault("role", None)
        scope.setdefault("resource_id", None)
        scope.setdefault("server", None)
        specs.append(PolicySpec(f"bench.{k}", kind, effect, approval=approval, text=text, **scope))

    for body, actions, rtype in FORBIDS[: max(0, min(len(FORBIDS), n // 20))]:
        add("forbid", body, actions=actions, resource_type=rtype)
    granted = 0  # role-scoped permits so far: roles are granted in turn, so each gets some
    position = 0
    while len(specs) < n:
        kind = BLOCK[position % len(BLOCK)]
        position += 1
        if kind == "amount" and n - len(specs) < 2:
            continue
        role = role_id(granted % roles)
        if kind != "tags":
            granted += 1
        tool = rng.choice(tool_list).id
        secret = secret_id(rng.randrange(SECRETS))
        dataset = dataset_id(rng.randrange(DATASETS))
        in_role = f'principal in Role::"{role}"'
        if kind == "rbac_tool":
            add(
                kind,
                f'permit({in_role}, action == Action::"tool.call", resource == Tool::"{tool}");',
                role=role,
                actions=("tool.call",),
                resource_type="Tool",
                resource_id=tool,
            )
        elif kind == "rbac_secret":
            add(
                kind,
                f'permit({in_role}, action == Action::"secret.read",'
                f' resource == Secret::"{secret}");',
                role=role,
                actions=("secret.read",),
                resource_type="Secret",
                resource_id=secret,
            )
        elif kind == "rbac_datasets":
            add(
                kind,
                f'permit({in_role}, action in [Action::"dataset.read", Action::"dataset.write"],'
                f' resource == Dataset::"{dataset}");',
                role=role,
                actions=("dataset.read", "dataset.write"),
                resource_type="Dataset",
                resource_id=dataset,
            )
        elif kind == "server":
            server = SERVERS[rng.randrange(len(SERVERS))]
            add(
                kind,
                f'permit({in_role}, action == Action::"tool.call", resource is Tool)\n'
                f'  when {{ resource.server == "{server}" && resource.sensitivity < 3 }};',
                role=role,
                actions=("tool.call",),
                resource_type="Tool",
                server=server,
            )
        elif kind == "risk_write":
            add(
                kind,
                f'permit({in_role}, action == Action::"tool.write", resource == Tool::"{tool}")\n'
                '  when { principal.risk_tier != "high" && context.delegated == false };',
                role=role,
                actions=("tool.write",),
                resource_type="Tool",
                resource_id=tool,
            )
        elif kind == "amount":
            scope = {
                "role": role,
                "actions": ("tool.write",),
                "resource_type": "Tool",
                "resource_id": tool,
            }
            head = f'permit({in_role}, action == Action::"tool.write", resource == Tool::"{tool}")'
            add(kind, f"{head}\n  when {{ context has amount && context.amount < 1000 }};", **scope)
            add(
                "approval",
                f"{head}\n  when {{ context has amount && context.amount >= 1000 }};",
                approval=True,
                **scope,
            )
        elif kind == "unless_dataset":
            add(
                kind,
                f'permit({in_role}, action == Action::"dataset.read", resource is Dataset)\n'
                '  when { resource.classification == "public" ||'
                ' resource.classification == "internal" }\n'
                '  unless { principal.risk_tier == "high" };',
                role=role,
                actions=("dataset.read",),
                resource_type="Dataset",
            )
        elif kind == "tags":
            team = f"team-{rng.randrange(TEAMS)}"
            add(
                kind,
                f'permit(principal, action == Action::"tool.call", resource == Tool::"{tool}")\n'
                f'  when {{ principal.hasTag("team") && principal.getTag("team") == "{team}" }};',
                actions=("tool.call",),
                resource_type="Tool",
                resource_id=tool,
            )
        elif kind == "owner_secret":
            add(
                kind,
                f'permit({in_role}, action == Action::"secret.read",'
                f' resource == Secret::"{secret}")\n'
                "  when { context has on_behalf_of && context.on_behalf_of == principal.owner };",
                role=role,
                actions=("secret.read",),
                resource_type="Secret",
                resource_id=secret,
            )
        else:  # pragma: no cover - BLOCK and this chain are edited together
            raise AssertionError(kind)
    return specs


def render(specs: list[PolicySpec]) -> str:
    """Cedar text of ``specs``, one blank line between policies."""
    return "\n\n".join(s.text for s in specs) + "\n"


def make_policies(n: int = 120, seed: int = 7) -> str:
    """Cedar text of ``n`` policies (see the module docstring for the mix); each has a unique
    ``@id("bench.<k>")``. Valid against :data:`SCHEMA` (:func:`check`)."""
    return render(policy_specs(n, seed))


# -- requests ----------------------------------------------------------------------------------
def _resource(rng: random.Random, rtype: str, tools: list[ToolProfile]) -> str:
    if rtype == "Tool":
        return rng.choice(tools).id
    if rtype == "Secret":
        return secret_id(rng.randrange(SECRETS))
    return dataset_id(rng.randrange(DATASETS))


def _context(rng: random.Random, action: str, agent: AgentProfile) -> dict[str, Any]:
    delegated = rng.random() < 0.2
    ctx: dict[str, Any] = {"chain": [], "delegated": delegated}
    if delegated:
        ctx["chain"] = [f"{TRUST_DOMAIN}/agent/{agent.id}", f"{TRUST_DOMAIN}/user/{agent.owner}"]
        if rng.random() < 0.85:
            ctx["on_behalf_of"] = agent.owner if rng.random() < 0.9 else user_id(0)
    if action == "tool.write" and rng.random() < 0.7:
        ctx["amount"] = rng.choice([5, 20, 80, 250, 600, 950, 1500, 4000, 25000, 250000])
    return ctx


def make_requests(
    count: int,
    agents: int,
    seed: int,
    *,
    roles: int = 40,
    tools: int = 200,
    policies: int = 120,
    world_seed: int = 7,
    principals: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``count`` cedarpy request dicts (``{type, id}`` principal/action/resource, dict context).

    ``agents``, ``roles``, ``tools``, ``policies`` and ``world_seed`` must be those the
    entities and policies were made with (``make_entities(agents, roles, tools, world_seed)``,
    ``make_policies(policies, world_seed)``); ``seed`` draws the requests themselves.
    ``principals`` (agent ids) restricts who asks: e.g. the few agents that hold an access
    token, when each may only ask about itself.
    """
    rng = random.Random(f"requests:{seed}")
    profiles = agent_profiles(agents, roles, world_seed)
    if principals is not None:
        wanted = set(principals)
        profiles = [p for p in profiles if p.id in wanted]
        if len(profiles) != len(wanted):
            raise ValueError("principals must be agent ids of this world")
    tool_list = tool_profiles(tools, world_seed)
    grants: dict[str, list[PolicySpec]] = {}
    for spec in policy_specs(policies, world_seed, roles=roles, tools=tools):
        if spec.effect == "permit" and spec.role is not None:
            grants.setdefault(spec.role, []).append(spec)
    out = []
    for _ in range(count):
        agent = rng.choice(profiles)
        draw = rng.random()
        options = [g for r in agent.roles for g in grants.get(r, [])]
        if draw < 0.6 and options:
            grant = rng.choice(options)
            action = rng.choice(grant.actions)
            rtype = RESOURCE_TYPE[action]
            if grant.resource_id is not None:
                resource = grant.resource_id
            elif grant.server is not None:
                resource = rng.choice([t for t in tool_list if t.server == grant.server]).id
            else:
                resource = _resource(rng, rtype, tool_list)
        elif draw < 0.7:
            action, rtype = "tool.call", "Tool"
            resource = rng.choice(tool_list).id
        else:
            action = rng.choice(ACTIONS)
            rtype = RESOURCE_TYPE[action]
            resource = _resource(rng, rtype, tool_list)
        out.append(
            {
                "principal": _uid("Agent", agent.id),
                "action": _uid("Action", action),
                "resource": _uid(rtype, resource),
                "context": _context(rng, action, agent),
            }
        )
    return out


# -- validation --------------------------------------------------------------------------------
def check(policies_text: str, entities: list[dict[str, Any]] | None = None) -> None:
    """Raise ``ValueError`` unless :data:`SCHEMA` parses, ``policies_text`` validates against
    it, and (if given) ``entities`` conform to it."""
    import json

    import cedarpy

    schema = cedarpy.Schema.from_str(SCHEMA)
    result = cedarpy.validate_policies(policies_text, schema)
    if not result.validation_passed:
        raise ValueError("policies do not validate: " + "; ".join(map(str, result.errors)))
    if entities is not None:
        cedarpy.Entities.from_json_str(json.dumps(entities), schema)


# -- the pycasbin twin -------------------------------------------------------------------------
CASBIN_MODEL = """\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.act == p.act && r.obj == p.obj && g(r.sub, p.sub)
"""


def casbin_rules(
    entities: list[dict[str, Any]], specs: list[PolicySpec]
) -> tuple[list[list[str]], list[list[str]]]:
    """``(p rules, g rules)``: one ``p`` per (role, resource, action) of every pure role-based
    permit; one ``g`` per agent→role parent in ``entities``."""
    p_rules = [
        [f"role:{s.role}", f"{s.resource_type}::{s.resource_id}", action]
        for s in specs
        if s.rbac
        for action in s.actions
    ]
    g_rules = [
        [e["uid"]["id"], f"role:{parent['id']}"]
        for e in entities
        if e["uid"]["type"] == "Agent"
        for parent in e["parents"]
    ]
    return p_rules, g_rules


def casbin_enforcer(
    entities: list[dict[str, Any]], specs: list[PolicySpec], *, fast: bool = False
) -> casbin.Enforcer:
    """A pycasbin RBAC enforcer equivalent to the pure role-based part of the Cedar policies.

    Equivalent: ``permit(principal in Role::"r", action == A (or in [A, B]), resource ==
    T::"x")`` becomes ``p, role:r, T::x, A`` (one rule per action); each agent's role parents
    become ``g, <agent>, role:<role>``; a request maps to ``enforce(agent_id, "T::x", A)``
    (:func:`casbin_request`). On those inputs the decisions equal Cedar's with only the
    role-based policies (the baseline checks this), and the matcher compares the action and
    object before resolving roles, the cheap order.

    Not expressed (so full-Cedar decisions differ where these apply): ``forbid`` (casbin's
    ``p.eft`` deny with a ``some allow && !some deny`` effect covers an unconditional deny, but
    the forbids here all have conditions); conditions on entity attributes (``resource.server``,
    ``principal.risk_tier``, ``resource.classification``), on tags and on the request context
    (``context.amount``, ``context.delegated``, ``on_behalf_of == principal.owner``) — pycasbin
    can only do ABAC by passing objects as ``r.sub``/``r.obj`` and writing attribute tests into
    the matcher or ``eval(p.rule)``, which re-parses the expression per rule per request, and
    it has no typed schema to validate against; ``resource is Tool`` scopes and action groups
    (``action in Action::"mutating"``) would need ``g2``/``g3`` groupings; ``unless`` clauses;
    ``@approval("required")`` (a Cedar annotation Tether turns into approval_required — casbin
    has only allow/deny) and the reasons (which policies decided) Tether returns.

    ``fast=True`` builds a ``casbin.FastEnforcer`` whose policies are indexed by (object,
    action), so each ``enforce`` evaluates the matcher only on the rules for that pair.
    """
    import casbin
    from casbin.model import FastModel, Model

    p_rules, g_rules = casbin_rules(entities, specs)
    if fast:
        model: Model = FastModel([1, 2])
        model.load_model_from_text(CASBIN_MODEL)
        enforcer: casbin.Enforcer = casbin.FastEnforcer(model, cache_key_order=[1, 2])
    else:
        model = Model()
        model.load_model_from_text(CASBIN_MODEL)
        enforcer = casbin.Enforcer(model)
    enforcer.add_policies(p_rules)
    enforcer.add_grouping_policies(g_rules)
    return enforcer


def casbin_request(request: dict[str, Any]) -> tuple[str, str, str]:
    """``enforce(sub, obj, act)`` arguments for a :func:`make_requests` request."""
    resource = request["resource"]
    return (
        request["principal"]["id"],
        f"{resource['type']}::{resource['id']}",
        request["action"]["id"],
    )
