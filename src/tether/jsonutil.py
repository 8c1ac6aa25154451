"""Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 — the bytes we hash and sign."""

from __future__ import annotations

from typing import Any

import orjson


def canonical(value: Any) -> bytes:
    """Deterministic encoding of JSON-compatible values (orjson, keys sorted)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def canonical_text(value: Any) -> str:
    return canonical(value).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)
