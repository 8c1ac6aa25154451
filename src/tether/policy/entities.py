"""Agents as the decision path sees them: a prebuilt Cedar entity and the facts checked before
Cedar is asked (liveness, owner, supervisors).

Built once per change of the agent (by the runtime snapshot, from the registry; by
``tether policy test``, from a case file), never per decision: the entity text is handed to
Cedar as is (``tether.policy.engine`` caches the parsed entity per text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

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

    def active_at(self, now_us: int) -> bool:
        """The agents domain's liveness rule (:func:`tether.agents.authority.is_live`)."""
        return is_live(self.liveness, now_us)


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
) -> AgentView:
    """The view of an agent: its Cedar entity (status, tier, owner, purpose and name as
    attributes; its roles as parents; its registry attributes as tags) and its facts."""
    roles = frozenset(roles)
    parents = frozenset(("Role", r) for r in roles)
    entity = orjson.dumps({
        "uid": {"type": "Agent", "id": id},
        "attrs": {"status": status, "risk_tier": risk_tier, "owner": owner_id,
                  "purpose": purpose, "name": name},
        "parents": [{"type": "Role", "id": r} for r in sorted(roles)],
        "tags": {str(k): _tag(v) for k, v in attributes.items()},
    }).decode()  # fmt: skip
    return AgentView(id, status, risk_tier, owner_id, frozenset(supervisors), roles, expires_at,
                     entity, parents, Liveness(status, expires_at))  # fmt: skip
