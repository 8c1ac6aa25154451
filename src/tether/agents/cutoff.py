"""Cutting an agent off: one hook for every way an agent stops.

When agents are killed (for good) or expire (until someone extends and resumes them), each
domain that granted them something — tokens, approvals, secret leases, and next gateway
sessions — takes it back inside the same transaction, through one :class:`CutOff` hook
registered with the agents domain. A suspension or retirement runs the hooks too: each hook
takes back what must end at once even if the agent resumes (leases), and leaves what the
agent's status refuses meanwhile (tokens, approvals: :data:`FOR_GOOD`). Each hook records in
the change feed what every worker must stop honouring, and returns what it cut off
(``{"tokens": 3}``), for the ledger event.

Every write waits for that transaction (the deployment-wide write lock), decisions' ledger
events too, so a hook may leave to after the commit what the agents' own status already
enforces on every path — the kill's mass of token rows, marked revoked one bounded batch per
write transaction — through :func:`defer`: it runs once the transaction is durable, in the
database's background thread after the kill (or the sweep) has returned, and the hook's
domain has a maintenance task that finishes it should the process die first. What makes the
agents stop stays in the transaction, and so does whatever must hold if an expired agent is
extended and resumed (a deferred part could then be lost for good).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sqlalchemy.orm import Session

from tether.db.engine import IN_BACKGROUND


class Why(StrEnum):
    KILLED = "killed"
    EXPIRED = "expired"
    # Reversible stops: what the agent's status already refuses (tokens, approvals) stays for
    # when it resumes; what must end at once whatever comes next (secret leases) ends here.
    SUSPENDED = "suspended"
    RETIRED = "retired"


# What ends an agent's grants for good: tokens and open approvals are cut off only then.
FOR_GOOD = frozenset({Why.KILLED, Why.EXPIRED})


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


def defer(s: Session, work: Callable[[], object]) -> None:
    """Run ``work`` once the cut-off's transaction committed, in the background after its
    caller returned (it opens write transactions of its own, each holding the write lock
    briefly). Nothing runs if the transaction rolls back."""
    s.info.setdefault(IN_BACKGROUND, []).append(work)
