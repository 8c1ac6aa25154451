"""The agent as a value, and its lifecycle rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from tether.clock import from_micros, to_rfc3339


class Status(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    RETIRED = "retired"
    EXPIRED = "expired"


class RiskTier(StrEnum):
    MINIMAL = "minimal"
    LIMITED = "limited"
    HIGH = "high"


TERMINAL = frozenset({Status.REVOKED, Status.RETIRED})
# The statuses an agent leaves for ``expired`` once its ``expires_at`` has passed.
EXPIRABLE = frozenset({Status.ACTIVE, Status.SUSPENDED})

# Which operation may move an agent from which status. Revoked and retired are terminal.
# Suspending an expired agent would change nothing; resuming one also needs its
# ``expires_at`` in the future (AgentService checks that, it depends on the time).
TRANSITIONS: dict[str, dict[Status, Status]] = {
    "suspend": {Status.ACTIVE: Status.SUSPENDED},
    "resume": {Status.SUSPENDED: Status.ACTIVE, Status.EXPIRED: Status.ACTIVE},
    "retire": dict.fromkeys((Status.ACTIVE, Status.SUSPENDED, Status.EXPIRED), Status.RETIRED),
    "kill": dict.fromkeys((Status.ACTIVE, Status.SUSPENDED, Status.EXPIRED), Status.REVOKED),
}


def next_status(operation: str, current: Status) -> Status | None:
    """The status ``operation`` leads to from ``current``, or ``None`` if it is not allowed."""
    return TRANSITIONS[operation].get(current)


def has_expired(expires_at: int | None, now_us: int) -> bool:
    """Whether an ``expires_at`` (microseconds; ``None``: never) has passed at ``now_us``."""
    return expires_at is not None and expires_at <= now_us


def effective_status(status: Status, expires_at: int | None, now_us: int) -> Status:
    """The status readers see: ``expired`` once ``expires_at`` has passed, even before the
    maintenance sweep has stored it (revoked and retired stay what they are)."""
    if status in EXPIRABLE and has_expired(expires_at, now_us):
        return Status.EXPIRED
    return status


def expiry_reason(expires_at: int) -> str:
    return f"expired at {to_rfc3339(from_micros(expires_at))}"


def spiffe_id(trust_domain: str, agent_id: str) -> str:
    return f"spiffe://{trust_domain}/agent/{agent_id}"


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    spiffe_id: str
    name: str
    owner: str
    owner_username: str
    supervisors: list[str]
    purpose: str
    risk_tier: RiskTier
    status: Status
    status_reason: str | None
    roles: list[str]
    scopes: list[str]
    attributes: dict[str, Any]
    parent: str | None
    lineage: list[str]
    lineage_kind: str | None
    fingerprint: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    recertify_by: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spiffe_id": self.spiffe_id,
            "name": self.name,
            "owner": self.owner,
            "owner_username": self.owner_username,
            "supervisors": self.supervisors,
            "purpose": self.purpose,
            "risk_tier": self.risk_tier.value,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "roles": self.roles,
            "scopes": self.scopes,
            "attributes": self.attributes,
            "parent": self.parent,
            "lineage": self.lineage,
            "lineage_kind": self.lineage_kind,
            "fingerprint": self.fingerprint,
            "created_at": to_rfc3339(self.created_at),
            "updated_at": to_rfc3339(self.updated_at),
            "expires_at": to_rfc3339(self.expires_at) if self.expires_at else None,
            "recertify_by": to_rfc3339(self.recertify_by) if self.recertify_by else None,
        }
