"""Verifying Tether's signed webhooks on the receiving side.

Every webhook carries ``X-Tether-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where
each ``v1`` may be ``HMAC-SHA256(secret, "<t>." + raw_body)`` in lowercase hex. The body is
valid if any ``v1`` matches (several appear while a secret is rotated) and ``t`` is within
``tolerance_seconds`` of now, which bounds replay; unknown keys are ignored, so later schemes
can be added alongside ``v1``. Verify the raw bytes received, before parsing the JSON, and
deduplicate on ``X-Tether-Delivery``: delivery is at least once::

    verify_webhook(request.body, request.headers["X-Tether-Signature"], SECRET)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class WebhookSignatureError(ValueError):
    """The webhook is not authentic or too old; the message says which check failed."""


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise WebhookSignatureError(f"malformed signature header: item {item!r} is not k=v")
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                raise WebhookSignatureError("malformed signature header: bad or repeated t=")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise WebhookSignatureError("malformed signature header: no t= timestamp")
    if not signatures:
        raise WebhookSignatureError("signature header has no v1= signature")
    return timestamp, signatures


def verify_webhook(
    body: bytes,
    signature_header: str,
    secret: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = 300,
) -> None:
    """Return None if ``body`` was signed with ``secret`` within ``tolerance_seconds`` of now.

    ``now`` is unix seconds (default: the system clock). Raises :class:`WebhookSignatureError`
    for a malformed header, no ``v1`` signature, a signature that does not match, or a
    timestamp too far in the past or the future (the signature is checked first, so an
    unauthenticated caller learns nothing about the receiver's clock).
    """
    timestamp, candidates = _parse(signature_header)
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    expected = mac.hexdigest().encode()
    if not any(
        _HEX_SHA256.fullmatch(candidate) and hmac.compare_digest(expected, candidate.encode())
        for candidate in candidates
    ):
        raise WebhookSignatureError("webhook signature does not match the body and secret")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_seconds:
        when = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
        raise WebhookSignatureError(
            f"webhook timestamp is {when}, outside the {tolerance_seconds}s tolerance"
        )
