"""What a recorded decision was asked: its resource properties, context and chain, kept beside
its ledger event (by ``seq``) so that a simulation can replay it under other policies.

The decision path hands these inputs to the group commit with each decision event; this is
the group commit's ``attach`` hook: their rows go in the same statement as the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table

from tether.audit.chain import Event
from tether.db.bulk import Insert
from tether.policy.models import DecisionInputRow

_INPUTS = cast(Table, DecisionInputRow.__table__)


def input_rows(chained: Sequence[tuple[Event, Any]]) -> Insert:
    """Each chained event's attached inputs (None: nothing to keep) as a row under its seq."""
    return _INPUTS, [(ev.seq, att) for ev, att in chained if att is not None]
