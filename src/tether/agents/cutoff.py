"""Cutting an agent off: one hook for every way an agent stops.

When agents are killed (for good) or expire (until someone extends and resumes them), each
domain that granted them something — tokens, approvals, and next secret leases and gateway
sessions — takes it back inside the same transaction, through one :class:`CutOff` hook
registered with the agents domain. Each hook records in the change feed what every worker
must stop honouring, and returns what it cut off (``{"tokens": 3}``), for the ledger event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sqlalchemy.orm import Session


class Why(StrEnum):
    KILLED = "killed"
    EXPIRED = "expired"


class CutOff(Protocol):
    def __call__(
        self, s: Session, agent_ids: list[str], now: datetime, *, why: Why
    ) -> dict[str, int]: ...


def cut_off(
    hooks: Sequence[CutOff],
    s: Session,
    agent_ids: list[str],
    now: datetime,
    *,
    why: Why,
    counts: dict[str, int],
) -> dict[str, int]:
    """Run every hook for ``agent_ids``; ``counts`` summed with what each cut off."""
    for hook in hooks:
        for key, n in hook(s, agent_ids, now, why=why).items():
            counts[key] = counts.get(key, 0) + n
    return counts
