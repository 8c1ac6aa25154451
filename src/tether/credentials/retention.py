"""How long the ``access_tokens`` rows of issued tokens are kept.

A row exists so that a live token can be introspected (RFC 7662) and revoked (RFC 7009, a
kill, an expiry). Once the token has expired neither needs it: verification refuses the
token on ``exp`` first, so introspection says ``{"active": false}`` with or without the row,
and the runtime forgets revoked ids past their expiry too (``Runtime.purge``). Rows are
kept ``TETHER_TOKEN_RETENTION_SECONDS`` past expiry for people reading the table, then
deleted; the ledger's ``token.issued`` / ``token.revoked`` events keep the history for good.
"""

from __future__ import annotations

from datetime import datetime

from tether.clock import to_micros
from tether.credentials.models import AccessTokenRow
from tether.db import Database
from tether.db.purge import delete_before


def purge_expired_tokens(db: Database, *, now: datetime, retention_seconds: int) -> int:
    """Delete the rows of tokens that expired more than ``retention_seconds`` before ``now``
    (in batches; see :func:`tether.db.purge.delete_before`); returns how many."""
    cutoff = to_micros(now) - retention_seconds * 1_000_000
    return delete_before(db, AccessTokenRow.jti, AccessTokenRow.expires_at, cutoff)
