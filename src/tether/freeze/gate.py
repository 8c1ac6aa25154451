"""Whether a freeze stops any of these agents, read inside the caller's transaction.

The token endpoint, token exchange and introspection ask here; the decision path asks the
same rule (:func:`tether.freeze.values.holding`) of its in-memory snapshot.

Which freezes are in force comes from this worker's snapshot when it runs and is current
(the wiring puts a reader under :data:`IN_FORCE` in every session's ``info``): a freeze's
call returns only once every live worker has applied it (``tether.runtime.positions``), so
memory is as good as the table then, and a token request pays nothing while nothing is
frozen. A worker not current — or a process without a running snapshot — reads the table.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tether.agents import directory
from tether.freeze.store import DatabaseFreezeStore
from tether.freeze.values import Freeze, holding

_STORE = DatabaseFreezeStore()
IN_FORCE = "tether.freezes_in_force"  # Callable[[], Sequence[Freeze] | None] in session.info


@dataclass(frozen=True, slots=True)
class Frozen:
    agent_id: str
    freeze: Freeze

    def describe(self) -> str:
        return f"agent {self.agent_id} is frozen ({self.freeze.reason})"


def frozen_among(s: Session, agent_ids: Collection[str]) -> Frozen | None:
    """The first of these agents a freeze in force holds, or None. One indexed query when
    nothing is frozen; the agents' owner, roles and tier are read only when something is."""
    known = s.info.get(IN_FORCE)
    remembered = known() if known is not None else None
    freezes = list(remembered) if remembered is not None else _STORE.in_force(s)
    wanted = [a for a in agent_ids if not a.startswith("usr_")]
    if not freezes or not wanted:
        return None
    for record in directory.records(s, wanted):
        freeze = holding(freezes, record.owner_id, record.roles, record.risk_tier)
        if freeze is not None:
            return Frozen(record.id, freeze)
    return None
