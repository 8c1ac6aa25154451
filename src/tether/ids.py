"""Typed, never-reused identifiers: ``<prefix>_`` + a time-ordered 26-character ULID-style body.

The body is 48 bits of milliseconds and 80 random bits (Crockford base32), so ids sort
roughly by creation and collisions need 2**40 ids in the same millisecond.
"""

from __future__ import annotations

import base64
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
    FREEZE = "frz"
    SECRET_KEY = "smk"  # noqa: S105 - an id prefix, not a secret
    LEASE = "lse"
    ROLLBACK = "rbk"
    SESSION = "ses"
    ALERT = "alr"
    REVIEW = "rvw"
    REVIEW_LINE = "rvl"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


# RFC 4648 base32 maps 5-bit values in the same order as Crockford's alphabet: translating
# one into the other encodes 10 random bytes as the 16 random characters in one C call.
_FROM_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_last_ms: tuple[int, str] = (-1, "")


def new_id(prefix: IdPrefix, *, now_ms: int | None = None) -> str:
    global _last_ms  # noqa: PLW0603 - a one-entry memo: ids made in one millisecond share it
    ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    memo = _last_ms
    if memo[0] != ms:
        memo = _last_ms = (ms, _encode(ms, 10))
    rand = base64.b32encode(secrets.token_bytes(10)).translate(_FROM_B32).decode()
    return f"{prefix}_{memo[1]}{rand}"


def new_ids(prefix: IdPrefix, count: int, *, now_ms: int) -> list[str]:
    """``count`` ids of one millisecond: one random read and one base32 pass for all of them
    (10 random bytes are exactly 16 characters, so the encoded run splits at every 16th)."""
    stamp = f"{prefix}_{_encode(now_ms, 10)}"
    rand = base64.b32encode(secrets.token_bytes(10 * count)).translate(_FROM_B32).decode()
    return [f"{stamp}{rand[i : i + 16]}" for i in range(0, 16 * count, 16)]


_BODY = "[0-9A-HJKMNP-TV-Z]{26}"  # Crockford base32: no I, L, O, U
_ID_PATTERN = re.compile(rf"^[a-z]{{3}}_{_BODY}$")


def id_pattern(prefix: IdPrefix, *, anchored: bool = True) -> str:
    """The regular expression of every id with this prefix (for the OpenAPI document)."""
    pattern = f"{prefix}_{_BODY}"
    return f"^{pattern}$" if anchored else pattern


def looks_like(prefix: IdPrefix, value: str) -> bool:
    return value.startswith(f"{prefix}_") and bool(_ID_PATTERN.match(value))
