"""Telling every worker and node that something on the decision path changed.

A service that changes an agent, a user, a token's revocation or the policy set calls
:func:`record` inside its write transaction. The rows commit with the change (and, being
written under the deployment-wide write lock, in commit order); on PostgreSQL a
``NOTIFY`` wakes every node at commit; in this process the committing session marks itself
so :class:`tether.db.Database` runs the local refresh right after commit.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.orm import Session

from tether.runtime.models import ChangeRow

CHANGED = "tether.runtime_changed"


class Kind(StrEnum):
    AGENT = "agent"
    USER = "user"
    TOKEN = "token"  # noqa: S105 - a kind, not a secret
    POLICY = "policy"


def channel(schema: str | None) -> str:
    return f"tether_changes_{schema or 'public'}"[:63]


def record(session: Session, kind: Kind, keys: list[str] | str, *, now_us: int) -> None:
    for key in [keys] if isinstance(keys, str) else keys:
        session.add(ChangeRow(kind=kind.value, key=key[:128], time=now_us))
    session.info[CHANGED] = True
    if session.get_bind().dialect.name == "postgresql":
        name = channel(session.info.get("tether.schema"))
        session.execute(text("SELECT pg_notify(:c, '')"), {"c": name})
