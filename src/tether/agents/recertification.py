"""Recertification: how long an agent's certification lasts, and what an overdue one meets.

Every agent has a ``recertify_by`` (by default its risk tier's :data:`RECERTIFY_DAYS` after it
was created or last recertified). Before that date its stewards are told
(``agent.recertification_due``); once it has passed, each tier meets its configured response
(:data:`DEFAULT_OVERDUE`, ``TETHER_RECERTIFY_OVERDUE``): ``alert`` only says so,
``require_approval`` turns every allow of the agent into an approval checkpoint until it is
recertified (:func:`requires_approval`, on the decision path, from memory), ``suspend``
suspends it. The sweep that gives notice and responds is
:mod:`tether.agents.recertify_sweep`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Literal

from tether.agents.values import RiskTier

# Default re-certification interval by risk tier (days): also the longest a recertification
# may reach (``until``).
RECERTIFY_DAYS = {RiskTier.HIGH: 90, RiskTier.LIMITED: 180, RiskTier.MINIMAL: 365}

OverdueAction = Literal["alert", "require_approval", "suspend"]
TierName = Literal["minimal", "limited", "high"]


def default_overdue() -> dict[TierName, OverdueAction]:
    """Each tier's response to an overdue recertification, unless configured."""
    return {"minimal": "alert", "limited": "require_approval", "high": "suspend"}


DEFAULT_OVERDUE: dict[str, str] = {str(k): str(v) for k, v in default_overdue().items()}

# Stages of the sweep for the current ``recertify_by`` (AgentRow.recertify_stage).
NOTICED = "noticed"
OVERDUE = "overdue"
CLOSED = "closed"


def period(tier: str) -> timedelta:
    """How long a certification of an agent of ``tier`` lasts."""
    return timedelta(days=RECERTIFY_DAYS[RiskTier(tier)])


def overdue_action(tier: str, overdue: Mapping[str, str]) -> str:
    """What an overdue agent of ``tier`` meets (``overdue``: the configured map; a tier it
    does not name gets the default)."""
    return overdue.get(tier) or DEFAULT_OVERDUE.get(tier, "alert")


def is_overdue(recertify_by: int | None, now_us: int) -> bool:
    """Whether a ``recertify_by`` (microseconds; None: never due) has passed at ``now_us``."""
    return recertify_by is not None and recertify_by <= now_us


def requires_approval(
    tier: str, recertify_by: int | None, overdue: Mapping[str, str], now_us: int
) -> bool:
    """The decision path's rule: an allow of this agent needs a human's approval because its
    recertification is overdue and its tier's response is ``require_approval``. Pure: from
    the agent's view, no database read; true from the instant the date passes until a
    recertification moves it (the sweep's record of it is not waited for)."""
    return is_overdue(recertify_by, now_us) and overdue_action(tier, overdue) == "require_approval"
