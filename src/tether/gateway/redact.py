"""What of a tool call's arguments and result the ledger keeps: a digest of the exact values,
and a redacted copy.

The copy drops what must never be on the record: any string holding a value the broker knows
(a secret injected into the call, or one given in ``known``), whole or in part — also its
base64 — and the values of keys that name credentials (``password``, ``token``, ``secret``,
``authorization``, ``api_key``…; the rules are configurable). Long strings are cut and deep
or wide structures bounded, so an event stays small whatever a tool returns. The digest
(SHA-256 of the canonical JSON of the original) lets a holder of the original prove it was
this call's without the ledger keeping it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tether.jsonutil import canonical

REDACTED = "[redacted]"
DEFAULT_KEYS = (
    r"pass(word|wd|phrase)?", r"secret", r"token", r"authorization", r"api[_-]?key",
    r"private[_-]?key", r"credential", r"cookie", r"session", r"ssn", r"card[_-]?number", r"cvv",
)  # fmt: skip


@dataclass(frozen=True)
class Redactor:
    """``keys``: regular expressions matched (whole, case-insensitive) against object keys
    whose values are dropped; ``max_string``/``max_items``/``max_depth`` bound the copy."""

    keys: tuple[str, ...] = DEFAULT_KEYS
    max_string: int = 512
    max_items: int = 100
    max_depth: int = 8
    _key: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = "|".join(f"(?:{k})" for k in self.keys) or r"(?!)"
        object.__setattr__(self, "_key", re.compile(rf"^(?:{pattern})$", re.IGNORECASE))

    def record(self, value: Any, known: Iterable[str] = ()) -> tuple[str, Any]:
        """``(digest, redacted copy)`` of ``value`` (JSON-like), hiding every string of
        ``known`` (secret values; those under 4 characters are too short to hide safely and
        are ignored)."""
        digest = hashlib.sha256(canonical(value)).hexdigest()
        needles = _needles(known)
        return digest, self._copy(value, needles, 0)

    def _copy(self, value: Any, needles: tuple[str, ...], depth: int) -> Any:
        if isinstance(value, str):
            return self._string(value, needles)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if depth >= self.max_depth:
            return "[too deep]"
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= self.max_items:
                    out["…"] = f"[{len(value) - self.max_items} more keys]"
                    break
                name = self._string(str(k), needles)
                hidden = self._key.match(str(k))
                out[name] = REDACTED if hidden else self._copy(v, needles, depth + 1)
            return out
        if isinstance(value, list | tuple):
            items = [self._copy(v, needles, depth + 1) for v in list(value)[: self.max_items]]
            if len(value) > self.max_items:
                items.append(f"[{len(value) - self.max_items} more items]")
            return items
        return self._string(repr(value), needles)

    def _string(self, text: str, needles: tuple[str, ...]) -> str:
        for needle in needles:
            if needle in text:
                return REDACTED
        if len(text) > self.max_string:
            return text[: self.max_string] + f"…[{len(text) - self.max_string} more]"
        return text


def _needles(known: Iterable[str]) -> tuple[str, ...]:
    out: set[str] = set()
    for value in known:
        if len(value) < 4:
            continue
        raw = value.encode()
        out.add(value)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            out.add(encode(raw).decode().rstrip("="))
    # Longest first: a value that contains another is found as itself.
    return tuple(sorted(out, key=len, reverse=True))


def hide(value: Any, known: Iterable[str]) -> Any:
    """``value`` (JSON-like) with every occurrence of a ``known`` secret value (or its
    base64) replaced by ``[redacted]`` in its strings, keys included — nothing else changed
    or cut: what goes back to an agent from an upstream that echoes the credential the
    gateway sent it."""
    needles = _needles(known)
    if not needles:
        return value
    return _hide(value, needles)


def _hide(value: Any, needles: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for needle in needles:
            if needle in value:
                value = value.replace(needle, REDACTED)
        return value
    if isinstance(value, dict):
        return {_hide(k, needles): _hide(v, needles) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide(v, needles) for v in value]
    return value


def shows_any(text: str, known: Iterable[str]) -> bool:
    """Whether ``text`` holds a ``known`` secret value (or its base64)."""
    return any(needle in text for needle in _needles(known))
