"""Typed, never-reused identifiers: ``<prefix>_`` + a time-ordered 26-character ULID-style body.

The body is 48 bits of milliseconds and 80 random bits (Crockford base32), so ids sort
roughly by creation and collisions need 2**40 ids in the same millisecond.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import StrEnum

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class IdPrefix(StrEnum):
    AGENT = "agt"
    USER = "usr"
    USER_TOKEN = "tok"  # noqa: S105 - a name, not a secret
    EVENT = "evt"
    CHECKPOINT = "ckp"
    CREDENTIAL = "crd"
    TOKEN = "atk"  # noqa: S105 - an id prefix, not a secret
    APPROVAL = "apr"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: IdPrefix, *, now_ms: int | None = None) -> str:
    ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(ms, 10)}{_encode(secrets.randbits(80), 16)}"


_ID_PATTERN = re.compile(r"^[a-z]{3}_[0-9A-HJKMNP-TV-Z]{26}$")


def looks_like(prefix: IdPrefix, value: str) -> bool:
    return value.startswith(f"{prefix}_") and bool(_ID_PATTERN.match(value))
