"""What a tool call's record keeps (issue 16, item 4): a digest of the exact arguments or
result, and a copy with every known secret value (whole, inside a longer string, or in
base64) and every credential-named key's value removed, long or deep values bounded."""

from __future__ import annotations

import base64
import hashlib

from tether.gateway.redact import REDACTED, Redactor
from tether.jsonutil import canonical

SECRET = "sk_live_51H8example"


def test_a_known_value_is_hidden_whole_inside_text_and_in_base64() -> None:
    args = {
        "note": f"use {SECRET} for this",
        "plain": SECRET,
        "encoded": base64.b64encode(SECRET.encode()).decode(),
        "nested": [{"deeper": f"Bearer {SECRET}"}],
        "amount": 120,
        "ok": True,
    }
    digest, copy = Redactor().record(args, known=[SECRET])
    assert digest == hashlib.sha256(canonical(args)).hexdigest()
    assert copy == {"note": REDACTED, "plain": REDACTED, "encoded": REDACTED,
                    "nested": [{"deeper": REDACTED}], "amount": 120, "ok": True}  # fmt: skip
    assert SECRET not in str(copy)


def test_credential_named_keys_are_dropped_and_rules_are_configurable() -> None:
    args = {"Password": "hunter2", "api_key": "k", "X-Api-Key": "k2", "user": "ann",
            "session_id": "s"}  # fmt: skip
    _, copy = Redactor().record(args)
    assert copy["Password"] == REDACTED
    assert copy["api_key"] == REDACTED
    assert copy["user"] == "ann"
    assert copy["session_id"] == "s"  # whole-key match: "session" alone would be dropped
    _, custom = Redactor(keys=(r"user",)).record(args)
    assert custom["user"] == REDACTED
    assert custom["Password"] == "hunter2"


def test_size_is_bounded() -> None:
    big = {"text": "x" * 10_000, "items": list(range(500)), "deep": {"a": {"b": {"c": 1}}}}
    _, copy = Redactor(max_string=10, max_items=3, max_depth=2).record(big)
    assert copy["text"].startswith("x" * 10)
    assert copy["text"].endswith("[9990 more]")
    assert copy["items"] == [0, 1, 2, "[497 more items]"]
    assert copy["deep"] == {"a": "[too deep]"}


def test_short_known_values_are_not_used_as_needles() -> None:
    _, copy = Redactor().record({"a": "abc and more"}, known=["abc"])
    assert copy == {"a": "abc and more"}
