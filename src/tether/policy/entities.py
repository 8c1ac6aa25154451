"""Agents as the decision path sees them: a prebuilt Cedar entity and the facts checked before
Cedar is asked (liveness, owner, supervisors).

Built once per change of the agent (by the runtime snapshot, from the registry; by
``tether policy test``, from a case file), never per decision: the entity text is handed to
Cedar as is (``tether.policy.engine`` caches the parsed entity per text).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from tether.agents import schedule as schedules
from tether.agents.authority import Liveness, is_live
from tether.policy.slices import Uid


@dataclass(frozen=True, slots=True)
class AgentView:
    id: str
    status: str
    risk_tier: str
    owner_id: str
    supervisors: frozenset[str]
    roles: frozenset[str]
    expires_at: int | None  # microseconds
    entity: str  # Cedar JSON entity
    parents: frozenset[Uid]
    liveness: Liveness
    schedule: schedules.Schedule | None = None  # its ``schedule`` attribute, parsed
    recertify_by: int | None = None  # microseconds (tether.agents.recertification)

    def active_at(self, now_us: int) -> bool:
        """The agents domain's liveness rule (:func:`tether.agents.authority.is_live`)."""
        return is_live(self.liveness, now_us)


NO_RISK = {"score": 0, "level": "low"}


def _tag(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def agent_view(
    *,
    id: str,
    name: str,
    owner_id: str,
    purpose: str,
    risk_tier: str,
    status: str,
    attributes: Mapping[str, Any],
    expires_at: int | None,
    roles: Iterable[str],
    supervisors: Iterable[str],
    recertify_by: int | None = None,
) -> AgentView:
    """The view of an agent: its Cedar entity (status, tier, owner, purpose and name as
    attributes, its risk — 0 here, monitoring sets it per request; its roles as parents; its
    registry attributes as tags) and its facts."""
    roles = frozenset(roles)
    parents = frozenset(("Role", r) for r in roles)
    entity = orjson.dumps({
        "uid": {"type": "Agent", "id": id},
        "attrs": {"status": status, "risk_tier": risk_tier, "owner": owner_id,
                  "purpose": purpose, "name": name, "risk": NO_RISK},
        "parents": [{"type": "Role", "id": r} for r in sorted(roles)],
        "tags": {str(k): _tag(v) for k, v in attributes.items()},
    }).decode()  # fmt: skip
    return AgentView(id, status, risk_tier, owner_id, frozenset(supervisors), roles, expires_at,
                     entity, parents, Liveness(status, expires_at),
                     _schedule(attributes.get("schedule")), recertify_by)  # fmt: skip


def _schedule(value: Any) -> schedules.Schedule | None:
    if not isinstance(value, str):
        return None
    try:
        return schedules.parse(value)
    except ValueError:  # refused when set (tether.agents.edits); an older row: no schedule
        return None


def with_risk(entity: str, score: int, level: str) -> str:
    """The agent's entity text with its current risk (``principal.risk``); the view's own has
    :data:`NO_RISK`."""
    data = orjson.loads(entity)
    data["attrs"]["risk"] = {"score": score, "level": level}
    return orjson.dumps(data).decode()


def without_roles(view: AgentView, roles: Collection[str]) -> AgentView:
    """The view as it would be without ``roles`` (their parents gone from its entity): what a
    right-sizing proposal that drops them is simulated with (tether.governance)."""
    keep = view.roles.difference(roles)
    data = orjson.loads(view.entity)
    data["parents"] = [{"type": "Role", "id": r} for r in sorted(keep)]
    return replace(view, roles=keep, entity=orjson.dumps(data).decode(),
                   parents=frozenset(("Role", r) for r in keep))  # fmt: skip
