"""Opaque cursors for ``{"items": [...], "next_cursor": ...}`` lists (keyset pagination)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tether.errors import InvalidCursor

T = TypeVar("T")
MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> str | None:
    """The last key of the previous page; raises :class:`InvalidCursor` for garbage."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this server issued", field="cursor") from exc
    if not raw or len(raw) > 200 or not raw.isprintable():
        raise InvalidCursor("cursor is not one this server issued", field="cursor")
    return raw


def page_of(rows: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """``rows`` was fetched with ``limit + 1``; the extra row only says there is more."""
    if len(rows) > limit:
        items = rows[:limit]
        return Page(items, encode_cursor(key(items[-1])))
    return Page(rows, None)
