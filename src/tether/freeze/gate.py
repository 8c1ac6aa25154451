"""Whether a freeze stops any of these agents, read inside the caller's transaction.

The token endpoint, token exchange and introspection ask here (the database is the truth at
the moment a token is issued or vouched for); the decision path asks the same rule
(:func:`tether.freeze.values.holding`) of its in-memory snapshot instead.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tether.agents import directory
from tether.freeze.store import DatabaseFreezeStore
from tether.freeze.values import Freeze, holding

_STORE = DatabaseFreezeStore()


@dataclass(frozen=True, slots=True)
class Frozen:
    agent_id: str
    freeze: Freeze

    def describe(self) -> str:
        return f"agent {self.agent_id} is frozen ({self.freeze.reason})"


def frozen_among(s: Session, agent_ids: Collection[str]) -> Frozen | None:
    """The first of these agents a freeze in force holds, or None. One indexed query when
    nothing is frozen; the agents' owner, roles and tier are read only when something is."""
    freezes = _STORE.in_force(s)
    wanted = [a for a in agent_ids if not a.startswith("usr_")]
    if not freezes or not wanted:
        return None
    for record in directory.records(s, wanted):
        freeze = holding(freezes, record.owner_id, record.roles, record.risk_tier)
        if freeze is not None:
            return Frozen(record.id, freeze)
    return None
