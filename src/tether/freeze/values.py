"""A freeze as a value, and the one rule of whom it stops.

A freeze's scope names an owner, a role and a risk tier, each optional; it holds an agent
when every named one matches (no scope: every agent). Freezes stop, they do not revoke:
lifting one restores service. The rule is pure: the decision path asks it of the freezes in
every worker's snapshot, the token endpoint of those it reads in its own transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from tether.clock import from_micros, to_rfc3339

FROZEN = "tether.frozen"  # the reason every refusal under a freeze gives


@dataclass(frozen=True, slots=True)
class Scope:
    owner_id: str | None = None
    role: str | None = None
    risk_tier: str | None = None

    @property
    def everything(self) -> bool:
        return self.owner_id is None and self.role is None and self.risk_tier is None

    def holds(self, owner_id: str, roles: Collection[str], risk_tier: str) -> bool:
        return (
            (self.owner_id is None or self.owner_id == owner_id)
            and (self.role is None or self.role in roles)
            and (self.risk_tier is None or self.risk_tier == risk_tier)
        )

    def to_json(self) -> dict[str, str]:
        out = {"owner": self.owner_id, "role": self.role, "risk_tier": self.risk_tier}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Freeze:
    id: str
    scope: Scope
    reason: str
    created_by: str
    created_at: int  # microseconds
    lifted_by: str | None = None
    lifted_at: int | None = None
    lift_reason: str | None = None

    @property
    def in_force(self) -> bool:
        return self.lifted_at is None

    def describe(self) -> str:
        return f"frozen ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "scope": self.scope.to_json(),
            "reason": self.reason,
            "by": self.created_by,
            "since": to_rfc3339(from_micros(self.created_at)),
        }
        if self.lifted_at is not None:
            out.update(
                lifted_by=self.lifted_by,
                lifted_at=to_rfc3339(from_micros(self.lifted_at)),
                lift_reason=self.lift_reason,
            )
        return out


def holding(
    freezes: Iterable[Freeze], owner_id: str, roles: Collection[str], risk_tier: str
) -> Freeze | None:
    """The first freeze in force that holds an agent of this owner, roles and risk tier."""
    for freeze in freezes:
        if freeze.in_force and freeze.scope.holds(owner_id, roles, risk_tier):
            return freeze
    return None
