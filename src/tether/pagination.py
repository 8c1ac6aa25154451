"""Opaque cursors for ``{"items": [...], "next_cursor": ...}`` lists (keyset pagination).

A cursor is the unpadded base64url (RFC 4648 §5) of the last key of the previous page. Every key
the server pages by is printable ASCII, so the cursors it issues, and the only ones it accepts,
are the canonical encodings of 1 to ``MAX_KEY`` printable ASCII characters (or the empty string,
the first page). That set is a regular language, and :data:`CURSOR_PATTERN` is its exact regular
expression: the OpenAPI document states it and :func:`decode_cursor` applies it, so a string the
document admits is a cursor the server reads, and a string it refuses is ``invalid_cursor`` (400).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tether.errors import InvalidCursor

T = TypeVar("T")
MAX_LIMIT = 500
MAX_KEY = 200  # characters of a decoded cursor


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


# -- the cursor's regular expression ----------------------------------------------------------
#
# Base64 writes 3 bytes b1 b2 b3 as 4 characters of 6 bits: c1 = b1 >> 2, c2 = (b1 & 3) << 4 |
# b2 >> 4, c3 = (b2 & 15) << 2 | b3 >> 6, c4 = b3 & 63. For bytes drawn from a set S, which
# c1 may precede a c2 depends only on c2 >> 4, and which c3 c4 may follow only on c2 & 15, so a
# group is an alternation over c2 of "[c1s] c2 (c3 [c4s] | ...)", equal branches merged. A last
# group of 1 or 2 bytes is 2 or 3 characters whose unused low bits are zero (canonical form).
# Written with character classes, groups and counted repetition only, so that ECMA-262 (the
# document's dialect), Rust's regex and Python's re read it alike (see tether.fields).
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _char_class(indices: Iterable[int]) -> str:
    chars = [_ALPHABET[i] for i in sorted(set(indices))]
    parts: list[str] = []
    run: list[str] = []
    for c in [*chars, ""]:  # runs of consecutive letters or digits become ranges
        if run and c and c.isalnum() and ord(c) == ord(run[-1]) + 1:
            run.append(c)
            continue
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else "".join(run))
        run = [c] if c.isalnum() else []
        if c and not c.isalnum():
            parts.append("\\" + c if c == "-" else c)
    body = "".join(parts)
    return body if len(chars) == 1 and body.isalnum() else f"[{body}]"


def _alternation(branches: list[str]) -> str:
    return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"


def _merged(pairs: Iterable[tuple[int, str]]) -> list[str]:
    """``(character, what follows it)`` pairs, the characters with one follower in one class."""
    by_suffix: dict[str, list[int]] = {}
    for char, suffix in pairs:
        by_suffix.setdefault(suffix, []).append(char)
    return [_char_class(chars) + suffix for suffix, chars in by_suffix.items()]


def _base64url_pattern(allowed: Iterable[int], max_bytes: int) -> str:
    """The canonical unpadded base64url of 0 to ``max_bytes`` bytes, each in ``allowed``."""
    s = frozenset(allowed)

    def after_c2(low: int, *, last: bool) -> str | None:
        pairs: list[tuple[int, str]] = []
        for c3 in range(64):
            if (low << 4 | c3 >> 2) not in s or (last and c3 & 3):
                continue
            c4s = [c4 for c4 in range(64) if ((c3 & 3) << 6 | c4) in s]
            if last or c4s:
                pairs.append((c3, "" if last else _char_class(c4s)))
        return _alternation(_merged(pairs)) if pairs else None

    def chunk(after: Callable[[int], str | None]) -> str:
        branches: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for c2 in range(64):
            c1s = tuple(c1 for c1 in range(64) if (c1 << 2 | c2 >> 4) in s)
            suffix = after(c2)
            if c1s and suffix is not None:
                branches.setdefault((c1s, suffix), []).append(c2)
        return _alternation([_char_class(c1s) + _char_class(c2s) + suffix
                             for (c1s, suffix), c2s in branches.items()])  # fmt: skip

    group = chunk(lambda c2: after_c2(c2 & 15, last=False))
    one = chunk(lambda c2: "" if c2 & 15 == 0 else None)
    two = chunk(lambda c2: after_c2(c2 & 15, last=True))
    full, rest = divmod(max_bytes, 3)
    if rest == 0:  # up to full - 1 groups, then a group or a shorter tail
        return f"^(?:{group}){{0,{full - 1}}}(?:{group}|{one}|{two})?$"
    tails = f"{one}|{two}" if rest == 2 else one
    return f"^(?:{group}){{0,{full}}}(?:{tails})?$"


def _max_length(max_bytes: int) -> int:
    return -(-max_bytes * 4 // 3)


_PRINTABLE = range(0x20, 0x7F)
CURSOR_PATTERN = _base64url_pattern(_PRINTABLE, MAX_KEY)
CURSOR_MAX_LENGTH = _max_length(MAX_KEY)
# The audit ledger pages by sequence number: a cursor there encodes 1 to 18 decimal digits
# (every number below 10**18 fits the 64-bit ``seq`` column on every backend).
MAX_SEQ_DIGITS = 18
SEQ_CURSOR_PATTERN = _base64url_pattern(range(0x30, 0x3A), MAX_SEQ_DIGITS)
SEQ_CURSOR_MAX_LENGTH = _max_length(MAX_SEQ_DIGITS)
_CURSOR = re.compile(CURSOR_PATTERN)
_SEQ_CURSOR = re.compile(SEQ_CURSOR_PATTERN)


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode()


def _decode(cursor: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(cursor):
        raise InvalidCursor("cursor is not one this server issued", field="cursor")
    # The pattern admits only canonical base64url of printable ASCII: this cannot fail.
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")


def decode_cursor(cursor: str | None) -> str | None:
    """The last key of the previous page (``None``: the first page); raises
    :class:`InvalidCursor` for anything :data:`CURSOR_PATTERN` does not admit."""
    if cursor is None or cursor == "":
        return None
    return _decode(cursor, _CURSOR)


def decode_seq_cursor(cursor: str | None) -> int | None:
    """The last sequence number of the previous page, for cursors of
    :data:`SEQ_CURSOR_PATTERN`; raises :class:`InvalidCursor` for anything else."""
    if cursor is None or cursor == "":
        return None
    return int(_decode(cursor, _SEQ_CURSOR))


def page_of(rows: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """``rows`` was fetched with ``limit + 1``; the extra row only says there is more."""
    if len(rows) > limit:
        items = rows[:limit]
        return Page(items, encode_cursor(key(items[-1])))
    return Page(rows, None)
