"""What a text column can hold on every backend."""

from __future__ import annotations


def unstorable(*values: str | None) -> bool:
    """Whether any value holds NUL, which PostgreSQL text cannot store.

    A lookup key containing one matches no row on any backend; stores answer "not found"
    instead of letting the driver raise (which would surface as a 500 on PostgreSQL only).
    """
    return any(v is not None and "\x00" in v for v in values)
