"""Who answers for an agent, what each human may do to it, and whether it is live.

Each rule is defined here once and asked by every domain that needs it — the registry, the
approvals, decisions and the token grants — through values, never through the agents' rows:

* **Authority** (:func:`allows`): admins may do anything; auditors may read; a supervisor may
  read and operate (suspend, resume, kill, approve its requests, have it act in their name)
  the agents they own or supervise, and manage (update, clone, retire) those they own; agents
  and anyone else, nothing. An agent never has authority over an agent, itself included: it
  cannot approve its own request.
* **Liveness** (:func:`is_live`, :func:`chain_problem`): an agent is live while its status is
  ``active`` and its ``expires_at`` (if any) has not passed — before the maintenance sweep has
  stored ``expired``. A delegation chain is live when every agent in it is, and every human in
  it still exists.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from tether.agents.values import Status, has_expired
from tether.errors import Forbidden
from tether.principals import Principal, Role


class Act(StrEnum):
    """What a human wants to do to an agent, by the authority it takes."""

    READ = "read"  # see it, its credentials' metadata, its approvals
    OPERATE = "operate"  # suspend, resume, kill; approve or deny its requests; delegate to it
    MANAGE = "manage"  # update, clone, retire, give it credentials


@dataclass(frozen=True, slots=True)
class Stewards:
    """The humans who answer for an agent: its owner and its extra supervisors (user ids)."""

    owner: str
    supervisors: frozenset[str] = frozenset()

    def include(self, user_id: str) -> bool:
        return user_id == self.owner or user_id in self.supervisors


def allows(actor: Principal, act: Act, stewards: Stewards) -> bool:
    """Whether ``actor`` may ``act`` on an agent that ``stewards`` answer for."""
    if actor.is_admin:
        return True
    if actor.kind != "user":
        return False
    if actor.role is Role.AUDITOR:
        return act is Act.READ
    if actor.role is Role.SUPERVISOR:
        if act is Act.MANAGE:
            return actor.id == stewards.owner
        return stewards.include(actor.id)
    return False


def reads_stewards(actor: Principal) -> bool:
    """Whether :func:`allows` looks at the stewards for ``actor`` (only a supervisor's answer
    depends on them): otherwise a caller need not read the agent's supervisors first."""
    return actor.kind == "user" and actor.role is Role.SUPERVISOR and not actor.is_admin


def require(actor: Principal, act: Act, agent_id: str, stewards: Stewards | None) -> None:
    """Raise :class:`Forbidden` unless :func:`allows`; an unknown agent (``stewards`` None) is
    refused like someone else's to anyone but an admin, so nobody can probe for agents."""
    if stewards is not None and allows(actor, act, stewards):
        return
    if actor.is_admin:
        return  # the caller reports the missing agent itself
    if actor.kind == "user" and actor.role is Role.AUDITOR:
        raise Forbidden("auditors have read-only access")
    if actor.kind == "user" and actor.role is Role.SUPERVISOR:
        verb = "own" if act is Act.MANAGE else "supervise"
        raise Forbidden(f"you do not {verb} agent {agent_id}", agent=agent_id)
    raise Forbidden("not allowed")


# -- liveness ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Liveness:
    """What liveness reads of an agent: its stored status and its expiry (microseconds)."""

    status: str
    expires_at: int | None = None


class NotLive(StrEnum):
    """Why an agent is not live."""

    MISSING = "missing"
    INACTIVE = "inactive"  # its stored status is not active (suspended, revoked, retired...)
    EXPIRED = "expired"  # active, but past its expires_at (whether or not the sweep ran)


def not_live(agent: Liveness | None, now_us: int) -> NotLive | None:
    """Why ``agent`` is not live at ``now_us``, or None if it is: the liveness rule."""
    if agent is None:
        return NotLive.MISSING
    if agent.status != Status.ACTIVE:
        return NotLive.INACTIVE
    if has_expired(agent.expires_at, now_us):
        return NotLive.EXPIRED
    return None


def is_live(agent: Liveness | None, now_us: int) -> bool:
    """An existing agent, ``active`` and not past its ``expires_at``."""
    return not_live(agent, now_us) is None


def chain_problem(
    ids: Collection[str],
    agents: Mapping[str, Liveness],
    humans: Collection[str],
    now_us: int,
) -> str | None:
    """Why a token naming these principals (subject and actors: agent ids, and ``usr_`` ids
    of humans) must not be honoured, or None: an agent that is missing, not active or
    expired, or a human who no longer exists. ``agents`` and ``humans`` hold what exists."""
    for principal in ids:
        if principal.startswith("usr_"):
            continue
        why = not_live(agents.get(principal), now_us)
        if why is NotLive.EXPIRED:
            return f"agent {principal} in the delegation chain has expired"
        if why is not None:
            return f"agent {principal} in the delegation chain is not active"
    if any(p.startswith("usr_") and p not in humans for p in ids):
        return "the human in the delegation chain no longer exists"
    return None
