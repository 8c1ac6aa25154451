"""The ``runtime.propagated`` event: how long an intervention (a kill, a suspension, a freeze)
took to reach every live worker, recorded by the service that made it right after its write
returned (:func:`tether.runtime.propagation.watch`). The compliance report's oversight
section counts these (EU AI Act Art. 14: oversight that takes effect, shown with its times).

Best effort by design: the intervention is durable and enforced before this runs, so a failure
to record its measure is logged and the call still succeeds.
"""

from __future__ import annotations

import logging
from typing import Any

from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock
from tether.db import Database
from tether.runtime.propagation import Watch

log = logging.getLogger("tether.audit")


def record_propagation(
    db: Database,
    ledger: Ledger,
    clock: Clock,
    actor: str,
    *,
    change: Event,
    seen: Watch,
    extra: dict[str, Any] | None = None,
) -> Event | None:
    """Append ``runtime.propagated`` for ``change`` (the intervention's event; the first of
    a kill's cascade) with what ``seen`` measured: ``{change, event_seq, seconds, confirmed,
    workers, **extra}``. Returns the event, or None if nothing was measured (the runtime does
    not wait: ``TETHER_RUNTIME_PROPAGATION_WAIT_SECONDS=0``), there was no other live worker
    to reach (this worker applied it before the call returned: nothing propagated), or the
    append failed (logged)."""
    measured = seen.measured
    if measured is None or measured.workers == 0:
        return None
    details = {"change": change.type, "event_seq": change.seq, **measured.to_json()}
    details.update(extra or {})
    event = NewEvent(
        EventType.RUNTIME_PROPAGATED,
        actor,
        agent_id=change.agent_id,
        action=str(EventType.RUNTIME_PROPAGATED),
        resource=change.resource,
        outcome="success" if measured.confirmed else "timeout",
        details=details,
    )
    try:
        with db.write() as s:
            (written,) = ledger.append(s, [event], now=clock.now())
    except Exception:  # the intervention itself committed and took effect: never undo its call
        log.warning(
            "could not record the propagation of %s (event %d)",
            change.type,
            change.seq,
            exc_info=True,
        )
        return None
    return written
