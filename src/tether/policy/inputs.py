"""What a recorded decision was asked: its resource properties, context and chain, kept beside
its ledger event (by ``seq``) so that a simulation can replay it under other policies, and
what monitoring gave Cedar then (``session``, ``risk``) so a denial shows what it was based on.

The decision path hands these inputs to the group commit with each decision event; this is
the group commit's ``attach`` hook: their rows go in the same statement as the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from tether.audit.chain import Event
from tether.db.bulk import Insert
from tether.jsonutil import loads
from tether.policy.models import DecisionInputRow

_INPUTS = cast(Table, DecisionInputRow.__table__)


def input_rows(chained: Sequence[tuple[Event, Any]]) -> Insert:
    """Each chained event's attached inputs (None: nothing to keep) as a row under its seq."""
    return _INPUTS, [(ev.seq, att) for ev, att in chained if att is not None]


def recorded(session: Session, seq: int) -> dict[str, Any] | None:
    """The inputs kept with the decision event ``seq``; None if none were (another type of
    event) or retention dropped them."""
    text = session.scalar(select(DecisionInputRow.request).where(DecisionInputRow.seq == seq))
    if text is None:
        return None
    found = loads(text)
    return found if isinstance(found, dict) else None


def drop_through(session: Session, seq: int) -> None:
    """Drop the inputs kept with decision events up to ``seq``: ledger retention pruned them
    (tether.audit.retention), and the request beside them goes with them."""
    session.execute(delete(_INPUTS).where(_INPUTS.c.seq <= seq))
