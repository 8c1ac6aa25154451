"""What an agent holds, and when it last used each part — what a review's lines show.

* **Permissions**: the operator's ``permit`` policies of the current version whose principal
  scope can match the agent (it, a role it holds, its type, or anyone) —
  :meth:`CompiledPolicies.for_principal`, as the console's agent page lists them. Last used:
  the newest ``allow`` decision of the agent whose reasons name the policy.
* **Roles**: each role; last used: the newest allow whose reasons name a permit that reaches
  the agent through that role (``principal in Role::"r"``).
* **Credentials**: each undeleted credential, with its ``last_used_at`` (the token endpoint's
  record of its last authentication).
* **Delegations**: each human or agent the agent has been given a token to act for (a
  subject token minted for it, a token exchange it made: RFC 8693), from the ledger; last
  used: the newest allow of the agent acting for them (``on_behalf_of``).

Last use comes from the ledger's decision events: per batch of agents, one grouped query over
their decisions (``ix_audit_events_agent_id_seq``), so the cost is one pass over the agents'
events, not a query per line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tether.agents.store import DatabaseAgentStore
from tether.audit.events import EventType
from tether.audit.models import EventRow
from tether.clock import from_micros, to_rfc3339
from tether.credentials.models import CredentialRow
from tether.governance.review_values import LineKind
from tether.jsonutil import loads
from tether.policy.engine import CompiledPolicies
from tether.policy.slices import Uid, scope_uids
from tether.policy.source import BASE_PREFIX, Policy
from tether.policy.values import Effect

BATCH = 500  # agents per grouped query
SUBJECT_TOKEN_ACTION = "oauth.subject_token"  # noqa: S105 - an action name, not a secret


@dataclass(frozen=True, slots=True)
class Held:
    """One thing an agent holds, as a review line shows it."""

    kind: LineKind
    subject: str
    detail: dict[str, Any]
    last_used_at: int | None = None
    last_used_seq: int | None = None


@dataclass(slots=True)
class _Use:
    seq: int
    time: int

    def newer(self, other: _Use | None) -> _Use:
        return self if other is None or self.seq > other.seq else other


def holdings(
    s: Session, compiled: CompiledPolicies, agents: Sequence[str]
) -> dict[str, list[Held]]:
    """Every line of each of ``agents``, in a stable order: permissions (by policy id),
    roles, credentials (by id), delegations (by subject)."""
    out: dict[str, list[Held]] = {}
    store = DatabaseAgentStore()
    for batch in _batches(agents):
        roles = store.roles_of(s, list(batch))
        by_reasons = _allow_reasons(s, batch)
        by_subject = _allows_for(s, batch)
        creds = _credentials(s, batch)
        delegated = _delegations(s, batch)
        for agent_id in batch:
            out[agent_id] = [
                *_permissions_and_roles(
                    compiled, agent_id, roles.get(agent_id, []), by_reasons.get(agent_id, {})
                ),
                *creds.get(agent_id, []),
                *_delegation_lines(delegated.get(agent_id, {}), by_subject.get(agent_id, {})),
            ]
    return out


def operator_permits(
    compiled: CompiledPolicies, agent_id: str, roles: Sequence[str]
) -> list[Policy]:
    """The operator's permits that can apply to the agent (base policies are Tether's own)."""
    parents = frozenset(("Role", r) for r in roles)
    return [
        p
        for p in compiled.for_principal(("Agent", agent_id), parents)
        if p.effect == "permit" and not p.id.startswith(BASE_PREFIX)
    ]


def _permissions_and_roles(
    compiled: CompiledPolicies, agent_id: str, roles: Sequence[str], uses: dict[str, _Use]
) -> Iterator[Held]:
    permits = operator_permits(compiled, agent_id, roles)
    for p in sorted(permits, key=lambda p: p.id):
        use = uses.get(p.id)
        yield Held(
            LineKind.PERMISSION,
            p.id,
            {
                "effect": p.effect,
                "approval": p.approval,
                "grants": describe(p),
                "principal": p.est["principal"],
                "action": p.est["action"],
                "resource": p.est["resource"],
                "text": p.text,
            },
            use.time if use else None,
            use.seq if use else None,
        )
    for role in sorted(roles):
        through = sorted(p.id for p in permits if ("Role", role) in _uids(p.est["principal"]))
        last: _Use | None = None
        for pid in through:
            found = uses.get(pid)
            if found is not None:
                last = found.newer(last)
        yield Held(
            LineKind.ROLE,
            role,
            {"policies": through},
            last.time if last else None,
            last.seq if last else None,
        )


def describe(policy: Policy) -> str:
    """A policy's scope in one line, for people: ``resource.read on Resource::"docs"``."""
    action = _scope(policy.est["action"], "any action")
    return f"{action} on {_scope(policy.est['resource'], 'any resource')}"


def _scope(scope: dict[str, Any], anything: str) -> str:
    op = scope.get("op")
    if op == "==" and isinstance(scope.get("entity"), dict):
        entity = scope["entity"]
        return str(entity["id"]) if entity.get("type") == "Action" else _uid_text(entity)
    if op == "in" and isinstance(scope.get("entities"), list):
        return "any of " + ", ".join(str(e.get("id")) for e in scope["entities"])
    if op == "in" and isinstance(scope.get("entity"), dict):
        return f"in {_uid_text(scope['entity'])}"
    if op == "is":
        return f"any {scope.get('entity_type')}"
    return anything


def _uid_text(entity: dict[str, Any]) -> str:
    return f'{entity.get("type")}::"{entity.get("id")}"'


def _uids(scope: dict[str, Any]) -> frozenset[Uid]:
    return frozenset(scope_uids(scope))


def _batches(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), BATCH):
        yield ids[i : i + BATCH]


def _allow_reasons(s: Session, agents: Sequence[str]) -> dict[str, dict[str, _Use]]:
    """Per agent, per policy id: the newest allow naming it among its reasons."""
    q = (
        select(EventRow.agent_id, EventRow.reasons, func.max(EventRow.seq), func.max(EventRow.time))
        .where(
            EventRow.agent_id.in_(agents),
            EventRow.type == EventType.DECISION,
            EventRow.decision == Effect.ALLOW,
        )
        .group_by(EventRow.agent_id, EventRow.reasons)
    )
    out: dict[str, dict[str, _Use]] = defaultdict(dict)
    for agent_id, reasons, seq, time in s.execute(q):
        seen = out[str(agent_id)]
        for pid in loads(reasons):  # time never runs back along the chain: max(time) is seq's
            seen[pid] = _Use(int(seq), int(time)).newer(seen.get(pid))
    return out


def _allows_for(s: Session, agents: Sequence[str]) -> dict[str, dict[str, _Use]]:
    """Per agent, per principal it acted for (bare id): the newest allow doing so."""
    q = (
        select(
            EventRow.agent_id,
            EventRow.on_behalf_of,
            func.max(EventRow.seq),
            func.max(EventRow.time),
        )
        .where(
            EventRow.agent_id.in_(agents),
            EventRow.type == EventType.DECISION,
            EventRow.decision == Effect.ALLOW,
            EventRow.on_behalf_of.is_not(None),
        )
        .group_by(EventRow.agent_id, EventRow.on_behalf_of)
    )
    out: dict[str, dict[str, _Use]] = defaultdict(dict)
    for agent_id, for_whom, seq, time in s.execute(q):
        key = bare(str(for_whom))
        mine = out[str(agent_id)]
        mine[key] = _Use(int(seq), int(time)).newer(mine.get(key))
    return out


def bare(ref: str) -> str:
    """``user:usr_x`` / ``agent:agt_x`` / ``usr_x`` → ``usr_x``: decisions record the
    subject's id, token events its reference."""
    return ref.partition(":")[2] if ":" in ref else ref


def delegation_filter(agents: Sequence[str]) -> Any:
    """The ledger events that grant ``agents`` a delegation: subject tokens minted for them,
    token exchanges they made."""
    return (
        EventRow.agent_id.in_(agents),
        EventRow.on_behalf_of.is_not(None),
        or_(
            EventRow.type == EventType.TOKEN_EXCHANGED,
            (EventRow.type == EventType.TOKEN_ISSUED) & (EventRow.action == SUBJECT_TOKEN_ACTION),
        ),
    )


def _delegations(s: Session, agents: Sequence[str]) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Per agent, per subject reference: (grants, first seq, first time)."""
    q = (
        select(
            EventRow.agent_id,
            EventRow.on_behalf_of,
            func.count(),
            func.min(EventRow.seq),
            func.min(EventRow.time),
        )
        .where(*delegation_filter(agents))
        .group_by(EventRow.agent_id, EventRow.on_behalf_of)
    )
    out: dict[str, dict[str, tuple[int, int, int]]] = defaultdict(dict)
    for agent_id, ref, n, first_seq, first_time in s.execute(q):
        out[str(agent_id)][str(ref)] = (int(n), int(first_seq), int(first_time))
    return out


def _delegation_lines(
    granted: dict[str, tuple[int, int, int]], uses: dict[str, _Use]
) -> Iterator[Held]:
    for ref in sorted(granted):
        n, first_seq, first_time = granted[ref]
        use = uses.get(bare(ref))
        yield Held(
            LineKind.DELEGATION,
            ref,
            {
                "on_behalf_of": ref,
                "grants": n,
                "first_granted_seq": first_seq,
                "first_granted_at": _time(first_time),
            },
            use.time if use else None,
            use.seq if use else None,
        )


def _time(us: int | None) -> str | None:
    return to_rfc3339(from_micros(us)) if us is not None else None


def _credentials(s: Session, agents: Sequence[str]) -> dict[str, list[Held]]:
    q = (
        select(CredentialRow)
        .where(CredentialRow.agent_id.in_(agents), CredentialRow.deleted_at.is_(None))
        .order_by(CredentialRow.agent_id, CredentialRow.id)
    )
    out: dict[str, list[Held]] = defaultdict(list)
    for row in s.scalars(q):
        out[row.agent_id].append(
            Held(
                LineKind.CREDENTIAL,
                row.id,
                {
                    "type": row.type,
                    "jkt": row.jkt,
                    "scopes": loads(row.scopes) if row.scopes else None,
                    "created_at": _time(row.created_at),
                    "expires_at": _time(row.expires_at),
                },
                row.last_used_at,
            )
        )
    return out
